"""Which shard a dead actor or a stuck batch belongs to, and why it died.

Ray retries a task whose actor died (bounded by ``ray.batch_attempts``), then Ray Data drops that block and the
execution goes on (``DataContext.max_errored_blocks``); the driver only sees that a shard's rows never arrived.
Three small records close the gap:

- ``InflightRecord`` (actor side): before computing a batch an LM or tool actor writes which shards it holds to
  ``<staging>/_inflight/<actor>.json`` and deletes the file when the batch is done. A file that outlives its
  pass names the shards an actor died holding, one file per death.
- ``Watchdog`` (actor side): a batch still computing after ``ray.lm_batch_timeout_s`` is stuck; the watchdog
  notes that in the in-flight record and ends the process, so Ray restarts the actor and retries the batch as
  any killed one.
- ``ErroredBlocks`` (driver side): keeps the last errors Ray Data logged for dropped blocks (an
  ``ActorDiedError`` names the pid and the exit cause), so the shard's failure record says how the actor died.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict

from toolformer.shards import Store

INFLIGHT = "_inflight"
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
                        "shards": shard_ids, "started": time.time(), "note": None}
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
    """Ends this process when one batch runs longer than ``timeout_s`` (a hung engine never returns)."""

    EXIT_CODE = 70

    def __init__(self, timeout_s: float, record: InflightRecord, poll_s: float | None = None):
        self.timeout_s, self.record = timeout_s, record
        self.poll_s = poll_s or max(0.5, min(10.0, timeout_s / 20))
        self.started: float | None = None
        if timeout_s and timeout_s > 0:
            threading.Thread(target=self._watch, name="lm-watchdog", daemon=True).start()

    def begin(self) -> None:
        self.started = time.monotonic()

    def end(self) -> None:
        self.started = None

    def _watch(self) -> None:
        while True:
            time.sleep(self.poll_s)
            started = self.started
            if started is not None and time.monotonic() - started > self.timeout_s:
                message = (f"watchdog: the {self.record.stage} batch ran over ray.lm_batch_timeout_s="
                           f"{self.timeout_s:g} s; the actor (pid {os.getpid()}) was ended to retry it")
                self.record.note(message)
                print(message, file=sys.stderr, flush=True)
                os._exit(self.EXIT_CODE)


def inflight_deaths(store: Store, staging: str) -> dict[str, list[dict]]:
    """Shard id → the in-flight records left by actors that died holding it (one per death)."""
    out: dict[str, list[dict]] = {}
    for name in store.names(staging, INFLIGHT, suffix=".json"):
        try:
            rec = store.read_json(staging, INFLIGHT, name)
        except Exception:  # noqa: BLE001 - a record half-written as the actor died: nothing to learn from it
            continue
        for sid in rec.get("shards", []):
            out.setdefault(sid, []).append(rec)
    return out


_PID = re.compile(r"\bpid[:=]\s*(\d+)")


class ErroredBlocks(logging.Handler):
    """Captures the errors of blocks Ray Data dropped (bounded: the most recent ``keep``), by worker pid."""

    LOGGER = "ray.data._internal.execution.streaming_executor_state"

    def __init__(self, keep: int = 256):
        super().__init__(level=logging.ERROR)
        self.keep = keep
        self.by_pid: OrderedDict[int, str] = OrderedDict()
        self.recent: list[str] = []
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if "exception was raised from a task" not in record.getMessage():
                return
            exc = record.exc_info[1] if record.exc_info else None
            text = f"{type(exc).__name__}: {exc}" if exc is not None else record.getMessage()
            self.count += 1
            self.recent = (self.recent + [text])[-8:]
            for pid in {int(p) for p in _PID.findall(text)}:
                self.by_pid[pid] = text
                self.by_pid.move_to_end(pid)
                while len(self.by_pid) > self.keep:
                    self.by_pid.popitem(last=False)
        except Exception:  # noqa: BLE001 - a log handler must never raise
            pass

    def __enter__(self) -> "ErroredBlocks":
        logging.getLogger(self.LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)


def exit_cause(text: str) -> str:
    """The part of a Ray actor-death message that says how it died."""
    for key in ("Worker exit detail:", "exit detail:", "The actor is dead because"):
        i = text.find(key)
        if i >= 0:
            return " ".join(text[i:].split())[:600]
    return " ".join(text.split())[:600]


def log_tail(pid: int, node: str | None = None, lines: int = 20, timeout: float = 10.0) -> str | None:
    """The last lines a (dead) worker process wrote to its Ray log, when Ray's state API can still find them."""
    try:
        from ray.util.state import get_log

        out = []
        for suffix in ("err", "out"):
            try:
                got = "".join(get_log(pid=pid, tail=lines, timeout=int(timeout), suffix=suffix))
            except Exception:  # noqa: BLE001
                got = ""
            if got.strip():
                out.append(got.strip())
        return "\n".join(out)[-4000:] or None
    except Exception:  # noqa: BLE001 - best effort: the cause stands without the log
        return None


def explain(sid: str, deaths: list[dict], errors: ErroredBlocks, with_logs: bool = True) -> tuple[str, str]:
    """(one-line cause, details) of a shard whose batch killed its actor ``len(deaths)`` times."""
    stages = sorted({d["stage"] for d in deaths})
    pids = [d["pid"] for d in deaths]
    notes = [d["note"] for d in deaths if d.get("note")]
    causes = [exit_cause(errors.by_pid[p]) for p in pids if p in errors.by_pid]
    head = (f"ActorDied: the {'/'.join(stages)} actor died {len(deaths)} time(s) computing a batch of {sid} "
            f"(pids {pids})")
    why = notes[-1] if notes else (causes[-1] if causes else None)
    message = f"{head}: {why}" if why else head
    details = [message]
    if with_logs and pids:
        tail = log_tail(pids[-1])
        if tail:
            details.append(f"last log lines of pid {pids[-1]}:\n{tail}")
    return message, "\n\n".join(details)
