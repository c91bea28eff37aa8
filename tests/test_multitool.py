"""The multi-tool experiment's pieces (issue 42): its corpus from several sources (no evaluation fact, no
evaluated text in it), C* keeping the texts without a call as they are, and the experiment's plan."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs" / "configs" / "multitool.yaml"


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    from toolformer.experiments.sources import build_corpus

    out = tmp_path_factory.mktemp("sources")
    info = build_corpus({"math": 60, "facts": 80, "dated": 10, "plain": 10}, out, shared_data)
    rows = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    return info, rows, out


def test_every_source_gives_what_was_asked_and_says_where_each_text_is_from(corpus):
    info, rows, _ = corpus
    assert info["texts"] == {"asdiv": 60, "lama_trex": 64, "lama_google_re": 16, "c4_dated": 10, "c4_plain": 10}
    assert len({r["id"] for r in rows}) == len(rows) == 160
    # interleaved, not one source after another
    assert {r["source_dataset"] for r in rows[:40]} >= {"asdiv", "lama_trex"}


def test_no_evaluation_fact_is_in_the_training_text(corpus, shared_data):
    from toolformer.experiments.sources import held_out_facts
    from toolformer.tasksets.lama import states

    _, rows, _ = corpus
    _, trex_held, _, gre_held = held_out_facts(shared_data)
    for r in rows:
        assert not any(states(r["text"], f) for f in trex_held + gre_held), r
    # and the evaluation reads exactly the held-out facts: the id files are the split's
    ids = {p.stem: p.read_text().split() for p in (REPO / "jobs" / "configs" / "multitool").glob("lama_*.txt")}
    assert ids["lama_trex_held_out"] == [f.uid for f in trex_held]
    assert ids["lama_google_re_held_out"] == [f.uid for f in gre_held]


def test_no_evaluated_text_or_held_out_problem_is_trained_on(corpus, shared_data):
    from toolformer.evaluation.language import false_call_examples, perplexity_texts
    from toolformer.tasksets.math import fold_ids

    _, rows, _ = corpus
    texts = {r["text"] for r in rows}
    web = [r["text"] for r in rows if r["source_dataset"].startswith("c4")]
    for prompt in (e.prompt for e in false_call_examples(shared_data, "webtext", 500)):
        assert not any(prompt[:200] in t or t[:200] in prompt for t in web)
    for t in perplexity_texts(shared_data, 100):
        assert not any(w[:200] in t for w in web)
    _, held = fold_ids(shared_data / "asdiv" / "nfolds" / "asdiv-w", 0)
    assert not any(r["id"].removeprefix("asdiv-") in held for r in rows if r["source_dataset"] == "asdiv")
    assert len(texts) == len(rows)


def test_the_corpus_is_the_same_on_a_rebuild(corpus, shared_data, tmp_path):
    from toolformer.experiments.sources import build_corpus

    _, rows, _ = corpus
    build_corpus({"math": 60, "facts": 80, "dated": 10, "plain": 10}, tmp_path, shared_data)
    assert [json.loads(x) for x in (tmp_path / "corpus.jsonl").read_text().splitlines()] == rows


def test_a_source_that_cannot_give_enough_is_a_clear_error(shared_data, tmp_path):
    from toolformer.experiments.sources import build_corpus

    with pytest.raises(ValueError, match="could not give"):
        build_corpus({"plain": 10_000}, tmp_path, shared_data)
    with pytest.raises(ValueError, match="unknown source"):
        build_corpus({"poems": 3}, tmp_path, shared_data)


def _part(texts: dict[str, str], calls: list[dict]):
    from toolformer.cstar.augment import KEPT

    t = pa.table({"text_id": list(texts), "doc_id": [k.split("#")[0] for k in texts], "text": list(texts.values())})
    kept = pa.Table.from_pylist(calls, schema=KEPT)
    allowed = kept.select(["tool", "text_id"])
    return t, kept, allowed


def test_a_cstar_text_without_a_kept_call_equals_its_input():
    from toolformer.cstar.augment import augment

    texts = {"a#0": "Question: 3 pens and 4 pens. How many?\nAnswer: 7", "b#0": "A plain sentence about rivers.",
             "c#0": "Odelay was released by DGC Records."}
    call = dict(text_id="a#0", tool="Calculator", position=9, char_start=texts["a#0"].index("7"), input="3 + 4",
                result="7", gain=1.2)
    t, kept, allowed = _part(texts, [call])
    rows = augment(t, kept, allowed, "shard-0", keep_uncalled=True).to_pylist()
    assert [r["text_id"] for r in rows] == ["a#0", "b#0", "c#0"]  # every text, in its order
    assert rows[0]["n_calls"] == 1 and "[Calculator(3 + 4) -> 7]" in rows[0]["text"]
    for r in rows[1:]:
        assert r["text"] == texts[r["text_id"]] and r["n_calls"] == 0 and r["calls"] == []
    # without the option: only the text with a call (the stored math runs' C*)
    assert [r["text_id"] for r in augment(t, kept, allowed, "shard-0").to_pylist()] == ["a#0"]
    # a part where nothing was kept still gives its texts
    empty = augment(t, kept.slice(0, 0), allowed.slice(0, 0), "shard-0", keep_uncalled=True).to_pylist()
    assert [r["text"] for r in empty] == list(texts.values())


def test_the_new_merge_option_keeps_stored_runs_hashes():
    from toolformer.config import RunConfig, config_hash

    cfg = RunConfig()
    before = config_hash(cfg)
    cfg.merge.keep_uncalled = True
    assert config_hash(cfg) != before
    cfg.merge.keep_uncalled = False
    assert config_hash(cfg) == before


def test_the_experiment_plans_its_units_and_shares_one_annotation():
    from toolformer.config import load_config
    from toolformer.experiments.experiment import Unit, annotation_source, needs, plan, setting_config

    cfg = load_config(str(CONFIG))
    names = [u.name for u in plan(cfg)]
    assert names == ["seed0/default/r1", "base", "seed1/default/r1", "seed2/default/r1", "seed0/no_keep_uncalled/r1"]
    assert annotation_source(cfg, Unit(1, "default", 1)) == Unit(0, "default", 1)
    assert annotation_source(cfg, Unit(0, "default", 1)) is None
    assert annotation_source(cfg, Unit(0, "no_keep_uncalled", 1)) == Unit(0, "default", 1)
    assert needs(Unit(2, "default", 1), cfg) == ["seed0/default/r1"]
    assert setting_config(cfg, 0, "no_keep_uncalled", 1).merge.keep_uncalled is False
    assert cfg.merge.keep_uncalled is True


TOOL_OF = {"lama_trex": "QA", "lama_google_re": "QA", "lama_squad": "QA", "asdiv": "Calculator", "svamp": "Calculator",
           "mawps": "Calculator", "dateset": "Calendar"}


def _unit(root: Path, unit: str, settings: dict[str, dict[str, list[bool]]]) -> None:
    """An evaluated unit as the experiment stores it (eval/results.json, generations.jsonl, a marker)."""
    d = root / "base" if unit == "base" else root / unit.split("/")[0] / unit.split("/")[1] / "rounds" / unit.split("/")[2]
    (d / "eval").mkdir(parents=True)
    (d / "steps").mkdir(parents=True)
    results, gens = [], []
    for name, per_set in settings.items():
        tasks = {}
        calls_allowed = name in ("finetuned + tools", "base + tools (prompted)")
        for task, right in per_set.items():
            tasks[task] = {"n": len(right), "accuracy": round(100 * sum(right) / len(right), 1), "call_share": {}}
            for i, ok in enumerate(right):
                # the tools model calls the set's tool on the first 30 items, and nothing on the other 10
                calls = ([{"tool": TOOL_OF[task], "input": "Who is it?", "result": "Paris" if ok else "Rome",
                           "ok": True}] if calls_allowed and i < 30 else [])
                gens.append({"setting": name, "task": task, "uid": str(i), "correct": ok, "answers": ["Paris"],
                             "calls": calls, "generation": "Paris" if ok else "Lyon"})
        entry = {"setting": {"name": name}, "tasks": tasks, "perplexity": {"perplexity": 20.0 if name == "base" else 20.5}}
        if calls_allowed:
            entry["false_call"] = {"webtext": {"n": 100, "any_call_share": 4.0, "calculator_call_share": 1.0,
                                               "call_started_share": 9.0, "calls_per_tool": {"QA": 3, "Calculator": 1}}}
        results.append(entry)
    (d / "eval" / "results.json").write_text(json.dumps(results))
    (d / "eval" / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))
    (d / "steps" / "evaluate.json").write_text("{}")


def test_the_report_gives_every_goal_a_verdict_and_stores_every_item(tmp_path):
    import gzip

    from jobs.experiment import write_report
    from toolformer.config import load_config
    from toolformer.experiments.multitool.goals import SETS

    run, n = tmp_path / "run", 40
    strong, weak = [i < 24 for i in range(n)], [i < 8 for i in range(n)]  # 60 % and 20 %
    for s in (0, 1, 2):
        _unit(run, f"seed{s}/default/r1", {"baseline-finetuned": {t: weak for t in SETS},
                                           "finetuned + tools": {t: strong for t in SETS}})
    _unit(run, "base", {"base": {t: weak for t in SETS}, "base + tools (prompted)": {t: weak for t in SETS}})
    cfg = load_config(str(CONFIG), [f"output_dir={run}"])
    out = write_report(cfg, str(tmp_path / "res"), str(tmp_path / "multitool.md"))
    s = out["summary"]
    goals = {g["goal"].split(",")[0].split(" ")[0]: g for g in s["goals"]}
    assert len(s["goals"]) == 7 and all(g["met"] in (True, False) for g in s["goals"]), s["goals"]
    trex = goals["lama_trex"]
    assert trex["met"] is True and trex["per_seed"]["seed0"]["control"]["difference"] == 40.0
    assert trex["per_seed"]["seed1"]["calls"]["QA_share"] == 100.0
    assert goals["asdiv"]["met"] is True  # 60 % >= 30 %, +40 points, every math call the Calculator
    assert goals["svamp"]["met"] is True and goals["dateset"]["met"] is True
    assert goals["any"]["met"] is True  # 4 % of plain-text prompts, no Calculator call on LAMA
    assert goals["plain-text"]["met"] is True  # +2.5 %
    assert goals["the"]["met"] is True  # the seeds agree
    # the tool-choice table pooled over seeds: 30 QA choices and 10 none per seed on T-REx
    trex_choice = s["choice"]["finetuned + tools"]["pooled"]["lama_trex"]
    assert trex_choice["QA"]["n"] == 90 and trex_choice["none"]["n"] == 30
    # why missed: the tools model's wrong T-REx items called QA (its answer wrong) on items 24-29, none after
    why = s["why_missed"]["seed0/default/r1"]["finetuned + tools"]["lama_trex"]
    assert why == {"QA's answer wrong": 6, "no call": 10}
    with gzip.open(tmp_path / "res" / "items.jsonl.gz", "rt") as f:
        items = [json.loads(line) for line in f]
    assert len(items) == 4 * 2 * len(SETS) * n  # 3 seeds and the base, 2 settings each
    called = next(r for r in items if r["calls"])
    assert set(called["calls"][0]) == {"tool", "input", "output"} and "generation" in called
    page = (tmp_path / "multitool.md").read_text()
    assert "**met**" in page and "Which tool each model chose" in page


def test_the_math_configuration_still_plans_and_reports_through_the_general_command(tmp_path, capsys):
    from jobs.experiment import main

    assert main(["--config", str(REPO / "jobs" / "configs" / "math.yaml"), "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "plan of 7 units" in printed and "seed0/no_result_check/r1" in printed
    _unit(tmp_path / "run", "seed0/default/r1", {"baseline-finetuned": {"asdiv": [True, False]},
                                                 "finetuned + tools": {"asdiv": [True, True]}})
    out = main(["--config", str(REPO / "jobs" / "configs" / "math.yaml"), "--report-only",
                f"output_dir={tmp_path / 'run'}", "--results", str(tmp_path / "res"), "--docs", str(tmp_path / "m.md")])
    assert out["summary"]["pooled"]["asdiv"]["r1 finetuned + tools"]["mean"] == 100.0  # the math report, as before
    assert (tmp_path / "m.md").read_text().startswith("# ")
