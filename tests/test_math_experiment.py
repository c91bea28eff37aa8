"""The math experiment's small pieces (issue 28): the fold split, decontamination that follows the evaluation's
paths, every corpus source accounted for, boundary positions, the Calculator result check and the copy-error
rate, the matched control's texts and dev split, steps from epochs, false-call counting, the report's statistics
and the experiment's plan. Each is quick; the experiment itself is a benchmark (docs/math.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from toolformer.annotate.positions import boundary_mask, is_boundary, select_positions
from toolformer.config import load_config
from toolformer.corpus import SkipLog
from toolformer.corpus.readers import read_documents
from toolformer.engine.base import StartProbs


def _mawps(path: Path, problems: list[tuple[str, float]]) -> Path:
    path.write_text(json.dumps([{"iIndex": 900 + i, "sQuestion": q, "lSolutions": [a]}
                                for i, (q, a) in enumerate(problems)]))
    return path


PROBLEMS = [  # made up here, none from an evaluation set
    ("Tom has 23 marbles and finds 19 more in the garden. How many marbles does Tom have now?", 42),
    ("A baker made 48 rolls and sold 17 of them before noon. How many rolls are left?", 31),
    ("Each crate holds 12 melons. How many melons are in 6 crates?", 72),
]


# -- the fold split ---------------------------------------------------------------------------------------------
def test_fold_split_trains_on_the_other_folds_and_evaluates_the_held_out_one(shared_data):
    from toolformer.evaluation.tasks import fold_ids, load_task

    folds = shared_data / "asdiv" / "nfolds" / "asdiv-w"
    train, held = fold_ids(folds, 0)
    assert len(held) == 444 and len(train) == 2305 - 444 and not train & held
    skips = SkipLog()
    docs = list(read_documents([str(shared_data / "asdiv" / "ASDiv.xml")], fmt="math", skips=skips,
                               folds=str(folds), holdout_fold=0))
    ids = {d.doc_id.removeprefix("asdiv-") for d in docs}
    assert ids <= train and not ids & held
    by = skips.as_dict()["by_reason"]
    # every problem accounted for: read, held out, or without a numeric answer
    assert len(docs) + by["held_out_fold"] + by["non_numeric_answer"] == 2305
    evaluated = load_task("asdiv", shared_data, ids=folds / "fold0.txt")
    assert {e.uid for e in evaluated} <= held and len(evaluated) == by["held_out_fold"]
    with pytest.raises(ValueError, match="holdout_fold=7"):
        fold_ids(folds, 7)


# -- decontamination derived from the evaluation -----------------------------------------------------------------
def test_decontamination_follows_the_evaluation_paths(tmp_path):
    """Changing eval.task_paths moves the corpus's check with it: no second setting to remember."""
    from toolformer.experiments.bootstrap import round_config
    from toolformer.corpus.readers import corpus_documents

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in PROBLEMS))
    first = _mawps(tmp_path / "first.json", [PROBLEMS[0]])
    second = _mawps(tmp_path / "second.json", [PROBLEMS[2]])
    common = [f"corpus.paths=[{corpus}]", "corpus.format=math", "bootstrap.eval_tasks=[mawps]",
              "corpus.decontaminate=[arithmetic]", f"corpus.decontaminate_paths.mawps={first}"]

    def kept(eval_path: Path) -> list[str]:
        cfg = load_config(None, common + [f"eval.task_paths.mawps={eval_path}"])
        rc = round_config(cfg, 1, "model")
        assert rc.corpus.decontaminate == ["arithmetic", "mawps"]  # corpus.decontaminate only adds
        assert rc.corpus.decontaminate_paths["mawps"] == str(eval_path)  # the file the evaluation reads
        skips = SkipLog()
        docs = [d.text for d in corpus_documents(rc.corpus, skips)]
        assert skips.as_dict()["by_reason"] == {"contaminated": 1}
        return docs

    assert not any(PROBLEMS[0][0] in t for t in kept(first)) and any(PROBLEMS[2][0] in t for t in kept(first))
    assert not any(PROBLEMS[2][0] in t for t in kept(second)) and any(PROBLEMS[0][0] in t for t in kept(second))


def test_decontamination_with_ids_covers_the_held_out_fold_only(tmp_path):
    from toolformer.corpus.decontaminate import Decontaminator

    mawps = _mawps(tmp_path / "m.json", PROBLEMS)
    ids = tmp_path / "ids.txt"
    ids.write_text("901\n")  # the second problem only
    check = Decontaminator.for_tasks(["mawps"], task_paths={"mawps": str(mawps)}, task_ids={"mawps": str(ids)})
    assert check(PROBLEMS[1][0]) and not check(PROBLEMS[0][0])


