"""Progress or stop (issue 27 items 1 and 3), on a real local Ray with the real vLLM engine on the soak's tiny random
model of the embedded architecture (the machinery is what is tested; the method's numbers are tested elsewhere):

- the probe: a fused LM pool of one actor with no restart, and poison shards that kill it every time. The run
  heals in one submission (fresh pools each pass), commits the healthy shard, quarantines the poison ones after
  their retries together, and exits with the quarantine code;
- a batch that hangs forever with no watchdog: the pass is cut after ``ray.progress_timeout_s``, the stuck shard
  charged, the others committed;
- a failure is charged when it is seen: a driver killed mid-pass has already written it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FUSED_ONE = ["ray.fuse_lm=true", "ray.lm.actors=1", "ray.lm.max_actors=1", "ray.lm.num_cpus=0.5", "ray.num_cpus=2"]


@pytest.fixture(scope="module")
def tiny(shared_data) -> str:
    from benchmarks.soak import tiny_model

    return tiny_model()["path"]


@pytest.fixture(scope="module")
def config(tmp_path_factory, shared_data, tiny) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "probe.yaml"
    path.write_text(f"""
name: probe
model: {{name_or_path: {tiny}, dtype: float32}}
corpus:
  paths: [{shared_data / 'webtext' / 'ccnet_output_20docs_text_trimmed.jsonl'}]
  max_doc_chars: 800
  max_text_tokens: 64
engine: {{max_model_len: 1024, cpu_kv_cache_gib: 1, top_logprobs: 20}}
annotate:
  tools: [Calendar]
  call_syntax: constrained
  per_tool:
    Calendar: {{tau_s: 0.0, top_k: 2, num_samples: 2, max_call_tokens: 12}}
  batch_size: 4
