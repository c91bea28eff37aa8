"""The annotation stages as Ray Data actor pools over Arrow batches.

Each actor wraps a stage class of ``stages.py`` unchanged: the constructor builds it and runs its setup
(loads the engine, the tools, the index) once, ``__call__`` maps an Arrow batch of the WORK schema to the
next. LM stages (positions + sampling, scoring) hold a vLLM engine each and run with ``num_gpus=1`` on a
cluster; selection and tool execution are CPU pools. Log-probs never leave an LM actor: scoring reduces
them to the three weighted losses per candidate, and its output drops the token ids (SCORED schema).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from toolformer.annotate.stages import ExecuteCalls, SampleCalls, ScoreCalls, SelectTexts, rows_of
from toolformer.config import RunConfig, StageResources
from toolformer.corpus import Document
from toolformer.faults import fire_once
from toolformer.schemas import SCORED, TEXTS, WORK, to_table

STAGES = {"sample": SampleCalls, "execute": ExecuteCalls, "score": ScoreCalls}


def _columns(table: pa.Table) -> dict[str, list]:
    return {name: table.column(name).to_pylist() for name in table.column_names}


def maybe_inject_fault(stage: str) -> None:
    """Fault-injection hook for the tests of recovery (never set in a real run): with
    ``TOOLFORMER_FAULT_KILL_STAGE=<stage>`` and ``TOOLFORMER_FAULT_ONCE_FILE=<path>``, the first actor of that
    stage to see a batch creates the file and dies as a killed process would (no cleanup, no exception)."""
    if os.environ.get("TOOLFORMER_FAULT_KILL_STAGE") == stage and fire_once(
        os.environ.get("TOOLFORMER_FAULT_ONCE_FILE"), f"killed in stage {stage}"
    ):
        os._exit(137)


class ChunkAndSelect:
    """Documents (DOCS) → texts → one WORK row per text and tool with its heuristic decision (CPU)."""

    def __init__(self, cfg: RunConfig):
        from transformers import AutoTokenizer

        from toolformer.engine.models import resolve_model

        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model.name_or_path, cfg.model.cache_dir))
        self.select = SelectTexts(cfg)

    def __call__(self, table: pa.Table) -> pa.Table:
        from toolformer.annotate.pipeline import texts_of

        maybe_inject_fault("select")
        texts = []
        fields = Document.__dataclass_fields__
        for row in table.to_pylist():
            doc = Document(**{k: row[k] for k in fields})
            texts += [{**t, "shard_id": row["shard_id"]} for t in texts_of(doc, self.tokenizer, self.cfg.corpus.max_text_tokens)]
        if not texts:
            return WORK.empty_table()
        out = self.select({c: [t.get(c) for t in texts] for c in [*TEXTS.names, "shard_id"]})
        return to_table(rows_of(out), WORK)


class StageActor:
    """A stage of ``stages.py`` in a Ray actor: set up once, then Arrow batch → Arrow batch."""

    def __init__(self, cfg: RunConfig, stage: str):
        self.name = stage
        self.stage = STAGES[stage](cfg)
        self.stage.setup()
        self.schema = SCORED if stage == "score" else WORK

    def __call__(self, table: pa.Table) -> pa.Table:
        maybe_inject_fault(self.name)
        if table.num_rows == 0:
            return self.schema.empty_table()
        return to_table(rows_of(self.stage(_columns(table))), self.schema)

    def __del__(self) -> None:
        engine = getattr(getattr(self, "stage", None), "engine", None)
        if engine is not None:
            engine.close()


def _pool_args(res: StageResources, default_batch: int) -> dict[str, Any]:
    import ray.data

    size = max(1, res.actors)
    args: dict[str, Any] = dict(
        compute=ray.data.ActorPoolStrategy(min_size=size, max_size=max(size, res.max_actors or size)),
        batch_size=res.batch_size or default_batch,
        batch_format="pyarrow",
        num_cpus=res.num_cpus,
    )
    if res.num_gpus:
        args["num_gpus"] = res.num_gpus
    if res.resources:
        args["resources"] = dict(res.resources)
    return args


def _read_shard(path: str, filesystem=None) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(path, filesystem=filesystem)


def annotation_dataset(cfg: RunConfig, shard_paths: list[str], filesystem=None):
    """The lazy Ray Dataset: shard files → select → sample → execute → score (SCORED rows)."""
    import ray
    import ray.data

    r = cfg.ray
    rows_per_batch = max(1, cfg.annotate.batch_size) * max(1, len(cfg.annotate.tools))
    # Each shard read by a small task of our own: read_parquet's file-listing step asks a whole CPU, which
    # pools packed onto a small node leave no room for (the run then waits forever).
    read = ray.remote(_read_shard).options(num_cpus=r.io_num_cpus)
    ds = ray.data.from_arrow_refs([read.remote(p, filesystem) for p in shard_paths])
    # Documents per select call: a batch of texts' worth (a document is usually one or two texts).
    ds = ds.map_batches(ChunkAndSelect, fn_constructor_args=(cfg,), **_pool_args(r.select, cfg.annotate.batch_size))
    for name in ("sample", "execute", "score"):
        ds = ds.map_batches(StageActor, fn_constructor_args=(cfg, name), **_pool_args(getattr(r, name), rows_per_batch))
    return ds


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
