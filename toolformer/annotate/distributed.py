"""The annotation stages as one streaming Ray Data pipeline over Arrow batches.

    shards (manifest) → read (task per shard) → select → sample → execute → score → stage-write

Each actor wraps a stage class of ``stages.py`` unchanged: the constructor builds it and runs its setup (loads
the engine, the tools, the index) once per actor for the whole run; ``__call__`` maps an Arrow batch to the next.
LM stages (positions + sampling, scoring) hold a vLLM engine each and run with GPUs on a cluster; selection and
tool execution are CPU pools. A shard is one block and one task in every pool (the unit of retry and of
blame); an actor works through it in engine-sized chunks. The last step writes each scored batch under its shard's staging folder and passes on
only a few counts per shard: the driver commits a shard once all its rows are written (``ray_job.py``).

A stage that raises on a shard's rows turns them into one error row, which the later stages pass through and the
driver charges to that shard. A batch that kills its actor is retried (``ray.batch_attempts``) on the restarted
actor, then dropped: the driver finds the shard incomplete and charges it, with the cause (``failures.py``).
"""

from __future__ import annotations

import faulthandler
import hashlib
import socket
import time
import traceback
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolformer.annotate.stages import ExecuteCalls, SampleCalls, SampleExecuteScore, ScoreCalls, SelectTexts
from toolformer.annotate.telemetry import ActorTelemetry, StageClock
from toolformer.arrow import empty_lists
from toolformer.config import RayConfig, RunConfig, StageResources
from toolformer.annotate.failures import EngineCheck, InflightRecord, SetupWatchdog, Watchdog
from toolformer.run.faults import LM_STAGES, batch_fault, fault_point, setup_fault
from toolformer.schemas import SHARD, STAGED, WORK, conform
from toolformer.run.shards import sha256_bytes
from toolformer.run.store import Store

STAGES = {"select": SelectTexts, "sample": SampleCalls, "execute": ExecuteCalls, "score": ScoreCalls,
          "lm": SampleExecuteScore}
READ = pa.schema([*SHARD, ("error", pa.string())])
SUMMARY = pa.schema([("shard_id", pa.string()), ("rows", pa.int64()), ("error", pa.string())])
FATAL = "fatal: "  # an error that no retry can fix (the shard's bytes differ from the manifest): quarantine at once
GIB = 1024**3