shards: {{docs_per_shard: 1, progress_every_shards: 1}}
""")
    return path


def _env(**faults) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(REPO),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **faults)
    return env


def _prepare(config: Path, run: Path, docs: int) -> None:
    subprocess.run([sys.executable, "-m", "jobs.prepare", "--config", str(config), f"output_dir={run}",
                    f"corpus.limit={docs}", "prepare.runner=local"], cwd=REPO, env=_env(), check=True,
                   capture_output=True)


def _annotate(config: Path, run: Path, extra: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jobs.annotate", "--config", str(config), f"output_dir={run}", *FUSED_ONE, *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _names(run: Path, what: str) -> list[str]:
    return sorted(p.stem for p in (run / what / "annotate").glob("*.json"))


def _attempts(run: Path, sid: str) -> list[dict]:
    return json.loads((run / "failures" / "annotate" / f"{sid}.json").read_text())["attempts"]


def test_a_pool_that_dies_for_good_heals_in_the_job_and_quarantines_the_poison(config, tmp_path):
    """The issue's probe, small for the suite: 3 shards, two of them poison, an LM pool of one actor that may not
    restart (the 6-shard probe with one restart and two attempts per batch is the soak's ``pool_dead``). One
    submission: each dead pool is followed by a pass with fresh actors, the healthy shard commits, the poison
    shards are retried together (each in its own block) until quarantined, and the run exits with its own code.
    On one machine no other node could run the pool, so the deaths are the shards' own."""
    run = tmp_path / "run"
    _prepare(config, run, docs=3)
    poison = ["shard-00001", "shard-00002"]
    env = _env(TOOLFORMER_FAULT_POISON_SHARD=",".join(poison))
    knobs = ["ray.max_actor_restarts=0", "ray.batch_attempts=1", "ray.progress_timeout_s=120", "shards.max_failures=2"]
    t0 = time.monotonic()
    first = _annotate(config, run, knobs, env)
    out = first.stdout + first.stderr
    assert first.returncode == 3, out[-3000:]
    last = first.stdout.strip().splitlines()[-1]
    assert "2 of 3 shards quarantined" in last and "exit 3" in last, last
    assert "pass cut: pool_dead" in out or "pass ended with a dead pool" in out, out[-3000:]
    assert "ray.lm: 1 DEAD" in out, out[-3000:]
    assert "retrying 2 shards together" in out or "retrying 1 shards together" in out, out[-3000:]
    assert _names(run, "markers") == ["shard-00000"]  # the healthy one
    assert _names(run, "quarantine") == poison
    for sid in poison:
        attempts = _attempts(run, sid)
        assert len(attempts) == 2
        for attempt in attempts:
            assert attempt["error"].startswith(f"ActorDied: the lm actor died 1 time(s) computing a batch of {sid}")
            assert "charged to the shard: no other live node could run its pool" in attempt["error"]
    assert not (run / "_lease.json").exists()  # released on the way out
    stats = json.loads((run / "stats.json").read_text())
    assert stats["pool_deaths"] and stats["passes"] >= 3
    assert stats["shards"] == {"total": 3, "done": 1, "pending": 0, "failed_retryable": 0, "quarantined": 2}
    (node,) = stats["nodes"].values()  # one machine: every death on its ledger, each paid by its shard
    assert node["deaths"] == 4 and node["charged_to"] == {"shard": 4} and not node["excluded_at"], node
    assert time.monotonic() - t0 < 900

    status = subprocess.run([sys.executable, "-m", "jobs.status", str(run)], cwd=REPO, env=_env(),
                            capture_output=True, text=True, check=True).stdout
    assert "charges to shards by cause: ActorDied 4" in status and "4 actor deaths" in status, status


@pytest.mark.slow  # ~4 min: two drivers, a cut pass and a retry pass apart (make test-slow; the soak runs it too)
def test_a_hung_batch_without_a_watchdog_is_cut_and_charges_survive_a_driver_kill(config, tmp_path):
    """Shard 0 kills its actor (charged the moment Ray gives up on it), shard 1 hangs forever and the LM watchdog is
    off. The first driver is SIGKILLed once shard 0's charge is written, mid-pass; the second sees the stall, cuts
    the pass after ``ray.progress_timeout_s``, charges shard 1, commits shard 2 with fresh actors and retries
    shard 0 apart."""
    run = tmp_path / "run"
    _prepare(config, run, docs=3)
    env = _env(TOOLFORMER_FAULT_POISON_SHARD="shard-00000", TOOLFORMER_FAULT_STALL_SHARD="shard-00001")
    knobs = ["ray.batch_attempts=1", "ray.lm_batch_timeout_s=0", "shards.max_failures=2"]
    cmd = [sys.executable, "-m", "jobs.annotate", "--config", str(config), f"output_dir={run}", *FUSED_ONE, *knobs,
           "ray.progress_timeout_s=600"]
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    charge = run / "failures" / "annotate" / "shard-00000.json"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and not charge.exists() and first.poll() is None:
        time.sleep(0.2)
    alive = first.poll() is None
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert alive and charge.exists(), "the poison shard's failure was not written while its pass ran"
    assert len(_attempts(run, "shard-00000")) == 1 and not _names(run, "markers")

    # one failure quarantines now: shard 0 has the first driver's charge and gets the second's, shard 1 its stall's
    second = _annotate(config, run, ["ray.batch_attempts=1", "ray.lm_batch_timeout_s=0", "shards.max_failures=1",
                                     "ray.progress_timeout_s=30"], env)
    out = second.stdout + second.stderr
    assert second.returncode == 3, out[-3000:]  # ends with quarantined shards: its own code, not 0
    last = second.stdout.strip().splitlines()[-1]
    assert "2 of 3 shards quarantined" in last and "exit 3" in last, last
    assert "pass cut: stalled: no progress" in out, out[-3000:]
    assert _names(run, "markers") == ["shard-00002"]
    assert _names(run, "quarantine") == ["shard-00000", "shard-00001"]
    assert len(_attempts(run, "shard-00000")) == 2  # the killed driver's charge survived
    (stuck,) = _attempts(run, "shard-00001")
    assert stuck["error"].startswith("Stalled: shard-00001 was being computed"), stuck


def test_an_engine_that_hangs_in_setup_is_replaced_then_the_run_stops_naming_the_pool(config, tmp_path):
    """``ray.lm_setup_timeout_s``: an LM actor whose engine never starts ends itself at the bound and Ray replaces
    it; once the pool's restarts are spent the pass ends naming the pool, its node and the set-up timeouts, and
    after ``ray.max_passes_without_progress`` such passes the run stops with that message (exit 1), charging no
    shard."""
    run = tmp_path / "run"
    _prepare(config, run, docs=2)
    env = _env(TOOLFORMER_FAULT_HANG_SETUP="lm")
    knobs = ["ray.max_actor_restarts=1", "ray.lm_setup_timeout_s=15", "ray.progress_timeout_s=90",
             "ray.max_passes_without_progress=1"]
    t0 = time.monotonic()
    proc = _annotate(config, run, knobs, env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "not ready after ray.lm_setup_timeout_s=15 s" in out and "ray.lm" in out, out[-3000:]
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]  # an expected stop: its message, not a traceback
    assert not (run / "failures" / "annotate").exists() and not (run / "markers").exists()
    assert time.monotonic() - t0 < 600
