"""Any set of date questions evaluates as Dateset does (issue 42, item 5): ``eval.task_paths.dateset`` names a JSONL
of question, answers and the date the Calendar returns."""

from __future__ import annotations

import json

import pytest

from toolformer.tasksets.registry import load_task


def test_a_date_set_from_a_file_reads_its_questions_answers_and_dates(tmp_path):
    path = tmp_path / "dates.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "d1", "question": "What day of the week is it today?", "answers": ["Monday"], "today": "2023-01-30"},
        {"question": "What year is it?", "answers": "2023", "today": "2023-01-30"},
    ]) + "\n")
    examples = load_task("dateset", tmp_path, path=path)
    assert [(e.uid, e.prompt, e.answers, e.meta["today"], e.kind) for e in examples] == [
        ("d1", "What day of the week is it today?", ["Monday"], "2023-01-30", "temporal"),
        ("1", "What year is it?", ["2023"], "2023-01-30", "temporal")]
    assert "Calendar" in examples[0].tools


def test_a_bad_line_is_a_clear_error(tmp_path):
    path = tmp_path / "dates.jsonl"
    path.write_text(json.dumps({"question": "What year is it?", "answers": ["2023"]}) + "\n")
    with pytest.raises(ValueError, match="line 1 has no today"):
        load_task("dateset", tmp_path, path=path)
    path.write_text(json.dumps({"question": "q", "answers": ["a"], "today": "30/01/2023"}) + "\n")
    with pytest.raises(ValueError):
        load_task("dateset", tmp_path, path=path)
    assert len(load_task("dateset", tmp_path)) == 500  # no path: the generated set, as before
