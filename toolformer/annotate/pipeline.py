"""Annotation in one process: the stages in a plain loop over batches of texts.

The Ray job composes the same stage classes with ``map_batches``; this loop is the reference it is tested
against, the engine of the demo and of the benchmark.
"""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from toolformer.annotate.stages import ExecuteCalls, SampleCalls, ScoreCalls, SelectTexts, batch_of, rows_of
from toolformer.config import RunConfig, config_hash, to_dict
from toolformer.corpus import Document, SkipLog, TextChunk, chunk_document, read_documents
from toolformer.engine import Engine, build_engine
from toolformer.report import funnel
from toolformer.schemas import ANNOTATIONS, TEXTS, to_table, write_parquet_atomic


def load_texts(cfg: RunConfig, tokenizer) -> tuple[list[dict], dict]:
    """Read the corpus, chunk it; every record is a text source, a counted skip, or past the limit."""
    skips = SkipLog()
    c = cfg.corpus
    docs = read_documents(
        c.paths,
        fmt=c.format,
        skips=skips,
        limit=c.limit,
        max_doc_chars=c.max_doc_chars,
        min_text_chars=c.min_text_chars,
        embedded_lang=c.embedded_lang,
        embedded_date=c.embedded_date,
    )
    rows, n_docs = [], 0
    for doc in docs:
        n_docs += 1
        rows.extend(texts_of(doc, tokenizer, c.max_text_tokens))
    stats = {"docs_read": n_docs, "docs_skipped": skips.as_dict(), "texts": len(rows)}
    return rows, stats


def texts_of(doc: Document, tokenizer, max_tokens: int) -> list[dict]:
    """A document's texts (TEXTS rows). A document that chunks to nothing still yields one (empty) text, so
    that it has annotation rows (status ``empty``) and stays accounted for."""
    chunks = chunk_document(doc, tokenizer, max_tokens) or [
        TextChunk(f"{doc.doc_id}#0", doc.doc_id, 0, doc.url, doc.date, doc.title, "")
    ]
    return [{**asdict(chunk), "source": doc.source} for chunk in chunks]


class Annotator:
    """select → sample → execute → score, batch by batch, with the time spent in each stage."""

    def __init__(self, cfg: RunConfig, engine: Engine):
        self.cfg = cfg
        self.stages = [
            ("select", SelectTexts(cfg)),
            ("sample", SampleCalls(cfg, engine)),
            ("execute", ExecuteCalls(cfg)),
            ("score", ScoreCalls(cfg, engine)),
        ]
        self.seconds: dict[str, float] = defaultdict(float)

    def __call__(self, text_rows: list[dict]) -> list[dict]:
        batch = batch_of(text_rows, TEXTS.names)
        for name, stage in self.stages:
            t0 = time.perf_counter()
            batch = stage(batch)
            self.seconds[name] += time.perf_counter() - t0
        return rows_of(batch)


def annotate_texts(
    text_rows: list[dict], cfg: RunConfig, engine: Engine, progress: Callable[[int, int], None] | None = None
) -> tuple[list[dict], dict[str, float]]:
    annotator = Annotator(cfg, engine)
    out: list[dict] = []
    size = max(1, cfg.annotate.batch_size)
    for start in range(0, len(text_rows), size):
        out.extend(annotator(text_rows[start : start + size]))
        if progress:
            progress(min(start + size, len(text_rows)), len(text_rows))
    return out, dict(annotator.seconds)


def run_metadata(cfg: RunConfig, engine: Engine) -> dict:
    return {
        "config_hash": config_hash(cfg),
        "config": to_dict(cfg),
        # Filtering decisions come from one engine in one dtype; a run records which.
        "engine": engine.describe(),
        "no_result_form": cfg.annotate.no_result_form,
        "python": platform.python_version(),
    }


def run_annotate(cfg: RunConfig, engine: Engine | None = None, log: Callable[[str], None] = print) -> dict:
    """Annotate the configured corpus into ``cfg.output_dir``; returns the run's stats."""
    out_dir = Path(cfg.output_dir)
    own_engine = engine is None
    t0 = time.perf_counter()
    engine = engine or build_engine(cfg)
    t_engine = time.perf_counter() - t0
    try:
        texts, corpus_stats = load_texts(cfg, engine.tokenizer)
        log(f"{corpus_stats['docs_read']} documents → {len(texts)} texts; "
            f"skipped {corpus_stats['docs_skipped']['total']} records")
        write_parquet_atomic(to_table(texts, TEXTS), out_dir / "texts.parquet")
        rows, seconds = annotate_texts(
            texts, cfg, engine, progress=lambda done, total: log(f"  annotated {done}/{total} texts")
        )
        write_parquet_atomic(to_table(rows, ANNOTATIONS), out_dir / "annotations.parquet")
        stats = {
            **run_metadata(cfg, engine),
            "corpus": corpus_stats,
            "funnel": funnel(rows),
            "seconds": {"engine_start": t_engine, **seconds, "total": time.perf_counter() - t0},
        }
        tmp = out_dir / ".stats.json.tmp"
        tmp.write_text(json.dumps(stats, indent=2, default=str))
        tmp.replace(out_dir / "stats.json")
        return stats
    finally:
        if own_engine:
            engine.close()


