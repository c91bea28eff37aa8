"""What keeps an unattended run going, without a cluster: the lease (one driver per run), tool-call timeouts,
observability that never raises, and shard states that stay consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest

from toolformer.run.lease import LEASE, Lease, LeaseHeld, LeaseLost
from toolformer.run.shards import Charge, RunState
from toolformer.run.store import Store


# -- the lease ----------------------------------------------------------------------------------------------
def test_second_driver_refuses_naming_the_holder(tmp_path):
    store = Store(tmp_path)
    with Lease(store, ttl_s=60, heartbeat_s=0.1, log=lambda _: None) as first:
        with pytest.raises(LeaseHeld) as refused:
            Lease(store, ttl_s=60, log=lambda _: None).acquire()
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and "host" in message and "started" in message
        time.sleep(0.3)
        assert first.renewals >= 1  # the heartbeat renews it
        first.check()
    assert not store.exists(LEASE)  # released at the end


def test_a_held_lease_is_waited_for_then_refused_with_its_own_code(tmp_path):
    """Issue 43 item 4: a second driver waits up to shards.lease_wait_s (default: the TTL) for a held lease, then
    exits 75 (try again later), not 1; a holder that finishes meanwhile hands the run over at once."""
    import threading

    from toolformer.config import RunConfig
    from toolformer.run.lease import EXIT_LEASE_HELD, lease_wait

    store = Store(tmp_path)
    said: list[str] = []
    with Lease(store, ttl_s=60, heartbeat_s=0.1, log=lambda _: None):
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld) as refused:
            Lease(store, ttl_s=60, heartbeat_s=0.2, log=said.append, wait_s=1.0).acquire()
        assert time.monotonic() - t0 >= 1.0
        assert refused.value.code == EXIT_LEASE_HELD == 75 and "another driver" in str(refused.value)
        assert any("waiting up to" in s for s in said) and "exit 75" in said[-1]
    holder = Lease(store, ttl_s=60, heartbeat_s=0.1, log=lambda _: None).acquire()
    threading.Timer(0.5, holder.release).start()
    with Lease(store, ttl_s=60, heartbeat_s=0.2, log=lambda _: None, wait_s=30) as second:  # taken once released
        assert json.loads(store.read_bytes(LEASE))["owner"] == second.owner
    cfg = RunConfig()
    assert lease_wait(cfg.shards) == cfg.shards.lease_ttl_s == 120  # the default: up to the TTL
    cfg.shards.lease_wait_s = 0
    assert lease_wait(cfg.shards) == 0


def test_lease_of_a_dead_driver_is_taken_over_at_once(tmp_path):
    """A driver killed with SIGKILL leaves its lease; on the same host, a dead pid is enough to take it over."""
    store = Store(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = Lease(store).record() | {"pid": int(dead.stdout), "owner": "gone"}
    store.write_json(record, LEASE)
    said = []
    with Lease(store, ttl_s=3600, log=said.append) as lease:
        assert json.loads(store.read_bytes(LEASE))["owner"] == lease.owner
    assert "no longer running" in said[0]


def test_lease_not_renewed_within_its_ttl_is_taken_over(tmp_path):
    store = Store(tmp_path)
    record = Lease(store).record() | {"host": "another-node", "pid": 1, "owner": "elsewhere",
                                      "renewed_at": time.time() - 10, "ttl_s": 5}
    store.write_json(record, LEASE)
    with Lease(store, ttl_s=5, log=lambda _: None) as lease:
        assert json.loads(store.read_bytes(LEASE))["owner"] == lease.owner
    store.write_json(record | {"renewed_at": time.time()}, LEASE)  # fresh: refused
    with pytest.raises(LeaseHeld, match="another-node"):
        Lease(store, ttl_s=5, log=lambda _: None).acquire()


def test_a_driver_whose_lease_was_taken_stops(tmp_path):
    store = Store(tmp_path)
    lease = Lease(store, ttl_s=60, heartbeat_s=0.05, log=lambda _: None).acquire()
    store.write_json(lease.record() | {"owner": "usurper", "host": "node-b", "pid": 42}, LEASE)
    deadline = time.time() + 5
    while lease.lost is None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(LeaseLost, match="node-b"):
        lease.check()
    lease.release()
    assert json.loads(store.read_bytes(LEASE))["owner"] == "usurper"  # not deleted by the loser


def test_racing_takeovers_leave_one_holder(tmp_path):
    store = Store(tmp_path)
    store.write_json(Lease(store).record() | {"host": "x", "owner": "old", "renewed_at": 0, "ttl_s": 1}, LEASE)
    won, refused = [], []

    def take() -> None:
        try:
            won.append(Lease(store, ttl_s=60, heartbeat_s=60, log=lambda _: None).acquire())
        except LeaseHeld:
            refused.append(1)

    threads = [threading.Thread(target=take) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(won) == 1 and len(refused) == 7
    assert json.loads(store.read_bytes(LEASE))["owner"] == won[0].owner
    won[0].release()


def test_lease_on_a_store_without_atomic_create(tmp_path):
    """The write-and-read-back fallback (object stores other than S3/GCS) still refuses a live holder."""
    store = Store(tmp_path)
    store.local = False  # same files, the non-local code path
    with Lease(store, ttl_s=60, heartbeat_s=60, log=lambda _: None):
        with pytest.raises(LeaseHeld):
            Lease(store, ttl_s=60, log=lambda _: None).acquire()


# -- tool calls with a deadline ------------------------------------------------------------------------------
def test_a_hanging_tool_call_times_out_and_the_rest_answer(monkeypatch):
    from toolformer.report import funnel
    from toolformer.tools import build_tool
    from toolformer.tools.base import ToolRequest
    from toolformer.tools.deadline import TimedCaller

    calc = build_tool("Calculator")
    calc.setup()
    caller = TimedCaller()
    monkeypatch.setenv("TOOLFORMER_FAULT_HANG_TOOL", "Calculator")
    monkeypatch.setenv("TOOLFORMER_FAULT_HANG_TEXT", "t-hang")
    t0 = time.perf_counter()
    hung = caller.call(calc, [ToolRequest("2 + 3", {}), ToolRequest("4 * 5", {})], timeout=0.3, key="t-hang")
    assert time.perf_counter() - t0 < 5  # bounded: the batch, then a few single calls, then given up
    assert [r.error.split(":")[0] for r in hung] == ["tool_timeout", "tool_timeout"]
    ok = caller.call(calc, [ToolRequest("2 + 3", {}), ToolRequest("4 * 5", {})], timeout=0.3, key="t-fine")
    assert [r.text for r in ok] == ["5", "20"]
    # counted in the funnel apart from rejected inputs and exceptions
    cand = pa.struct([("error", pa.string()), ("gain", pa.float64())])
    table = pa.table({"tool": ["Calculator"], "status": ["annotated"],
                      "candidates": pa.array([[{"error": hung[0].error, "gain": None},
                                               {"error": "no_result", "gain": None}]], pa.list_(cand))})
    f = funnel(table)["Calculator"]
    assert f["tool_timeouts"] == 1 and f["rejected_inputs"] == 1 and f["tool_exceptions"] == 0


def test_execute_stage_uses_the_per_tool_timeout():
    from toolformer.annotate.stages import ExecuteCalls
    from toolformer.config import load_config

    cfg = load_config(None, ["annotate.tool_timeout_s=7", "annotate.tool_timeout_s_per_tool={qa: 90}"])
    stage = ExecuteCalls(cfg)
    assert stage.timeout("Calculator") == 7 and stage.timeout("QA") == 90


# -- observability never breaks the work -----------------------------------------------------------------------
def test_zero_counts_and_failing_metrics_never_raise():
    """Ray's Counter.inc(0) raises `value must be >0`: a shard with nothing to count crashed whole runs."""
    import ray

    from toolformer.annotate.observe import Guard, Metrics

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        m = Metrics()
        m.record({"docs": 0, "texts": 0, "text_tokens": 0,
                  "funnel": {"Calculator": {"candidates": 0, "kept_at_tool_tau_f": 0}}})
        m.record({"docs": 2, "texts": 3, "text_tokens": 90, "funnel": {"Calculator": {"candidates": 4}}})
    finally:
        ray.shutdown()
    said = []
    guard = Guard(said.append)

    def broken() -> None:
        raise ValueError("value must be >0, got 0")

    assert guard("metrics", broken) is None and guard("metrics", broken) is None
    assert guard.failures == {"metrics": 2} and len(said) == 1  # logged once, counted every time


