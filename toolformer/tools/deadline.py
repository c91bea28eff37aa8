"""Tool calls with a time limit: a call that has not answered in time gets no result (``tool_timeout``).

Python cannot kill a thread, so a call runs in a worker thread that is abandoned when it overruns (a hung search
backend, a model stuck in a kernel, a socket that never answers) and a fresh worker takes the next call. Abandoned
workers are bounded: past ``max_abandoned`` of them still alive the actor is wedged, and ``ToolsWedged`` fails
the batch (its shard is retried, then quarantined) instead of piling up threads.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from toolformer.faults import tool_fault
from toolformer.tools.base import Tool, ToolRequest, ToolResult

TOOL_TIMEOUT = "tool_timeout"
log = logging.getLogger(__name__)


class ToolsWedged(RuntimeError):
    """Too many timed-out tool calls are still running in this process."""


class TimedCaller:
    """Runs ``Tool.call`` batches under a per-call deadline."""

    def __init__(self, max_abandoned: int = 8, max_consecutive_timeouts: int = 3):
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

    def call(self, tool: Tool, requests: Sequence[ToolRequest], timeout: float, key: str | None = None) -> list[ToolResult]:
        """Results of one text's calls; a call that overruns ``timeout`` seconds gets ``tool_timeout``.

        The batch gets ``timeout`` per request; when it overruns, each request is retried alone so only the calls
        that hang lose their result. After ``max_consecutive_timeouts`` in a row the rest of the text's calls are
        given up on without waiting (a backend that is down costs a few timeouts, not one per call)."""
        if not requests:
            return []

        def run(reqs: Sequence[ToolRequest]) -> list[ToolResult]:
            tool_fault(tool.name, key)
            return tool.call(reqs)

        got = self._run(lambda: run(requests), timeout * len(requests))
        if got is not None:
            return got
        out: list[ToolResult] = []
        streak = 0
        for r in requests:
            one = None if streak >= self.max_consecutive else self._run(lambda r=r: run([r]), timeout)
            if one is None:
                streak += 1
                self.timeouts += 1
                out.append(ToolResult(None, f"{TOOL_TIMEOUT}: no answer in {timeout:g} s"))
            else:
                streak = 0
                out.extend(one)
        if tool.name not in self._logged:  # once per tool: a slow backend shows, a storm does not flood the log
            self._logged.add(tool.name)
            log.warning("%s: calls timed out after %g s (later timeouts are counted as tool_timeout, not logged)",
                        tool.name, timeout)
        return out
