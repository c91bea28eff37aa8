"""Tool runners with a deadline on every call, for annotation and evaluation alike (issue 34, item 6).

``start_runners`` starts each tool's runner: worker processes that a timeout really ends (``ToolWorkers``), or,
for cheap pure tools (``annotate.tool_in_process``), the tool in this process under ``TimedCaller``. Annotation
runs call groups on them (``ExecuteCalls``); the tool-using decoder calls a tool as ``tool(requests) -> texts``,
which ``BoundedTool`` provides over a runner: one call group per decoder call, its deadline the tool's timeout,
so a call that hangs in evaluation ends like one in annotation (``tool_timeout: ended …``, no result)."""

from __future__ import annotations

from typing import Mapping, Sequence

from toolformer.tools.base import ToolRequest
from toolformer.tools.deadline import CallGroup, InProcessTool
from toolformer.tools.worker import ToolSpec, ToolWorkers


def start_runners(names: Sequence[str], options: Mapping[str, dict], *, workers: int, in_process: Sequence[str],
                  setup_timeout_s: float, max_restarts: int) -> dict:
    """{canonical tool name: runner}, every runner set up (their set-ups overlap); all closed on any failure."""
    from toolformer.tools import build_tool, canonical_name

    inside = {canonical_name(t) for t in in_process}
    runners: dict = {}
    try:
        for name in names:
            tool = canonical_name(name)
            opts = dict(options.get(tool, {}) or {})
            if workers <= 0 or tool in inside:
                runners[tool] = InProcessTool(build_tool(tool, **opts))
            else:
                runners[tool] = ToolWorkers(ToolSpec.of(tool, opts), workers=workers, setup_timeout_s=setup_timeout_s,
                                            max_restarts=max_restarts)
            runners[tool].start()  # every worker's set-up runs while the next one starts
        for runner in runners.values():
            runner.wait_ready()
    except BaseException:
        for runner in runners.values():
            runner.close()
        raise
    return runners


class BoundedTool:
    """A runner behind the plain tool interface the decoder calls (``tool(requests)`` → result texts, None where
    a call failed or ran past ``timeout_s``)."""

    def __init__(self, runner, timeout_s: float):
        self.runner, self.timeout_s, self.name = runner, float(timeout_s), runner.name
        self.errors: dict[str, int] = {}  # why calls got no result (tool_timeout: ended …, tool_exception: …)

    def __call__(self, requests: Sequence[ToolRequest]) -> list[str | None]:
        group = CallGroup(None, list(requests), self.timeout_s)
        self.runner.run([group])
        out = []
        for r in group.results:
            if r is None or not r.text:
                kind = ((r.error if r is not None else None) or "no_result").split(":")[0]
                self.errors[kind] = self.errors.get(kind, 0) + 1
            out.append(r.text if r is not None else None)
        return out

    def describe(self) -> dict:
        return {**self.runner.describe(), "errors": dict(self.errors)}

    def close(self) -> None:
        self.runner.close()