def describe_error(exc: BaseException, stage: str | None = None) -> str:
    """The error's first line, where it happened (``node_faults.WHERE``: a full disk is its node's), its traceback."""
    from toolformer.annotate.failures import _node_id

    where = f"[on node {_node_id() or '?'} host {socket.gethostname()} stage {stage or '?'}]\n"
    return f"{type(exc).__name__}: {exc}\n" + where + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


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
    """A stage of ``stages.py`` in a Ray actor: set up once per run, then Arrow batch → Arrow batch.

    A batch is one shard's rows (every pool runs ``batch_size=None`` with one task in flight per actor), which
    the actor works through in chunks of ``chunk_rows``: an actor that dies takes exactly one shard with it.
    LM actors run a watchdog (``ray.lm_batch_timeout_s``) over each engine call (the stage's ``StageClock``), not
    over tool calls; every actor notes which shard it computes (``failures.InflightRecord``) so the driver can
    charge a death to that shard with its cause. Telemetry splits each actor's time into engine, tool, other
    and idle time (``telemetry.summarize``)."""

    def __init__(self, cfg: RunConfig, stage: str, sink_name: str | None = None, run_uri: str | None = None,
                 staging: str | None = None, chunk_rows: int = 0):
        started = time.time()
        faulthandler.enable()  # a segfault in a native library leaves its traceback in the actor's log
        self.name = stage
        self.chunk_rows = max(0, int(chunk_rows))
        self.telemetry = ActorTelemetry(stage, sink_name, started)
        self.telemetry.setting_up()  # heartbeats while the engine loads: set-up is progress, not silence
        # bounded: an engine that hangs in set-up ends this actor, which Ray replaces (a restart)
        bound = SetupWatchdog(cfg.ray.lm_setup_timeout_s if stage in LM_STAGES else None, stage, run_uri, staging)
        try:
            setup_fault(stage)
            self.stage = STAGES[stage](cfg)
            if hasattr(self.stage, "setup"):
                self.stage.setup()
        except BaseException as exc:  # the node's ledger hears of it (blame.note_setups), then Ray restarts the actor
            bound.failed(exc)
            raise
        bound.done()
        self.inflight = InflightRecord(run_uri, staging, stage)
        # the stage's clock: engine and tool time; the watchdog is told about engine calls only
        self.clock: StageClock = getattr(self.stage, "clock", None) or StageClock()
        self.watchdog = Watchdog(cfg.ray.lm_batch_timeout_s, self.inflight) if stage in LM_STAGES else None
        if self.watchdog is not None:
            self.clock.watch(self.watchdog)
        # a dead engine ends this actor (EngineCheck): the death path, never error rows for healthy shards
        self.engine_check = EngineCheck(getattr(self.stage, "engine", None), self.inflight, self.clock,
                                        cfg.ray.lm_dead_after_errors) if stage in LM_STAGES else None
        self.telemetry.ready()

    def __call__(self, table: pa.Table) -> pa.Table:
        fault_point("stage", stage=self.name)
        t0 = time.time()
        shards = pc.unique(table.column("shard_id")).to_pylist() if table.num_rows else []
        self.inflight.begin(shards)
        try:
            if self.watchdog is not None:  # a stalled batch stands for a hung engine: the watchdog times it
                self.watchdog.begin("stall fault")
            try:
                batch_fault(self.name, shards)
            finally:
                if self.watchdog is not None:
                    self.watchdog.end()
            failed = table.column("error").is_valid().to_numpy(zero_copy_only=False)
            passed = table.filter(pa.array(failed))
            if self.name == "select" and passed.num_rows:  # READ error rows become WORK error rows
                passed = error_rows(passed.column("shard_id").to_pylist(), passed.column("error").to_pylist())
            good = table.filter(pa.array(~failed))
            parts = self._chunks(good) if good.num_rows else []
            parts += [passed] if passed.num_rows else []
            out = pa.concat_tables(parts) if parts else WORK.empty_table()
        finally:
            self.inflight.end()
        self.telemetry.batch(t0, time.time(), table.num_rows, self.clock, self._tool_workers())
        return out

    def _tool_workers(self) -> dict | None:
        """The tool workers' pids, RSS and counters (restarts, ended calls), for the telemetry; never raises."""
        execute = self.stage if isinstance(self.stage, ExecuteCalls) else getattr(self.stage, "execute", None)
        try:
            return execute.describe() if execute is not None else None
        except Exception:  # noqa: BLE001 - telemetry must never stop a stage
            return None

    def _chunks(self, table: pa.Table) -> list[pa.Table]:
        """The stage over ``chunk_rows`` rows at a time (its engine batch), never splitting a text's rows."""
        n = self.chunk_rows or table.num_rows
        if table.num_rows <= n:
            return [self._run(table)]
        return [self._run(table.slice(i, n)) for i in range(0, table.num_rows, n)]

    def _run(self, table: pa.Table) -> pa.Table:
        try:
            out = self.stage(table)
        except Exception as exc:  # noqa: BLE001 - find the shard that fails: each one's rows alone
            if self.engine_check is not None:
                self.engine_check.failed(exc)  # ends this process when the engine, not the input, is at fault
            return self._run_apart(table, exc)
        else:
            if self.engine_check is not None:
                self.engine_check.worked()
            return out
        finally:
            self.telemetry.progress(self.clock)  # a chunk done: a long batch shows it is moving

    def _run_apart(self, table: pa.Table, exc: Exception) -> pa.Table:
        """The chunk failed: each of its shards' rows alone, so that only the shard that fails is charged."""
        shards = pc.unique(table.column("shard_id")).to_pylist()
        if len(shards) == 1:
            return error_rows(shards, [describe_error(exc, self.name)])
        out = []
        for sid in shards:
            rows = table.filter(pc.equal(table.column("shard_id"), sid))
            try:
                out.append(self.stage(rows))
            except Exception as exc1:  # noqa: BLE001
                out.append(error_rows([sid], [describe_error(exc1, self.name)]))
        return pa.concat_tables(out)

    def __del__(self) -> None:
        stage = getattr(self, "stage", None)
        close = getattr(stage, "close", None)
        if close is not None:  # the tool workers (they also end with this process: PDEATHSIG)
            try:
                close()
            except Exception:  # noqa: BLE001
                pass
        engine = getattr(stage, "engine", None)
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


