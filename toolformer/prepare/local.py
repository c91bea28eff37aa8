"""Corpus → fixed-size Parquet shards of texts with an immutable manifest (the input of the Ray annotate job).

Documents are chunked here, once: the manifest then knows how many texts each shard holds, so the streaming
annotate job knows a shard is complete when ``n_texts x tools`` annotation rows of it have been written.

Two runners write the same shards (ids, bytes, checksums) and the same manifest for the same inputs:
``prepare_local`` reads the corpus in one loop in this process (tiny corpora, fsspec ``memory://`` inputs,
the reference the Ray job is tested against); ``toolformer.prepare.distributed.prepare_ray`` reads, deduplicates,
chunks and writes in Ray tasks, resumes a stopped run, and is what ``python -m jobs.prepare`` runs.
"""

from __future__ import annotations

import io
from typing import Callable

import pyarrow.parquet as pq
from omegaconf import OmegaConf

from toolformer.config import RunConfig, config_hash, to_dict
from toolformer.corpus import SkipLog, corpus_documents, texts_of
from toolformer.schemas import SHARD, to_table
from toolformer.run.shards import Manifest, ShardInfo, sha256_bytes, shard_name
from toolformer.run.store import Store

RUNNERS = ("local", "ray")


def prepare(cfg: RunConfig, log: Callable[[str], None] = print, runner: str = "local") -> Manifest:
    """Shard the configured corpus with one of ``RUNNERS`` (same shards and manifest either way). ``local`` by
    default here, for callers that prepare a small corpus in passing (the annotate job when no manifest exists,
    bootstrap rounds) and may read ``memory://`` inputs; ``jobs.prepare`` runs ``ray``."""
    if runner == "ray":
        from toolformer.prepare.distributed import prepare_ray

        return prepare_ray(cfg, log)
    if runner != "local":
        raise ValueError(f"prepare runner must be one of {RUNNERS}, got {runner!r}")
    return prepare_local(cfg, log)


def prepare_local(cfg: RunConfig, log: Callable[[str], None] = print) -> Manifest:
    """Read the configured corpus once and write ``shards/shard-NNNNN.parquet`` + ``manifest.json``.

    Deterministic: the same inputs and settings give the same shards (ids, contents, checksums). A run
    directory that already has a manifest is left as it is (and must match, else an error). Memory holds one
    shard's texts at a time, and the id of every document read (duplicates are found with a set of them): at
    scale, use the Ray runner, whose driver holds neither.
    """
    from transformers import AutoTokenizer

    from toolformer.models import resolve_model

    store = Store(cfg.output_dir)
    if (manifest := Manifest.prepared(store, config_hash(cfg), log)) is not None:
        return manifest
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model.name_or_path, cfg.model.cache_dir))
    skips = SkipLog()
    size = max(1, cfg.shards.docs_per_shard)
    shards: list[ShardInfo] = []
    inputs: dict[str, None] = {}
    buf: list[dict] = []
    n_docs = 0

    def flush() -> None:
        sid = shard_name(len(shards))
        out = io.BytesIO()
        pq.write_table(to_table([{**r, "shard_id": sid} for r in buf], SHARD), out)
        data = out.getvalue()
        store.write_bytes(data, "shards", f"{sid}.parquet")
        files = list(dict.fromkeys(r["_input"] for r in buf))
        shards.append(ShardInfo(sid, f"shards/{sid}.parquet", files, n_docs, sha256_bytes(data), len(buf)))
        log(f"  {sid}: {n_docs} documents, {len(buf)} texts")
        buf.clear()

    for doc in corpus_documents(cfg.corpus, skips):
        source = doc.source.rsplit(":", 1)[0]
        inputs.setdefault(source)
        buf.extend({**t, "meta": doc.meta, "_input": source} for t in texts_of(doc, tokenizer, cfg.corpus.max_text_tokens))
        n_docs += 1
        if n_docs >= size:
            flush()
            n_docs = 0
    if buf:
        flush()
    manifest = Manifest(shards=shards, docs_per_shard=size, config_hash=config_hash(cfg), inputs=list(inputs),
                        skips=skips.as_dict())
    store.write_bytes(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))).encode(), "config.yaml")
    manifest.save(store)  # last: a run directory without a manifest is one prepare did not finish
    log(f"{manifest.n_docs} documents ({manifest.n_texts} texts) in {len(shards)} shards; "
        f"skipped {skips.total} records → {store.uri}")
    return manifest
