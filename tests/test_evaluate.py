"""The evaluate job end to end on built-in tasks (real model, real tools), and the results table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from toolformer.evaluation.runner import results_table

REPO = Path(__file__).resolve().parents[1]


def test_evaluate_writes_table_json_and_plot(tmp_path):
    # As a user runs it: a process of its own (an engine closed in the test process would take vLLM's
    # process-wide parallel state with it, under the session's shared engine).
    cmd = [sys.executable, "-m", "jobs.evaluate", f"output_dir={tmp_path}", "eval.tasks=[arithmetic,dateset]",
           "eval.limit=4", "eval.tools=[Calculator,Calendar]", "eval.max_new_tokens=12", "engine.top_logprobs=20",
           "engine.max_model_len=1024", "engine.cpu_kv_cache_gib=1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = {"table": proc.stdout}
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [r["setting"]["name"] for r in results] == ["base", "base + tools (prompted)"]
    for r in results:
        assert set(r["tasks"]) == {"arithmetic", "dateset"}
        assert all(v["n"] == 4 and 0 <= v["accuracy"] <= 100 for v in r["tasks"].values())
    assert not any(r["tasks"][t]["call_share"] for r in results[:1] for t in r["tasks"])  # base: calls disabled
    rows = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all("generation" in r for r in rows)
    assert (tmp_path / "eval" / "accuracy.png").stat().st_size > 1000
    assert "| base |" in out["table"]


def test_results_table_shows_accuracy_and_call_share():
    res = [{"setting": {"name": "m"}, "tasks": {"svamp": {"n": 10, "accuracy": 30.0, "call_share": {"Calculator": 40.0}},
                                               "nq": {"n": 5, "accuracy": 20.0, "call_share": {}}}}]
    table = results_table(res)
    assert "| m | 20.0 | 30.0 (40% calls) |" in table and "svamp 10" in table
