"""The Ray tasks of the prepare job (``prepare_ray.py`` runs them): scan one input, find one id bucket's duplicates,
write one shard; and the skip summaries they return, merged in read order. Each task reads and writes under
``<output_dir>/_prepare/`` and returns small dicts: counts, markers, summaries, never documents."""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolformer.corpus.chunking import texts_of
from toolformer.corpus.decontaminate import check_for
from toolformer.corpus.readers import input_records
from toolformer.corpus.records import Document, SkipLog, _Skip, field_paths, record_to_document
from toolformer.schemas import SHARD, to_table
from toolformer.run.shards import ShardInfo, sha256_bytes
from toolformer.run.store import Store


WORK = "_prepare"
PLAN_VERSION = 1
MAX_EXAMPLES = SkipLog.max_examples
DOCS_ROW_GROUP = 1024  # a shard task reads the row groups its slice spans, not the input's whole file
MAX_BUCKETS = 256
INPUTS_PER_BUCKET = 4  # a dedup task holds about this many inputs' ids
READER, RECORD = 0, 1  # a skip before record k (a line that is no record), or of record k itself

DOCS = pa.schema([("k", pa.int64()), ("doc_id", pa.string()), ("url", pa.string()), ("date", pa.string()),
                  ("title", pa.string()), ("text", pa.string()), ("source", pa.string()), ("meta", pa.string())])
IDS = pa.schema([("bucket", pa.int32()), ("doc_id", pa.string()), ("input", pa.int32()), ("k", pa.int64()),
                 ("source", pa.string())])
SKIPS = pa.schema([("k", pa.int64()), ("kind", pa.int8()), ("seq", pa.int64()), ("reason", pa.string()),
                   ("where", pa.string())])
DUPS = pa.schema([("k", pa.int64()), ("where", pa.string())])



# ---- skip summaries --------------------------------------------------------------------------------------
# A part is one input's (or the duplicates') skips: counts and first examples per reason, and where each reason
# first occurred, as [input, record, kind, order]: merged in input order they give SkipLog.as_dict() of one read.

def _part(n: int, events: Iterable[tuple[int, int, int, str, str]]) -> dict:
    """The skip summary of input ``n`` from its events (record k, kind, order, reason, where), in read order."""
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    first: dict[str, list[int]] = {}
    for k, kind, seq, reason, where in events:
        counts[reason] = counts.get(reason, 0) + 1
        ex = examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(where)
        first.setdefault(reason, [n, k, kind, seq])
    return {"counts": counts, "examples": examples, "first": first}


def merge_skips(parts: Iterable[dict]) -> dict:
    """``SkipLog.as_dict()`` of the whole read from parts given in input order (reasons in first-seen order)."""
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    first: dict[str, list[int]] = {}
    for p in parts:
        for reason, c in p["counts"].items():
            counts[reason] = counts.get(reason, 0) + c
            ex = examples.setdefault(reason, [])
            ex.extend(p["examples"].get(reason, [])[: MAX_EXAMPLES - len(ex)])
            key = p["first"][reason]
            first[reason] = min(first.get(reason, key), key)
    order = sorted(counts, key=lambda r: first[r])
    return {"total": sum(counts.values()), "by_reason": {r: counts[r] for r in order},
            "examples": {r: examples[r] for r in order}}


@dataclass
class _PlacedSkips(SkipLog):
    """A SkipLog that keeps every skip with its place (record index k, kind, order): a limit that ends the read
    inside this input counts only the skips before that point. ``k`` is the number of records read so far, so
    a reader skip (a line that is no record) lands before the record that follows it."""

    k: int = 0
    events: list = field(default_factory=list)

    def add(self, reason: str, where: str, kind: int = READER) -> None:
        super().add(reason, where)
        self.events.append((self.k, kind, len(self.events), reason, where))


# ---- small store helpers ---------------------------------------------------------------------------------

def _name(n: int) -> str:
    return f"{n:06d}"


def _parquet_bytes(table: pa.Table) -> bytes:
    """Parquet as ``prepare_local`` writes it (default settings): a shard's bytes, hence its sha256, match."""
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def _bucket_of(doc_id: str, buckets: int) -> int:
    """A stable hash (Python's str hash is salted per process)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "big") % buckets


def _dup_ks(store: Store, n: int) -> np.ndarray:
    """Record indices of input ``n``'s duplicates, from every bucket that found some."""
    names = store.names(WORK, "dups", _name(n), suffix=".parquet")
    if not names:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([store.read_table(WORK, "dups", _name(n), f).column("k").to_numpy() for f in names])