# -- every source accounted for ----------------------------------------------------------------------------------
def test_every_source_accounted_for_and_an_empty_one_is_said(tmp_path):
    from toolformer.corpus.accounting import EmptySourceError, account_sources, card_lines
    from toolformer.corpus.readers import corpus_documents

    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"question": q, "answer": x}) + "\n" for q, x in PROBLEMS))
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"question": "Sam has 4 pens and buys 9 more pens today. How many now?", "answer": 13}) + "\n")
    mawps = _mawps(tmp_path / "m.json", [PROBLEMS[1]])
    cfg = load_config(None, [f"corpus.paths=[{a},{b}]", "corpus.format=math", "corpus.limit=2",
                             "corpus.decontaminate=[mawps]", f"corpus.decontaminate_paths.mawps={mawps}"])
    facts = account_sources(cfg.corpus)
    first, second = facts["sources"]
    assert (first["records"], first["kept"], first["in_slice"]) == (3, 2, 2)
    assert first["dropped"] == {"contaminated": 1} and first["contaminated_per_set"] == {"mawps": 1}
    assert (second["kept"], second["in_slice"], second["past_limit"]) == (1, 0, 1)  # the limit never reaches it
    assert facts["in_slice"] == len(list(corpus_documents(cfg.corpus, SkipLog())))  # what the run really reads
    assert len(facts["warnings"]) == 1 and str(b) in facts["warnings"][0]
    card = "\n".join(card_lines(facts))
    assert "Warning" in card and str(b) in card and "contaminated: mawps" in card
    cfg.corpus.require_every_source = True
    with pytest.raises(EmptySourceError):
        account_sources(cfg.corpus)


# -- boundary positions --------------------------------------------------------------------------------------------
def test_boundaries_never_split_a_number_or_a_word():
    text = "Answer: 703 apples, 1,200 pears and 3.5 kg"
    inside = [text.index("703") + 2, text.index("apples") + 3, text.index("1,200") + 1, text.index("1,200") + 2,
              text.index("3.5") + 1, text.index("3.5") + 2]
    for at in inside:
        assert not is_boundary(text, at), text[:at] + "|" + text[at:]
    for at in (0, text.index("703"), text.index(" apples"), text.index(","), text.index("kg"), len(text)):
        assert is_boundary(text, at), text[:at] + "|" + text[at:]


class _Flat:
    """Every position equally likely to start a call (exact values): selection is decided by the mask."""

    start_ids = [1]

    def start_probs(self, seqs, starts, top_k=None):
        return [StartProbs(np.full(len(s) - st, 0.3), np.full(len(s) - st, 0.3)) for s, st in zip(seqs, starts)]

    def token_logprobs_after(self, prefixes, token_ids):
        raise AssertionError("nothing needs an exact value")


def test_select_positions_chooses_only_allowed_positions(tokenizer):
    text = "Question: 19 times 37?\nAnswer: 703"
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    from toolformer.annotate.sampling import char_start

    offsets = enc["offset_mapping"]
    starts = [char_start(text, offsets, j) for j in range(len(offsets))]
    mask = boundary_mask(text, starts)
    got, stats = select_positions(_Flat(), [[0] * (len(offsets) + 1)], [1], tau_s=0.0, k=len(offsets),
                                  allowed=[mask])
    chosen = {j for j, _ in got[0]}
    assert chosen == set(np.flatnonzero(mask)) and stats["positions_ruled_out"] == int((~mask).sum())
    assert all(is_boundary(text, starts[j]) for j in chosen)


# -- the result check and the copy-error rate ----------------------------------------------------------------------
def test_result_check_drops_a_contradicted_call_and_the_copy_error_rate_sees_it():
    import pyarrow as pa

    from toolformer.cstar.augment import KEPT, copy_errors, insert_calls, result_agrees, result_check

    text = "Question: 19 times 37?\nAnswer: 703"
    at_split = text.index("703") + 2  # "70|3": the text then gives 3
    at_word = text.index("703")
    assert result_agrees(text, at_split, "703") is False
    assert result_agrees(text, at_word, "703") is True
    assert result_agrees(text, at_word, "702.996") is True  # the Calculator's 2-decimal rounding
    assert result_agrees("Answer: none", 0, "7") is None  # nothing to compare: not contradicted
    kept = pa.Table.from_pylist([
        dict(text_id="t", tool="Calculator", position=9, char_start=at_split, input="19 * 37", result="703", gain=1.0),
        dict(text_id="t", tool="Calculator", position=8, char_start=at_word, input="19 * 37", result="703", gain=0.9),
    ], schema=KEPT)
    checked = result_check(kept, {"t": text})
    assert checked.column("char_start").to_pylist() == [at_word]
    for cands, wrong in ((kept.slice(0, 1), 1), (kept.slice(1, 1), 0)):
        c = cands.to_pylist()[0]
        new, calls = insert_calls(text, [c])
        assert copy_errors(new, calls) == (1, wrong), new