def _pool_args(res: StageResources, r: RayConfig, cfg: RunConfig | None = None,
               avoid: dict[str, str] | None = None) -> dict[str, Any]:
    """A pool's ``map_batches`` arguments; with ``cfg`` (an LM pool), a placement group per actor for TP/PP.

    One shard per task and one task in flight per actor: an actor that dies (OOM, segfault, the watchdog) costs
    the retry of exactly one shard, not of every batch queued on it. Restarts and retries are finite (Ray Data's
    defaults retry a batch that kills its actor forever)."""
    import ray.data

    from toolformer.annotate.placement import lm_pool_args

    size = max(1, res.actors)
    args: dict[str, Any] = dict(
        compute=ray.data.ActorPoolStrategy(min_size=size, max_size=max(size, res.max_actors or size),
                                           max_tasks_in_flight_per_actor=1),
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=res.num_cpus,
        memory=res.memory_gb * GIB,
        max_restarts=max(0, r.max_actor_restarts),
        max_task_retries=max(0, r.batch_attempts - 1),
    )
    if res.num_gpus:
        args["num_gpus"] = res.num_gpus
    if res.resources:
        args["resources"] = dict(res.resources)
    if avoid:  # the run's excluded nodes (blame.NodeLedger.selector)
        args["label_selector"] = dict(avoid)
    if cfg is not None:  # the GPUs (and custom resources) of a parallel engine are the placement group's
        for key, value in lm_pool_args(cfg, res).items():
            if value is None:
                args.pop(key, None)
            else:
                args[key] = value
    return args


def configure_data_context(r: RayConfig) -> None:
    """Ray Data settings of the run: a block whose task failed ``batch_attempts`` times is dropped and the
    execution goes on (the driver charges its shard); an actor whose set-up fails a few times in a row is an
    error of the execution itself (a bad model path, a missing index) and stops the run.

    With errored blocks tolerated, a pool whose actors all spent their restarts makes Ray Data wait forever (it
    assumes actors restart without end): the driver's ``supervise.PassWatch`` sees that and cuts the pass, so
    Ray Data's own no-progress guard is off (it cannot tell a long engine batch from a hang)."""
    from ray.data import DataContext

    from toolformer.annotate.supervise import install_capture

    ctx = DataContext.get_current()
    ctx.max_errored_blocks = -1
    ctx.max_consecutive_actor_init_deaths = 2
    ctx.execution_no_progress_timeout_s = -1
    install_capture(ctx)


def pool_names(cfg: RunConfig) -> list[str]:
    """The actor pools of a pass, in pipeline order (what the driver names in its messages: ``ray.<name>``)."""
    return ["select", *(("lm",) if cfg.ray.fuse_lm else ("sample", "execute", "score"))]


def annotation_dataset(cfg: RunConfig, run_uri: str, shards: list, staging: str, sink_name: str | None = None,
                       avoid: dict[str, str] | None = None):
    """The lazy Ray Dataset of one pass: every given shard through every stage; yields SUMMARY rows. ``avoid``:
    a label selector that keeps every task and actor off the run's excluded nodes."""
    import ray.data

    r = cfg.ray
    configure_data_context(r)
    io = dict(batch_format="pyarrow", num_cpus=r.io_num_cpus, memory=r.io_memory_gb * GIB,
              max_retries=max(0, r.batch_attempts - 1), **({"label_selector": dict(avoid)} if avoid else {}))
    texts_per_batch = max(1, cfg.annotate.batch_size)
    rows_per_batch = texts_per_batch * max(1, len(cfg.annotate.tools))
    refs = [{"shard_id": s.shard_id, "path": s.path, "sha256": s.sha256} for s in shards]
    ds = ray.data.from_items(refs, override_num_blocks=max(1, len(refs)))
    # A shard is one block and one task in every pool: an actor takes it whole and works through it in chunks
    # of `batch_size` (its engine batches). No `repartition` into smaller blocks: its tasks each ask a whole
    # CPU, which LM actors holding the rest of a small node never leave (the run stalled).
    ds = ds.map_batches(read_shards, batch_size=1, fn_kwargs=dict(run_uri=run_uri, verify=cfg.shards.verify_checksums), **io)

    def pool(name: str, default_chunk: int, lm: RunConfig | None):
        res = getattr(r, name)
        return dict(fn_constructor_args=(cfg, name, sink_name, run_uri, staging, res.batch_size or default_chunk),
                    **_pool_args(res, r, lm, avoid))

    ds = ds.map_batches(StageActor, **pool("select", texts_per_batch, None))
    for name in (("lm",) if r.fuse_lm else ("sample", "execute", "score")):
        ds = ds.map_batches(StageActor, **pool(name, rows_per_batch, cfg if name != "execute" else None))
    return ds.map_batches(stage_write, batch_size=None, fn_kwargs=dict(run_uri=run_uri, staging=staging), **io)


def shard_row_counts(shards: list, n_tools: int) -> dict[str, int]:
    """Annotation rows a complete shard has: one per text and tool."""
    return {s.shard_id: int(np.int64(s.n_texts) * n_tools) for s in shards}
