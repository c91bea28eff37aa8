"""One pass of the Ray annotate job: a streaming execution over some shards, each committed as soon as it is whole.

The driver reads the execution's few summary rows (shard id, rows written, error) on a thread of its own and
waits for them with a bound, so it can also watch the pools (``supervise.PassWatch``), collect commits and check
its lease while the execution runs. Failures are charged to their shard the moment they are known: an error row,
a failed commit, a shard whose block Ray gave up on (its actor died ``ray.batch_attempts`` times), the shards a
cut pass leaves behind in dead or stuck actors. A death is charged to the shard or to its node by
``blame.NodeLedger``; a node excluded mid-pass cuts the pass, so the next one builds its pools without it.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

from toolformer.annotate.blame import NodeLedger
from toolformer.annotate.commit import commit_shard
from toolformer.annotate.distributed import FATAL, annotation_dataset, pool_names, shard_row_counts
from toolformer.annotate.observe import Guard
from toolformer.annotate.node_faults import node_error, settle_stalled
from toolformer.annotate.supervise import PassWatch, Verdict, dead_message
from toolformer.config import RunConfig
from toolformer.run.conditional import StoreFault
from toolformer.run.lease import Lease, LeaseLost
from toolformer.run.shards import AlreadyCommitted, Manifest, RunState
from toolformer.run.store import Store

COMMIT_WAIT_S = 30  # how often a driver waiting on commits looks for hung ones
COMMIT_TIMEOUT_S = 900  # a commit reads and writes one shard: far less than this
QUEUE_WAIT_S = 1.0  # the driver's longest wait for a summary row before it looks around


class PassHost(Protocol):
    """What a pass needs of the annotate job that runs it (``ray_job.RayAnnotator``): the run, its state and lease,
    the node ledger, and the job's ways to charge, take back and report."""

    cfg: RunConfig
    store: Store
    manifest: Manifest
    state: RunState
    lease: Lease | None
    ledger: NodeLedger
    tools: list[str]
    guard: Guard  # observability calls that never break the work
    actor_deaths: int  # counted across passes, for the run's summary

    def log(self, line: str) -> None: ...

    def check_lease(self) -> None: ...

    def charge(self, sid: str, error: BaseException | str, tb: str = "") -> str | None: ...

    def retract(self, attempts: list[tuple[str, str]]) -> None: ...

    def systemic_message(self, errors: list[str]) -> str: ...

    def committed(self, stats: dict) -> None: ...


@dataclass
class Outcome:
    committed: list[str] = field(default_factory=list)
    charged: list[str] = field(default_factory=list)
    node_paid: list[str] = field(default_factory=list)  # left uncharged: a node's death (retried later)
    store_paid: list[str] = field(default_factory=list)  # left uncharged: the store failed their commit (retried)
    verdict: Verdict | None = None
    systemic: str | None = None  # the first pass failed as a whole: its charges were taken back
    transient: str | None = None  # a transient error ended the pass (annotate/transient.py): an idle pass


def progress_timeout(cfg) -> float:
    r = cfg.ray
    return float(r.progress_timeout_s) if r.progress_timeout_s else 2.0 * float(r.lm_batch_timeout_s)


def commit_failure(exc: BaseException) -> tuple[str, BaseException]:
    """Who pays for a commit task's failure (its cause, unwrapped from Ray's error): ``committed`` (another attempt
    committed the shard: done), ``lease`` (this driver lost the run: it stops), ``store`` (the store failed the
    write, ``conditional.StoreFault``: not the shard's fault, retried uncharged) or ``shard`` (charged to it)."""
    from toolformer.run.lease import StaleLease

    cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
    if isinstance(cause, AlreadyCommitted):
        return "committed", cause
    if isinstance(cause, StaleLease):
        return "lease", cause
    if isinstance(cause, StoreFault):
        return "store", cause
    return "shard", cause


