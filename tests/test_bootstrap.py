"""Bootstrapping rounds end to end on a tiny corpus (real model, engine, Ray Train, evaluation): two rounds, the
second annotated and finetuned with the first round's checkpoint; a job stopped midway continues on rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
