"""The LM watchdog times engine calls, not tool calls, and telemetry splits engine, tool and idle time (issue 27,
item 7). Control flow with a fake engine (the real tokenizer; numbers given), in the fused ``lm`` stage actor as
the Ray job runs it; the real engine runs these stages in test_pipeline.py and test_ray_job.py.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pyarrow as pa
import pytest

from toolformer.annotate.failures import Watchdog
from toolformer.annotate.telemetry import ActorTelemetry, StageClock, pools, summarize
from toolformer.engine.base import Engine, Sample, StartProbs

TEXTS = ["The shop sold 120 shirts on Monday and 80 on Tuesday, 200 shirts in two days.",
         "Of the 640 members who voted, 512 said yes, and 128 said no."]


class FakeEngine(Engine):
    """Every position is a sure start of a call; every sample is the same Calculator call; every token has
    log-probability -3. ``sample_sleep`` makes the sampling call slow (a hung engine, for the watchdog)."""

    backend, dtype, model_path = "fake", "float32", "fake"

    def __init__(self, tokenizer, sample_sleep: float = 0.0):
        super().__init__(tokenizer)
        self.sample_sleep = sample_sleep
        self.calls: list[str] = []

    def start_probs(self, seqs, starts, top_k=None):
        self.calls.append("start_probs")
        return [StartProbs(np.full(len(s) - b, 0.5), np.full(len(s) - b, 0.5)) for s, b in zip(seqs, starts)]

    def token_logprobs_after(self, prefixes, token_ids):
        self.calls.append("token_logprobs_after")
        return np.full((len(prefixes), len(token_ids)), -1.0)

    def sequence_logprobs(self, seqs, starts):
        self.calls.append("sequence_logprobs")
        return [np.full(len(s) - b, -3.0) for s, b in zip(seqs, starts)]

    def sample(self, prompts, *, n, max_tokens, stop, temperature, seeds, regex=None):
        self.calls.append("sample")
        time.sleep(self.sample_sleep)
        return [[Sample("Calculator(120 + 80)", True, 6)] * n for _ in prompts]


def config(*overrides: str):
    from toolformer.config import load_config

    return load_config(None, ["annotate.tools=[Calculator]", "annotate.per_tool.Calculator.top_k=2",
                              "annotate.per_tool.Calculator.num_samples=1", "annotate.tool_timeout_s=0.5",
                              "ray.lm_batch_timeout_s=1.0", *overrides])


def work_rows(cfg) -> pa.Table:
    from toolformer.annotate.stages import SelectTexts

    n = len(TEXTS)
    texts = pa.table({"shard_id": ["s0"] * n, "text_id": [f"t{i}" for i in range(n)],
                      "doc_id": [f"d{i}" for i in range(n)], "chunk": [0] * n, "url": [None] * n,
                      "date": [None] * n, "title": [None] * n, "text": TEXTS, "error": pa.nulls(n, pa.string())})
    return SelectTexts(cfg)(texts)


@pytest.fixture
def fired(monkeypatch):
    """The watchdog's firings, recorded instead of ending this process (it then never fires again)."""
    out: list[str | None] = []

    def record(self):
        out.append(self.what)
        self.timeout_s = float("inf")

    monkeypatch.setattr(Watchdog, "_exit", record)
    return out


def lm_actor(monkeypatch, tokenizer, cfg, **engine):
    from toolformer.annotate import lm
    from toolformer.annotate.distributed import StageActor

    fake = FakeEngine(tokenizer, **engine)
    monkeypatch.setattr(lm, "build_engine", lambda _cfg: fake)
    return StageActor(cfg, "lm"), fake


def test_a_long_tool_phase_in_the_fused_stage_does_not_fire_the_watchdog(monkeypatch, tokenizer, fired):
    """Every Calculator call hangs (the fault hook, in the tool's worker) and is ended after its timeout: the tool
    phase outlasts ray.lm_batch_timeout_s several times over, between short engine calls; the watchdog stays
    quiet, and the actor's telemetry puts that time under tools, not the engine."""
    cfg = config()
    actor, fake = lm_actor(monkeypatch, tokenizer, cfg)
    try:
        monkeypatch.setenv("TOOLFORMER_FAULT_HANG_TOOL", "Calculator")
        out = actor(work_rows(cfg))
        time.sleep(actor.watchdog.poll_s * 2)  # a watchdog that was going to fire has had its chance
    finally:
        actor.stage.close()
    assert fired == []
    assert {"start_probs", "sequence_logprobs", "sample"} <= set(fake.calls)
    errors = [c["error"] for cs in out.column("candidates").to_pylist() for c in cs]
    assert errors and all(e.startswith("tool_timeout: ended") for e in errors)
    rec = actor.telemetry.record
    # two texts, two calls each: the group (2 x 0.5 s) then each call alone (0.5 s): >= 2 s of tools per text
    assert rec["tool_s"] >= 2 * 2 * 0.5 * 0.9 > cfg.ray.lm_batch_timeout_s
    assert rec["engine_calls"] >= 3 and rec["engine_s"] < rec["tool_s"]
    a = summarize({"k": rec})["lm_actors"][0]
    assert a["tool_s"] == round(rec["tool_s"], 2) and a["engine_share"] == a["busy_share"] < a["tool_share"]


