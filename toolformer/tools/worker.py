"""Tool calls in worker processes that a timeout really ends (issue 27, item 4).

Python cannot stop a thread, and a call that holds the GIL in C code (a huge power, a regular expression that
backtracks, a C extension's loop) stops every other thread of its process too, the LM watchdog among them. So
the tools that can hang or burn CPU run in a worker process of their own: ``ToolWorkers`` owns one (or a few,
``annotate.tool_workers``) per tool, each holding the set-up tool (its index and model loaded once per process).
A call past its deadline SIGKILLs its worker, the call gets ``tool_timeout: ended after …``, and a fresh worker
is started at once (its set-up overlaps whatever the caller does next). The caller only ever waits in
``select``-style calls that release the GIL, so its other threads (the watchdog, Ray's) keep running.

How the processes are made, and why: Ray actors and vLLM engines run many threads, and ``fork`` copies the
locks those threads hold (malloc, logging, OpenMP) into a child that can then deadlock; ``multiprocessing``'s
``spawn`` and ``forkserver`` re-import the parent's ``__main__`` in the child, which in a Ray actor is Ray's
``default_worker.py`` (Ray itself, for nothing). A worker is therefore a fresh interpreter started with
``subprocess`` (``fork_exec``: async-signal-safe between fork and exec, safe beside threads) running
``worker_process.worker_main``; requests and results are pickled over a socket pair (``multiprocessing.connection``).

No orphans: a worker asks the kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``, Linux; it
fires even while the worker's tool holds the GIL), and, on any platform, ends when its socket closes or its parent
pid changes. PDEATHSIG follows the parent *thread* that started the child, so every worker is started from one
launcher thread that lives as long as the process. ``close()`` (and interpreter exit) ends the workers.

Restarts are bounded: past ``max_restarts`` replacements in a row without a call answered in between, the tool
is wedged and ``ToolsWedged`` fails the batch (its shard is retried, then quarantined); the next batch starts
with fresh workers. A worker that fails its set-up (a missing index, a bad model path) is an error at once.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

from toolformer.tools.base import TOOL_EXCEPTION, Tool, ToolRequest, ToolResult, make_options, tool_class
from toolformer.tools.deadline import CallGroup, ToolsWedged

log = logging.getLogger(__name__)

FAULT_PREFIX = "TOOLFORMER_FAULT_"  # forwarded with every call: a test may set a fault after the worker started
KILL_WAIT_S = 5.0  # reaping a SIGKILLed worker; past this it is left to the kernel (a process in D state)
STOP_WAIT_S = 2.0  # a worker asked to stop at close() gets this long before it is killed


class ToolWorkerError(RuntimeError):
    """A worker could not start its tool (set-up raised, timed out, or the process died): an execution error."""


@dataclass(frozen=True)
class ToolSpec:
    """What a worker builds: a Tool class by module and name, and its options (plain, picklable values)."""

    module: str
    cls: str
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cls

    @staticmethod
    def of(tool: str | type[Tool], options: dict | None = None) -> "ToolSpec":
        """A registered tool by name (options checked here, before any process starts), or a Tool class."""
        cls = tool_class(tool) if isinstance(tool, str) else tool
        opts = dict(options or {})
        make_options(cls.Options, opts, cls.name)
        return ToolSpec(cls.__module__, cls.__qualname__, opts)


# -- the launcher: every worker is started from one long-lived thread (PDEATHSIG follows the starting thread) --
_launch_queue: "queue.Queue | None" = None
_launch_lock = threading.Lock()


def _launcher_loop(q: "queue.Queue") -> None:
    while True:
        fn, box, done = q.get()
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc
        done.set()


def _launch(fn):
    global _launch_queue
    with _launch_lock:
        if _launch_queue is None:
            _launch_queue = queue.Queue()
            threading.Thread(target=_launcher_loop, args=(_launch_queue,), name="tool-worker-launcher",
                             daemon=True).start()
    box: dict = {}
    done = threading.Event()
    _launch_queue.put((fn, box, done))
    done.wait()
    if "error" in box:
        raise box["error"]
    return box["value"]


_LIVE: "weakref.WeakSet[ToolWorker]" = weakref.WeakSet()


@atexit.register
def _end_all() -> None:
    for w in list(_LIVE):
        w.kill()


def rss_kb(pid: int) -> int | None:
    """Resident set size of a process (Linux ``/proc``), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class ToolWorker:
    """One worker process holding one set-up tool. Not thread-safe: one caller at a time."""

    def __init__(self, spec: ToolSpec, label: str = ""):
        self.spec, self.label = spec, label or spec.name
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.ready = False
        self.info: dict = {}  # pid, rss_kb, setup_s: what the worker reported when its tool was set up
        self.started_at = 0.0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.conn is not None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the process and send it its tool; returns at once (``wait_ready`` waits for the set-up)."""
        self.kill()
        parent, child = socket.socketpair()
        boot = ("import sys; sys.path[:0] = {path!r}; from toolformer.tools.worker_process import worker_main; "
                "worker_main()").format(path=[p for p in sys.path if p])
        argv = [sys.executable, "-c", boot, str(child.fileno()), str(os.getpid())]
        try:
            self.proc = _launch(lambda: subprocess.Popen(argv, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                                         start_new_session=True))
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.ready, self.info, self.started_at = False, {}, time.monotonic()
        _LIVE.add(self)
        try:
            self.conn.send(self.spec)
        except OSError:
            pass  # it died at once: wait_ready reads why

    def wait_ready(self, timeout: float) -> None:
        """Block (GIL released) until the tool is set up in the worker; ``ToolWorkerError`` otherwise."""
        if self.ready:
            return
        if self.conn is None:
            raise ToolWorkerError(f"{self.label}: the worker was not started")
        left = max(0.0, timeout - (time.monotonic() - self.started_at))
        try:
            got = self.conn.recv() if self.conn.poll(left) else None
        except (EOFError, OSError):
            got = ("died", self._exit_text())
        if got is None:
            self.kill()
            raise ToolWorkerError(f"{self.label}: the tool worker did not finish its set-up in {timeout:g} s "
                                  "(annotate.tool_setup_timeout_s)")
        if got[0] != "ready":
            self.kill()
            raise ToolWorkerError(f"{self.label}: the tool worker failed to set up its tool: {got[1]}")
        self.ready, self.info = True, got[1]

    def send(self, key: str | None, requests: Sequence[ToolRequest]) -> None:
        assert self.conn is not None and self.ready
        fault = {k: v for k, v in os.environ.items() if k.startswith(FAULT_PREFIX)}
        self.conn.send(("call", key, list(requests), fault))

    def receive(self) -> tuple[str, Any]:
        """The reply to the call in flight: ("ok", results), ("error", text) or ("died", text)."""
        assert self.conn is not None
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            why = self._exit_text()
        except pickle.UnpicklingError as exc:
            why = f"an unreadable reply ({exc})"
        self.kill()
        return "died", why

    def _exit_text(self) -> str:
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        if code is None:
            return "the worker process stopped answering"
        if code < 0:
            try:
                return f"the worker process was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"the worker process was killed by signal {-code}"
        return f"the worker process exited with code {code}"

    def kill(self) -> None:
        """SIGKILL the worker (and anything it started: it leads its own process group) and reap it."""
        proc, conn = self.proc, self.conn
        self.proc, self.conn, self.ready = None, None, False
        _LIVE.discard(self)
        if conn is not None:
            conn.close()
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
            try:
                proc.wait(KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s: tool worker pid %s did not end %g s after SIGKILL", self.label, proc.pid, KILL_WAIT_S)

    def __del__(self) -> None:  # a pool dropped without close() (a local run's stages) still ends its workers
        try:
            self.kill()
        except Exception:  # noqa: BLE001 - at interpreter exit modules may be half gone
            pass

    def close(self) -> None:
        """Ask the worker to stop, then kill it if it has not within a moment."""
        if self.conn is not None and self.proc is not None and self.proc.poll() is None:
            try:
                self.conn.send(("stop",))
                self.proc.wait(STOP_WAIT_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class ToolWorkers:
    """The worker processes of one tool in this process, and the scheduler that runs call groups on them.

    ``run(groups)`` runs each group (one text's calls, ``deadline.CallGroup``) on whichever worker is free, one
    unit of a group at a time: all its calls together, and after an overrun each call alone. A unit past its
    deadline kills its worker and is answered ``tool_timeout: ended …``; a worker that dies during a call costs
    that unit ``tool_exception: ToolWorkerDied: …``. Either way a replacement starts at once."""

    def __init__(self, spec: ToolSpec, workers: int = 1, setup_timeout_s: float = 600.0, max_restarts: int = 8):
        self.spec, self.name = spec, spec.name
        self.setup_timeout_s, self.max_restarts = float(setup_timeout_s), max(0, int(max_restarts))
        self.workers = [ToolWorker(spec, f"{spec.name}[{i}]") for i in range(max(1, int(workers)))]
        self.restarts_in_a_row = 0
        self.stats = {"calls": 0, "ended": 0, "died": 0, "restarts": 0}

    def start(self) -> "ToolWorkers":
        """Start every worker (their set-ups run in parallel); ``wait_ready`` to wait for them."""
        for w in self.workers:
            if not w.alive:
                w.start()
        return self

    def wait_ready(self) -> "ToolWorkers":
        for w in self.workers:
            w.wait_ready(self.setup_timeout_s)
        return self

    def setup(self) -> "ToolWorkers":
        return self.start().wait_ready()

    def describe(self) -> dict:
        """Per worker: pid, set-up seconds and RSS (now), and the pool's counters."""
        out = []
        for w in self.workers:
            pid = w.pid if w.alive else None
            out.append({"pid": pid, "setup_s": w.info.get("setup_s"), "rss_mb": round((rss_kb(pid) or 0) / 1024, 1)
                        if pid else None})
        return {"tool": self.name, "workers": out, **self.stats}

    def _replace(self, w: ToolWorker) -> None:
        w.kill()
        self.stats["restarts"] += 1
        self.restarts_in_a_row += 1
        if self.restarts_in_a_row > self.max_restarts:
            self.restarts_in_a_row = 0  # the next batch starts afresh
            raise ToolsWedged(f"{self.name}: {self.max_restarts + 1} tool worker replacements in a row with no call "
                              "answered in between (annotate.tool_max_restarts): the tool is wedged")
        w.start()

    def _ensure(self, w: ToolWorker) -> None:
        if not w.alive:
            w.start()
        w.wait_ready(self.setup_timeout_s)

    def _dispatch(self, w: ToolWorker, key: str | None, requests: list[ToolRequest]) -> None:
        """Send a call to a ready worker; one that died while idle (the OOM killer) is replaced first."""
        for attempt in (0, 1):
            self._ensure(w)
            try:
                w.send(key, requests)
                return
            except OSError:
                if attempt:
                    raise ToolWorkerError(f"{w.label}: a fresh tool worker would not take a call") from None
                self.stats["died"] += 1
                self._replace(w)

    def run(self, groups: Sequence[CallGroup]) -> None:
        """Run every group to its end (each one's ``results`` filled)."""
        todo = deque(groups)
        idle = list(reversed(self.workers))
        busy: dict[ToolWorker, tuple[CallGroup, list[int], float, float]] = {}
        try:
            while todo or busy:
                while todo and idle:
                    g = todo.popleft()
                    unit = g.next_unit()
                    if unit is None:
                        continue
                    w = idle.pop()
                    idx, timeout = unit
                    self._dispatch(w, g.key, [g.requests[i] for i in idx])
                    self.stats["calls"] += 1
                    now = time.monotonic()
                    busy[w] = (g, idx, now + timeout, now)
                if not busy:
                    continue
                next_deadline = min(d for _, _, d, _ in busy.values())
                answered = set(wait([w.conn for w in busy], max(0.0, next_deadline - time.monotonic())))
                for w in list(busy):
                    g, idx, deadline, sent = busy[w]
                    if w.conn in answered or w.conn.poll(0):
                        kind, value = w.receive()
                        g.spent_s += time.monotonic() - sent
                        if kind == "ok":
                            self.restarts_in_a_row = 0
                            g.answered(idx, value)
                        elif kind == "error":  # the worker's loop itself failed (not the tool): the calls fail
                            g.answered(idx, [ToolResult(None, f"{TOOL_EXCEPTION}: ToolWorkerError: {value}")] * len(idx))
                        else:
                            self.stats["died"] += 1
                            g.died(idx, value)
                            del busy[w]
                            self._replace(w)
                            idle.append(w)
                            todo.append(g)
                            continue
                    elif time.monotonic() >= deadline:
                        g.spent_s += time.monotonic() - sent
                        self.stats["ended"] += 1
                        g.overran(idx, ended=True)
                        del busy[w]
                        self._replace(w)
                        idle.append(w)
                        todo.append(g)
                        continue
                    else:
                        continue
                    del busy[w]
                    idle.append(w)
                    todo.append(g)
        finally:
            for w in busy:  # an exception left calls in flight: their replies must never answer a later call
                w.kill()

    def close(self) -> None:
        for w in self.workers:
            w.close()


# -- the worker process -----------------------------------------------------------------------------------------
