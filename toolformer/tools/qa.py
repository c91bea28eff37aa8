"""QA: a short answer to a question, retrieval-augmented in the spirit of Atlas (the paper's backend).

The top passages come from the same index as WikiSearch; a reader LM (the embedded SmolLM2 by default, or
any HF causal or seq2seq model from a path) answers in a few words. The answer is normalized; when the reader
has none, the tool returns nothing and the call is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from toolformer.tools.base import ToolRequest, register
from toolformer.tools.generator import Generator
from toolformer.tools.wikisearch import SearchOptions, _Searching, cut_to_tokens

PROMPT = """Answer the question in a few words, using the context.

Context: The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.
Question: In which city is the Eiffel Tower?
Answer: Paris

Context: Penicillin was discovered in 1928 by the Scottish physician Alexander Fleming.
Question: Who discovered penicillin?
Answer: Alexander Fleming

Context: {context}
Question: {question}
Answer:"""

_NO_ANSWER = {"", "unknown", "i don't know", "i do not know", "none", "n/a", "no answer", "not mentioned", "unanswerable"}
MAX_ANSWER_WORDS = 10


def normalize_answer(text: str) -> str | None:
    """First line, no quotes or trailing punctuation, at most 10 words; None when it is no answer."""
    text = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    text = text.strip().strip("\"'“”").strip()
    text = re.sub(r"^(the answer is|answer:)\s*", "", text, flags=re.I)
    text = text.rstrip(" .,;:!")
    words = text.split()
    if len(words) > MAX_ANSWER_WORDS:
        text = " ".join(words[:MAX_ANSWER_WORDS])
    return None if text.lower() in _NO_ANSWER else text


@dataclass
class QAOptions(SearchOptions):
    reader: str = "embedded"  # an HF causal or seq2seq model (path or hub name); embedded: SmolLM2-135M
    passages: int = 1  # retrieved passages the reader sees
    context_tokens: int = 160
    max_answer_tokens: int = 16
    batch_size: int = 8


@register
class QA(_Searching):
    name = "QA"
    quote_input = True
    Options = QAOptions

    def __init__(self, **options):
        super().__init__(**options)
        self.reader = Generator(self.options.reader, batch_size=self.options.batch_size)

    def setup(self) -> None:
        super().setup()
        self.reader.setup()

    def run_batch(self, requests: Sequence[ToolRequest]) -> list[str | None]:
        o = self.options
        hits = self.hits(requests, o.passages)
        prompts, owners = [], []
        for b, (request, found) in enumerate(zip(requests, hits)):
            question = cut_to_tokens((request.input or "").strip(), 64)
            if not found or not question:
                continue
            context = cut_to_tokens(" ".join(f"{h.title}: {h.text}" for h in found), o.context_tokens)
            prompts.append(PROMPT.format(context=context, question=question))
            owners.append(b)
        out: list[str | None] = [None] * len(requests)
        for b, answer in zip(owners, self.reader.generate(prompts, o.max_answer_tokens)):
            out[b] = normalize_answer(answer)
        return out