def test_an_engine_call_that_overruns_fires_the_watchdog_naming_it(monkeypatch, tokenizer, fired):
    cfg = config()
    actor, _ = lm_actor(monkeypatch, tokenizer, cfg, sample_sleep=3.0)
    try:
        actor(work_rows(cfg))
    finally:
        actor.stage.close()
    assert fired == ["sample"]


def test_a_stalled_batch_still_fires_the_watchdog(monkeypatch, tokenizer, fired):
    """The stall fault stands for a hung engine (the soak's stall check): it is timed like an engine call."""
    import toolformer.annotate.distributed as distributed

    cfg = config()
    actor, _ = lm_actor(monkeypatch, tokenizer, cfg)
    monkeypatch.setattr(distributed, "batch_fault", lambda stage, shards: time.sleep(2.5))
    try:
        actor(work_rows(cfg))
    finally:
        actor.stage.close()
    assert fired == ["stall fault"]


def test_the_split_stages_time_their_own_engine_calls_and_the_local_loop_ends_its_tool_workers(tokenizer):
    """The plain loop (select → sample → execute → score, one engine): each LM stage's clock holds its own engine
    calls, the execute stage's its tool time; when the loop is done no tool worker is left."""
    from toolformer.annotate.pipeline import Annotator
    from toolformer.tools import worker

    cfg = config()
    n = len(TEXTS)
    texts = pa.table({"text_id": [f"t{i}" for i in range(n)], "doc_id": [f"d{i}" for i in range(n)],
                      "chunk": [0] * n, "url": [None] * n, "date": [None] * n, "title": [None] * n, "text": TEXTS})
    fake = FakeEngine(tokenizer)
    annotator = Annotator(cfg, fake)
    out = annotator(texts)
    stages = dict(annotator.stages)
    assert stages["sample"].clock.engine_calls >= 3 and stages["score"].clock.engine_calls >= 1
    assert stages["execute"].clock.tool_s > 0 and stages["execute"].clock.engine_calls == 0
    assert stages["sample"].clock.tool_s == 0
    results = [c["result"] for cs in out.column("candidates").to_pylist() for c in cs]
    assert results and set(results) == {"200"}  # the Calculator answered, in its worker
    pids = [w.pid for r in stages["execute"].tools.values() for w in getattr(r, "workers", [])]
    assert pids and all(pids)
    del annotator, stages
    gc.collect()
    assert not list(worker._LIVE)
    for pid in pids:  # reaped: no process, not even a zombie
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_clock_tells_watchers_about_outermost_engine_calls_only():
    events = []

    class W:
        def begin(self, what=None):
            events.append(("begin", what))

        def end(self):
            events.append(("end",))

    clock = StageClock()
    clock.watch(W())
    with clock.engine("sample"):
        with clock.engine("inner"):
            pass
    with clock.tools():
        pass
    assert events == [("begin", "sample"), ("end",)] and clock.engine_calls == 1 and clock.tool_s >= 0


def test_summarize_splits_time_per_actor_and_per_pool():
    """Figures from given records: busy_share is engine time for LM actors, all work for CPU actors; idle is the
    active span not spent in batches; rows per second over a pool's wall time."""
    def rec(stage, pid, first, end, busy, engine, tool, rows):
        return {"stage": stage, "pid": pid, "node": "n", "started": 0.0, "setup_s": 1.0, "batches": 2, "rows": rows,
                "busy_s": busy, "engine_s": engine, "tool_s": tool, "engine_calls": 4, "first_batch": first,
                "last_batch_end": end, "tool_workers": None}

    records = {"a": rec("lm", 1, 10.0, 110.0, 90.0, 60.0, 25.0, 400),
               "b": rec("lm", 2, 20.0, 120.0, 50.0, 40.0, 5.0, 200),
               "c": rec("execute", 3, 10.0, 60.0, 40.0, 0.0, 38.0, 300)}
    s = summarize(records)
    a = next(x for x in s["lm_actors"] if x["pid"] == 1)
    assert (a["engine_s"], a["tool_s"], a["other_s"], a["idle_s"]) == (60.0, 25.0, 5.0, 10.0)
    assert a["busy_share"] == a["engine_share"] == 0.6 and a["tool_share"] == 0.25 and a["rows_per_s"] == 4.0
    c = s["other_actors"][0]
    assert c["busy_share"] == 0.8 and c["tool_share"] == 0.76
    p = s["pools"]["lm"]
    assert p["actors"] == 2 and p["engine_s"] == 100.0 and p["tool_s"] == 30.0 and p["idle_s"] == 60.0
    assert p["busy_share"] == 0.5 and p["wall_s"] == 110.0 and p["rows_per_s"] == round(600 / 110, 3)
    assert pools(records) == s["pools"] and s["engine_starts"] == 2


