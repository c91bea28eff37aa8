"""The annotate job on Ray: every pending shard streamed through actor pools, each committed as soon as it is whole.

A pass is one Ray Data execution (``passes.py``): actor pools and their engines start once per pass. The driver
holds the manifest and counters, never rows. The run:

1. **fresh passes** over the shards never charged: a pass whose pool dies for good (every actor spent its
   restarts) or that stops progressing (``ray.progress_timeout_s``) is cut, the shards in its dead or stuck actors
   are charged, and the others resume in the next pass with fresh actors, so healthy shards still commit;
2. if a pool died in a fresh pass, the run stops there with ``PoolsDied`` (exit 1) naming the pool, its actors'
   states and the shards charged, and what to change; a rerun goes on with step 3;
3. **retry passes**: shards charged before are retried apart from healthy ones, ``ray.retry_pass_shards`` at a
   time, until they commit or are quarantined at ``shards.max_failures`` (a failure there is the shard's own).

Failure semantics (docs: "What happens when something fails"):
- a failure tied to one shard (its read, its rows in a stage, an actor that died computing it, its commit) is
  charged to that shard alone, with its cause, the moment it is known (a driver killed mid-pass loses no charge);
- an error of the execution itself (an actor that cannot start, a lost cluster, a cut pass that held no shard,
  every fresh shard of the first pass failing) stops the run with ``ExecutionError`` and charges nobody. Such
  stops are counted per config (``failures/_run/annotate.json``); after ``shards.max_failures`` of them in a row
  with nothing committed, the run refuses to start (a resubmitting job cannot loop) until a start with
  ``shards.retry_after_stops=true`` (any commit resets the count);
- metrics, telemetry and progress never raise into a pass (``observe.Guard``);
- one driver per run (``toolformer/lease.py``): every state write is fenced by the lease's epoch; a driver that
  cannot renew in time stops writing before another may take over.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from contextlib import nullcontext
from typing import Callable

from toolformer.annotate.commit import STAGE
from toolformer.annotate.distributed import FATAL
from toolformer.annotate.observe import Guard, Metrics, Progress
from toolformer.annotate.passes import Pass
from toolformer.annotate.telemetry import start_sink, summarize
from toolformer.config import RunConfig, config_hash
from toolformer.lease import Lease, LeaseLost
from toolformer.report import sum_funnels
from toolformer.shards import Manifest, RunState, Store

RUN_FAILURES = ("failures", "_run", f"{STAGE}.json")  # stops of the execution itself, per config


class ExecutionError(SystemExit):
    """The execution itself broke (not one shard): the run stops and no shard is charged."""


class PoolsDied(SystemExit):
    """A pool died for good in a fresh pass: the healthy shards committed, the culprits are charged, the run stops."""


class RayAnnotator:
    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print, lease: Lease | None = None):
        self.cfg, self.log = cfg, log
        self.store = Store(cfg.output_dir)
        self.manifest = Manifest.load(self.store)
        self.lease = lease
        self.state = RunState(self.store, STAGE, cfg.shards.max_failures, fence=self._fence)
        self.tools = list(cfg.annotate.tools)
        self.metrics: Metrics | None = None
        self.telemetry: dict[str, dict] = {}
        self.guard = Guard(log)
        self.progress = Progress(self)
        self.actor_deaths = 0
        self.pool_deaths: list[str] = []
        self.sink_name: str | None = None

    def _fence(self):
        return self.lease.writing() if self.lease is not None else nullcontext()

    def check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def check_config(self) -> None:
        """Shards of one run are annotated with one config: a changed setting needs a new output_dir."""
        h = config_hash(self.cfg)
        if self.store.exists("annotate.json"):
            old = self.store.read_json("annotate.json")["config_hash"]
            untouched = not (self.state.done() or self.state.failed() or self.state.quarantined())
            if old != h and untouched:  # e.g. a run stopped by a bad model path, rerun with the right one
                self.log(f"note: no shard was annotated with config {old}; this run uses {h}")
                with self._fence():
                    self.store.write_json({"config_hash": h}, "annotate.json")
            elif old != h:
                raise SystemExit(
                    f"{self.store.uri} was annotated with config {old}, this one is {h}: its shards would mix "
                    "two settings. Use a new output_dir, or the settings of that run (see its config.yaml)."
                )
        else:
            with self._fence():
                self.store.write_json({"config_hash": h}, "annotate.json")

    # -- charges -------------------------------------------------------------------------------------------------
    def charge(self, sid: str, error: BaseException | str, tb: str = "") -> str | None:
        """Record a failed attempt of this shard alone, now (quarantined at ``shards.max_failures``, or at once when
        fatal); returns the attempt's id."""
        if isinstance(error, str):
            message, _, rest = error.partition("\n")
            fatal = message.startswith(FATAL)
            quarantined, attempt = self.state.record_failure(sid, message.removeprefix(FATAL), fatal=fatal,
                                                             tb=tb or rest, with_id=True)
        else:
            quarantined, attempt = self.state.record_failure(sid, error, with_id=True)
        self.guard("progress", self.progress.fail, sid)
        self.log(f"  {sid}: {'quarantined' if quarantined else 'failed, will retry'}: "
                 f"{(error if isinstance(error, str) else repr(error)).splitlines()[0][:300]}")
        return attempt

    def retract(self, attempts: list[tuple[str, str]]) -> None:
        """Take back charges a systemic failure made (the execution, not those shards, was at fault)."""
        for sid, attempt in attempts:
            self.state.retract(sid, attempt)

    def systemic_message(self, errors: list[str]) -> str:
        first = str(errors[0] if errors else "").splitlines()[0][:800]
        return (f"the first {len(errors)} shards of this run all failed and none committed, which is a problem "
                f"of the execution, not of the shards (first error: {first}). No shard was charged: fix the "
                f"cause and run the same command again.")

    def committed(self, stats: dict) -> None:
        if self.metrics:
            self.guard("metrics", self.metrics.record, stats)
        self.guard("progress", self.progress.add, stats)

    # -- stops of the execution itself ---------------------------------------------------------------------------
    def _run_failures(self) -> list[dict]:
        return self.store.read_json(*RUN_FAILURES)["stops"] if self.store.exists(*RUN_FAILURES) else []

    def _stopped(self, message: str) -> ExecutionError:
        """Record a stop of the execution itself, then the error that ends the run."""
        stops = self._run_failures() + [{"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                         "config_hash": config_hash(self.cfg), "done": len(self.state.done()),
                                         "error": message[:2000]}]
        try:
            with self._fence():
                self.store.write_json({"stops": stops[-20:]}, *RUN_FAILURES)
        except LeaseLost:
            pass
        return ExecutionError(message)

    def _refuse_looping(self) -> None:
        """A run whose last ``shards.max_failures`` starts (same config, nothing committed since) all stopped on
        an error of the execution does not start again: a resubmitting job would otherwise loop forever."""
        h, done, n = config_hash(self.cfg), len(self.state.done()), max(1, self.cfg.shards.max_failures)
        streak = []
        for stop in reversed(self._run_failures()):
            if stop["config_hash"] != h or stop["done"] != done:
                break
            streak.append(stop)
        if len(streak) >= n and self.cfg.shards.retry_after_stops:
            self.log(f"the last {len(streak)} runs stopped on an error of the execution; starting anyway "
                     "(shards.retry_after_stops=true)")
        elif len(streak) >= n:
            raise ExecutionError(
                f"the last {len(streak)} runs of this config on {self.store.uri} stopped on an error of the execution "
                f"and committed nothing (last: {streak[0]['error'].splitlines()[0][:600]}). Fix the cause (or the "
                f"config), then run the same command with shards.retry_after_stops=true (the stops stay recorded in "
                f"{'/'.join(RUN_FAILURES)}; any commit resets the count).")

    # -- the run -------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            if self.lease is not None:
                return self._run()
            s = self.cfg.shards
            with Lease(self.store, ttl_s=s.lease_ttl_s, heartbeat_s=s.lease_heartbeat_s, log=self.log,
                       margin_s=s.lease_margin_s) as lease:
                self.lease = lease
                try:
                    return self._run()
                finally:
                    self.lease = None
        except LeaseLost as exc:  # another driver has the run: stop with its reason, not a traceback
            raise ExecutionError(str(exc)) from exc

    def _pass(self, ids: list[str], sink, sink_name: str | None, first: bool):
        try:
            out = Pass(self, ids, sink, sink_name, first).run()
        except LeaseLost as exc:
            raise ExecutionError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - the execution itself broke: no shard is to blame
            raise self._stopped(
                f"the Ray execution stopped: {type(exc).__name__}: {str(exc)[:1500]}\nThis is not a shard's fault, "
                f"so no shard was charged: fix the cause (model path, index, cluster) and run the same command "
                f"again; {len(self.state.done())} shards committed are kept.") from exc
        if out.systemic:
            raise self._stopped(out.systemic)
        v = out.verdict
        if v is not None and not out.committed and not out.charged:
            raise self._stopped(f"the run stopped: {v.message}\nNo shard was in flight, so none was charged: the "
                                f"cluster cannot run the pools (resources, restarts). Fix that and run the same "
                                f"command again.")
        return out

    def _run(self) -> dict:
        from toolformer.cluster import init_ray

        self.check_config()
        self._refuse_looping()
        t_run = time.perf_counter()
        pending = self.state.pending(self.manifest)
        skipped = len(self.manifest.shards) - len(pending)
        self.log(f"{len(self.manifest.shards)} shards: {skipped} already done or quarantined, {len(pending)} pending")
        with self._fence():
            self.store.delete_dir("_staging")  # a killed driver's batches (we hold the lease): nothing refers to them
        passes, sink = 0, None
        if pending:
            init_ray(self.cfg)
            from toolformer.annotate.plan import check_plan_or_exit

            check_plan_or_exit(self.cfg, log=self.log)  # a plan that cannot fit is refused before any pool starts
            self.metrics = self.guard("metrics", Metrics)
            self.guard("progress", self.progress.start_bar, len(pending))
            sink_name = self.sink_name = f"toolformer-telemetry-{uuid.uuid4().hex[:8]}"
            sink = self.guard("telemetry", start_sink, sink_name)
            try:
                passes = self._passes(pending, sink, sink_name)
            finally:
                if sink is not None:
                    import ray

                    self.telemetry = self.guard("telemetry", lambda: ray.get(sink.snapshot.remote(), timeout=60)) or {}
        out = self.summary(t_run, skipped, passes)
        if self.pool_deaths:
            raise PoolsDied(self._pools_died())
        return out

    def _pools_died(self) -> str:
        charged = sorted(self.state.failed() - self.state.done() - self.state.quarantined())
        r = self.cfg.ray
        return (f"a pool died for good {len(self.pool_deaths)} time(s) in this run (last: {self.pool_deaths[-1]})\n"
                f"Every healthy shard was tried with fresh actors; {len(self.state.done())} shards are committed. "
                f"Charged, to retry: {', '.join(charged) or 'none'} (failures/{STAGE}/). To change: give the pools "
                f"more restarts (ray.max_actor_restarts={r.max_actor_restarts}) or more actors (ray.<pool>.actors), "
                f"or fix what kills them (the failure records name the cause). Run the same command again: it "
                f"retries the charged shards one at a time and quarantines them at shards.max_failures.")

    def _passes(self, pending: list[str], sink, sink_name: str) -> int:
        passes = 0
        fresh = [s for s in pending if not self.state.failures(s)]
        while fresh:
            passes += 1
            if passes > 1:
                self.log(f"pass {passes}: {len(fresh)} shards resume with fresh actors")
            out = self._pass(fresh, sink, sink_name, first=passes == 1)
            if out.verdict is not None and out.verdict.kind == "pool_dead":
                self.pool_deaths.append(out.verdict.message)
            self.guard("progress", self.progress.maybe_flush, force=True)
            left = set(self.state.pending(self.manifest))
            fresh = [s for s in fresh if s in left and not self.state.failures(s)]
        if self.pool_deaths:
            return passes  # the run stops here (PoolsDied); a rerun retries the charged shards apart
        size = max(1, self.cfg.ray.retry_pass_shards)
        retry = [s for s in self.state.pending(self.manifest) if s in set(pending)]
        while retry:
            for i in range(0, len(retry), size):
                passes += 1
                group = retry[i:i + size]
                self.log(f"pass {passes}: retrying {', '.join(group)} apart")
                self._pass(group, sink, sink_name, first=False)
                self.guard("progress", self.progress.maybe_flush, force=True)
            # Each retry pass commits or charges every shard it holds, so this ends by quarantine.
            retry = [s for s in self.state.pending(self.manifest) if s in set(retry)]
        return passes

    def summary(self, t_run: float, skipped: int, passes: int) -> dict:
        stats = self.state.stats()
        out = {
            "output_dir": self.store.uri, "config_hash": config_hash(self.cfg), "model": self.cfg.model.name_or_path,
            "dtype": self.cfg.model.dtype, "call_syntax": self.cfg.annotate.call_syntax,
            "shards": self.state.counts(self.manifest),
            "skipped_at_start": skipped, "passes": passes, "seconds": round(time.perf_counter() - t_run, 2),
            "docs": sum(s["docs"] for s in stats), "texts": sum(s["texts"] for s in stats),
            "funnel": sum_funnels(s["funnel"] for s in stats),
            "docs_skipped": self.manifest.skips,  # prepare's counted skips (contaminated among them)
            "actors": summarize(self.telemetry) if self.telemetry else None,
            "actor_deaths_in_batches": self.actor_deaths,  # each one a retry of its shard's batch
            "pool_deaths": self.pool_deaths,
            "observability_failures": dict(self.guard.failures),
        }
        with self._fence():
            self.store.write_json(out, "stats.json")
        if out["shards"]["done"]:
            from toolformer.inspection import write_report

            write_report(self.store.uri, seed=self.cfg.seed)  # report.md: the kept calls in context
        return out


def run_ray_annotate(cfg: RunConfig, log: Callable[[str], None] = print, lease: Lease | None = None) -> dict:
    """Annotate a prepared run (its manifest exists)."""
    return RayAnnotator(cfg, log, lease).run()


def annotate_on_ray(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    """The cluster path of ``jobs.annotate``: under one lease, shard the corpus with the Ray preparer when the run
    has no manifest yet (never the one-process reader on a cluster), then annotate every pending shard."""
    from toolformer.cluster import init_ray
    from toolformer.prepare_ray import prepare_ray

    s = cfg.shards
    store = Store(cfg.output_dir)
    with Lease(store, ttl_s=s.lease_ttl_s, heartbeat_s=s.lease_heartbeat_s, log=log, margin_s=s.lease_margin_s) as lease:
        if not store.exists("manifest.json"):
            init_ray(cfg)
            log(f"{store.uri} has no manifest: preparing its shards with Ray first")
            prepare_ray(cfg, log, lease=lease)
        return RayAnnotator(cfg, log, lease).run()
