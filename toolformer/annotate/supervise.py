"""Progress or stop: what the driver watches while a pass runs, and how it ends a pass that cannot finish.

Ray Data's actor pools assume actors restart forever. Ours restart a bounded number of times
(``ray.max_actor_restarts``), and a pool whose every actor has spent its restarts waits for an actor that will
never come (the execution neither progresses nor fails). ``PassWatch`` sees that from outside Ray Data:

- it holds the pass's ``StreamingExecutor`` (handed over by ``ExecutorCapture``, an execution callback on the
  run's ``DataContext``), so it can list each pool's actors and end the execution (``cut``: the executor's own
  forced shutdown, which kills the pools' actors and ends the driver's iterator);
- it reads each actor's state, pid and restarts from the GCS actor table (no dashboard needed);
- it reads the actors' in-flight records (``failures.InflightRecord``): a record whose actor is no longer alive
  names a shard its actor died computing; ``ray.batch_attempts`` of them mean Ray dropped that shard's block;
- progress is a row reaching the driver, a commit, or any actor reporting to the telemetry sink.

Two verdicts end a pass: ``pool_dead`` (a pool with no live, restarting or pending actor while work remains) and
``stalled`` (no progress for ``ray.progress_timeout_s``). The driver then cuts the pass, charges the shards the
verdict names, and resumes the rest with fresh actors in the next pass (``ray_job.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from toolformer.annotate.failures import INFLIGHT, SETUP
from toolformer.run.store import Store

log = logging.getLogger(__name__)
_lock = threading.Lock()
_captured: list = []
_actors_seen: dict[int, set[tuple[int, str]]] = {}  # executor → (pool index, actor id) of every actor it ran
_DIED = ("WORKER_DIED", "NODE_DIED")  # an actor that died of itself (not killed by a shutdown, nor unowned)


try:  # Ray Data's execution callback interface (internal, stable since 2.40); the watch degrades without it
    from ray.data._internal.execution.execution_callback import ExecutionCallback
except Exception:  # noqa: BLE001
    ExecutionCallback = object  # type: ignore[misc,assignment]


class ExecutorCapture(ExecutionCallback):  # type: ignore[misc,valid-type]
    """Instantiated by Ray Data for every execution: hands its executor to the pass that waits for it."""

    def before_execution_starts(self, executor) -> None:
        with _lock:
            _captured.append(executor)

    def on_execution_step(self, executor) -> None:
        """Note every actor the execution's pools ever ran (the driver asks the GCS how they ended)."""
        try:
            from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator

            seen = _actors_seen.setdefault(id(executor), set())
            for i, op in enumerate(o for o in list(executor._topology) if isinstance(o, ActorPoolMapOperator)):
                for handle in list(op._actor_pool._running_actors):
                    seen.add((i, handle._actor_id.hex()))
        except Exception:  # noqa: BLE001 - watching must never break the execution
            pass

    def after_execution_succeeds(self, executor) -> None:
        pass

    def after_execution_fails(self, executor, error) -> None:
        pass


def install_capture(ctx) -> None:
    """Register ``ExecutorCapture`` on a DataContext (once)."""
    classes = list(getattr(ctx, "custom_execution_callback_classes", None) or [])
    if ExecutorCapture not in classes and ExecutionCallback is not object:
        ctx.custom_execution_callback_classes = classes + [ExecutorCapture]


def take_captured() -> list:
    with _lock:
        out = list(_captured)
        _captured.clear()
        return out


@dataclass
class PoolState:
    name: str
    actors: list[dict] = field(default_factory=list)  # id, state, pid, restarts, death
    pending: int = 0
    completed: bool = False

    @property
    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.actors:
            out[a["state"]] = out.get(a["state"], 0) + 1
        if self.pending:
            out["PENDING_CREATION"] = out.get("PENDING_CREATION", 0) + self.pending
        return out

    @property
    def dead(self) -> bool:
        """Work may remain, yet no actor is alive, restarting or being created: none will come."""
        return not self.completed and bool(self.actors) and not self.pending and all(
            a["state"] == "DEAD" for a in self.actors)

    def describe(self) -> str:
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.states.items())) or "no actor"
        restarts = [a["restarts"] for a in self.actors if a.get("restarts") is not None]
        nodes = sorted({a["node"] for a in self.actors if a.get("node")})
        deaths = [a["death"] for a in self.actors if a.get("death")]
        return (f"ray.{self.name}: {states}" + (f" (restarts used: {restarts})" if restarts else "")
                + (f" on node(s) {', '.join(nodes)}" if nodes else "")
                + (f"; last death: {deaths[-1][:300]}" if deaths else ""))


@dataclass
class Verdict:
    kind: str  # pool_dead | stalled | node_excluded
    message: str
    pools: list[PoolState]
    dead_shards: dict[str, list[dict]]  # shard → records of actors that died computing it
    live_shards: dict[str, list[dict]]  # shard → records of actors still computing it