# -- the matched control --------------------------------------------------------------------------------------------
def test_strip_calls_gives_back_the_original_text():
    from toolformer.cstar.augment import insert_calls
    from toolformer.train.data import dev_split_ids, strip_calls

    text = "Tom has 23 marbles and finds 19 more.\nAnswer: 42"
    cands = [dict(tool="Calculator", input="23 + 19", result="42", position=12, char_start=text.index("42"), gain=1.0),
             dict(tool="Calculator", input="23", result="23", position=0, char_start=0, gain=0.7),
             dict(tool="Calculator", input="2 + 1", result="3", position=3, char_start=text.index("3 marbles"), gain=0.6)]
    new, calls = insert_calls(text, cands)
    assert new != text and strip_calls(new, calls) == text
    ids = [f"t{i}" for i in range(400)]
    dev = dev_split_ids(ids, 0.1, 32)
    assert len(dev) == 40 and dev == dev_split_ids(list(reversed(ids)), 0.1, 32)  # any order: same for the control
    assert len(dev_split_ids(ids[:100], 0.1, 32)) == 32  # at least dev_size
    # chosen by id alone: the problems of a smaller run that are dev in the larger one stay dev (no seed, no C*)
    assert set(dev_split_ids(ids[:100], 0.1, 32)) >= set(dev) & set(ids[:100])
    assert dev_split_ids(iter(ids), 0.1, 32, total=len(ids)) == dev  # streamed
    assert dev_split_ids(["only"], 0.1, 32) == []


def test_epochs_not_steps():
    from toolformer.train.finetune import epoch_steps

    assert epoch_steps(44, 8, 5) == (28, 6)  # 5 x 44 / 8 = 27.5 -> 28 steps, a checkpoint every 6
    assert epoch_steps(30, 8, 5) == (19, 4)  # the shorter control text: fewer steps, the same epochs
    assert epoch_steps(1, 8, 1) == (1, 1)


# -- false calls --------------------------------------------------------------------------------------------------
def test_false_call_rate_counts_calculator_calls_written(shared_data):
    from toolformer.evaluation.language import false_call_examples, false_call_rate, no_arithmetic, perplexity_texts

    rows = [{"calls": [{"tool": "Calculator", "ok": True}]}, {"calls": [{"tool": None, "ok": False}]}, {"calls": []},
            {"calls": [{"tool": "Calculator", "ok": False}]}]
    r = false_call_rate(rows)
    assert (r["n"], r["calculator_call_share"], r["call_started_share"]) == (4, 50.0, 75.0)
    assert no_arithmetic("The museum opened in 1998 and closed for repairs in the spring.")
    assert not no_arithmetic("He paid 12 dollars for 3 books, so 4 dollars each.")
    web = false_call_examples(shared_data, "webtext", 20)
    lama = false_call_examples(shared_data, "lama", 20)
    assert len(web) == 20 and len(lama) == 20 and all(no_arithmetic(e.prompt) for e in web + lama)
    assert web == false_call_examples(shared_data, "webtext", 20)  # a fixed sample
    prompts = {e.prompt.split()[0:10].__str__() for e in false_call_examples(shared_data, "webtext", 400)}
    held = {" ".join(t.split()[:10]).split().__str__() for t in perplexity_texts(shared_data, 200)}
    assert not prompts & held  # perplexity documents are never false-call prompts


# -- the report's statistics and the plan -------------------------------------------------------------------------
def test_wilson_and_mcnemar():
    from toolformer.experiments.math.report import mcnemar, wilson

    assert wilson(0, 0) == [0.0, 0.0]
    lo, hi = wilson(76, 400)  # the 19.0 % on 400: Wilson 15.5-23.1
    assert (lo, hi) == (15.5, 23.1)
    a = {str(i): i < 30 for i in range(100)}
    b = {str(i): i < 10 for i in range(100)}
    m = mcnemar(a, b)
    assert (m["n"], m["only_first"], m["only_second"]) == (100, 20, 0) and m["p"] < 1e-4
    assert mcnemar(a, a)["p"] == 1.0


def test_plan_puts_round_one_of_every_seed_first():
    from toolformer.experiments.experiment import Unit, needs, plan

    cfg = load_config("jobs/configs/math.yaml")
    names = [u.name for u in plan(cfg)]
    assert names[:4] == ["seed0/default/r1", "base", "seed1/default/r1", "seed2/default/r1"]
    assert names.index("seed0/no_result_check/r1") < names.index("seed0/default/r2")
    assert names[-1] == "seed0/default/r2" and len(names) == 7  # ablations and round 2 on seed 0 (math.yaml)
    assert needs(Unit.parse("seed1/no_result_check/r1")) == ["seed1/default/r1"]
    assert needs(Unit.parse("seed1/default/r2")) == ["seed1/default/r1"]
    assert Unit.parse("seed2/no_boundary_positions/r1").name == "seed2/no_boundary_positions/r1"