class Commits:
    """Commit tasks in flight (a Ray task per shard; the driver keeps only references)."""

    def __init__(self, a: PassHost, staging: str):
        self.a, self.staging = a, staging
        self.inflight: dict = {}  # ref → (shard id, submitted at)
        self.store_faults: dict[str, str] = {}  # shard → why the store failed its commit (collected, not charged)

    def submit(self, sid: str) -> None:
        import ray

        a = self.a
        # max_retries: Ray reruns a task whose worker or node died (not one that raised); its staged rows remain
        task = ray.remote(commit_shard).options(num_cpus=a.cfg.ray.io_num_cpus,
                                                memory=a.cfg.ray.io_memory_gb * 1024**3, max_retries=3)
        fence = a.lease.fence() if a.lease is not None else None
        ref = task.remote(a.store.uri, a.manifest.shard(sid), a.tools, self.staging, a.cfg.shards.max_failures, fence)
        self.inflight[ref] = (sid, time.monotonic())

    def collect(self, wait: bool) -> tuple[list[str], dict[str, tuple[str, str]]]:
        """(shards committed, shards whose commit failed → (error, details)); all of them when ``wait``, each
        within ``COMMIT_TIMEOUT_S``."""
        import ray

        done: list[str] = []
        failed: dict[str, tuple[str, str]] = {}
        while self.inflight:
            ready, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight) if wait else 1,
                                timeout=COMMIT_WAIT_S if wait else 0)
            if not ready:
                if not wait:
                    break
                for ref, (sid, t0) in list(self.inflight.items()):
                    if time.monotonic() - t0 > COMMIT_TIMEOUT_S:  # bounded: a hung commit is the shard's failure
                        ray.cancel(ref, force=True)
                        self.inflight.pop(ref)
                        failed[sid] = (f"CommitTimeout: the commit task ran over {COMMIT_TIMEOUT_S} s", "")
                continue
            for ref in ready:
                sid, _ = self.inflight.pop(ref)
                try:
                    stats = ray.get(ref, timeout=60)
                except Exception as exc:  # noqa: BLE001 - a failed commit: the shard is retried
                    kind, cause = commit_failure(exc)
                    if kind == "committed":
                        done.append(sid)
                    elif kind == "lease":
                        raise LeaseLost(f"{cause}; this driver stops writing") from cause
                    elif kind == "store":  # the store's fault, not the shard's: retried, uncharged
                        self.store_faults[sid] = f"{type(cause).__name__}: {cause}"
                    else:
                        failed[sid] = (f"{type(cause).__name__}: {cause}",
                                       "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)))
                    continue
                done.append(sid)
                self.a.committed(stats)
            if not wait:
                break
        return done, failed


def _consume(ds, out: queue.Queue, stop: threading.Event) -> None:
    """Iterate the execution's summary rows into ``out`` (bounded puts, so a stopped driver frees the thread)."""

    def put(item) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=1.0)
                return
            except queue.Full:
                continue

    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            put(("batch", batch))
            if stop.is_set():
                return
    except BaseException as exc:  # noqa: BLE001 - handed to the driver, which decides
        put(("error", exc))
        return
    put(("end", None))