def _unique_ordinals(store: Store, n: int, pf: pq.ParquetFile) -> np.ndarray | None:
    """Row numbers in ``docs/<n>.parquet`` of the input's unique documents; None when all are unique."""
    dups = _dup_ks(store, n)
    if not len(dups):
        return None
    ks = pf.read(columns=["k"]).column("k").to_numpy()
    return np.flatnonzero(~np.isin(ks, dups))


# ---- tasks -----------------------------------------------------------------------------------------------

def scan_input(uri: str, n: int, path: str, fmt: str, settings: dict, buckets: int) -> dict:
    """Phase 1 for input ``n``: validate its records, write its documents, ids and skips, then its marker."""
    store = Store(uri)
    skips = _PlacedSkips()
    where_is = field_paths(settings["fields"])
    docs: dict[str, list] = {name: [] for name in DOCS.names}
    ids: dict[str, list] = {name: [] for name in IDS.names}
    out = io.BytesIO()
    writer = pq.ParquetWriter(out, DOCS)

    def flush() -> None:
        writer.write_table(pa.table(docs, schema=DOCS))
        for column in docs.values():
            column.clear()

    dc = settings.get("decontaminate") or {}
    contaminated = check_for(dc.get("tasks"), dc.get("n", 8), dc.get("data"), dc.get("paths"))
    records = input_records(path, fmt, skips, embedded_lang=settings["embedded_lang"],
                            embedded_date=settings["embedded_date"])
    for record, where in records:
        try:
            doc = record_to_document(record, where, max_doc_chars=settings["max_doc_chars"],
                                     min_text_chars=settings["min_text_chars"], fields=where_is,
                                     contaminated=contaminated)
        except _Skip as skip:
            skips.add(skip.reason, where, RECORD)
        else:
            for name in DOCS.names[1:]:
                docs[name].append(getattr(doc, name))
            docs["k"].append(skips.k)
            for name, value in (("bucket", _bucket_of(doc.doc_id, buckets)), ("doc_id", doc.doc_id), ("input", n),
                                ("k", skips.k), ("source", where)):
                ids[name].append(value)
            if len(docs["k"]) >= DOCS_ROW_GROUP:
                flush()
        skips.k += 1
    n_valid = len(ids["k"])
    if docs["k"] or not n_valid:
        flush()
    writer.close()
    store.write_bytes(out.getvalue(), WORK, "docs", f"{_name(n)}.parquet")
    store.write_bytes(_ids_parquet(pa.table(ids, schema=IDS)), WORK, "ids", f"{_name(n)}.parquet")
    if skips.events:  # read back only where a limit ends the read inside this input
        events = pa.table({name: list(col) for name, col in zip(SKIPS.names, zip(*skips.events))}, schema=SKIPS)
        store.write_bytes(_parquet_bytes(events), WORK, "skips", f"{_name(n)}.parquet")
    marker = {"input": n, "path": path, "format": fmt, "n_records": skips.k, "n_valid": n_valid,
              "skips": _part(n, skips.events)}
    store.write_json(marker, WORK, "inputs", f"{_name(n)}.json")  # last: the input is done
    return marker


def _ids_parquet(ids: pa.Table) -> bytes:
    """One row group per bucket, so that a dedup task reads only its bucket's rows of each input."""
    ids = ids.sort_by([("bucket", "ascending"), ("k", "ascending")])
    out = io.BytesIO()
    with pq.ParquetWriter(out, IDS) as writer:
        if not ids.num_rows:
            writer.write_table(ids)
        bucket = ids.column("bucket").to_numpy()
        starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]]) if len(bucket) else []
        ends = list(starts[1:]) + [len(bucket)]
        for a, b in zip(starts, ends):
            writer.write_table(ids.slice(int(a), int(b - a)))
    return out.getvalue()


def dedup_bucket(uri: str, b: int, n_inputs: int) -> dict:
    """Phase 2 for bucket ``b``: the ids that occurred at an earlier (input, record); writes them per input."""
    import pyarrow.dataset as ds

    store = Store(uri)
    files = [store.path(WORK, "ids", f"{_name(n)}.parquet") for n in range(n_inputs)]
    t = ds.dataset(files, schema=IDS, format="parquet", filesystem=store.fs).to_table(
        columns=["doc_id", "input", "k", "source"], filter=ds.field("bucket") == b)
    t = t.sort_by([("doc_id", "ascending"), ("input", "ascending"), ("k", "ascending")])
    counts: dict[str, int] = {}
    first: list[list] = []
    if t.num_rows > 1:
        ids = t.column("doc_id")
        same = pc.equal(ids.slice(1), ids.slice(0, t.num_rows - 1))
        dups = t.filter(pa.concat_arrays([pa.array([False]), *same.chunks]))
        dups = dups.sort_by([("input", "ascending"), ("k", "ascending")])
        inputs = dups.column("input").to_numpy()
        for n in np.unique(inputs):
            rows = dups.filter(pc.equal(dups.column("input"), int(n)))
            part = pa.table({"k": rows.column("k"), "where": rows.column("source")}, schema=DUPS)
            store.write_bytes(_parquet_bytes(part), WORK, "dups", _name(int(n)), f"{b:05d}.parquet")
            counts[str(int(n))] = rows.num_rows
        head = dups.slice(0, MAX_EXAMPLES)
        first = [[int(n), int(k), w] for n, k, w in zip(head.column("input").to_pylist(), head.column("k").to_pylist(),
                                                          head.column("source").to_pylist())]
    marker = {"bucket": b, "dups": counts, "first": first}
    store.write_json(marker, WORK, "buckets", f"{b:05d}.json")
    return marker


