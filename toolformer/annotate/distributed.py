"""The annotation stages as one streaming Ray Data pipeline over Arrow batches.

    shards (manifest) → read (task per shard) → small blocks → select → sample → execute → score → stage-write

Each actor wraps a stage class of ``stages.py`` unchanged: the constructor builds it and runs its setup (loads
the engine, the tools, the index) once per actor for the whole run; ``__call__`` maps an Arrow batch to the next.
LM stages (positions + sampling, scoring) hold a vLLM engine each and run with GPUs on a cluster; selection and
tool execution are CPU pools. Shards are cut into blocks of a batch of texts right after reading, so that every
pool has work at once. The last step writes each scored batch under its shard's staging folder and passes on
only a few counts per shard: the driver commits a shard once all its rows are written (``ray_job.py``).

A stage that fails on a batch is retried on each shard's rows of it alone; a shard whose rows still fail (or
that cannot be read) continues as one error row, which the later stages pass through and the driver records.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolformer.annotate.stages import ExecuteCalls, SampleCalls, SampleExecuteScore, ScoreCalls, SelectTexts
from toolformer.annotate.telemetry import ActorTelemetry
from toolformer.arrow import empty_lists
from toolformer.config import RunConfig, StageResources
from toolformer.faults import fault_point
from toolformer.schemas import SHARD, STAGED, WORK, conform
from toolformer.shards import Store, sha256_bytes

STAGES = {"select": SelectTexts, "sample": SampleCalls, "execute": ExecuteCalls, "score": ScoreCalls,
          "lm": SampleExecuteScore}
READ = pa.schema([*SHARD, ("error", pa.string())])
SUMMARY = pa.schema([("shard_id", pa.string()), ("rows", pa.int64()), ("error", pa.string())])
FATAL = "fatal: "  # an error that no retry can fix (the shard's bytes differ from the manifest): quarantine at once
GIB = 1024**3


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def error_rows(shard_ids: list[str], errors: list[str], schema: pa.Schema = WORK) -> pa.Table:
    """One row per failed shard: only ``shard_id`` and ``error`` set."""
    n = len(shard_ids)
    cols = {}
    for f in schema:
        if f.name == "shard_id":
            cols[f.name] = pa.array(shard_ids, pa.string())
        elif f.name == "error":
            cols[f.name] = pa.array(errors, pa.string())
        elif pa.types.is_list(f.type):
            cols[f.name] = empty_lists(n, f.type)
        else:
            cols[f.name] = pa.nulls(n, f.type)
    return pa.table(cols, schema=schema)


def read_shards(batch: pa.Table, run_uri: str, verify: bool) -> pa.Table:
    """Shard references (shard_id, path, sha256) → their texts (READ rows), or an error row per bad shard."""
    store = Store(run_uri)
    out = []
    for sid, path, digest in zip(*(batch.column(c).to_pylist() for c in ("shard_id", "path", "sha256"))):
        try:
            data = store.read_bytes(path)
            if verify and sha256_bytes(data) != digest:
                raise ValueError(f"{FATAL}checksum mismatch: {path} is {sha256_bytes(data)}, manifest says {digest}")
            table = conform(pq.read_table(pa.BufferReader(data)), SHARD)
            out.append(table.append_column("error", pa.nulls(table.num_rows, pa.string())))
        except Exception as exc:  # noqa: BLE001 - one bad shard must not stop the others
            msg = str(exc) if str(exc).startswith(FATAL) else describe_error(exc)
            out.append(error_rows([sid], [msg], READ))
    return pa.concat_tables(out) if out else READ.empty_table()


class StageActor:
    """A stage of ``stages.py`` in a Ray actor: set up once per run, then Arrow batch → Arrow batch."""

    def __init__(self, cfg: RunConfig, stage: str, sink_name: str | None = None):
        started = time.time()
        self.name = stage
        self.stage = STAGES[stage](cfg)
        if hasattr(self.stage, "setup"):
            self.stage.setup()
        self.telemetry = ActorTelemetry(stage, sink_name, started)
        self.telemetry.ready()

    def __call__(self, table: pa.Table) -> pa.Table:
        fault_point("stage", stage=self.name)
        t0 = time.time()
        failed = table.column("error").is_valid().to_numpy(zero_copy_only=False)
        passed = table.filter(pa.array(failed))
        if self.name == "select" and passed.num_rows:  # READ error rows become WORK error rows
            passed = error_rows(passed.column("shard_id").to_pylist(), passed.column("error").to_pylist())
        good = table.filter(pa.array(~failed))
        parts = [self._run(good)] if good.num_rows else []
        parts += [passed] if passed.num_rows else []
        out = pa.concat_tables(parts) if parts else WORK.empty_table()
        self.telemetry.batch(t0, time.time(), table.num_rows)
        return out

    def _run(self, table: pa.Table) -> pa.Table:
        try:
            return self.stage(table)
        except Exception as exc:  # noqa: BLE001 - find the shard that fails: each one's rows alone
            shards = pc.unique(table.column("shard_id")).to_pylist()
            if len(shards) == 1:
                return error_rows(shards, [describe_error(exc)])
            out = []
            for sid in shards:
                rows = table.filter(pc.equal(table.column("shard_id"), sid))
                try:
                    out.append(self.stage(rows))
                except Exception as exc1:  # noqa: BLE001
                    out.append(error_rows([sid], [describe_error(exc1)]))
            return pa.concat_tables(out)

    def __del__(self) -> None:
        engine = getattr(getattr(self, "stage", None), "engine", None)
        if engine is not None:
            engine.close()


def stage_write(batch: pa.Table, run_uri: str, staging: str) -> pa.Table:
    """Write a scored batch's rows under each shard's staging folder; return (shard_id, rows, error) per shard.

    File names come from the rows' keys, so a retried task rewrites the same file instead of adding one."""
    store = Store(run_uri)
    sids, counts, errors = [], [], []
    for sid in pc.unique(batch.column("shard_id")).to_pylist():
        rows = batch.filter(pc.equal(batch.column("shard_id"), sid))
        err = rows.column("error").drop_null()
        if len(err):
            sids.append(sid), counts.append(0), errors.append(err[0].as_py())
            continue
        keys = "\n".join(sorted(f"{t}\x1f{u}" for t, u in zip(rows.column("text_id").to_pylist(),
                                                              rows.column("tool").to_pylist())))
        name = hashlib.sha1(keys.encode()).hexdigest()[:20]
        store.write_table(conform(rows, STAGED), staging, sid, f"{name}.parquet")
        sids.append(sid), counts.append(rows.num_rows), errors.append(None)
    return pa.table({"shard_id": sids, "rows": counts, "error": errors}, schema=SUMMARY)