class Pass:
    """Annotate ``shard_ids`` in one streaming execution (see the module docstring)."""

    def __init__(self, a: PassHost, shard_ids: list[str], sink, sink_name: str | None, first: bool):
        self.a, self.ids, self.sink, self.sink_name, self.first = a, shard_ids, sink, sink_name, first
        self.shards = [a.manifest.shard(s) for s in shard_ids]
        self.expected = shard_row_counts(self.shards, len(a.tools))
        self.staging = f"_staging/{uuid.uuid4().hex[:12]}"
        self.counts: dict[str, int] = defaultdict(int)
        self.settled: set[str] = set()  # all rows written: committed or being committed
        self.out = Outcome()
        self.fresh = set(shard_ids) - a.state.failed()  # one listing, not a read per shard (100k shards: seconds)
        self.fresh_failed: list[tuple[str, str]] = []  # (shard, attempt id) charged this pass, fresh shards
        self.commits = Commits(a, self.staging)
        a.ledger.refresh()
        self.nodes_at_start = a.ledger.alive()
        self.node_cut: Verdict | None = None  # a node excluded mid-pass: the pass is cut and rebuilt without it

    # -- charges -----------------------------------------------------------------------------------------------
    def charge(self, sid: str, error: str | BaseException, details: str = "") -> str | None:  # the attempt's id
        if sid in self.out.charged or sid in self.out.committed or sid in self.out.node_paid or \
                sid in self.out.store_paid:
            return None
        attempt = self.a.charge(sid, error, details)
        self.out.charged.append(sid)
        if sid in self.fresh and attempt and not str(error).startswith(FATAL):  # bad bytes: the shard's own fault
            self.fresh_failed.append((sid, attempt))
        return attempt

    def _systemic(self) -> bool:
        """The first pass: every fresh shard that settled so far failed, and at least 3 did (not for their bytes)."""
        return self.first and not self.out.committed and len(self.fresh_failed) >= 3

    # -- the pass ----------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        a = self.a
        avoid = a.ledger.selector()
        if avoid:
            a.log(f"pools of this pass avoid the excluded nodes: {avoid}")
        ds = annotation_dataset(a.cfg, a.store.uri, self.shards, self.staging, self.sink_name, avoid=avoid)
        watch = PassWatch(pool_names(a.cfg), a.store, self.staging, progress_timeout(a.cfg), a.cfg.ray.batch_attempts,
                          self.sink, poll_s=min(10.0, max(1.0, progress_timeout(a.cfg) / 10)),
                          setup_timeout_s=a.cfg.ray.lm_setup_timeout_s)
        rows: queue.Queue = queue.Queue(maxsize=8)
        stop = threading.Event()
        reader = threading.Thread(target=_consume, args=(ds, rows, stop), name="pass-rows", daemon=True)
        reader.start()
        broke: BaseException | None = None
        try:
            while True:
                try:
                    kind, item = rows.get(timeout=QUEUE_WAIT_S)
                except queue.Empty:
                    kind, item = "idle", None
                a.check_lease()  # before anything this driver writes or submits
                if kind == "error":
                    broke = item
                    break
                if kind == "end":
                    break
                if kind == "batch":
                    watch.progressed()
                    self._rows(item)
                self._collect(watch, wait=False)
                spent, verdict = watch.poll()
                if a.guard("ledger", a.ledger.note_deaths, watch.last_dead, self.staging):
                    self._exclude(watch)
                for sid, recs in spent.items():
                    self._death(sid, recs, watch)
                if self._systemic():
                    break
                verdict = verdict or self.node_cut
                if verdict is not None:
                    self.out.verdict = verdict
                    a.log(f"pass cut: {verdict.kind}: {verdict.message}")
                    watch.cut(verdict.message)
                    break
        except Exception as exc:  # noqa: BLE001 - the lease, or the driver's own view of Ray, broke
            broke = exc
        stop.set()
        if broke is not None or self._systemic():
            watch.cut("the pass stops")
        reader.join(timeout=60)
        notes = watch.setup_notes() if broke is not None else ""
        if notes and not isinstance(broke, LeaseLost):  # why the pool's actors never started
            broke = RuntimeError(f"{type(broke).__name__}: {str(broke)[:1500]}{notes}")
        try:
            self._collect(watch, wait=True)
        finally:
            if broke is not None or self._systemic():
                a.guard("cleanup", a.store.delete_dir, self.staging)
        if broke is not None:
            raise broke
        if self._systemic():
            self.out.systemic = a.systemic_message([e for _, e in self._fresh_errors()])
            a.retract(self.fresh_failed)
            return self.out
        self._settle(watch)
        a.guard("cleanup", a.store.delete_dir, self.staging)
        return self.out

    def _fresh_errors(self) -> list[tuple[str, str]]:
        return [(sid, (self.a.state.failures(sid) or [{}])[-1].get("error", "")) for sid, _ in self.fresh_failed]

    def _rows(self, batch) -> None:
        for sid, n, err in zip(*(batch.column(c).to_pylist() for c in ("shard_id", "rows", "error"))):
            if sid in self.out.charged or sid in self.settled or sid in self.out.node_paid:
                continue
            if err:
                if not node_error(self, sid, err):  # a full disk, a GPU error: its node's (node_faults)
                    self.charge(sid, err, err.partition("\n")[2])
                continue
            self.counts[sid] += n
            if self.counts[sid] >= self.expected[sid]:
                self.settled.add(sid)
                self.commits.submit(sid)

    def _collect(self, watch: PassWatch, wait: bool) -> None:
        done, failed = self.commits.collect(wait)
        if done:
            watch.progressed()
        self.out.committed += done
        for sid, (err, details) in failed.items():
            self.charge(sid, err, details)
        while self.commits.store_faults:
            sid, why = self.commits.store_faults.popitem()
            self.out.store_paid.append(sid)
            self.a.log(f"  {sid}: the store failed its commit ({why[:300]}): not charged to the shard; it is "
                       f"retried in the next pass")

    def _death(self, sid: str, records: list[dict], watch: PassWatch) -> None:
        """Ray gave up on this shard's block (its actor died ``ray.batch_attempts`` times computing it)."""
        from toolformer.annotate.failures import worker_exits

        if sid in self.settled or sid in self.out.charged or sid in self.out.node_paid:
            return
        watch.charged.add(sid)
        self._blame(sid, records, worker_exits({r["pid"] for r in records}))
        self._exclude(watch)

    def _blame(self, sid: str, records: list[dict], exits: dict[int, str]) -> None:
        """Charge these deaths to the shard or to the node(s) (``blame.py``); a node's leaves the shard pending."""
        from toolformer.annotate.failures import explain

        a = self.a
        a.actor_deaths += len(records)
        who, why = a.ledger.blame(sid, records, exits, pass_id=self.staging)
        if who == "shard":
            message, details = explain(sid, records, exits)
            attempt = self.charge(sid, f"{message} [charged to the shard: {why}]", details)
            self._guarded(lambda: a.ledger.note_charge(sid, [r.get("_name") for r in records], attempt))  # take-back
            return
        self.out.node_paid.append(sid)
        a.log(f"  {sid}: its actor died {len(records)} time(s) ({why}): charged to the node; the shard is "
              f"retried in the retry pass")

    def _exclude(self, watch: PassWatch) -> None:
        """Exclude the nodes the ledger says to; one still alive cuts the pass (its pools would keep using it)."""
        a = self.a
        new = a.ledger.maybe_exclude(a.state.failed())
        if new and self.node_cut is None:
            dead, live = watch.inflight(watch.live_pids())
            names = ", ".join(a.ledger.describe(n) for n in new)
            self.node_cut = Verdict("node_excluded", f"node(s) {names} excluded from the run's pools: the pass is "
                                    f"cut and the next one starts its pools without them", [], dead, live)

    def _guarded(self, fn):
        try:
            return fn()
        except Exception:  # noqa: BLE001 - the Ray internals it reads moved: settle as before
            return None

    def _settle(self, watch: PassWatch) -> None:
        """The pass is over: charge what it leaves unsettled, by what is known of each shard."""
        from toolformer.annotate.failures import inflight_deaths, worker_exits

        a, verdict = self.a, self.out.verdict
        left = self._guarded(lambda: inflight_deaths(a.store, self.staging)) or {}
        # A cut pass: its forced shutdown killed the actors, so only the deaths seen before the cut count.
        deaths = verdict.dead_shards if verdict else left
        # A shard whose actor died and whose retry committed is never charged: its deaths go on their nodes' ledger.
        recovered = {s: v for s, v in left.items() if s in self.settled and s not in self.out.charged}
        if recovered:
            exits = worker_exits({d["pid"] for v in recovered.values() for d in v})
            for sid, recs in recovered.items():
                a.actor_deaths += len(recs)
                self._guarded(lambda: a.ledger.blame(sid, recs, exits, committed=True, pass_id=self.staging))
        open_ = [s for s in self.ids if s not in self.settled and s not in self.out.charged
                 and s not in self.out.node_paid]
        if verdict is None and any(s not in deaths for s in open_):
            # Ray Data ends an execution whose last actor died for good with its blocks errored: waiting shards.
            dead = self._guarded(watch.died_for_good) or []
            if dead:
                verdict = self.out.verdict = Verdict("pool_dead", dead_message(dead, deaths) + watch.setup_notes(),
                                                     dead, deaths, {})
                a.log(f"pass ended with a dead pool: {verdict.message}")
        exits = worker_exits({d["pid"] for s in open_ for d in deaths.get(s, [])})
        lost: set[str] = set()
        if verdict is None and any(s not in deaths for s in open_):
            lost = self._guarded(lambda: a.ledger.wait_for_lost(self.nodes_at_start)) or set()
        for sid in open_:
            if sid in deaths:
                self._blame(sid, deaths[sid], exits)
            elif verdict is not None and verdict.kind == "stalled" and sid in verdict.live_shards:
                settle_stalled(self, sid, verdict)  # its node(s) pay, unless it stalled on another node before
            elif verdict is None and lost:
                # no death of its own on record (its actor's record went with the node, or a task of it ran there)
                detail = (f"ShardIncomplete: the pass ended with {self.counts[sid]} of {self.expected[sid]} rows "
                          f"written while {len(lost)} node(s) were lost")
                a.ledger.lost_nodes_event(sid, lost, detail, self.staging)
                self.out.node_paid.append(sid)
                a.log(f"  {sid}: {detail}: charged to the node(s); the shard is retried in the retry pass")
            elif verdict is None:
                self.charge(sid, f"ShardIncomplete: the pass ended with {self.counts[sid]} of {self.expected[sid]} "
                                 f"rows written (a task of it failed in Ray: see the log)")
            # else: a cut pass leaves it pending, uncharged (it was only waiting for a dead pool)
        self._exclude(watch)


__all__ = ["COMMIT_TIMEOUT_S", "Commits", "PassHost", "commit_failure", "FATAL", "Outcome", "Pass", "progress_timeout"]
