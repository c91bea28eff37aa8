"""The chaos soak, small (``benchmarks/soak.py``; the full one is ``python -m jobs.bench soak``): a 3-node Ray
cluster on loopback, the real vLLM engine on a tiny random model, 30 shards of C4 text, and while the job runs an
LM actor SIGKILLed, a second driver refused, the driver SIGKILLed and resubmitted, a poison shard, a hanging tool
call, a corrupt shard, shards no tool may annotate and an input of malformed JSON. Nothing may be lost, the
committed output must equal the uninterrupted run's (here the single-process pipeline on the same inputs), and
only the poison and corrupt shards may be quarantined.
(Node removal and addition and the stalled LM batch run in the full soak only: each costs an engine start.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAULTS = "actor_kill,second_driver,driver_kill,poison,hang,corrupt,no_eligible,malformed"


def test_chaos_soak_small(tmp_path):
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "jobs.bench", "soak", "--shards", "30", "--faults", FAULTS,
           "--at-actor-kill", "0.2", "--at-driver-kill", "0.5", "--timeout", "420",
           # one failure quarantines: the poison shard (after the driver kill) needs no second pass and its engine
           # starts; a batch is still retried once (the killed actor's)
           "--max-failures", "1", "--batch-attempts", "2",
           # the uninterrupted run in one process (one engine, no Ray): the Ray job equals it row for row
           "--reference", "local", "--prepare-runner", "local",
           "--work-dir", str(tmp_path / "work"), "--results", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert out.exists(), f"no JSON (rc {proc.returncode}):\n{proc.stderr[-6000:]}"
    result = json.loads(out.read_text())
    failed = [k for k, v in result["checks"].items() if not v]
    detail = {k: result.get(k) for k in ("faults", "drivers", "documents", "quarantined", "equality", "funnel_timeouts",
                                         "final_stats")}
    assert not failed, f"checks failed: {failed}\n{json.dumps(detail, indent=1, default=str)[-8000:]}"
    assert proc.returncode == 0
    # What the checks rest on, stated once more where a reader of the test looks for it.
    assert result["documents"]["lost"] == 0
    assert result["documents"]["documents_in"] == sum(result["inputs"].values())
    assert {q["shard"] for q in result["quarantined"]} == {result["targets"]["poison"], result["targets"]["corrupt"]}
    assert result["equality"]["shards_compared"] >= 20
    assert set(result["faults_injected"]) >= set(FAULTS.split(","))
