"""The soak's short scenarios, each on a run of its own (the first documents of the same inputs) on the same
cluster, after the main run:

- ``pool_dead``: the issue's probe. One fused LM actor with one restart, four of six shards poison: one
  submission heals the dead pool with fresh passes, commits the two healthy shards, retries the four together
  (each in its own block) until quarantined, and exits with the quarantine code (3), saying so last;
- ``pause``: a driver SIGSTOPped past its lease's TTL while a second driver, on another host (a UTS namespace of
  its own), takes the run over; the first is resumed while the second still holds the run (it has committed
  since, and is still running): the first commits nothing and exits non-zero, the second finishes;
- ``node_kill``: the LM actors on one worker node SIGKILLed again and again while a run of its own annotates
  (``nodes.py``): one submission, no shard charged or quarantined, the node excluded from the run's pools;
- ``charges_pending``: a driver SIGKILLed mid-pass after a poison shard's failure was written (another shard
  hangs with no watchdog, so the pass cannot end): the charge survives, and the rerun's own brings it to quarantine.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path

from benchmarks.soak.harness import OTHER_HOST, wait
from benchmarks.soak.outputs import failures, ledger_events, marker_epochs, markers

ONE_LM = ["ray.lm.actors=1", "ray.lm.max_actors=1"]


def _names(run: Path, what: str) -> list[str]:
    return sorted(p.stem for p in (run / what / "annotate").glob("*.json"))


def _prepared(soak, name: str, docs: int) -> Path:
    run = soak.work / name
    d = soak.job("jobs.prepare", run, [f"corpus.limit={docs}", "prepare.runner=local"], role=f"{name}-prepare")
    wait(d, 600)
    if d.proc.returncode != 0:
        raise RuntimeError(f"prepare of {name} failed: {d.record()}")
    return run


def pool_dead(soak) -> dict:
    run = _prepared(soak, "pool_dead", 6)
    poison = [f"shard-{i:05d}" for i in (1, 2, 3, 4)]
    env = {**soak.env, "TOOLFORMER_FAULT_POISON_SHARD": ",".join(poison)}
    knobs = [*ONE_LM, "ray.max_actor_restarts=1", "ray.batch_attempts=2", "ray.progress_timeout_s=120",
             f"shards.max_failures={soak.args.max_failures}"]
    soak.note("pool_dead", f"4 of 6 shards poison ({', '.join(poison)}), one LM actor with one restart")
    t0 = time.perf_counter()
    first = soak.job("jobs.annotate", run, knobs, env, role="pool_dead")
    wait(first, soak.args.timeout)
    rec = first.record()
    return {"poison": poison, "first": rec, "log_first": first.text(), "seconds": round(time.perf_counter() - t0, 1),
            "markers_final": _names(run, "markers"), "quarantined": _names(run, "quarantine"),
            "attempts_final": {s: len(failures(run, s)) for s in poison},
            "errors": {s: (failures(run, s) or [{}])[0].get("error", "")[:200] for s in poison},
            "lease_left": (run / "_lease.json").exists()}


def pause(soak) -> dict:
    run = _prepared(soak, "pause", 16)
    ttl = 12.0
    knobs = [*ONE_LM, f"shards.lease_ttl_s={ttl}", "shards.lease_heartbeat_s=1"]
    first = soak.job("jobs.annotate", run, knobs, role="pause-A")
    deadline = time.perf_counter() + soak.args.timeout
    while len(markers(run)) < 3 and first.proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.2)
    if first.proc.poll() is not None:
        return {"fired": False, "why": "the first driver ended before its pause", "first": first.record()}
    first.signal(signal.SIGSTOP)
    paused_at = dt.datetime.now(dt.timezone.utc)
    soak.note("pause", f"driver pid {first.proc.pid} SIGSTOPped with {len(markers(run))} shards committed; "
                       f"lease ttl {ttl:g} s")
    time.sleep(ttl + 3)
    started_b = dt.datetime.now(dt.timezone.utc)
    second = soak.job("jobs.annotate", run, knobs, role="pause-B-other-host", prefix=OTHER_HOST)
    # resume the first while the second holds the run: it has taken the lease over and committed since
    at_takeover = len(markers(run))
    while second.proc.poll() is None and time.perf_counter() < deadline and not (
            "taking over the run's lease" in second.text() and len(markers(run)) > at_takeover):
        time.sleep(0.2)
    holding = second.proc.poll() is None
    first.signal(signal.SIGCONT)
    soak.note("pause", f"driver pid {first.proc.pid} resumed (SIGCONT) while the second "
                       f"{'still holds the run' if holding else 'had already ended'} ({len(markers(run))} committed)")
    wait(first, 180)
    rec_a = first.record()
    first_ended_while_second_ran = second.proc.poll() is None
    wait(second, soak.args.timeout)
    rec_b = second.record()
    epochs = marker_epochs(run)
    return {"first": rec_a, "log_first": first.text(), "second": rec_b, "log_second": second.text(),
            "paused_at": paused_at.isoformat(timespec="seconds"), "second_started": started_b.isoformat(timespec="seconds"),
            "resumed_while_second_held_the_run": holding, "first_ended_while_second_ran": first_ended_while_second_ran,
            "markers": epochs, "shards": 16}


def charges_pending(soak) -> dict:
    run = _prepared(soak, "charges_pending", 8)
    knobs = [*ONE_LM, "ray.batch_attempts=1", f"shards.max_failures={soak.args.max_failures}"]
    env = {**soak.env, "TOOLFORMER_FAULT_POISON_SHARD": "shard-00001"}
    # the last shard stalls with no watchdog, so the pass is still on when the poison dies; were the single actor to
    # take it first, the pass is cut by the progress timeout (kept short) and the next pass reaches the poison
    stuck = {**env, "TOOLFORMER_FAULT_STALL_SHARD": "shard-00007"}
    first = soak.job("jobs.annotate", run, [*knobs, "ray.lm_batch_timeout_s=0", "ray.progress_timeout_s=120"], stuck,
                     role="charges-A")
    charge = run / "failures" / "annotate" / "shard-00001.json"
    deadline = time.perf_counter() + soak.args.timeout
    # the poison's death is written the moment it is seen: a charge, or (another node could run the pool) an event
    # on its node's ledger, which the next driver counts (a death again in a later pass is the shard's)
    while not (charge.exists() or ledger_events(run, "shard-00001")) and first.proc.poll() is None \
            and time.perf_counter() < deadline:
        time.sleep(0.2)
    alive = first.proc.poll() is None
    pass_over = (run / "stats.json").exists()
    first.kill()
    killed_at = dt.datetime.now(dt.timezone.utc)
    soak.note("charges_pending", f"driver pid {first.proc.pid} SIGKILLed mid-pass once shard-00001's charge was "
                                 f"written (shard-00007 hangs with no watchdog)")
    written = failures(run, "shard-00001")
    on_ledger = ledger_events(run, "shard-00001")
    second = soak.job("jobs.annotate", run, knobs, env, role="charges-B")
    wait(second, soak.args.timeout)
    return {"first": first.record(), "alive_when_charged": alive, "pass_over_when_killed": pass_over,
            "killed_at": killed_at.isoformat(timespec="seconds"), "charge_at_kill": written,
            "ledger_at_kill": on_ledger,
            "second": second.record(), "log_second": second.text(),
            "final_attempts": failures(run, "shard-00001"), "final_ledger": ledger_events(run, "shard-00001"),
            "quarantined": _names(run, "quarantine"),
            "markers": _names(run, "markers")}


def node_kill(soak) -> dict:
    from benchmarks.soak.nodes import NodeChaos

    # 80 shards: the node must kill two different shards (restarting its actor in between) before the run ends
    n = min(80, len(soak.shard_ids))
    chaos = NodeChaos("node_kill", n, 10.0, 8, soak.args.timeout, soak.work / "node_kill",
                      [f"ray.lm.actors={soak.args.lm_actors}"], cluster=soak.cluster, config=soak.config, env=soak.env)
    soak.note("node_kill", f"the LM actor of one worker node SIGKILLed while it computes a shard, one shard after "
                           f"another (at most every 10 s), while a run of {n} shards annotates")
    return chaos()


SCENARIOS = {"pool_dead": pool_dead, "pause": pause, "charges_pending": charges_pending, "node_kill": node_kill}
