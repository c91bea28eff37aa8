"""Bootstrapping rounds end to end on a tiny corpus (real model, engine, Ray Train, evaluation): two rounds, the
second annotated and finetuned with the first round's checkpoint; a job stopped midway continues on rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~5 min of process and engine starts: `make test-slow`, and the bootstrap experiment itself
def test_two_rounds_resume_after_a_stop(tmp_path, shared_data):
    out = tmp_path / "boot"
    flag = tmp_path / "stopped.txt"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "TOOLFORMER_FAULT_BOOTSTRAP_STOP": "r2/annotate", "TOOLFORMER_FAULT_ONCE_FILE": str(flag)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.bootstrap", f"output_dir={out}", "name=boot",
           f"corpus.paths=[{shared_data / 'webtext' / 'ccnet_output_20docs_text_trimmed.jsonl'}]", "corpus.limit=3",
           "corpus.max_doc_chars=800", "corpus.max_text_tokens=96", "model.dtype=float32", "engine.top_logprobs=20",
           "engine.max_model_len=1024", "engine.cpu_kv_cache_gib=1", "annotate.call_syntax=free",
           # permissive and small: this checks the rounds' mechanics, not what a 135M model learns
           "annotate.defaults.tau_f=0.0", "annotate.per_tool.Calculator.tau_f=0.0",
           "annotate.per_tool.Calculator.top_k=3", "annotate.per_tool.Calculator.num_samples=2",
           "annotate.per_tool.Calendar.top_k=3", "annotate.per_tool.Calendar.num_samples=2",
           "train.max_steps=1", "train.eval_every=1", "train.seq_len=128", "train.effective_batch=2", "train.dev_size=2",
           "train.num_workers=1",
           "bootstrap.eval_tasks=[arithmetic]", "bootstrap.eval_limit=3", "eval.max_new_tokens=8"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert first.returncode != 0 and flag.exists(), f"the job was to stop after r2/annotate:\n{first.stdout[-2000:]}"
    r1, r2 = out / "rounds" / "r1", out / "rounds" / "r2"
    assert {p.stem for p in (r1 / "steps").glob("*.json")} == {"annotate", "merge", "finetune", "evaluate"}
    assert {p.stem for p in (r2 / "steps").glob("*.json")} == {"annotate"}
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert again.returncode == 0, f"{again.stdout[-3000:]}\n{again.stderr[-3000:]}"
    assert "r1/finetune: done earlier, skipped" in again.stdout and "r2/annotate: done earlier, skipped" in again.stdout
    # round 2 annotated with round 1's exported checkpoint, and trained on both rounds' C* (accumulate)
    r1_ckpt = json.loads((r1 / "steps" / "finetune.json").read_text())["checkpoints"]["last"]
    r2_cfg = (r2 / "config.round.yaml").read_text()
    assert f"name_or_path: {r1_ckpt}" in r2_cfg and str(r1) in r2_cfg
    assert json.loads((r2 / "stats.json").read_text())["engine"]["model"] == r1_ckpt
    report = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in report] == ["r1", "r2"]
    for r in report:
        assert set(r["tools"]) == {"Calculator", "Calendar"} and r["tools"]["Calendar"]["positions"] > 0
        assert set(r["eval"]["arithmetic"]) >= {"finetuned (disabled)", "finetuned + tools"}
    assert (out / "rounds.md").read_text().startswith("# Bootstrapping rounds") and (out / "rounds.png").exists()


def _annotation(tool: str, probs: list[float], gains: list[tuple[float | None, bool | None]], n_samples: int) -> dict:
    from toolformer.schemas import ANNOTATIONS

    row = {name: None for name in ANNOTATIONS.names}
    cands = [{"position": 0, "gain": g, "kept": k} for g, k in gains]
    return {**row, "text_id": "t#0", "doc_id": "t", "tool": tool, "position_probs": probs, "candidates": cands,
            "n_samples": n_samples, "n_parsed": n_samples - 1, "n_kept": sum(bool(k) for _, k in gains)}


def test_round_summary_reads_committed_parts_only(tmp_path):
    """A round's report counts the annotation parts the annotate stage committed (by its markers): a part written
    without a marker (a crashed attempt) or quarantined is not read, whatever its file name."""
    from toolformer.experiments.round_report import _tool_totals, committed_annotations, round_summary
    from toolformer.schemas import ANNOTATIONS, to_table
    from toolformer.run.shards import Manifest, RunState, ShardInfo
    from toolformer.run.store import Store

    rdir = tmp_path / "rounds" / "r1"
    store = Store(rdir)
    shards = [ShardInfo(f"shard-0000{i}", f"shards/shard-0000{i}.parquet", [], 1, f"{i}" * 64, 1) for i in range(3)]
    Manifest(shards, docs_per_shard=1, config_hash="x").save(store)
    state = RunState(store, "annotate")
    committed = [_annotation("Calculator", [0.1, 0.01], [(1.0, True), (0.2, False), (None, None)], 5),
                 _annotation("Calculator", [0.3], [(2.0, True)], 3),
                 _annotation("Calendar", [0.02], [], 2)]
    state.commit("shard-00000", {"annotations": to_table(committed, ANNOTATIONS)}, {})
    stray = [_annotation("Calculator", [0.9] * 50, [(9.0, True)] * 7, 100), _annotation("QA", [0.5], [(1.0, True)], 4)]
    store.write_table(to_table(stray, ANNOTATIONS), "annotations", "shard-00001.parquet")  # no marker
    store.write_table(to_table(stray, ANNOTATIONS), "annotations", "shard-00002.parquet")
    store.write_json({"shard_id": "shard-00002"}, "quarantine", "annotate", "shard-00002.json")

    _, paths = committed_annotations(rdir)
    assert [p.rsplit("/", 1)[1].split(".")[0] for p in paths] == ["shard-00000"]  # its attempt's file, by the marker
    out = round_summary(rdir)
    assert set(out["tools"]) == {"Calculator", "Calendar"}
    calc = out["tools"]["Calculator"]
    assert (calc["positions"], calc["positions_above_tau_s"], calc["sampled"], calc["parsed"], calc["kept"]) == (3, 2, 8, 6, 2)
    assert calc["p_start_median"] == 0.1 and calc["mean_kept_gain"] == 1.5
    assert out["tools"]["Calendar"]["positions"] == 1 and out["tools"]["Calendar"]["mean_kept_gain"] is None
    # a batch at a time gives the same totals
    one_by_one = _tool_totals(store, paths, batch_rows=1)
    assert {t: (a["sampled"], a["kept"], a["gain_n"]) for t, a in one_by_one.items()} == {"Calculator": (8, 2, 2),
                                                                                         "Calendar": (2, 0, 0)}
    # a single-process run (annotate.runner=local) has one file and no markers
    local = tmp_path / "local"
    Store(local).write_table(to_table(committed[:1], ANNOTATIONS), "annotations.parquet")
    assert round_summary(local)["tools"]["Calculator"]["positions"] == 2
    assert round_summary(tmp_path / "empty")["tools"] == {}


def test_a_rerun_with_other_settings_does_not_reuse_finished_steps(tmp_path):
    """A step's marker records the settings it was done with: the same command skips it, a changed config that the
    step depends on stops with a clear error instead of mixing two configs; an unrelated change does not."""
    from toolformer.experiments.bootstrap import Round
    from toolformer.config import load_config

    cfg = load_config(None, [f"output_dir={tmp_path}", "corpus.limit=3"])
    calls = []
    Round(cfg, log=lambda m: None).step("annotate", lambda: calls.append(1) or {"funnel": {}})
    Round(cfg, log=lambda m: None).step("annotate", lambda: calls.append(2) or {"funnel": {}})
    assert calls == [1]
    other_eval = load_config(None, [f"output_dir={tmp_path}", "corpus.limit=3", "eval.max_new_tokens=7"])
    Round(other_eval, log=lambda m: None).step("annotate", lambda: calls.append(3) or {})  # eval does not matter here
    assert calls == [1]
    changed = load_config(None, [f"output_dir={tmp_path}", "corpus.limit=3", "corpus.decontaminate=[arithmetic]"])
    with pytest.raises(RuntimeError, match="done with other settings"):
        Round(changed, log=lambda m: None).step("annotate", lambda: {})