def _pool_args(res: StageResources, default_batch: int, cfg: RunConfig | None = None) -> dict[str, Any]:
    """A pool's ``map_batches`` arguments; with ``cfg`` (an LM pool), a placement group per actor for TP/PP."""
    import ray.data

    from toolformer.annotate.placement import lm_pool_args

    size = max(1, res.actors)
    args: dict[str, Any] = dict(
        compute=ray.data.ActorPoolStrategy(min_size=size, max_size=max(size, res.max_actors or size)),
        batch_size=res.batch_size or default_batch,
        batch_format="pyarrow",
        num_cpus=res.num_cpus,
        memory=res.memory_gb * GIB,
    )
    if res.num_gpus:
        args["num_gpus"] = res.num_gpus
    if res.resources:
        args["resources"] = dict(res.resources)
    if cfg is not None:  # the GPUs (and custom resources) of a parallel engine are the placement group's
        for key, value in lm_pool_args(cfg, res).items():
            if value is None:
                args.pop(key, None)
            else:
                args[key] = value
    return args


def annotation_dataset(cfg: RunConfig, run_uri: str, shards: list, staging: str, sink_name: str | None = None):
    """The lazy Ray Dataset of one pass: every given shard through every stage; yields SUMMARY rows."""
    import ray.data

    r = cfg.ray
    io = dict(batch_format="pyarrow", num_cpus=r.io_num_cpus, memory=r.io_memory_gb * GIB)
    texts_per_batch = max(1, cfg.annotate.batch_size)
    rows_per_batch = texts_per_batch * max(1, len(cfg.annotate.tools))
    refs = [{"shard_id": s.shard_id, "path": s.path, "sha256": s.sha256} for s in shards]
    ds = ray.data.from_items(refs, override_num_blocks=max(1, len(refs)))
    # A shard is one block: an actor takes it whole and works through it in batches of `batch_size`. No
    # `repartition` into smaller blocks: its tasks each ask a whole CPU, which LM actors holding the rest of a
    # small node never leave (the run stalled), and shards are sized as the unit of work anyway.
    ds = ds.map_batches(read_shards, batch_size=1, fn_kwargs=dict(run_uri=run_uri, verify=cfg.shards.verify_checksums), **io)
    ds = ds.map_batches(StageActor, fn_constructor_args=(cfg, "select", sink_name), **_pool_args(r.select, texts_per_batch))
    for name in (("lm",) if r.fuse_lm else ("sample", "execute", "score")):
        lm = cfg if name != "execute" else None
        ds = ds.map_batches(StageActor, fn_constructor_args=(cfg, name, sink_name),
                            **_pool_args(getattr(r, name), rows_per_batch, lm))
    return ds.map_batches(stage_write, batch_size=None, fn_kwargs=dict(run_uri=run_uri, staging=staging), **io)


def shard_row_counts(shards: list, n_tools: int) -> dict[str, int]:
    """Annotation rows a complete shard has: one per text and tool."""
    return {s.shard_id: int(np.int64(s.n_texts) * n_tools) for s in shards}
