"""Corpus records: documents, texts (chunks), stable ids, validation of one raw record, counted skips."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_TEXT_FIELDS = ("raw_content", "text")
DATE_FIELDS = ("date_download", "date", "created")


@dataclass
class Document:
    doc_id: str
    url: str | None
    date: str | None  # the record's date field (cc_net: date_download), ISO 8601
    title: str | None
    text: str
    source: str  # file:line (or package:key) it was read from
    meta: str = "{}"  # the remaining cc_net fields, as JSON


@dataclass
class TextChunk:
    text_id: str  # doc_id#k
    doc_id: str
    chunk: int
    url: str | None
    date: str | None
    title: str | None
    text: str


@dataclass
class SkipLog:
    """Counts of skipped records per reason, with the first few places each reason occurred."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}


def ccnet_digest(text: str) -> str:
    """cc_net's digest form, ``sha1:`` + base32 of the SHA-1 of the text."""
    return "sha1:" + base64.b32encode(hashlib.sha1(text.encode("utf-8")).digest()).decode()


class _Skip(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def record_to_document(
    record: Any, where: str, *, max_doc_chars: int = 1_000_000, min_text_chars: int = 1
) -> Document:
    """Validate one record (cc_net, JSONL-with-text or a Parquet row); raise ``_Skip`` with a reason."""
    if not isinstance(record, dict):
        raise _Skip("not_an_object")
    field_name = next((f for f in _TEXT_FIELDS if f in record), None)
    if field_name is None:
        raise _Skip("missing_text")
    text = record[field_name]
    if not isinstance(text, str):
        raise _Skip("text_not_a_string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes
        raise _Skip("bad_encoding") from None
    text = text.replace("\x00", "")
    if not text.strip():
        raise _Skip("empty_text")
    if len(text) > max_doc_chars:
        raise _Skip("text_too_long")
    if len(text.strip()) < min_text_chars:
        raise _Skip("text_too_short")
    doc_id = record.get("digest") or record.get("id") or record.get("doc_id")
    doc_id = str(doc_id) if doc_id not in (None, "") else ccnet_digest(text)
    url = record.get("url")
    url = str(url) if url else None
    date = next((record[f] for f in DATE_FIELDS if record.get(f)), None)
    title = record.get("title") or None
    meta = {
        k: v
        for k, v in record.items()
        if k not in _TEXT_FIELDS and k not in ("digest", "id", "doc_id", "url", "title") and k not in DATE_FIELDS
    }
    return Document(
        doc_id=doc_id,
        url=url,
        date=str(date) if date is not None else None,
        title=str(title) if title else None,
        text=text,
        source=where,
        meta=json.dumps(meta, ensure_ascii=False, default=str),
    )