def kth_unique(uri: str, n: int, rank: int) -> int:
    """The record index of input ``n``'s unique document number ``rank`` (from 0)."""
    store = Store(uri)
    with store.fs.open_input_file(store.path(WORK, "docs", f"{_name(n)}.parquet")) as f:
        pf = pq.ParquetFile(f)
        ordinals = _unique_ordinals(store, n, pf)
        row = rank if ordinals is None else int(ordinals[rank])
        return int(pf.read(columns=["k"]).column("k")[row].as_py())


def skips_before(uri: str, n: int, k_stop: int) -> dict:
    """Input ``n``'s skips that the one-loop read counts when it stops on record ``k_stop``: reader skips up to
    that record, record skips and duplicates before it."""
    store = Store(uri)
    events: list = []
    if store.exists(WORK, "skips", f"{_name(n)}.parquet"):
        t = store.read_table(WORK, "skips", f"{_name(n)}.parquet")
        k, kind = t.column("k"), t.column("kind")
        keep = pc.or_(pc.and_(pc.equal(kind, READER), pc.less_equal(k, k_stop)),
                      pc.and_(pc.equal(kind, RECORD), pc.less(k, k_stop)))
        t = t.filter(keep)
        events = list(zip(*(t.column(c).to_pylist() for c in SKIPS.names)))
    dups = _dup_ks(store, n)
    return {"part": _part(n, events), "dups": int((dups < k_stop).sum())}


@functools.lru_cache(maxsize=2)
def _tokenizer(name_or_path: str, cache_dir: str | None):
    """Loaded once per worker process: Ray reuses workers across tasks."""
    from transformers import AutoTokenizer

    from toolformer.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(name_or_path, cache_dir))


def _slice_docs(store: Store, n: int, a: int, b: int) -> Iterator[Document]:
    """Input ``n``'s unique documents number ``a`` to ``b - 1``, reading only the row groups they lie in."""
    with store.fs.open_input_file(store.path(WORK, "docs", f"{_name(n)}.parquet")) as f:
        pf = pq.ParquetFile(f)
        ordinals = _unique_ordinals(store, n, pf)
        rows = np.arange(a, b) if ordinals is None else ordinals[a:b]
        if not len(rows):
            return
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        starts = np.cumsum([0, *sizes])
        groups = [i for i in range(len(sizes)) if starts[i] <= rows[-1] and starts[i + 1] > rows[0]]
        table = pf.read_row_groups(groups).take(pa.array(rows - starts[groups[0]]))
    for d in table.to_pylist():
        d.pop("k")
        yield Document(**d)


def write_shard(uri: str, sid: str, slices: list[list[int]], model: list, max_tokens: int) -> dict:
    """Phase 4: a shard's documents chunked into texts, written as ``shards/<sid>.parquet``, then its marker."""
    store = Store(uri)
    tokenizer = _tokenizer(*model)
    rows: list[dict] = []
    n_docs = 0
    for n, a, b in slices:
        for doc in _slice_docs(store, n, a, b):
            source = doc.source.rsplit(":", 1)[0]
            rows.extend({**t, "meta": doc.meta, "_input": source} for t in texts_of(doc, tokenizer, max_tokens))
            n_docs += 1
    data = _parquet_bytes(to_table([{**r, "shard_id": sid} for r in rows], SHARD))
    store.write_bytes(data, "shards", f"{sid}.parquet")
    info = ShardInfo(sid, f"shards/{sid}.parquet", list(dict.fromkeys(r["_input"] for r in rows)), n_docs,
                     sha256_bytes(data), len(rows))
    marker = {"info": asdict(info), "plan": _shard_plan_key(slices, model, max_tokens)}
    store.write_json(marker, WORK, "shards", f"{sid}.json")
    return marker["info"]


def _shard_plan_key(slices: list, model: list, max_tokens: int) -> dict:
    """What a shard's bytes depend on beyond the scan: a marker whose key differs is stale and rewritten."""
    return {"slices": [list(map(int, s)) for s in slices], "model": list(model), "max_text_tokens": max_tokens}
