"""No tool call without a deadline (issue 34, item 6): evaluation's tool-using decoding calls its tools through
the same killable worker processes as annotation, so a call that hangs ends, gets no result, and the next call
is answered by a fresh worker."""

from __future__ import annotations

import time

from toolformer.config import load_config
from toolformer.evaluation.evaluate import build_tools, close_tools
from toolformer.tools import ToolRequest


def test_an_evaluation_tool_call_that_hangs_is_ended_and_the_next_one_answers(monkeypatch):
    cfg = load_config(None, ["eval.tools=[Calculator]", "annotate.tool_timeout_s=1.0"])
    tools = build_tools(cfg)
    try:
        calc = tools["Calculator"]
        assert calc.runner.__class__.__name__ == "ToolWorkers"  # a worker process, not this process
        assert float(calc([ToolRequest("2 + 3", {})])[0]) == 5.0
        monkeypatch.setenv("TOOLFORMER_FAULT_HANG_TOOL", "Calculator")  # every Calculator call now hangs
        t0 = time.monotonic()
        assert calc([ToolRequest("4 * 6", {})]) == [None]
        assert time.monotonic() - t0 < 1.0 + 10.0  # ended at its deadline (plus the kill), never waited out
        assert calc.errors.get("tool_timeout") == 1
        monkeypatch.delenv("TOOLFORMER_FAULT_HANG_TOOL")
        assert float(calc([ToolRequest("4 * 6", {})])[0]) == 24.0  # a fresh worker took the hung one's place
        assert calc.describe()["restarts"] >= 1
    finally:
        close_tools(tools)
