"""The tool-choice table (issue 42, item 6) on a constructed example with known counts."""

from __future__ import annotations

from toolformer.evaluation.choice import choice_table, tool_choice


def _row(task, correct, *calls):
    return {"task": task, "uid": "x", "correct": correct, "calls": [{"tool": t, "ok": ok} for t, ok in calls]}


def test_the_table_counts_each_choice_and_its_accuracy():
    rows = [
        _row("lama_trex", True, ("QA", True)), _row("lama_trex", True, ("QA", True)),
        _row("lama_trex", False, ("QA", False)), _row("lama_trex", False, ("Calculator", True)),
        _row("lama_trex", False), _row("asdiv", True, ("Calculator", True)), _row("asdiv", False, ("Calculator", True)),
        _row("asdiv", False, ("QA", True), ("Calculator", True)),  # the first call is the choice
    ]
    table = tool_choice(rows)
    assert list(table) == ["asdiv", "lama_trex"] and list(table["lama_trex"]) == ["Calculator", "QA", "none"]
    assert table["lama_trex"]["QA"] == {"n": 3, "right": 2, "accuracy": 66.7, "share": 60.0, "worked": 2}
    assert table["lama_trex"]["Calculator"] == {"n": 1, "right": 0, "accuracy": 0.0, "share": 20.0, "worked": 1}
    assert table["lama_trex"]["none"] == {"n": 1, "right": 0, "accuracy": 0.0, "share": 20.0, "worked": 0}
    assert table["asdiv"]["Calculator"] == {"n": 2, "right": 1, "accuracy": 50.0, "share": 66.7, "worked": 2}
    assert table["asdiv"]["QA"]["n"] == 1 and "none" not in table["asdiv"]
    md = choice_table(table).splitlines()
    assert md[2] == "| asdiv | Calculator | 2 | 66.7 % | 50.0 % | 2 of 2 |"
    assert md[-1] == "| lama_trex | none | 1 | 20.0 % | 0.0 % | – |" and len(md) == 2 + 5


def test_a_call_that_parsed_as_no_tool_is_its_own_choice():
    table = tool_choice([_row("dateset", False, (None, False)), _row("dateset", True, ("Calendar", True))])
    assert table["dateset"]["malformed"] == {"n": 1, "right": 0, "accuracy": 0.0, "share": 50.0, "worked": 0}
    assert table["dateset"]["Calendar"]["n"] == 1
