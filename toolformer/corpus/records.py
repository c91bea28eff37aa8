"""Corpus records: documents, texts (chunks), stable ids, validation of one raw record, counted skips."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

DATE_FIELDS = ("date_download", "date", "created")  # record fields that hold the document date


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


# Where each field of a document is found in a record, first match wins: cc_net, plain JSONL/Parquet with `text`,
# Dolma (`id`, `created`, `metadata.url`, `metadata.warc_date`), FineWeb / RedPajama (`text, id, url, date`).
# ``corpus.fields`` overrides any of them with a dotted path (or a list of paths) into nested records.
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("raw_content", "text"),
    "id": ("digest", "id", "doc_id"),
    "url": ("url", "metadata.url", "meta.url"),
    "date": ("date_download", "date", "created", "metadata.warc_date", "metadata.date", "meta.date"),
    "title": ("title", "metadata.title"),
}


def field_paths(overrides: dict | None = None) -> dict[str, tuple[str, ...]]:
    paths = dict(DEFAULT_FIELDS)
    for key, value in (overrides or {}).items():
        if key not in paths:
            raise ValueError(f"corpus.fields: unknown field {key!r}; valid: {', '.join(paths)}")
        paths[key] = (value,) if isinstance(value, str) else tuple(value)
    return paths


def get_path(record: dict, path: str) -> Any:
    """``record["a"]["b"]`` for ``"a.b"`` (a JSON string on the way is parsed, as Dolma's metadata sometimes is);
    None where the path does not lead anywhere."""
    value: Any = record
    for part in path.split("."):
        if isinstance(value, str) and value[:1] == "{":
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _exists(record: dict, path: str) -> bool:
    head, _, rest = path.rpartition(".")
    parent = get_path(record, head) if head else record
    if isinstance(parent, str) and parent[:1] == "{":
        try:
            parent = json.loads(parent)
        except ValueError:
            return False
    return isinstance(parent, dict) and rest in parent


def _first(record: dict, paths: tuple[str, ...]) -> tuple[Any, str | None]:
    for path in paths:
        value = get_path(record, path)
        if value not in (None, ""):
            return value, path
    return None, None


def record_to_document(
    record: Any, where: str, *, max_doc_chars: int = 1_000_000, min_text_chars: int = 1,
    fields: dict[str, tuple[str, ...]] | None = None, contaminated: Callable[[str], bool] | None = None,
) -> Document:
    """Validate one record (cc_net, Dolma, FineWeb, JSONL-with-text, a Parquet or Arrow row); raise ``_Skip``
    with a reason. ``fields`` (from ``field_paths``) says where each field is."""
    f = fields or DEFAULT_FIELDS
    if not isinstance(record, dict):
        raise _Skip("not_an_object")
    present = [p for p in f["text"] if _exists(record, p)]
    if not present:
        raise _Skip("missing_text")
    text = get_path(record, present[0])  # the first text field the record has, whatever its value
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
    if contaminated is not None and contaminated(text):  # shares an n-gram with an evaluation input
        raise _Skip("contaminated")
    doc_id, _ = _first(record, f["id"])
    doc_id = str(doc_id) if doc_id not in (None, "") else ccnet_digest(text)
    url, _ = _first(record, f["url"])
    date, _ = _first(record, f["date"])
    title, _ = _first(record, f["title"])
    used = {p.split(".")[0] for paths in f.values() for p in paths if "." not in p}
    meta = {k: v for k, v in record.items() if k not in used}
    return Document(
        doc_id=doc_id,
        url=str(url) if url else None,
        date=str(date) if date is not None else None,
        title=str(title) if title else None,
        text=text,
        source=where,
        meta=json.dumps(meta, ensure_ascii=False, default=str),
    )
