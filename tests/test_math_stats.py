"""The math report's statistics and goals (issue 33): Wilson and exact McNemar spot values, the paired permutation
test over items (exact against a hand count, Monte Carlo against exact), the pooled test on seed copies that a
pooled McNemar would count as independent, and the report on a small constructed units folder: every goal with a
verdict, whether every model read the same items, the diagnosis, paths relative to the repository. Pure Python,
seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from toolformer.experiments.stats import mcnemar_p, paired_permutation_p, seed_mean_differences, wilson


def test_wilson_and_mcnemar_spot_values():
    assert wilson(0, 0) == [0.0, 0.0]
    assert wilson(76, 400) == [15.5, 23.1]
    assert wilson(0, 10) == [0.0, 27.8]
    assert wilson(10, 10) == [72.2, 100.0]
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(0, 7) == 2 / 2 ** 7 == 0.015625
    assert mcnemar_p(9, 1) == mcnemar_p(1, 9) == 2 * (1 + 10) / 2 ** 10  # C(10,0) + C(10,1)
    assert mcnemar_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 0.0386
    assert mcnemar_p(2, 30) < 1e-4 and mcnemar_p(2, 30) > 0  # not rounded to 0


def test_exact_permutation_p_matches_a_hand_count():
    # nonzero differences 1, 1, -1/3: the 8 sign patterns sum to +-7/3, +-5/3, +-1/3 (twice each); the observed
    # sum is 5/3, so 4 of 8 reach |5/3|
    r = paired_permutation_p([1.0, 1.0, -1 / 3, 0.0])
    assert r["p"] == 0.5 and r["nonzero"] == 3 and r["n"] == 4 and r["mean"] == pytest.approx(5 / 12)
    assert r["test"] == "paired permutation over items (exact)" and "2^3" in r["method"]
    # off any lattice (float sums): only all-plus and all-minus reach the observed sum
    r = paired_permutation_p([math.pi / 10, 1.0, math.e / 10])
    assert r["p"] == 0.25 and r["test"] == "paired permutation over items (exact)"
    # equal magnitudes: the exact sign test, 9 of 10 positive: 2 * 11 / 1024
    assert paired_permutation_p([0.5] * 9 + [-0.5]).get("p") == pytest.approx(22 / 1024)
    assert paired_permutation_p([0.0, 0.0])["p"] == 1.0


def test_monte_carlo_is_labelled_seeded_and_close_to_exact():
    diffs = [1 / 3] * 30 + [-1 / 3] * 20 + [2 / 3] * 4
    exact = paired_permutation_p(diffs)
    mc = paired_permutation_p(diffs, method="monte_carlo")
    assert exact["test"] == "paired permutation over items (exact)"
    assert mc["test"] == "paired permutation over items (Monte Carlo n=100000)"
    assert abs(mc["p"] - exact["p"]) < 0.01 and mc == paired_permutation_p(diffs, method="monte_carlo")
    # 30 nonzero differences off any lattice: Monte Carlo by itself, p never 0
    odd = [0.1 + k * 1e-3 * math.pi for k in range(30)]
    r = paired_permutation_p(odd)
    assert r["test"].endswith("(Monte Carlo n=100000)") and r["p"] == 1 / 100_001


def test_pooled_test_counts_items_not_seed_copies():
    """10 items, three seeds with identical answers: tools right on 7 items the other gets wrong. A pooled McNemar
    over the seeds (21 discordant pairs against 0) says p < 0.01; the item-level test sees 7 items: p = 2/128."""
    from toolformer.experiments.paired import compare

    tools = {str(i): i < 7 for i in range(10)}
    other = {str(i): False for i in range(10)}
    seeds = [0, 1, 2]
    assert mcnemar_p(3 * 7, 0) < 1e-5  # the seeds' copies counted as independent items
    diffs = seed_mean_differences([tools] * 3, [other] * 3)
    assert len(diffs) == 10 and sorted(diffs.values()) == [0.0] * 3 + [1.0] * 7
    r = paired_permutation_p(list(diffs.values()))
    assert r["p"] == 2 / 2 ** 7 and r["p"] > 0.01
    data = {"right": {**{f"seed{s}/default/r1": {"finetuned + tools": {"svamp": tools},
                                                "baseline-finetuned": {"svamp": other}} for s in seeds},
                      "base": {"base + tools (prompted)": {"svamp": other}}}}
    for unit in ("seed{s}/default/r1", "base"):
        setting = "baseline-finetuned" if unit != "base" else "base + tools (prompted)"
        got = compare(data, seeds, "seed{s}/default/r1", "finetuned + tools", unit, setting, "svamp")
        pooled = got["pooled"]
        assert (pooled["items"], pooled["nonzero"], pooled["difference"]) == (10, 7, 70.0)
        assert pooled["p"] == 2 / 2 ** 7 and pooled["test"] == "paired permutation over items (exact)"
        assert all(m["p"] == 2 / 2 ** 7 and m["test"] == "exact McNemar" for m in got["per_seed"].values())
        assert "only_first" not in pooled  # no summed discordant pairs anywhere in the pooled result


# -- the report on a constructed units folder ------------------------------------------------------------------
SETS = ("asdiv", "svamp", "mawps")


def _unit(root: Path, unit: str, settings: dict[str, dict[str, list[bool]]], false_call: float = 20.0,
          drop: dict[str, int] | None = None) -> None:
    """An evaluated unit as the experiment stores it: eval/results.json and eval/generations.jsonl."""
    seed, cstar, r = unit.split("/") if unit != "base" else ("", "", "")
    d = root / "base" if unit == "base" else root / seed / cstar / "rounds" / r
    (d / "eval").mkdir(parents=True)
    (d / "steps").mkdir(parents=True)
    results, gens = [], []
    for name, per_set in settings.items():
        tasks = {}
        calls = "tools" in name
        for task, right in per_set.items():
            right = right[: len(right) - (drop or {}).get(name, 0)]
            tasks[task] = {"n": len(right), "accuracy": round(100 * sum(right) / len(right), 1),
                           "call_share": {"Calculator": 100.0} if calls else {}}
            for i, ok in enumerate(right):
                call = [{"tool": "Calculator", "input": "2 + 3" if i % 2 else "2 + 9", "result": "5", "ok": True}]
                gens.append({"setting": name, "task": task, "uid": str(i), "correct": ok, "answers": ["5"],
                             "calls": call if calls else [],
                             "generation": ("[Calculator(2 + 3) -> 5] " + ("5" if ok else "6")) if calls
                             else ("5" if ok else "6")})
        entry = {"setting": {"name": name, "model": str(root / "model")}, "tasks": tasks,
                 "perplexity": {"perplexity": 20.0 if name == "base" else 20.5}}
        if calls:
            entry["false_call"] = {"webtext": {"n": 10, "calculator_call_share": false_call,
                                               "call_started_share": 30.0},
                                   "lama": {"n": 10, "calculator_call_share": 0.0, "call_started_share": 10.0}}
        results.append(entry)
    (d / "eval" / "results.json").write_text(json.dumps(results))
    (d / "eval" / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))
    (d / "steps" / "evaluate.json").write_text("{}")


def _run(tmp_path: Path, seeds=(0, 1, 2), drop: dict[str, int] | None = None, false_call: float = 20.0) -> dict:
    from toolformer.config import load_config
    from toolformer.experiments.math.report import write_report

    run = tmp_path / "run"
    n = 40
    tools = [i < 24 for i in range(n)]  # 60 %
    weak = [i < 8 for i in range(n)]  # 20 %
    for s in seeds:
        _unit(run, f"seed{s}/default/r1", {"baseline-finetuned": {t: weak for t in SETS},
                                           "finetuned + tools": {t: tools for t in SETS}}, false_call, drop)
    _unit(run, "base", {"base": {t: weak for t in SETS}, "base + tools (prompted)": {t: weak for t in SETS}},
          false_call)
    questions = {t: {str(i): "Tom has 2 apples and buys 3 more. How many?" for i in range(n)} for t in SETS}
    cfg = load_config("jobs/configs/math.yaml", [f"output_dir={run}", "bootstrap.seeds=[0,1,2]"])
    return write_report(cfg, tmp_path / "res", tmp_path / "math.md", questions=questions)


def test_report_gives_every_goal_a_verdict_from_constructed_units(tmp_path):
    from toolformer.paths import repo_root

    out = _run(tmp_path)
    s = json.loads((tmp_path / "res" / "results.json").read_text())
    goals = {(g["kind"], g.get("vs") or g.get("set")): g for g in s["goals"]}
    assert len(s["goals"]) == 8 and all(g["met"] in (True, False) for g in s["goals"]), s["goals"]
    per_seed = goals[("per seed", "control")]
    assert per_seed["met"] is True and per_seed["test"].startswith("exact McNemar")
    assert set(per_seed["per_seed"]) == {"seed0", "seed1", "seed2"}
    assert per_seed["per_seed"]["seed0"]["difference"] == 40.0 and per_seed["per_seed"]["seed0"]["p"] < 0.01
    pooled = goals[("pooled", "base + tools (prompted)")]
    assert pooled["met"] is True and pooled["test"] == "paired permutation over items (exact)"
    assert (pooled["items"], pooled["difference"], pooled["seeds"]) == (40, 40.0, [0, 1, 2])
    assert pooled["p"] == 2 / 2 ** 16  # 16 items differ, identically in every seed
    assert goals[("spread", "asdiv")]["met"] is True and goals[("spread", "svamp")]["range"] == 0.0
    assert goals[("false calls", None)]["met"] is False and goals[("false calls", None)]["worst"] == 20.0
    assert goals[("perplexity", None)]["met"] is True
    assert s["items_equal"] is True and s["items"]["every_model"]["per_set"]["svamp"]["n_common"] == 40
    assert s["items_warning"] is None
    # the old pooled McNemar is gone: no pooled result sums discordant pairs
    assert all("only_first" not in v["pooled"] for t in s["paired"]["r1"].values() for v in t.values())
    # the diagnosis, from the item rows
    d = s["diagnosis"]["rows"]["seed1/default/r1"]["finetuned + tools"]["asdiv"]
    assert (d["n"], d["with_call_share"], d["position"]["before_first_number_share_of_calls"]) == (40, 100.0, 100.0)
    assert d["operands"]["all_in_question"] == 20 and d["operands"]["some_not_in_question"] == 20  # 9 is not given
    assert (d["right_with_call"], d["right_without_call"]) == (24, 0)
    assert d["generation_copy_errors"] == {"compared": 40, "disagree": 16, "rate": 40.0}
    assert s["diagnosis"]["rows"]["base"]["base"]["svamp"]["right_without_call_share"] == 20.0
    # paths relative to the repository; the page states the tests and prints the diagnosis (a goal is missed)
    text = (tmp_path / "res" / "results.json").read_text() + out["summary"]["config"]["run_dir"]
    page = (tmp_path / "math.md").read_text()
    for where in (text, page):
        assert str(repo_root()) not in where and "not measured yet" not in where
    assert not s["config"]["run_dir"].startswith("/") and s["config"]["folds"].startswith("${shared_data:}")
    assert "exact McNemar" in page and "paired permutation over items (exact)" in page
    assert "## Why goals are missed" in page and "**not met**" in page and "**met**" in page


def test_report_flags_items_that_differ_and_missing_units(tmp_path):
    out = _run(tmp_path, seeds=(0, 1), drop={"baseline-finetuned": 3}, false_call=5.0)
    s = out["summary"]
    assert s["items_equal"] is False and "ITEM SETS DIFFER" in s["items_warning"]
    svamp = s["items"]["every_model"]["per_set"]["svamp"]
    assert (svamp["n_union"], svamp["n_common"], svamp["counts"]) == (40, 37, [37, 40])
    assert svamp["differing"]["seed0/default/r1 | baseline-finetuned"] == {"n": 37, "missing": 3}
    pc = next(g for g in s["goals"] if g["kind"] == "per seed" and g["vs"] == "control")
    assert pc["per_seed"]["seed0"]["n"] == 37  # the paired test on the common items only
    assert pc["met"] is None and "seed2/default/r1" in pc["reason"]  # seed 2 was never run
    pooled = next(g for g in s["goals"] if g["kind"] == "pooled" and g["vs"] == "control")
    assert pooled["met"] is None and pooled["p"] is not None and "seed2" in pooled["reason"]
    fc = next(g for g in s["goals"] if g["kind"] == "false calls")
    assert fc["met"] is None and "seed2/default/r1" in fc["reason"]
    page = (tmp_path / "math.md").read_text()
    assert "Warning: ITEM SETS DIFFER" in page and "no verdict (missing: " in page
    assert "## Why goals are missed" not in page  # nothing measured failed