def test_a_committed_shard_is_never_charged(tmp_path):
    state = RunState(Store(tmp_path), "annotate", max_failures=1)
    state.commit("shard-00000", {"texts": pa.table({"a": [1]})}, {"docs": 1})
    assert state.record_failure("shard-00000", "late: an earlier attempt's error") == Charge(quarantined=False, attempt=None)
    assert state.quarantined() == set() and state.failed() == set()
    assert state.record_failure("shard-00001", "real").quarantined and state.quarantined() == {"shard-00001"}


def test_a_run_that_keeps_stopping_on_the_execution_refuses_to_loop(tmp_path):
    """Stops of the execution itself charge no shard; a resubmitting job would rerun them forever. After
    shards.max_failures of them in a row (same config, nothing committed since), the run refuses at once."""
    from toolformer.annotate.ray_job import RUN_FAILURES, ExecutionError, RayAnnotator
    from toolformer.config import config_hash, load_config
    from toolformer.run.shards import Manifest

    store = Store(tmp_path)
    Manifest(shards=[], docs_per_shard=1, config_hash="x").save(store)
    cfg = load_config(None, [f"output_dir={tmp_path}", "shards.max_failures=3"])
    stop = {"at": "t", "config_hash": config_hash(cfg), "done": 0, "error": "the Ray execution stopped: boom"}
    a = RayAnnotator(cfg, log=lambda _: None)
    store.write_json({"stops": [stop, stop]}, *RUN_FAILURES)
    a._refuse_looping()  # two: the next run may still try
    store.write_json({"stops": [stop | {"config_hash": "other"}, stop, stop, stop]}, *RUN_FAILURES)
    with pytest.raises(ExecutionError, match="last 3 runs .* with shards.retry_after_stops=true"):
        a._refuse_looping()
    lifted = RayAnnotator(load_config(None, [f"output_dir={tmp_path}", "shards.max_failures=3",
                                             "shards.retry_after_stops=true"]), log=lambda _: None)
    assert config_hash(lifted.cfg) == config_hash(cfg)  # the flag is not a setting of the run
    lifted._refuse_looping()  # the flag lifts the refusal for this start; the stops stay recorded
    assert len(store.read_json(*RUN_FAILURES)["stops"]) == 4
    store.write_json({"stops": [stop, stop, stop | {"done": 1}]}, *RUN_FAILURES)  # something committed since
    a._refuse_looping()
    other = RayAnnotator(load_config(None, [f"output_dir={tmp_path}", "shards.max_failures=3", "seed=1"]),
                         log=lambda _: None)
    store.write_json({"stops": [stop, stop, stop]}, *RUN_FAILURES)
    other._refuse_looping()  # a changed config (the fix) starts afresh