def test_actor_telemetry_reports_the_clock_running_totals():
    clock = StageClock()
    t = ActorTelemetry("lm", None, time.time())
    with clock.engine("sample"):
        time.sleep(0.01)
    with clock.tools():
        time.sleep(0.01)
    t.batch(time.time() - 1, time.time(), 10, clock, {"Calculator": {"restarts": 0}})
    r = t.record
    assert r["engine_s"] == clock.engine_s > 0 and r["tool_s"] == clock.tool_s > 0 and r["engine_calls"] == 1
    assert r["tool_workers"] == {"Calculator": {"restarts": 0}}



def test_each_chunk_of_a_batch_reports_progress(tokenizer):
    """A stage actor reports after every chunk (``progress``), not only at a batch's end: the driver's stall
    detection sees a long batch move."""
    from toolformer.annotate.distributed import StageActor

    cfg = config()
    n = len(TEXTS)
    texts = pa.table({"shard_id": ["s0"] * n, "text_id": [f"t{i}" for i in range(n)],
                      "doc_id": [f"d{i}" for i in range(n)], "chunk": [0] * n, "url": [None] * n,
                      "date": [None] * n, "title": [None] * n, "text": TEXTS, "error": pa.nulls(n, pa.string())})
    actor = StageActor(cfg, "select", chunk_rows=1)
    actor(texts)
    assert actor.telemetry.record["progress"] == n and actor.telemetry.record["batches"] == 1


class _Engine:
    """``greedy`` answers while ``alive``."""

    doc_start = (1,)

    def __init__(self, alive: bool):
        self.alive = alive

    def encode(self, text):
        return [5]

    def greedy(self, prompts, **kw):
        if not self.alive:
            raise RuntimeError("engine core gone")
        return ["x"]


class _Exit(Exception):
    pass


@pytest.fixture()
def check(monkeypatch):
    from toolformer.annotate.failures import EngineCheck, InflightRecord

    notes = []

    def make(engine, dead_after=3):
        record = InflightRecord(None, None, "lm")
        monkeypatch.setattr(record, "note", notes.append)
        c = EngineCheck(engine, record, StageClock(), dead_after)

        def exit_():
            raise _Exit()

        monkeypatch.setattr(c, "_exit", exit_)
        return c

    make.notes = notes
    return make


def test_a_batch_error_with_a_live_engine_is_the_inputs(check):
    c = check(_Engine(alive=True))
    c.failed(ValueError("bad row"))  # returns: the shard's rows get the error
    c.worked()
    c.failed(ValueError("bad row"))
    c.failed(ValueError("bad row"))
    assert check.notes == []


def test_a_dead_engine_ends_the_actor_with_its_cause_noted(check):
    from toolformer.engine import EngineDead

    with pytest.raises(_Exit):
        check(_Engine(alive=True)).failed(EngineDead("EngineDeadError"))
    assert check.notes[-1].startswith("engine dead") and "EngineDead" in check.notes[-1]
    with pytest.raises(_Exit):  # a batch error, then a failed probe
        check(_Engine(alive=False)).failed(ValueError("CUDA error: an illegal memory access"))
    assert "failed a one-token probe" in check.notes[-1]


def test_errors_in_a_row_end_the_actor_whatever_the_probe_says(check):
    c = check(_Engine(alive=True), dead_after=2)
    c.failed(ValueError("x"))
    with pytest.raises(_Exit):
        c.failed(ValueError("x"))
    assert "2 chunks in a row" in check.notes[-1]


def test_the_dying_engine_fault_answers_then_raises_on_every_call(monkeypatch, tmp_path):
    from toolformer.engine import engine_is_dead
    from toolformer.run.faults import EngineDeadError, dead_engine_fault

    monkeypatch.setenv("TOOLFORMER_FAULT_DEAD_ENGINE_AFTER", "2")
    monkeypatch.setenv("TOOLFORMER_FAULT_DEAD_ENGINE_ONCE_FILE", str(tmp_path / "died"))
    e = dead_engine_fault(_Engine(alive=True))
    assert e.greedy([[1]]) == ["x"] and e.greedy([[1]]) == ["x"] and e.encode("a") == [5]
    for _ in range(3):
        with pytest.raises(EngineDeadError) as err:
            e.greedy([[1]])
        assert engine_is_dead(err.value)
    healthy = dead_engine_fault(_Engine(alive=True))  # the once file: the replacement engine lives
    for _ in range(4):
        assert healthy.greedy([[1]]) == ["x"]


def test_transient_errors_are_told_from_the_rest():
    from toolformer.annotate.transient import is_transient
    from toolformer.run.conditional import StoreUnavailable

    class RpcError(Exception):  # ray.exceptions.RpcError, by name
        pass

    class ClientError(Exception):
        def __init__(self, status):
            self.response = {"ResponseMetadata": {"HTTPStatusCode": status}}

    assert is_transient(StoreUnavailable("no answer")) and is_transient(RpcError("GCS unavailable"))
    assert is_transient(ClientError(503)) and not is_transient(ClientError(403))
    assert is_transient(ConnectionResetError(104, "reset"))
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as exc:
            raise RuntimeError("the pass broke") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)  # what it was raised from counts
    assert not is_transient(ValueError("model path does not exist")) and not is_transient(KeyError("x"))
