"""Chunking: a document into texts of at most ~``max_tokens`` tokens, cut at line or sentence ends."""

from __future__ import annotations

import bisect
import dataclasses
import re

from toolformer.corpus.records import Document, TextChunk

_BREAK = re.compile(r"\n|(?<=[.!?])\s")


def chunk_document(doc: Document, tokenizer, max_tokens: int) -> list[TextChunk]:
    """Split a document into texts of at most ~``max_tokens`` tokens, cutting at a line or sentence end.

    A cut falls on the last line or sentence break in the second half of the window, else mid-window.
    """
    text = doc.text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc.offset_mapping
    spans: list[tuple[int, int]] = []
    ends = [o[1] for o in offsets]
    c0, tok = 0, 0
    while tok < len(offsets):
        end_tok = tok + max_tokens
        if end_tok >= len(offsets):
            spans.append((c0, len(text)))
            break
        c1 = offsets[end_tok][0]
        cut = None
        for m in _BREAK.finditer(text, offsets[tok + max_tokens // 2][0], c1):
            cut = m.end()
        c1 = cut if cut and cut > c0 else max(c1, c0 + 1)
        spans.append((c0, c1))
        c0 = c1
        tok = bisect.bisect_right(ends, c0)  # the first token that reaches past the cut
    chunks = []
    for k, (c0, c1) in enumerate(s for s in spans if text[s[0] : s[1]].strip()):
        piece = text[c0:c1].strip()
        chunks.append(
            TextChunk(f"{doc.doc_id}#{k}", doc.doc_id, k, doc.url, doc.date, doc.title, piece)
        )
    return chunks


def texts_of(doc: Document, tokenizer, max_tokens: int) -> list[dict]:
    """A document's texts (TEXTS rows). A document that chunks to nothing still yields one (empty) text, so
    that it has annotation rows (status ``empty``) and stays accounted for."""
    chunks = chunk_document(doc, tokenizer, max_tokens) or [
        TextChunk(f"{doc.doc_id}#0", doc.doc_id, 0, doc.url, doc.date, doc.title, "")
    ]
    return [{**dataclasses.asdict(chunk), "source": doc.source} for chunk in chunks]
