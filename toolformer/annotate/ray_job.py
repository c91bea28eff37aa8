"""The annotate job on Ray: every pending shard streamed through actor pools, each committed as soon as it is whole.

A pass is one Ray Data execution (``passes.py``): actor pools and their engines start once per pass. The driver
holds the manifest and counters, never rows. The run heals within one submission:

1. **fresh passes** over the shards never charged: a pass whose pool dies for good (every actor spent its
   restarts), that stops progressing (``ray.progress_timeout_s``) or that excluded a node is cut; the shards in
   its dead or stuck actors are charged (or their nodes are: ``blame.py``), and the others go on in a new pass
   with fresh actors, so healthy shards still commit;
2. **one retry pass** at the end: the shards charged before, and those a node's death left uncharged, all
   together, each in a block of its own (a poison shard kills only its own batch); repeated until each commits or
   is quarantined at ``shards.max_failures``;
3. the run stops (exit 1, ``ExecutionError``, with the message) only when ``ray.max_passes_without_progress``
   passes in a row committed no shard and charged none; a run that ends with quarantined shards exits with
   ``EXIT_QUARANTINED`` (3) and says so in its last line (``jobs/annotate.py``).

Failure semantics (docs: "What happens when something fails"):
- a failure tied to one shard (its read, its rows in a stage, an actor that died computing it when the death
  follows the shard, its commit) is charged to that shard alone, with its cause, the moment it is known (a driver
  killed mid-pass loses no charge); an actor lost with its node, or dying on one node only while others could
  run it, is charged to the node (``failures/_nodes/``), and a node that keeps killing shards is excluded;
- an error of the execution itself (an actor that cannot start, a lost cluster, every fresh shard of the first
  pass failing) stops the run with ``ExecutionError`` and charges nobody. Such stops are counted per config
  (``failures/_run/annotate.json``); after ``shards.max_failures`` of them in a row with nothing committed, the
  run refuses to start (a resubmitting job cannot loop) until a start with ``shards.retry_after_stops=true``
  (any commit resets the count);
- metrics, telemetry and progress never raise into a pass (``observe.Guard``);
- one driver per run (``toolformer/run/lease.py``): every state write is fenced by the lease's epoch; a driver that
  cannot renew in time stops writing before another may take over.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from contextlib import nullcontext
from typing import Callable

from toolformer.annotate.blame import NodeLedger
from toolformer.annotate.commit import STAGE
from toolformer.annotate.distributed import FATAL
from toolformer.annotate.observe import Guard, Metrics, Progress
from toolformer.annotate.passes import Pass
from toolformer.annotate.telemetry import start_sink, summarize
from toolformer.config import RunConfig, config_hash
from toolformer.run.conditional import conditional
from toolformer.run.epochs import read_clean, stamped_update
from toolformer.run.faults import pass_fault
from toolformer.run.lease import Lease, LeaseLost, lease_wait
from toolformer.report import sum_funnels
from toolformer.run.shards import Manifest, RunState
from toolformer.run.store import Store

RUN_FAILURES = ("failures", "_run", f"{STAGE}.json")  # stops of the execution itself, per config


class ExecutionError(SystemExit):
    """The execution itself broke (not one shard): the run stops and no shard is charged."""


EXIT_QUARANTINED = 3  # the run ended, every shard committed or quarantined, and some are quarantined


def quarantine_line(stats: dict) -> str | None:
    """The last line of a run that ended with quarantined shards (None when there are none)."""
    q = stats["shards"]["quarantined"]
    if not q:
        return None
    return (f"ended with {q} of {stats['shards']['total']} shards quarantined (failures/{STAGE}/ and "
            f"quarantine/{STAGE}/ say why; `python -m jobs.status {stats['output_dir']}`): exit {EXIT_QUARANTINED}")


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
        self.pool_deaths: list[str] = []  # each pass cut by a pool that died for good
        self.cuts: list[str] = []  # every pass cut, with its verdict
        self.transient: list[str] = []  # passes a transient error ended (is_transient), each an idle pass
        self.causes: dict[str, int] = {}  # this run's charges to shards, by cause
        self.ledger = NodeLedger(self.store, cfg.ray, cfg.shards.max_failures, fence=self._fence, log_fn=log)
        self.ledger.on_relabel = lambda sid, attempt: self.retract([(sid, attempt)])
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
            charge = self.state.record_failure(sid, message.removeprefix(FATAL), fatal=fatal, tb=tb or rest)
        else:
            charge = self.state.record_failure(sid, error)
        quarantined, attempt = charge.quarantined, charge.attempt
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        cause = text.removeprefix(FATAL).split(":", 1)[0].strip()[:40] or "error"
        self.causes[cause] = self.causes.get(cause, 0) + 1
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
        return (read_clean(self.store, "stops", *RUN_FAILURES) or {}).get("stops", [])

    def _stopped(self, message: str) -> ExecutionError:
        """Record a stop of the execution itself (conditional, stamped: a stale driver's stop is dropped), then the
        error that ends the run."""
        stop = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "id": uuid.uuid4().hex[:12],
                "config_hash": config_hash(self.cfg), "done": len(self.state.done()), "error": message[:2000]}
        try:
            with self._fence() as epoch:
                stamped_update(conditional(self.store), self.store, "/".join(RUN_FAILURES),
                               lambda old: {"stops": ((old or {}).get("stops", []) + [stop])[-20:]}, epoch, "stops")
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
                       margin_s=s.lease_margin_s, wait_s=lease_wait(s)) as lease:
                self.lease = lease
                try:
                    return self._run()
                finally:
                    self.lease = None
        except LeaseLost as exc:  # another driver has the run: stop with its reason, not a traceback
            raise ExecutionError(str(exc)) from exc

    def _pass(self, ids: list[str], sink, sink_name: str | None, first: bool):
        try:
            pass_fault()
            out = Pass(self, ids, sink, sink_name, first).run()
        except LeaseLost as exc:
            raise ExecutionError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - the execution itself broke: no shard is to blame
            from toolformer.annotate.passes import Outcome
            from toolformer.annotate.transient import is_transient

            if is_transient(exc):  # a rerun would heal it: this pass is lost (an idle one), not the run
                message = f"pass ended by a transient error, no shard charged: {type(exc).__name__}: {str(exc)[:500]}"
                self.log(message)
                self.transient.append(message[:2000])
                return Outcome(transient=message)
            raise self._stopped(
                f"the Ray execution stopped: {type(exc).__name__}: {str(exc)[:1500]}\nThis is not a shard's fault, "
                f"so no shard was charged: fix the cause (model path, index, cluster) and run the same command "
                f"again; {len(self.state.done())} shards committed are kept.") from exc
        if out.systemic:
            raise self._stopped(out.systemic)
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
        return self.summary(t_run, skipped, passes)

    def _passes(self, pending: list[str], sink, sink_name: str) -> int:
        """Fresh passes, then retry passes, until every shard is committed or quarantined, or
        ``ray.max_passes_without_progress`` passes in a row committed and charged nothing (module docstring)."""
        budget = max(1, self.cfg.ray.max_passes_without_progress)
        wanted = set(pending)
        passes = idle = 0
        last = None
        while True:
            left = [s for s in self.state.pending(self.manifest) if s in wanted]
            held = self.ledger.suspects() | self.state.failed()  # one listing each, not a read per shard
            fresh = [s for s in left if s not in held]
            group = fresh or left
            if not group:
                return passes
            if idle >= budget:
                raise self._stopped(self._no_progress(idle, budget, last, left))
            retry = not fresh
            if retry and self.cfg.ray.retry_pass_shards:
                group = group[:max(1, self.cfg.ray.retry_pass_shards)]
            passes += 1
            if retry:
                self.log(f"pass {passes}: retrying {len(group)} shards together, each in a block of its own: "
                         f"{', '.join(group[:20])}{' ...' if len(group) > 20 else ''}")
            elif passes > 1:
                self.log(f"pass {passes}: {len(group)} shards resume with fresh actors")
            out = self._pass(group, sink, sink_name, first=passes == 1)
            if out.verdict is not None:
                last = f"{out.verdict.kind}: {out.verdict.message}"
                self.cuts.append(last[:2000])
                if out.verdict.kind == "pool_dead":
                    self.pool_deaths.append(out.verdict.message[:2000])
            if out.transient:
                last = out.transient
            if out.store_paid and out.verdict is None:  # why the next pass runs them again (uncharged)
                last = f"the store failed the commits of {len(out.store_paid)} shard(s): {', '.join(out.store_paid[:5])}"
            self.guard("progress", self.progress.maybe_flush, force=True)
            # deaths charged to nodes are progress too: bounded per shard (blame.py), and not a cluster that cannot run
            idle = 0 if (out.committed or out.charged or out.node_paid) else idle + 1

    def _no_progress(self, idle: int, budget: int, last: str | None, left: list[str]) -> str:
        r = self.cfg.ray
        return (f"{idle} passes in a row committed no shard and charged none (ray.max_passes_without_progress="
                f"{budget}); the last ended: {(last or 'without a verdict')[:1500]}\n{len(self.state.done())} shards "
                f"are committed and kept; {len(left)} still pending. The cluster cannot run the pools: check its "
                f"nodes and resources (ray.<pool>.actors, ray.max_actor_restarts={r.max_actor_restarts}, "
                f"ray.lm_setup_timeout_s={r.lm_setup_timeout_s}) and the nodes excluded (python -m jobs.status), "
                f"then run the same command again.")

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
            "pass_cuts": self.cuts,
            "transient_pass_errors": self.transient,  # passes a transient error ended (each an idle pass)
            "charges_by_cause": self.causes,  # this run's charges to shards
            "nodes": self.ledger.summary(),  # every node's deaths, by cause and by who paid; excluded ones
            "observability_failures": dict(self.guard.failures),
        }
        with self._fence():
            self.store.write_json(out, "stats.json")
        if out["shards"]["done"]:
            from toolformer.cstar.inspection import write_report

            write_report(self.store.uri, seed=self.cfg.seed)  # report.md: the kept calls in context
        return out


def run_ray_annotate(cfg: RunConfig, log: Callable[[str], None] = print, lease: Lease | None = None) -> dict:
    """Annotate a prepared run (its manifest exists)."""
    return RayAnnotator(cfg, log, lease).run()


def annotate_on_ray(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    """The cluster path of ``jobs.annotate``: under one lease, shard the corpus with the Ray preparer when the run
    has no manifest yet (never the one-process reader on a cluster), then annotate every pending shard."""
    from toolformer.cluster import init_ray
    from toolformer.prepare.distributed import prepare_ray

    s = cfg.shards
    store = Store(cfg.output_dir)
    with Lease(store, ttl_s=s.lease_ttl_s, heartbeat_s=s.lease_heartbeat_s, log=log, margin_s=s.lease_margin_s,
               wait_s=lease_wait(s)) as lease:
        if not store.exists("manifest.json"):
            init_ray(cfg)
            log(f"{store.uri} has no manifest: preparing its shards with Ray first")
            prepare_ray(cfg, log, lease=lease)
        return RayAnnotator(cfg, log, lease).run()
