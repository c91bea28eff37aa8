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



def test_only_the_tools_some_item_may_call_are_started(tmp_path):
    """Tools no item may call are not started: a LAMA evaluation (the paper withholds WikiSearch there) with the
    five default tools never starts WikiSearch, and a set that may call nothing starts nothing."""
    from toolformer.evaluation.evaluate import tools_offered
    from toolformer.tasksets.files import Example

    everything = ["Calculator", "Calendar", "WikiSearch", "QA", "MT"]
    lama = [Example("lama_trex", "1", "Hans Scharoun died in", ["Berlin"], "cloze",
                    ("Calculator", "Calendar", "QA", "MT"))]
    assert tools_offered(everything, lama) == ["Calculator", "Calendar", "QA", "MT"]
    assert tools_offered(["WikiSearch"], lama) == []
    assert build_tools(load_config(None, []), tools_offered(["WikiSearch"], lama)) == {}


def test_the_math_corpus_round_evaluates_with_the_tool_it_annotates():
    """math_corpus annotates with the Calculator only; its evaluation starts the Calculator only (with all five it
    waited on the QA reader and the Wikipedia index build, 600 s on a fresh machine: CI failed on it)."""
    cfg = load_config("jobs/configs/math_corpus.yaml", [])
    assert list(cfg.eval.tools) == list(cfg.annotate.tools) == ["Calculator"]