def _fake_unit(root: Path, unit: str, settings: dict[str, dict[str, list[bool]]], calls: bool = True) -> None:
    """An evaluated unit as the experiment stores it: eval/results.json, generations.jsonl, a step marker."""
    d = root / "base" if unit == "base" else root / unit.split("/")[0] / unit.split("/")[1] / "rounds" / unit.split("/")[2]
    (d / "eval").mkdir(parents=True)
    (d / "steps").mkdir(parents=True)
    results, gens = [], []
    for name, per_set in settings.items():
        tasks = {}
        for task, right in per_set.items():
            tasks[task] = {"n": len(right), "accuracy": round(100 * sum(right) / len(right), 1),
                           "call_share": {"Calculator": 100.0} if calls and "tools" in name else {}}
            for i, ok in enumerate(right):
                gens.append({"setting": name, "task": task, "uid": str(i), "correct": ok, "calls": [],
                             "generation": "[Calculator(2 + 3) -> 5] 5" if ok else "[Calculator(2 + 3) -> 5] 6"})
        entry = {"setting": {"name": name}, "tasks": tasks, "perplexity": {"perplexity": 20.0 if name == "base" else 20.5}}
        if "tools" in name:
            entry["false_call"] = {"webtext": {"n": 10, "calculator_call_share": 20.0, "call_started_share": 30.0}}
        results.append(entry)
    (d / "eval" / "results.json").write_text(json.dumps(results))
    (d / "eval" / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))
    (d / "steps" / "evaluate.json").write_text("{}")


def test_the_report_from_stored_units(tmp_path):
    """Two seeds and the base rows, stored as the experiment stores them: pooled means, paired tests per seed and
    pooled, goals with their verdicts, the plot, items.json and the page."""
    from toolformer.experiments.math.report import write_report

    run = tmp_path / "run"
    n = 40
    tools = [i < 24 for i in range(n)]  # 60 %
    control = [i < 8 for i in range(n)]  # 20 %
    for s in (0, 1):
        _fake_unit(run, f"seed{s}/default/r1", {"baseline-finetuned": {t: control for t in ("asdiv", "svamp", "mawps")},
                                               "finetuned + tools": {t: tools for t in ("asdiv", "svamp", "mawps")}})
    _fake_unit(run, "base", {"base": {t: control for t in ("asdiv", "svamp", "mawps")},
                             "base + tools (prompted)": {t: control for t in ("asdiv", "svamp", "mawps")}})
    cfg = load_config("jobs/configs/math.yaml", [f"output_dir={run}", "bootstrap.seeds=[0,1]"])
    out = write_report(cfg, tmp_path / "res", tmp_path / "math.md")
    s = out["summary"]
    assert s["pooled"]["asdiv"]["r1 finetuned + tools"]["mean"] == 60.0
    assert s["pooled"]["asdiv"]["r1 control"]["range"] == 0.0
    pooled = s["paired"]["r1"]["asdiv"]["control"]["pooled"]
    # pooled over the two seeds: the item is the unit (40 items, 16 differ), never 80 seed copies
    assert (pooled["items"], pooled["nonzero"], pooled["difference"]) == (40, 16, 40.0) and pooled["p"] < 1e-4
    assert pooled["test"] == "paired permutation over items (exact)"
    verdicts = {(g["kind"], g.get("vs") or g.get("set")): g["met"] for g in s["goals"]}
    assert verdicts[("per seed", "control")] is True and verdicts[("pooled", "control")] is True
    assert verdicts[("false calls", None)] is False  # 20 % here
    assert verdicts[("perplexity", None)] is True  # +2.5 %
    assert s["items_equal"] is True
    row = next(r for r in s["rows"] if r["unit"] == "seed0/default/r1" and r["setting"] == "finetuned + tools")
    assert row["ci95"] == [44.6, 73.7] and row["false_call"] == {"webtext": 20.0} and row["perplexity"] == 20.5
    items = json.loads((tmp_path / "res" / "items.json").read_text())
    assert items["right"]["seed1/default/r1"]["finetuned + tools"]["mawps"].count("1") == 24
    ge = s["language"]  # the page lists every model's false calls and perplexity
    assert ge["seed0/default/r1"]["finetuned + tools"]["perplexity"] == 20.5
    page = (tmp_path / "math.md").read_text()
    assert "**met**" in page and "**not met**" in page and (tmp_path / "res" / "math.png").stat().st_size > 10_000
