"""Which shard a dead actor or a stuck batch belongs to, and why it died.

Ray retries a task whose actor died (bounded by ``ray.batch_attempts``), then Ray Data drops that block and the
execution goes on (``DataContext.max_errored_blocks``); the driver only sees that a shard's rows never arrived.
Three small records close the gap:

- ``InflightRecord`` (actor side): before computing a batch an LM or tool actor writes which shards it holds to
  ``<staging>/_inflight/<actor>.json`` and deletes the file when the batch is done. A file that outlives its
  pass names the shards an actor died holding, one file per death.
- ``Watchdog`` (actor side): an engine call (sampling, scoring) still running after ``ray.lm_batch_timeout_s``
  is stuck; the watchdog notes that in the in-flight record and ends the process, so Ray restarts the actor and
  retries the batch as any killed one. Tool calls are not timed by it (they have their own timeouts).
- ``EngineCheck`` (actor side): after an engine call raised, whether the engine itself is dead (vLLM's
  ``EngineDeadError``, a failed one-token probe, or ``ray.lm_dead_after_errors`` failing chunks in a row); if so it
  notes ``engine dead: ...`` in the in-flight record and ends the process (exit 72), so the death path applies
  (restart, node ledger, exclusion) instead of error rows charged to the healthy shards the actor would pull.
- ``explain`` (driver side): the shard's failure record says how its actor died: Ray's exit type and detail for
  that worker process (from the GCS worker table: Ray's own words, e.g. "Worker unexpectedly exits ... killed by
  the OOM killer ... SIGSEGV"), the watchdog's note if it was the watchdog, and the dead process's last log
  lines (its log files are named in the in-flight record and read on its node; a segfault's traceback is there,
  as stage actors run with ``faulthandler``).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid

from toolformer.run.store import Store

INFLIGHT = "_inflight"
SETUP = "_setup"  # notes of actors ended by their set-up watchdog, read by the driver for its messages
log = logging.getLogger(__name__)


class InflightRecord:
    """The shards an actor is computing, in the store while it computes them."""

    def __init__(self, run_uri: str | None, staging: str | None, stage: str):
        self.store = Store(run_uri) if run_uri and staging else None
        self.staging, self.stage = staging, stage
        self.name = f"{stage}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}.json"
        self.current: dict | None = None

    def begin(self, shard_ids: list[str]) -> None:
        self.current = {"stage": self.stage, "pid": os.getpid(), "node": socket.gethostname(),
                        "node_id": _node_id(), "logs": _log_files(), "shards": shard_ids, "started": time.time(),
                        "note": None}
        self._write()

    def note(self, text: str) -> None:
        if self.current is not None:
            self.current["note"] = text
            self._write()

    def end(self) -> None:
        self.current = None
        if self.store is not None:
            try:
                self.store.delete_file(self.staging, INFLIGHT, self.name)
            except Exception:  # noqa: BLE001 - bookkeeping must never fail a batch
                log.debug("could not delete in-flight record %s", self.name, exc_info=True)

    def _write(self) -> None:
        if self.store is not None and self.current is not None:
            try:
                self.store.write_json(self.current, self.staging, INFLIGHT, self.name)
            except Exception:  # noqa: BLE001
                log.debug("could not write in-flight record %s", self.name, exc_info=True)


class Watchdog:
    """Ends this process when one engine call runs longer than ``timeout_s`` (a hung engine never returns).

    It times engine calls only (``begin``/``end`` around each one, from the LM stages' ``StageClock``): a long
    tool phase in the fused ``lm`` stage is not a hung engine, and tools keep their own timeouts. Its thread
    sleeps in ``time.sleep``, and tool calls run in worker processes, so a tool that holds the GIL cannot starve
    it."""

    EXIT_CODE = 70

    def __init__(self, timeout_s: float, record: InflightRecord, poll_s: float | None = None):
        self.timeout_s, self.record = timeout_s, record
        self.poll_s = poll_s or max(0.5, min(10.0, timeout_s / 20))
        self.started: float | None = None
        self.what: str | None = None
        self.ticks = 0  # polls so far: a test sees the thread alive
        if timeout_s and timeout_s > 0:
            threading.Thread(target=self._watch, name="lm-watchdog", daemon=True).start()

    def begin(self, what: str | None = None) -> None:
        self.what = what
        self.started = time.monotonic()

    def end(self) -> None:
        self.started = None

    def _watch(self) -> None:
        while True:
            time.sleep(self.poll_s)
            self.ticks += 1
            started = self.started
            if started is not None and time.monotonic() - started > self.timeout_s:
                message = (f"watchdog: the {self.record.stage} batch ran over ray.lm_batch_timeout_s="
                           f"{self.timeout_s:g} s in one engine call ({self.what or 'engine'}); the actor "
                           f"(pid {os.getpid()}) was ended to retry it")
                self.record.note(message)
                print(message, file=sys.stderr, flush=True)
                self._exit()

    def _exit(self) -> None:
        os._exit(self.EXIT_CODE)


class EngineCheck:
    """Ends this process when its engine is dead, keeping the shard in flight (see the module's docstring)."""

    EXIT_CODE = 72

    def __init__(self, engine, record: InflightRecord, clock=None, dead_after: int = 3):
        self.engine, self.record, self.clock, self.dead_after = engine, record, clock, max(0, int(dead_after))
        self.in_a_row = 0

    def worked(self) -> None:
        self.in_a_row = 0

    def failed(self, exc: BaseException) -> None:
        """A chunk raised ``exc``: return when the input is to blame (the engine still answers), else exit."""
        from toolformer.engine.base import engine_is_dead, probe

        self.in_a_row += 1
        why = None
        if engine_is_dead(exc):
            why = f"{type(exc).__name__}: {str(exc)[:200]}"
        elif self.engine is not None:
            if self.clock is not None:
                with self.clock.engine("probe"):  # a probe that hangs is a hung engine: the watchdog times it
                    bad = probe(self.engine)
            else:
                bad = probe(self.engine)
            if bad is not None:
                why = (f"{type(exc).__name__} in a batch, then the engine failed a one-token probe "
                       f"({type(bad).__name__}: {str(bad)[:160]})")
        if why is None and self.dead_after and self.in_a_row >= self.dead_after:
            why = f"{self.in_a_row} chunks in a row raised (ray.lm_dead_after_errors), the last {type(exc).__name__}"
        if why is None:
            return
        message = (f"engine dead: the {self.record.stage} actor (pid {os.getpid()}) on node {socket.gethostname()} "
                   f"ends itself to be replaced: {why}")
        self.record.note(message)
        print(message, file=sys.stderr, flush=True)
        self._exit()

    def _exit(self) -> None:
        os._exit(self.EXIT_CODE)


class SetupWatchdog:
    """Ends this process when its set-up (the engine start) is not done after ``timeout_s``
    (``ray.lm_setup_timeout_s``): Ray replaces the actor (a restart), and a pool that never gets ready dies for
    good, which ends the pass with the pool's actors and nodes named. ``done`` stops it."""

    EXIT_CODE = 71

    def __init__(self, timeout_s: float | None, stage: str, run_uri: str | None = None, staging: str | None = None):
        self.stage, self.run_uri, self.staging = stage, run_uri, staging
        self._done = threading.Event()
        if timeout_s and timeout_s > 0:
            threading.Thread(target=self._watch, args=(float(timeout_s),), name="setup-watchdog", daemon=True).start()

    def done(self) -> None:
        self._done.set()

    def _watch(self, timeout_s: float) -> None:
        if self._done.wait(timeout_s):
            return
        message = (f"setup watchdog: the ray.{self.stage} actor (pid {os.getpid()}) on node {socket.gethostname()} "
                   f"({_node_id() or 'no Ray'}) was not ready after ray.lm_setup_timeout_s={timeout_s:g} s: ended to "
                   f"be replaced")
        print(message, file=sys.stderr, flush=True)
        self._note("setup_timeout", message)
        os._exit(self.EXIT_CODE)

    def failed(self, exc: BaseException) -> None:
        """The set-up raised (the engine did not start): noted for the node's ledger; the caller re-raises."""
        self.done()
        self._note("setup_failed", f"the ray.{self.stage} actor (pid {os.getpid()}) on node {socket.gethostname()} "
                                   f"failed its set-up: {type(exc).__name__}: {str(exc)[:600]}")

    def _note(self, cause: str, message: str) -> None:
        """One note per failed set-up, with its node: the driver puts it on the node's ledger (``blame``)."""
        if not (self.run_uri and self.staging):
            return
        try:
            Store(self.run_uri).write_json({"message": message, "at": time.time(), "cause": cause,
                                            "node_id": _node_id(), "host": socket.gethostname(), "pid": os.getpid(),
                                            "stage": self.stage}, self.staging, SETUP,
                                           f"{self.stage}-{os.getpid()}-{uuid.uuid4().hex[:6]}.json")
        except Exception:  # noqa: BLE001 - the line in its log still says it
            pass


def inflight_deaths(store: Store, staging: str) -> dict[str, list[dict]]:
    """Shard id → the in-flight records left by actors that died holding it (one per death)."""
    out: dict[str, list[dict]] = {}
    for name in store.names(staging, INFLIGHT, suffix=".json"):
        try:
            rec = store.read_json(staging, INFLIGHT, name)
        except Exception:  # noqa: BLE001 - a record half-written as the actor died: nothing to learn from it
            continue
        rec["_name"] = name
        for sid in rec.get("shards", []):
            out.setdefault(sid, []).append(rec)
    return out


def _node_id() -> str | None:
    try:
        import ray

        if not ray.is_initialized():  # asking the runtime context would start (or join) a Ray of its own
            return None
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (the local runner, a unit test)
        return None


def _log_files() -> list[str]:
    """Where this process's stdout and stderr go (Ray points them at the worker's log files)."""
    out = []
    for fd in (1, 2):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if path.startswith("/") and path not in out:
            out.append(path)
    return out


_EXIT_TYPES = {0: "SYSTEM_ERROR", 1: "INTENDED_SYSTEM_EXIT", 2: "USER_ERROR", 3: "INTENDED_USER_EXIT",
               4: "NODE_OUT_OF_MEMORY"}


def worker_exits(pids: set[int]) -> dict[int, str]:
    """Ray's exit type and detail of these (dead) worker processes, from the GCS worker table (no dashboard
    needed). Best effort: an internal table, so any failure leaves the cause without Ray's words."""
    if not pids:
        return {}
    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        out = {}
        for raw in state._connect_and_get_accessor().get_worker_table():
            w = gcs_pb2.WorkerTableData.FromString(raw)
            if w.pid in pids and not w.is_alive:
                kind = _EXIT_TYPES.get(w.exit_type, str(w.exit_type))
                detail = " ".join((w.exit_detail or "").split())
                out[w.pid] = f"Ray: worker exit type {kind}: {detail[:400]}"
        return out
    except Exception:  # noqa: BLE001
        log.debug("could not read the worker table", exc_info=True)
        return {}


def _tail(paths: list[str], lines: int) -> str:
    out = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace").splitlines()[-lines:]
        except OSError:
            continue
        if any(t.strip() for t in text):
            out.append(f"{path}:\n" + "\n".join(text))
    return "\n".join(out)


def log_tail(record: dict, lines: int = 20, timeout: float = 30.0) -> str | None:
    """The last lines the dead process wrote to its log files: read here when they are on this machine, else
    by a small task on the node it ran on."""
    paths = record.get("logs") or []
    if not paths:
        return None
    if all(os.path.exists(p) for p in paths) and (record.get("node_id") in (None, _node_id())):
        return _tail(paths, lines) or None
    try:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not record.get("node_id"):
            return None
        task = ray.remote(_tail).options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            record["node_id"], soft=False))
        return ray.get(task.remote(paths, lines), timeout=timeout) or None
    except Exception:  # noqa: BLE001 - a node that is gone took its logs with it
        return None


def explain(sid: str, deaths: list[dict], exits: dict[int, str], with_logs: bool = True) -> tuple[str, str]:
    """(one-line cause, details) of a shard whose batch killed its actor ``len(deaths)`` times."""
    stages = sorted({d["stage"] for d in deaths})
    pids = [d["pid"] for d in deaths]
    notes = [d["note"] for d in deaths if d.get("note")]
    causes = [exits[p] for p in pids if p in exits]
    head = (f"ActorDied: the {'/'.join(stages)} actor died {len(deaths)} time(s) computing a batch of {sid} "
            f"(pids {pids})")
    why = notes[-1] if notes else (causes[-1] if causes else "no exit detail recorded (the node may be gone)")
    message = f"{head}: {why}"
    details = [message]
    if with_logs:
        tail = log_tail(deaths[-1])
        if tail:
            details.append(f"last log lines of pid {pids[-1]}:\n{tail}")
    return message, "\n\n".join(details)
