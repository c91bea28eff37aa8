"""The checks the benchmarks enforce (``python -m jobs.bench NAME`` exits 1 when one fails), as pure functions of a
result: each passes a result like the one measured here and fails the result of a broken component. No engine."""

from __future__ import annotations

import argparse
import copy

from benchmarks import eval as eval_bench
from benchmarks import tools as tools_bench
from benchmarks import train as train_bench
from benchmarks.harness import REPO


def _failing(checks: dict) -> set[str]:
    return {k for k, v in checks.items() if not v}


def test_eval_enforces_same_outputs():
    good = {"examples": 64, "of": 64, "same_outputs": 64}
    assert _failing(eval_bench.check(good)) == set()
    assert _failing(eval_bench.check({**good, "same_outputs": 63})) == {"batched_outputs_equal_one_at_a_time"}
    assert _failing(eval_bench.check({"examples": 0, "of": 0, "same_outputs": 0})) == {
        "examples_run", "batched_outputs_equal_one_at_a_time"}  # nothing run proves nothing


def _train(*losses):
    return {"zero_stages": list(range(1, len(losses) + 1)),
            "zero": {f"stage_{i + 1}": {"tokens_per_s_per_worker": 110.0, "final_train_loss": x}
                     for i, x in enumerate(losses)}}


def test_train_enforces_the_same_final_loss_under_every_zero_stage():
    assert _failing(train_bench.check(_train(2.9724, 2.9724, 2.9727))) == set()
    assert _failing(train_bench.check(_train(2.9724, 2.9724, 3.1))) == {"same_final_loss_across_zero_stages"}
    assert "every_stage_trained" in _failing(train_bench.check(_train(2.9724, float("nan"), 2.9724)))
    missing = _train(2.9724, 2.9724)
    missing["zero_stages"] = [1, 2, 3]  # a stage asked for and not in the result
    assert _failing(train_bench.check(missing)) == {"every_stage_ran"}
    assert _failing(train_bench.check({"zero_stages": [], "zero": {}})) == {
        "every_stage_ran", "every_stage_trained", "same_final_loss_across_zero_stages"}


TOOLS_MEASURED = {  # the figures of the README's *Measured here*, in the shape the tools benchmark returns
    "index_build": [{"requested": 10_000, "passages": 10_000}, {"requested": 100_000, "passages": 100_000}],
    "lama_index": {"passages": 29_372, "expected_passages": 29_372, "rows_read_back": 29_372},
    "retrieval": {"bm25_recall_at_5": 0.940, "dense_recall_at_5": 0.831, "hybrid_recall_at_5": 0.947},
    "qa": {"questions": 200, "answer_contained": 0.65},
    "mt": {"sentences": 100, "chrf_de_en": 23.9, "chrf_es_en": 31.3, "chrf_de_en_copy_source": 25.7,
           "chrf_es_en_copy_source": 26.1},
}


def test_tools_checks_pass_what_was_measured():
    assert _failing(tools_bench.check(TOOLS_MEASURED)) == set()
    goals = tools_bench.goals(TOOLS_MEASURED)  # reported only: de→en does not beat copying its input here
    assert goals["hybrid_recall_at_5_not_below_bm25_or_dense"] and not goals["mt_chrf_de_en_above_copying_the_source"]
    assert _failing(tools_bench.check({**TOOLS_MEASURED, "index_build": []})) == set()  # no build asked for


def test_tools_checks_fail_a_broken_component():
    def broken(edit) -> set[str]:
        result = copy.deepcopy(TOOLS_MEASURED)
        edit(result)
        return _failing(tools_bench.check(result))

    assert broken(lambda r: r["retrieval"].update(dense_recall_at_5=0.02)) == {"dense_recall_at_5_at_least_0.75"}
    assert broken(lambda r: r["retrieval"].update(hybrid_recall_at_5=0.5)) == {"hybrid_recall_at_5_at_least_0.85"}
    assert broken(lambda r: r["retrieval"].pop("bm25_recall_at_5")) == {"bm25_recall_at_5_at_least_0.85"}
    assert broken(lambda r: r["qa"].update(answer_contained=0.0)) == {"qa_answer_contained_at_least_0.3"}
    assert broken(lambda r: r["qa"].update(questions=0)) == {"qa_answer_contained_at_least_0.3"}
    assert broken(lambda r: r["mt"].update(chrf_es_en=0.0)) == {"mt_chrf_es_en_at_least_15.0"}
    assert broken(lambda r: r["index_build"][1].update(passages=99_000)) == {"index_build_100000_indexed_every_passage"}
    assert broken(lambda r: r["index_build"].__setitem__(0, {"requested": 10_000, "error": "exit 1"})) == {
        "index_build_10000_indexed_every_passage"}
    assert broken(lambda r: r["lama_index"].update(rows_read_back=29_000)) == {"lama_index_indexed_every_passage"}
    assert "lama_index_indexed_every_passage" in _failing(tools_bench.check({}))


def test_qa_ceiling_checks_fail_when_a_held_out_fact_was_not_asked_or_a_dev_fact_is_held_out():
    from benchmarks import qa_ceiling

    facts = {"trex_held_out": 560, "google_re_held_out": 300, "dev_in_held_out": 0}
    held = {f"{n}_{form}": {"facts": facts[f"{n}_held_out"], "answered": 10}
            for n in ("trex", "google_re") for form in ("cloze", "question")}
    assert all(qa_ceiling.check({"facts": facts, "held_out": held}).values())
    short = {**held, "trex_cloze": {"facts": 559, "answered": 10}}
    assert _failing(qa_ceiling.check({"facts": facts, "held_out": short})) == {"trex_cloze_every_held_out_fact_asked"}
    silent = {**held, "google_re_question": {"facts": 300, "answered": 0}}
    assert _failing(qa_ceiling.check({"facts": facts, "held_out": silent})) == {"google_re_question_reader_answered"}
    leaky = {**facts, "dev_in_held_out": 1}
    assert _failing(qa_ceiling.check({"facts": leaky, "held_out": held})) == {"dev_facts_are_training_facts"}


def test_each_benchmark_writes_its_json_under_benchmarks_results_by_default():
    from benchmarks import math_levers, qa_ceiling

    for module, name in ((eval_bench, "eval"), (train_bench, "train"), (tools_bench, "tools"),
                         (math_levers, "math_levers"), (qa_ceiling, "qa_ceiling")):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert parser.parse_args([]).out == str(REPO / "benchmarks" / "results" / f"{name}.json")
        assert parser.parse_args(["--out", ""]).out == ""


def _suite_line(path) -> tuple[int, str]:
    """(passed, 'M min S s') from a stored pytest run's summary line."""
    import re

    m = re.search(r"(\d+) passed, \d+ deselected in [\d.]+s \((\d+):(\d+):(\d+)\)", path.read_text())
    assert m, f"no pytest summary line in {path}"
    passed, h, mins, secs = (int(g) for g in m.groups())
    return passed, f"{h * 60 + mins} min {secs} s"


def test_readme_suite_figures_are_the_stored_runs():
    """The figures for `make test` and `make test-slow` (docs/results.md) are those of the stored runs' summary
    lines."""
    readme = " ".join((REPO / "docs" / "results.md").read_text().split())
    results = REPO / "benchmarks" / "results"
    passed, took = _suite_line(results / "make_test.txt")
    assert f"{passed} passed in {took}" in readme, (passed, took)
    passed, took = _suite_line(results / "make_test_slow.txt")
    assert f"{passed} passed in {took}" in readme, (passed, took)
