"""Annotation in one process: the stages in a plain loop over batches of texts.

The Ray job composes the same stage classes with ``map_batches``; this loop is the reference it is tested
against, the engine of the demo and of the benchmark.
"""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import pyarrow as pa

from toolformer.annotate.stages import ExecuteCalls, SampleCalls, ScoreCalls, SelectTexts
from toolformer.config import RunConfig, config_hash, to_dict
from toolformer.corpus import SkipLog, corpus_documents, texts_of
from toolformer.engine import Engine, build_engine
from toolformer.report import funnel
from toolformer.schemas import ANNOTATIONS, TEXTS, conform, to_table
from toolformer.run.store import Store


def load_texts(cfg: RunConfig, tokenizer) -> tuple[list[dict], dict]:
    """Read the corpus, chunk it; every record is a text source, a counted skip, or past the limit."""
    skips = SkipLog()
    rows, n_docs = [], 0
    for doc in corpus_documents(cfg.corpus, skips):
        n_docs += 1
        rows.extend(texts_of(doc, tokenizer, cfg.corpus.max_text_tokens))
    stats = {"docs_read": n_docs, "docs_skipped": skips.as_dict(), "texts": len(rows)}
    return rows, stats


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

    def __call__(self, texts: pa.Table) -> pa.Table:
        """TEXTS rows → WORK rows (one per text and tool)."""
        batch = texts
        for name, stage in self.stages:
            t0 = time.perf_counter()
            batch = stage(batch)
            self.seconds[name] += time.perf_counter() - t0
        return batch


def annotate_texts(
    texts: pa.Table, cfg: RunConfig, engine: Engine, progress: Callable[[int, int], None] | None = None
) -> tuple[pa.Table, dict[str, float]]:
    """Every text through the stages, ``annotate.batch_size`` texts at a time; WORK rows in text order."""
    annotator = Annotator(cfg, engine)
    out: list[pa.Table] = []
    size = max(1, cfg.annotate.batch_size)
    try:
        for start in range(0, texts.num_rows, size):
            out.append(annotator(texts.slice(start, size)))
            if progress:
                progress(min(start + size, texts.num_rows), texts.num_rows)
        return (pa.concat_tables(out) if out else annotator.stages[0][1](texts)), dict(annotator.seconds)
    finally:
        for _, stage in annotator.stages:  # the tool worker processes end with the loop, not with the GC
            close = getattr(stage, "close", None)
            if close is not None:
                close()


def run_metadata(cfg: RunConfig, engine: Engine) -> dict:
    return {
        "config_hash": config_hash(cfg),
        "config": to_dict(cfg),
        # Filtering decisions come from one engine in one dtype; a run records which.
        "engine": engine.describe(),
        "no_result_form": cfg.annotate.no_result_form,
        "call_syntax": cfg.annotate.call_syntax,
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
        table = to_table(texts, TEXTS)
        Store(out_dir).write_table(table, "texts.parquet")
        from toolformer.console import Progress

        bar = Progress(table.num_rows, "annotating", "texts")
        work, seconds = annotate_texts(table, cfg, engine, progress=lambda done, total: bar.update(done - bar.n))
        bar.close()
        annotations = conform(work, ANNOTATIONS)
        Store(out_dir).write_table(annotations, "annotations.parquet")
        stats = {
            **run_metadata(cfg, engine),
            "corpus": corpus_stats,
            "funnel": funnel(work),
            "docs_skipped": corpus_stats["docs_skipped"],
            "seconds": {"engine_start": t_engine, **seconds, "total": time.perf_counter() - t0},
        }
        tmp = out_dir / ".stats.json.tmp"
        tmp.write_text(json.dumps(stats, indent=2, default=str))
        tmp.replace(out_dir / "stats.json")
        from toolformer.cstar.inspection import write_report

        write_report(str(out_dir), seed=cfg.seed)  # report.md: the kept calls in context
        return stats
    finally:
        if own_engine:
            engine.close()


