"""Tool calls with a time limit: a call that has not answered in time gets no result (``tool_timeout``).

A text's calls are a ``CallGroup``: they run together with ``timeout`` per call; when that overruns, each call
runs alone so that only the calls that hang lose their result, and after ``MAX_CONSECUTIVE_TIMEOUTS`` in a row the
text's remaining calls are not run (a backend that is down costs a few timeouts per text, not one per call).

Where a call runs decides what a timeout can do about it:

- tools that can hang or burn CPU run in worker processes (``toolformer.tools.worker.ToolWorkers``): a call past
  its deadline is **ended** (its worker is SIGKILLed and replaced): ``tool_timeout: ended after 2 s``;
- cheap pure tools (the Calendar; ``annotate.tool_in_process``) run in this process (``TimedCaller``): Python
  cannot stop a thread, so a call that overruns is abandoned on its daemon thread: ``tool_timeout: no answer in
  2 s``. Past ``max_abandoned`` of them still alive the process is wedged and ``ToolsWedged`` fails the batch.

The funnel counts every ``tool_timeout`` (``tool_timeouts``) and, of those, the calls that were ended
(``tool_calls_ended``); a worker that died during a call (a segfault, the OOM killer) costs that call
``tool_exception: ToolWorkerDied: …`` (``tool_worker_deaths``, within ``tool_exceptions``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

from toolformer.run.faults import tool_fault
from toolformer.tools.base import TOOL_EXCEPTION, Tool, ToolRequest, ToolResult

TOOL_TIMEOUT = "tool_timeout"
ENDED = f"{TOOL_TIMEOUT}: ended"  # the call ran past its deadline and its worker process was killed
WORKER_DIED = f"{TOOL_EXCEPTION}: ToolWorkerDied"  # the worker process died during the call
MAX_CONSECUTIVE_TIMEOUTS = 3
log = logging.getLogger(__name__)


class ToolsWedged(RuntimeError):
    """A tool keeps failing in a way no single call explains (threads that never end, workers that keep dying)."""


class CallGroup:
    """One text's calls on one tool, through their deadline: ``next_unit`` says what to run next (all calls
    together first, then one at a time after an overrun), ``answered`` / ``overran`` / ``died`` report how it
    went, and ``results`` holds a ``ToolResult`` per request once ``next_unit`` returns None."""

    def __init__(self, key: str | None, requests: Sequence[ToolRequest], timeout: float,
                 max_consecutive: int = MAX_CONSECUTIVE_TIMEOUTS):
        self.key, self.requests, self.timeout = key, list(requests), float(timeout)
        self.max_consecutive = max_consecutive
        self.results: list[ToolResult | None] = [None] * len(self.requests)
        self.single: int | None = None  # the next call to run alone; None while the group has not failed
        self.streak = 0  # timeouts (or deaths) in a row among the single calls
        self.spent_s = 0.0  # seconds its calls ran (a killed call counts its timeout)
        self.overruns = 0

    @property
    def finished(self) -> bool:
        return all(r is not None for r in self.results)

    def next_unit(self) -> tuple[list[int], float] | None:
        """(request indices, timeout) to run next, or None when every request has its result."""
        n = len(self.requests)
        if self.finished:
            return None
        if self.single is None:
            return list(range(n)), self.timeout * n
        while self.single < n and self.results[self.single] is not None:
            self.single += 1
        while self.single < n and self.streak >= self.max_consecutive:
            self.results[self.single] = ToolResult(
                None, f"{TOOL_TIMEOUT}: not run, {self.streak} calls of this text timed out before it")
            self.single += 1
        return ([self.single], self.timeout) if self.single < n else None

    def answered(self, idx: list[int], results: Sequence[ToolResult]) -> None:
        if len(results) != len(idx):
            results = [ToolResult(None, f"{TOOL_EXCEPTION}: ToolWorkerError: {len(results)} results for "
                                        f"{len(idx)} calls")] * len(idx)
        for i, r in zip(idx, results):
            self.results[i] = r
        if self.single is not None:
            self.streak = 0

    def _failed(self, idx: list[int], error: str) -> None:
        if len(idx) > 1:  # the group as a whole: find out which calls are to blame, one at a time
            self.single = 0
            return
        self.results[idx[0]] = ToolResult(None, error)
        self.streak += 1
        if self.single is None:  # a group of one call: it has had its chance
            self.single = 0

    def overran(self, idx: list[int], ended: bool) -> None:
        """The unit did not answer within its timeout: ``ended`` when its worker was killed, else abandoned."""
        self.overruns += 1
        t = self.timeout * len(idx)
        self._failed(idx, f"{ENDED} after {t:g} s" if ended else f"{TOOL_TIMEOUT}: no answer in {t:g} s")

    def died(self, idx: list[int], why: str) -> None:
        """The worker process died during the unit (a crash of the tool's native code, the OOM killer)."""
        self._failed(idx, f"{WORKER_DIED}: {why}")


class TimedCaller:
    """Runs call groups of a tool in this process, each call on a daemon thread abandoned when it overruns (for
    cheap pure tools; the others run in worker processes, ``toolformer.tools.worker``)."""

    def __init__(self, max_abandoned: int = 8, max_consecutive_timeouts: int = MAX_CONSECUTIVE_TIMEOUTS):
        self.max_abandoned, self.max_consecutive = max_abandoned, max_consecutive_timeouts
        self._abandoned: list[threading.Thread] = []
        self._logged: set[str] = set()
        self.timeouts = 0

    def _run(self, fn: Callable[[], list[ToolResult]], timeout: float) -> list[ToolResult] | None:
        """``fn()``'s value, or None when it overran. Each call gets a daemon thread of its own (a thread pool's
        workers are joined at interpreter exit: one hung call would then keep the process from ever ending)."""
        box: dict = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=target, name="tool-call", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            self._abandoned = [t for t in self._abandoned if t.is_alive()] + [worker]
            if len(self._abandoned) > self.max_abandoned:
                raise ToolsWedged(f"{len(self._abandoned)} timed-out tool calls are still running in this process")
            return None
        if "error" in box:
            raise box["error"]
        return box["value"]

    def run(self, tool: Tool, groups: Sequence[CallGroup]) -> None:
        """Every group to its end, one after the other."""
        for g in groups:
            while (unit := g.next_unit()) is not None:
                idx, timeout = unit
                reqs = [g.requests[i] for i in idx]

                def call(reqs=reqs, key=g.key) -> list[ToolResult]:
                    tool_fault(tool.name, key)
                    return tool.call(reqs)

                t0 = time.perf_counter()
                got = self._run(call, timeout)
                g.spent_s += time.perf_counter() - t0
                if got is None:
                    self.timeouts += len(idx) == 1
                    g.overran(idx, ended=False)
                    if tool.name not in self._logged:  # once per tool: a slow backend shows, a storm does not
                        self._logged.add(tool.name)
                        log.warning("%s: calls timed out after %g s (later timeouts are counted as tool_timeout, "
                                    "not logged)", tool.name, timeout)
                else:
                    g.answered(idx, got)

    def call(self, tool: Tool, requests: Sequence[ToolRequest], timeout: float, key: str | None = None) -> list[ToolResult]:
        """Results of one text's calls; a call that overruns ``timeout`` seconds gets ``tool_timeout``."""
        g = CallGroup(key, requests, timeout, self.max_consecutive)
        self.run(tool, [g])
        return list(g.results)  # type: ignore[arg-type]


class InProcessTool:
    """A set-up tool run in this process under ``TimedCaller`` (the runner interface ``ToolWorkers`` has)."""

    def __init__(self, tool: Tool):
        self.tool, self.name = tool, tool.name
        self.caller = TimedCaller()

    def setup(self) -> "InProcessTool":
        self.tool.setup()
        return self

    def start(self) -> "InProcessTool":
        return self

    def wait_ready(self) -> "InProcessTool":
        return self.setup()

    def run(self, groups: Sequence[CallGroup]) -> None:
        self.caller.run(self.tool, groups)

    def describe(self) -> dict:
        return {"tool": self.name, "in_process": True, "timeouts": self.caller.timeouts}

    def close(self) -> None:
        pass
