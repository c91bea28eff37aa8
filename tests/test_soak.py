"""The chaos soak, small (``benchmarks/soak/``; the full one is ``python -m jobs.bench soak``): a 3-node Ray cluster
on loopback, the real vLLM engine on a tiny random model, 80 shards of C4 text; a corrupt shard, a poison shard, a
hanging tool call and one holding the GIL armed from the start, then, once those have played out and one at a
time, a second driver refused, an LM actor SIGKILLed and the driver SIGKILLed and resubmitted; shards no tool may
annotate and an input of malformed JSON. Nothing may be lost, the committed output must equal the uninterrupted
run's (here the single-process pipeline on the same inputs), only the poison and corrupt shards may be quarantined,
and every check must cite its evidence. (Node removal and addition, the stalled batch and the three short
scenarios run in the full soak; the pool that dies for good, the paused driver and the charges of a killed driver
have tests of their own here: test_progress_or_stop.py, test_lease_fence.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAULTS = "second_driver,actor_kill,driver_kill,poison,hang,gil,corrupt,no_eligible,malformed"


@pytest.mark.slow  # ~4 min; make test-slow (the full soak, three times: benchmarks/results/soak/)
def test_chaos_soak_small(tmp_path):
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # 80 shards: the faults fire one at a time, each after the previous one's evidence (the poison's quarantine,
    # the LM actor's restart); on an idle machine 30 shards were done before the actor kill could fire
    cmd = [sys.executable, "-m", "jobs.bench", "soak", "--shards", "80", "--faults", FAULTS,
           "--at-actor-kill", "0.3", "--at-driver-kill", "0.6", "--timeout", "600",
           # one failure quarantines: the poison shard needs no retry pass and its engine starts
           "--max-failures", "1", "--batch-attempts", "2",
           # the uninterrupted run in one process (one engine, no Ray): the Ray job equals it row for row
           "--reference", "local", "--prepare-runner", "local",
           "--work-dir", str(tmp_path / "work"), "--results", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert out.exists(), f"no JSON (rc {proc.returncode}):\n{proc.stderr[-6000:]}"
    result = json.loads(out.read_text())
    failed = {k: v for k, v in result["checks"].items() if not v["ok"]}
    assert not failed, f"checks failed:\n{json.dumps(failed, indent=1, default=str)[-8000:]}"
    assert proc.returncode == 0
    # What the checks rest on, stated once more where a reader of the test looks for it.
    checks = result["checks"]
    assert checks["documents_lost_zero"]["evidence"]["accounting"]["lost"] == 0
    assert checks["only_poison_and_corrupt_quarantined"]["evidence"]["quarantined"] == sorted(
        [result["targets"]["poison"], result["targets"]["corrupt"]])
    assert checks["outputs_equal_to_uninterrupted"]["evidence"]["equality"]["shards_compared"] >= 20
    assert set(checks["every_fault_fired"]["evidence"]["fired"]) == set(FAULTS.split(","))
    assert checks["gil_calls_ended_by_their_timeout"]["evidence"]["row"]["calls_ended"] >= 1
