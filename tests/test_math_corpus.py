"""The math-word-problem corpus (issue 21): its reader, decontamination against evaluation inputs, the operands
call syntax, the evaluation's task-path option, and a tiny end-to-end round (annotate → merge → finetune →
evaluate) on a few problems with the real model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from toolformer.corpus import SkipLog
from toolformer.corpus.decontaminate import Decontaminator
from toolformer.corpus.readers import corpus_documents, read_documents

REPO = Path(__file__).resolve().parents[1]

PROBLEMS = [  # (question, answer): made up here, none from an evaluation set
    ("Tom has 23 marbles and finds 19 more in the garden. How many marbles does Tom have now?", 42),
    ("A baker made 48 rolls and sold 17 of them before noon. How many rolls are left?", 31),
    ("Each crate holds 12 melons. How many melons are in 6 crates?", 72),
    ("Ana read 35 pages on Monday and 28 pages on Tuesday. How many pages did she read in all?", 63),
    ("A school bus carries 44 children and 9 get off at the first stop. How many children are still on the bus?", 35),
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _mawps(path: Path, problems: list[tuple[str, float]]) -> Path:
    """A MAWPS-format file (the shipped dev split's schema): what eval.task_paths.mawps points at."""
    path.write_text(json.dumps([{"iIndex": 900 + i, "sQuestion": q, "lSolutions": [a]}
                                for i, (q, a) in enumerate(problems)]))
    return path


# -- the reader ---------------------------------------------------------------------------------------------------
def test_math_files_read_as_question_answer_documents(tmp_path, shared_data):
    skips = SkipLog()
    asdiv = list(read_documents([str(shared_data / "asdiv" / "ASDiv.xml")], fmt="math", skips=skips, limit=3))
    svamp = list(read_documents([str(shared_data / "svamp" / "SVAMP.json")], fmt="math", skips=skips, limit=3))
    own = list(read_documents([str(_jsonl(tmp_path / "own.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS]))],
                              fmt="math", skips=skips))
    mawps = list(read_documents([str(shared_data / "mawps" / "mawps_dev50.json")], fmt="math", skips=skips))
    # ASDiv's problems without a numeric answer are counted, never silently left out (issue 28)
    assert set(skips.as_dict()["by_reason"]) == {"non_numeric_answer"}
    assert len(asdiv) == 3 and len(svamp) == 3 and len(own) == len(PROBLEMS) and len(mawps) == 50
    for doc in asdiv + svamp + own + mawps:
        assert re.fullmatch(r"Question: \S.*\nAnswer: -?[\d.]+", doc.text), doc.text
    assert asdiv[0].doc_id == "asdiv-nluds-0001" and svamp[0].doc_id.startswith("svamp-")
    assert own[2].text == f"Question: {PROBLEMS[2][0]}\nAnswer: 72"
    # the same problems the evaluation asks, so the corpus reads the way the evaluation prompts read
    from toolformer.evaluation.runner import format_prompt
    from toolformer.evaluation.tasks import load_task

    first = load_task("svamp", shared_data)[0]
    assert svamp[0].text == f"{format_prompt(first)} {first.answers[0]}"


def test_a_bad_math_file_is_a_counted_skip(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('[{"neither": 1}]')
    missing = _jsonl(tmp_path / "nofields.jsonl", [{"q": "no answer"}])
    skips = SkipLog()
    assert list(read_documents([str(bad), str(missing)], fmt="math", skips=skips)) == []
    assert skips.as_dict()["by_reason"] == {"unreadable_file": 2}


# -- decontamination ----------------------------------------------------------------------------------------------
def test_decontamination_skips_and_counts_a_contaminated_text(tmp_path):
    mawps = _mawps(tmp_path / "mawps.json", [PROBLEMS[0], PROBLEMS[3]])
    check = Decontaminator.for_tasks(["mawps"], n=8, task_paths={"mawps": str(mawps)})
    # copied with other case, punctuation and surrounding text: contaminated
    assert check("Story time! TOM has 23 marbles, and finds 19 more in the garden; how many marbles now?")
    # a different problem with the same stock phrases (fewer than 8 words in a row shared): clean
    assert not check("Sam has 23 stickers and finds 4 more in the garden shed. How many stickers does Sam have now?")
    corpus = _jsonl(tmp_path / "c.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])

    from toolformer.config import load_config

    cfg = load_config(None, [f"corpus.paths=[{corpus}]", "corpus.format=math", "corpus.decontaminate=[mawps]",
                             f"corpus.decontaminate_paths.mawps={mawps}"])
    skips = SkipLog()
    docs = list(corpus_documents(cfg.corpus, skips))
    assert [d.text.split("\n")[0][10:] for d in docs] == [PROBLEMS[i][0] for i in (1, 2, 4)]
    assert skips.as_dict()["by_reason"] == {"contaminated": 2}
    # off: nothing skipped
    cfg.corpus.decontaminate = []
    skips = SkipLog()
    assert len(list(corpus_documents(cfg.corpus, skips))) == len(PROBLEMS) and skips.total == 0


def test_decontamination_n_and_short_inputs():
    check = Decontaminator(["one two three four five six seven eight nine", "short input"], n=8)
    assert check("x two three four five six seven eight nine y")  # an 8-gram of the first
    assert not check("two three four five six seven eight")  # 7 words only
    assert check("a Short, input! b")  # an input shorter than n is matched whole
    assert not check("short")
    with pytest.raises(ValueError, match="decontaminate_n"):
        Decontaminator(["a b"], n=0)


def test_contaminated_count_reaches_manifest_funnel_and_card(tmp_path):
    """Prepare (the sharded path) counts the skip in the manifest; the funnel line and the dataset card show it."""
    from toolformer.cstar.card import decontamination
    from toolformer.config import load_config
    from toolformer.prepare.local import prepare_local
    from toolformer.report import format_funnel

    mawps = _mawps(tmp_path / "mawps.json", [PROBLEMS[1]])
    corpus = _jsonl(tmp_path / "c.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"corpus.paths=[{corpus}]", "corpus.format=math",
                             "corpus.decontaminate=[mawps]", f"corpus.decontaminate_paths.mawps={mawps}"])
    manifest = prepare_local(cfg, log=lambda m: None)
    assert manifest.n_docs == len(PROBLEMS) - 1 and manifest.skips["by_reason"] == {"contaminated": 1}
    assert "Documents skipped before annotation: contaminated 1." in format_funnel({}, manifest.skips)
    line = decontamination({"decontaminate": ["mawps"], "decontaminate_n": 8}, manifest.skips)[0]
    assert "mawps" in line and "1 documents" in line
    assert "Not decontaminated" in decontamination({}, {})[0]


# -- the operands call syntax -------------------------------------------------------------------------------------
def test_operands_pattern_admits_the_texts_numbers_only():
    from toolformer.calls import parse_call
    from toolformer.tools import ToolRequest
    from toolformer.tools.calculator import Calculator, text_operands

    before = "Question: A shop sold 1,200 pens at 3.5 dollars and 40 more on 12 May.\nAnswer: "
    assert text_operands(before) == ["1200", "3.5", "40", "12"]
    rx = re.compile(Calculator.call_regex_in(before))
    for ok in ("Calculator(1200 * 3.5)]", "Calculator(40 + 12 - 3.5)]", "Calculator((1200 + 40) / 12)]"):
        assert rx.fullmatch(ok), ok
        call = parse_call("[" + ok, ["Calculator"])
        assert call is not None and Calculator()([ToolRequest(call.input)])[0] is not None
    for bad in ("Calculator(1200)]", "Calculator(120 + 4)]", "Calculator(7 * 3)]", "Calculator(1,200 + 40)]"):
        assert not rx.fullmatch(bad), bad
    # a text without numbers before the call: the general constrained pattern
    assert Calculator.call_regex_in("Question: how many?") == Calculator.call_regex()


def test_operands_samples_use_the_texts_numbers_on_the_engine(vllm_engine):
    """The per-request pattern reaches the engine: every sample is a call over numbers written before it."""
    from toolformer.tools.calculator import Calculator, text_operands

    befores = ["Question: Tom has 23 marbles and finds 19 more. How many now?\nAnswer:",
               "Question: Each crate holds 12 melons. How many melons are in 6 crates?\nAnswer:"]
    prompts = [vllm_engine.encode(b) + [vllm_engine.start_ids[0]] for b in befores]
    outs = vllm_engine.sample(prompts, n=4, max_tokens=24, stop="]", temperature=1.0, seeds=[1, 2],
                         regex=[Calculator.call_regex_in(b) for b in befores])
    for before, samples in zip(befores, outs):
        allowed = set(text_operands(before))
        for s in samples:
            assert s.closed and s.text.startswith("Calculator("), s.text
            assert set(re.findall(r"[\d.]+", s.text)) <= allowed, (s.text, allowed)


# -- the evaluation's task paths ----------------------------------------------------------------------------------
def test_task_path_option_reads_that_file(tmp_path, shared_data):
    from toolformer.evaluation.tasks import load_task

    mawps = _mawps(tmp_path / "mawps_own.json", PROBLEMS[:3])
    items = load_task("mawps", shared_data, path=mawps)
    assert [e.prompt for e in items] == [q for q, _ in PROBLEMS[:3]] and items[0].answers == ["42"]
    assert len(load_task("mawps", shared_data)) == 50  # without it: the shipped dev split
    with pytest.raises(ValueError, match="takes no path"):
        load_task("arithmetic", shared_data, path=mawps)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("mawps", shared_data, path=tmp_path / "nope.json")


# -- the stored experiment ----------------------------------------------------------------------------------------
STORED = REPO / "benchmarks" / "results" / "math_corpus"


def test_the_readme_reports_the_stored_run():
    """The experiment's figures in docs/results.md are the stored run's: its round report's accuracy rows appear there
    verbatim, and the report's derived figures (where tool use breaks, paired comparisons) recompute from the
    stored generations."""
    from toolformer.experiments.round_report import call_chain, generation_rows, paired

    report = (STORED / "rounds.md").read_text()
    readme = (REPO / "docs" / "results.md").read_text()
    rows = [line for line in report.splitlines() if re.match(r"\| r\d+ \| (mawps|arithmetic) \| ", line)]
    assert len(rows) >= 7  # round 1: five settings per task; round 2: two
    missing = [line for line in rows if line not in readme]
    assert not missing, missing
    for r in json.loads((STORED / "rounds.json").read_text()):
        generations = generation_rows(STORED / r["round"] / "eval" / "generations.jsonl")
        assert call_chain(generations) == (r["chain"], r["generations"])
        assert paired(generations) == r["paired"]
        results = json.loads((STORED / r["round"] / "eval" / "results.json").read_text())
        for setting in results:
            for task, v in setting["tasks"].items():
                assert r["eval"][task][setting["setting"]["name"]]["accuracy"] == v["accuracy"]


# -- a tiny end-to-end round --------------------------------------------------------------------------------------
def test_tiny_round_end_to_end(tmp_path):
    """One round of the math experiment on five problems (one of them contaminated), a 1-step finetune and its
    evaluation on a MAWPS file given by path: every step runs on the real model, engine and Ray Train."""
    corpus = _jsonl(tmp_path / "problems.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])
    mawps = _mawps(tmp_path / "mawps_eval.json", [PROBLEMS[4], ("A jar has 15 coins and 27 are added. How many "
                                                               "coins are in the jar now?", 42)])
    out = tmp_path / "math"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.bootstrap", "--config", "jobs/configs/math_corpus.yaml", f"output_dir={out}",
           "name=tiny", f"corpus.paths=[{corpus}]", "corpus.limit=5", f"corpus.decontaminate_paths.mawps={mawps}",
           f"eval.task_paths.mawps={mawps}", "engine.max_model_len=1024", "engine.cpu_kv_cache_gib=1",
           "annotate.per_tool.Calculator.tau_f=0.0",  # permissive: this checks the round's mechanics
           "annotate.per_tool.Calculator.top_k=2", "annotate.per_tool.Calculator.num_samples=2",
           "train.max_steps=1", "train.eval_every=1", "train.seq_len=128", "train.effective_batch=1",
           "train.dev_size=2", "train.num_workers=1", "bootstrap.rounds=1", "bootstrap.eval_tasks=[mawps]",
           "bootstrap.eval_base=false", "bootstrap.baseline=false", "eval.max_new_tokens=12"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    r1 = out / "rounds" / "r1"
    assert {p.stem for p in (r1 / "steps").glob("*.json")} == {"annotate", "merge", "finetune", "evaluate"}
    annotate = json.loads((r1 / "steps" / "annotate.json").read_text())
    assert annotate["docs_skipped"]["by_reason"] == {"contaminated": 1}
    assert annotate["funnel"]["Calculator"]["texts_seen"] == len(PROBLEMS) - 1
    card = (r1 / "cstar" / "README.md").read_text()
    assert "Decontaminated against mawps, arithmetic: 1 documents" in card and "operands" in card
    results = json.loads((r1 / "eval" / "results.json").read_text())
    assert {r["setting"]["name"] for r in results} == {"finetuned (disabled)", "finetuned + tools"}
    assert all(r["tasks"]["mawps"]["n"] == 2 for r in results)  # the file given by eval.task_paths.mawps
    report = json.loads((out / "rounds.json").read_text())
    assert report[0]["docs_skipped"] == {"contaminated": 1} and "mawps" in report[0]["eval"]
