"""Corpus → fixed-size Parquet shards with an immutable manifest (the input of the Ray annotate job)."""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import Callable

import pyarrow.parquet as pq
from omegaconf import OmegaConf

from toolformer.config import RunConfig, config_hash, to_dict
from toolformer.corpus import Document, SkipLog, read_documents
from toolformer.schemas import DOCS, to_table
from toolformer.shards import Manifest, ShardInfo, Store, sha256_bytes, shard_name


def _input_of(doc: Document) -> str:
    return doc.source.rsplit(":", 1)[0]


def prepare(cfg: RunConfig, log: Callable[[str], None] = print) -> Manifest:
    """Read the configured corpus once and write ``shards/shard-NNNNN.parquet`` + ``manifest.json``.

    Deterministic: the same inputs and settings give the same shards (ids, contents, checksums). A run
    directory that already has a manifest is left as it is (and must match, else an error).
    """
    store = Store(cfg.output_dir)
    if store.exists("manifest.json"):
        manifest = Manifest.load(store)
        if manifest.config_hash != config_hash(cfg):
            log(f"note: {store.uri} was prepared with config {manifest.config_hash}; keeping its shards")
        return manifest
    c = cfg.corpus
    skips = SkipLog()
    docs = read_documents(
        c.paths, fmt=c.format, skips=skips, limit=c.limit, max_doc_chars=c.max_doc_chars,
        min_text_chars=c.min_text_chars, embedded_lang=c.embedded_lang, embedded_date=c.embedded_date,
    )
    size = max(1, cfg.shards.docs_per_shard)
    shards: list[ShardInfo] = []
    inputs: dict[str, None] = {}
    buf: list[dict] = []

    def flush() -> None:
        sid = shard_name(len(shards))
        table = to_table([{**r, "shard_id": sid} for r in buf], DOCS)
        out = io.BytesIO()
        pq.write_table(table, out)
        data = out.getvalue()
        store.write_bytes(data, "shards", f"{sid}.parquet")
        files = list(dict.fromkeys(r["_input"] for r in buf))
        shards.append(ShardInfo(sid, f"shards/{sid}.parquet", files, len(buf), sha256_bytes(data)))
        log(f"  {sid}: {len(buf)} documents")
        buf.clear()

    for doc in docs:
        row = asdict(doc)
        row["_input"] = _input_of(doc)
        inputs.setdefault(row["_input"])
        buf.append(row)
        if len(buf) >= size:
            flush()
    if buf:
        flush()
    manifest = Manifest(shards=shards, docs_per_shard=size, config_hash=config_hash(cfg), inputs=list(inputs),
                        skips=skips.as_dict())
    store.write_bytes(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))).encode(), "config.yaml")
    manifest.save(store)  # last: a run directory without a manifest is one prepare did not finish
    log(f"{manifest.n_docs} documents in {len(shards)} shards; skipped {skips.total} records → {store.uri}")
    return manifest