class PassWatch:
    """The driver's view of one pass: progress, pools, actors that died holding a shard."""

    def __init__(self, pools: list[str], store: Store, staging: str, timeout_s: float, batch_attempts: int,
                 sink=None, poll_s: float = 5.0, setup_timeout_s: float | None = None):
        self.pools, self.store, self.staging = pools, store, staging
        self.timeout_s, self.batch_attempts, self.sink, self.poll_s = timeout_s, max(1, batch_attempts), sink, poll_s
        self.executor = None
        self.t_progress = time.monotonic()
        self.t_poll = 0.0
        self._sink_seen: object = None
        self._first_seen: dict[str, float] = {}  # in-flight record → when the driver first saw it
        self.charged: set[str] = set()
        self.setup_timeout_s = setup_timeout_s
        self.last_dead: dict[str, list[dict]] = {}  # the deaths the last look saw

    # -- progress --------------------------------------------------------------------------------------------
    def progressed(self) -> None:
        self.t_progress = time.monotonic()

    def _sink_progress(self) -> None:
        if self.sink is None:
            return
        import ray

        try:
            snap = ray.get(self.sink.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - telemetry never decides alone; rows and commits still count
            return
        now = time.time()
        bound = self.setup_timeout_s

        def beats(r: dict):
            # an actor setting up past ray.lm_setup_timeout_s is not progress (it should have ended itself)
            over = bound and r.get("setup_s") is None and now - float(r.get("started") or now) > bound
            return None if over else r.get("setup_beats")

        key = {k: (r.get("batches"), r.get("rows"), r.get("busy_s"), r.get("setup_s"), r.get("progress"), beats(r))
               for k, r in (snap or {}).items()}
        if key != self._sink_seen:
            self._sink_seen = key
            self.progressed()

    # -- the pools -------------------------------------------------------------------------------------------
    def _executor(self):
        if self.executor is None:
            got = take_captured()
            self.executor = got[-1] if got else None
        return self.executor

    def pool_states(self) -> list[PoolState]:
        """Each pool's actors (from the executor's actor pools and the GCS actor table)."""
        ex = self._executor()
        if ex is None:
            return []
        from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator

        ops = [op for op in list(ex._topology) if isinstance(op, ActorPoolMapOperator)]
        names = self.pools if len(ops) == len(self.pools) else [f"pool{i}" for i in range(len(ops))]
        table = _actor_table()
        out = []
        for name, op in zip(names, ops):
            pool = op._actor_pool
            ids = [h._actor_id.hex() for h in list(pool._running_actors)]
            actors = []
            for aid in ids:
                row = table.get(aid) or {}
                actors.append({"id": aid[:12], "state": row.get("State", "UNKNOWN"), "pid": row.get("Pid"),
                               "restarts": row.get("NumRestarts"), "node": _ip(row),
                               "death": _death(row.get("DeathCause")) if row.get("State") == "DEAD" else None})
            out.append(PoolState(name, actors, pending=len(pool._pending_actors), completed=op.has_completed()))
        return out

    # -- in-flight records -------------------------------------------------------------------------------------
    def inflight(self, live_pids: set[tuple[str, int]] | None, settled: bool = False) -> tuple[dict, dict]:
        """(shards whose actor died computing them, shards being computed), from the actors' records. A record
        is a death when its process is gone: not among the live actors, or (same host) no such pid."""
        dead: dict[str, list[dict]] = {}
        live: dict[str, list[dict]] = {}
        now = time.monotonic()
        for name in self.store.names(self.staging, INFLIGHT, suffix=".json"):
            try:
                rec = self.store.read_json(self.staging, INFLIGHT, name)
            except Exception:  # noqa: BLE001 - half-written as its actor died
                continue
            rec["_name"] = name  # the ledger notes each death once
            seen = self._first_seen.setdefault(name, now)
            gone = _gone(rec, live_pids)
            # A record younger than two polls may belong to an actor the actor table does not show alive yet
            # (unless the pool is done for: no actor is coming).
            target = dead if gone and (settled or now - seen > 2 * self.poll_s or live_pids is None) else live
            for sid in rec.get("shards", []):
                target.setdefault(sid, []).append(rec)
        return dead, live

    def live_pids(self) -> set[tuple[str, int]] | None:
        try:
            table = _actor_table()
            return {(r["Address"]["NodeID"], r["Pid"]) for r in table.values() if r.get("State") == "ALIVE"}
        except Exception:  # noqa: BLE001
            log.debug("could not read the actor table", exc_info=True)
            return None

    # -- one look ----------------------------------------------------------------------------------------------
    def poll(self, force: bool = False, final: bool = False) -> tuple[dict[str, list[dict]], Verdict | None]:
        """Every ``poll_s``: (shards Ray has given up on since the last look, with their death records; a
        verdict that ends the pass, or None). ``final``: the execution has ended; only a dead pool is news."""
        now = time.monotonic()
        try:  # every call (about once a second): in memory and one GCS query, so a dead pool is seen at once
            pools = self.pool_states()
        except Exception:  # noqa: BLE001 - Ray Data internals moved: fall back on the progress timeout
            log.debug("could not read the pools", exc_info=True)
            pools = []
        gone = [p for p in pools if p.dead]
        if not (force or final or gone) and now - self.t_poll < self.poll_s:
            return {}, None
        self.t_poll = now
        if not final:
            self._sink_progress()
        pids = self.live_pids()
        dead, live = self.inflight(pids, settled=bool(gone))
        self.last_dead = dead
        spent = {s: recs for s, recs in dead.items()
                 if s not in self.charged and len(recs) >= self.batch_attempts}
        if gone:
            return spent, Verdict("pool_dead", dead_message(gone, dead) + self.setup_notes(), pools, dead, live)
        silent = time.monotonic() - self.t_progress
        if not final and silent > self.timeout_s:
            msg = (f"no progress for {silent:.0f} s (ray.progress_timeout_s={self.timeout_s:g}): no row reached the "
                   f"driver and no actor reported; pools: "
                   + ("; ".join(p.describe() for p in pools) or "unknown")
                   + (f"; shards in flight: {', '.join(sorted(live))}" if live else "; no shard in flight"))
            return spent, Verdict("stalled", msg + self.setup_notes(), pools, dead, live)
        return spent, None

    def setup_notes(self) -> str:
        """What the set-up watchdogs of this pass said (actors not ready in ray.lm_setup_timeout_s), if anything."""
        try:
            names = self.store.names(self.staging, SETUP, suffix=".json")
            notes = [self.store.read_json(self.staging, SETUP, n)["message"] for n in names[-3:]]
        except Exception:  # noqa: BLE001 - a message without them is still a message
            return ""
        return f" Set-up timeouts ({len(names)}): " + " | ".join(notes) if notes else ""

    def died_for_good(self) -> list[PoolState]:
        """Pools of this pass with an actor that died of itself and was not restarted (its restarts spent), from
        every actor the execution ran: what a finished execution leaves of a pool that died at its end."""
        ex = self._executor()
        seen = _actors_seen.get(id(ex), set()) if ex is not None else set()
        if not seen:
            return []
        from ray.core.generated import common_pb2

        table = _actor_table()
        by_pool: dict[int, list[dict]] = {}
        for i, aid in seen:
            row = table.get(aid) or {}
            cause = row.get("DeathCause")
            ctx = getattr(cause, "actor_died_error_context", None)
            reason = common_pb2.ActorDiedErrorContext.Reason.Name(ctx.reason) if ctx is not None else ""
            if row.get("State") == "DEAD" and reason in _DIED:
                by_pool.setdefault(i, []).append({"id": aid[:12], "state": "DEAD", "pid": row.get("Pid"), "node": _ip(row),
                                                  "restarts": row.get("NumRestarts"), "death": _death(cause)})
        names = self.pools
        return [PoolState(names[i] if i < len(names) else f"pool{i}", actors) for i, actors in sorted(by_pool.items())]

    def cut(self, reason: str) -> None:
        """End the execution: the executor's forced shutdown kills the pools' actors and ends the iterator."""
        ex = self._executor()
        if ex is None:
            return
        try:
            ex.shutdown(force=True, exception=RuntimeError(f"pass cut by the driver: {reason}"))
        except Exception:  # noqa: BLE001 - the driver stops waiting on it regardless
            log.warning("shutting the pass's execution down failed", exc_info=True)


def _actor_table() -> dict[str, dict]:
    """This job's actors from the GCS (state, pid, restarts, death cause): no dashboard needed."""
    import ray
    from ray._private.state import state as gcs

    return gcs.actor_table(None, job_id=ray.JobID.from_hex(ray.get_runtime_context().get_job_id()))


def _ip(row: dict) -> str | None:
    try:
        return (row.get("Address") or {}).get("IPAddress") or None
    except Exception:  # noqa: BLE001
        return None


def _death(cause) -> str | None:
    if cause is None:
        return None
    try:
        ctx = getattr(cause, "actor_died_error_context", None)
        text = getattr(ctx, "error_message", "") or str(cause)
        return " ".join(text.split())[:300] or None
    except Exception:  # noqa: BLE001
        return None


def _gone(rec: dict, live_pids: set[tuple[str, int]] | None) -> bool:
    pid = rec.get("pid")
    if not isinstance(pid, int):
        return False
    if rec.get("node") == socket.gethostname() and not _pid_alive(pid):
        return True
    if live_pids is None:
        return False
    if rec.get("node_id"):
        return (rec["node_id"], pid) not in live_pids
    return pid not in {p for _, p in live_pids}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_message(pools: list[PoolState], dead: dict[str, list[dict]]) -> str:
    parts = [p.describe() for p in pools]
    held = ", ".join(f"{s} (killed its actor {len(r)} time(s))" for s, r in sorted(dead.items()))
    return ("no live actor and none to come: " + "; ".join(parts) + ". "
            + (f"Shards its actors died computing: {held}. " if held else "No shard was in flight. ")
            + "Every actor spent its restarts (ray.max_actor_restarts) or cannot be placed; the pass was cut and "
              "the pending shards resume with fresh actors.")
