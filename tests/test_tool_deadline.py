"""Tool calls that really end (issue 27, item 4): tools run in worker processes that a timeout kills and replaces.

The misbehaving tool below sleeps forever, holds the GIL in C code (a regular expression that backtracks for
minutes: ``re`` never releases the GIL), or crashes its process; the real tools (Calculator, QA, WikiSearch on a
small real index) run through the same workers and answer as they do in-process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from toolformer.annotate.failures import InflightRecord, Watchdog
from toolformer.tools.base import Tool, ToolRequest
from toolformer.tools.deadline import CallGroup, TimedCaller, ToolsWedged
from toolformer.tools.worker import ToolSpec, ToolWorkerError, ToolWorkers

MARGIN_S = 3.0  # killing, reaping and reading back a worker: far below this


def backtrack(n: int) -> bool:
    """~2**n steps of regex backtracking inside C code that holds the GIL the whole time (n=30: about a minute)."""
    return re.match(r"(a+)+$", "a" * n + "b") is not None


class Misbehaving(Tool):
    """Echoes its input, except: ``hang`` sleeps for a day, ``burn`` holds the GIL for about a minute, ``crash``
    kills its own process, ``pid`` answers the pid of the process it runs in."""

    name = "Misbehaving"

    def run(self, request: ToolRequest) -> str | None:
        x = request.input
        if x == "hang":
            time.sleep(24 * 3600)
        if x == "burn":
            backtrack(30)
        if x == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if x == "pid":
            return str(os.getpid())
        return f"echo {x}"


class BrokenSetup(Misbehaving):
    name = "BrokenSetup"

    def setup(self) -> None:
        raise FileNotFoundError("no index at /nowhere (run jobs.build_index)")


def gone(pid: int) -> bool:
    """The process has ended (reaped, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def texts(results) -> list:
    return [r.text if r.text is not None else r.error for r in results]


@pytest.fixture
def pool():
    p = ToolWorkers(ToolSpec.of(Misbehaving)).setup()
    yield p
    p.close()


class Ticker:
    """A thread like the LM watchdog: wakes every 20 ms; ``max_gap`` is the longest it went without running."""

    def __init__(self):
        self.stamps: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            self.stamps.append(time.perf_counter())
            time.sleep(0.02)

    def max_gap(self, t0: float, t1: float) -> float:
        inside = [t0] + [s for s in self.stamps if t0 <= s <= t1] + [t1]
        return max(b - a for a, b in zip(inside, inside[1:]))


def test_a_call_that_sleeps_forever_is_ended_and_the_rest_of_the_batch_answers(pool):
    first = pool.workers[0].pid
    t0 = time.perf_counter()
    one = CallGroup("t1", [ToolRequest("hang")], timeout=1.0)
    pool.run([one])
    assert time.perf_counter() - t0 < 1.0 + MARGIN_S
    assert texts(one.results) == ["tool_timeout: ended after 1 s"]
    assert gone(first) and pool.workers[0].alive and pool.workers[0].pid != first  # killed and replaced

    # a text whose calls hang amid good ones: the group overruns, then each call runs alone; other texts answer
    mixed = CallGroup("t2", [ToolRequest("a"), ToolRequest("hang"), ToolRequest("b")], timeout=1.0)
    fine = CallGroup("t3", [ToolRequest("c"), ToolRequest("d")], timeout=1.0)
    pool.run([mixed, fine])
    assert texts(mixed.results) == ["echo a", "tool_timeout: ended after 1 s", "echo b"]
    assert texts(fine.results) == ["echo c", "echo d"]
    assert pool.stats["ended"] == 3 and pool.stats["restarts"] == 3  # t1; t2 as a group, then its "hang" alone


def test_a_call_holding_the_gil_in_c_code_is_ended_and_the_watchdog_keeps_running(pool):
    watchdog = Watchdog(3600, InflightRecord(None, None, "lm"), poll_s=0.05)  # the real one: it must keep polling
    ticker = Ticker()
    try:
        ticks, first = watchdog.ticks, pool.workers[0].pid
        t0 = time.perf_counter()
        burn = CallGroup("t1", [ToolRequest("burn")], timeout=1.0)
        other = CallGroup("t2", [ToolRequest("x")], timeout=1.0)
        pool.run([burn, other])
        t1 = time.perf_counter()
    finally:
        ticker.stop.set()
    assert t1 - t0 < 1.0 + MARGIN_S
    assert texts(burn.results) == ["tool_timeout: ended after 1 s"] and texts(other.results) == ["echo x"]
    assert gone(first) and pool.workers[0].pid != first
    assert watchdog.ticks - ticks >= 5  # it polled every 50 ms while the tool burnt its CPU elsewhere
    assert ticker.max_gap(t0, t1) < 1.0  # this process's threads ran during the call


def test_in_process_the_same_call_cannot_be_ended_and_starves_every_thread():
    """The premise of the two tests above: in this process a GIL-holding call outlives its timeout and no other
    thread runs meanwhile (what the worker processes fix)."""

    class Burn(Misbehaving):
        def run(self, request):
            backtrack(23)  # ~0.5 s here; enough to see the starvation, short enough for a test
            return "done"

    ticker = Ticker()
    try:
        time.sleep(0.05)
        t0 = time.perf_counter()
        got = TimedCaller().call(Burn(), [ToolRequest("x")], timeout=0.01)
        t1 = time.perf_counter()
    finally:
        ticker.stop.set()
    assert texts(got) == ["done"]  # the timeout could not end it: the call ran to its end
    assert ticker.max_gap(t0, t1) >= 0.8 * (t1 - t0) - 0.05  # and the ticker did not run while it did


def test_tools_run_in_the_worker_and_a_crash_costs_only_its_call(pool):
    pid = pool.workers[0].pid
    g = CallGroup("t1", [ToolRequest("pid")], timeout=5.0)
    pool.run([g])
    assert texts(g.results) == [str(pid)] and pid != os.getpid()
    crash = CallGroup("t2", [ToolRequest("a"), ToolRequest("crash"), ToolRequest("b")], timeout=5.0)
    after = CallGroup("t3", [ToolRequest("c")], timeout=5.0)
    pool.run([crash, after])
    out = texts(crash.results)
    assert out[0] == "echo a" and out[2] == "echo b" and texts(after.results) == ["echo c"]
    assert out[1].startswith("tool_exception: ToolWorkerDied: the worker process was killed by SIGSEGV")
    assert pool.stats["died"] == 2 and gone(pid)


def test_a_tool_that_keeps_hanging_is_wedged_after_bounded_restarts_and_leaves_no_worker():
    pool = ToolWorkers(ToolSpec.of(Misbehaving), max_restarts=2).setup()
    try:
        pids = [pool.workers[0].pid]
        groups = [CallGroup(f"t{i}", [ToolRequest("hang")], timeout=0.3) for i in range(5)]
        with pytest.raises(ToolsWedged, match="3 tool worker replacements in a row"):
            pool.run(groups)
        assert not pool.workers[0].alive and all(gone(p) for p in pids)
        fine = CallGroup("t9", [ToolRequest("ok")], timeout=5.0)
        pool.run([fine])  # the next batch starts with a fresh worker
        assert texts(fine.results) == ["echo ok"]
    finally:
        pool.close()


def test_a_worker_that_cannot_set_up_its_tool_is_an_error_at_once():
    pool = ToolWorkers(ToolSpec.of(BrokenSetup), setup_timeout_s=60)
    with pytest.raises(ToolWorkerError, match="FileNotFoundError: no index at /nowhere"):
        pool.setup()
    assert not pool.workers[0].alive


def test_several_workers_share_a_batch_and_close_leaves_no_process():
    pool = ToolWorkers(ToolSpec.of(Misbehaving), workers=2).setup()
    pids = [w.pid for w in pool.workers]
    groups = [CallGroup("h", [ToolRequest("hang")], timeout=1.0)] + [
        CallGroup(f"t{i}", [ToolRequest("pid"), ToolRequest(str(i))], timeout=5.0) for i in range(6)]
    t0 = time.perf_counter()
    pool.run(groups)
    assert time.perf_counter() - t0 < 1.0 + MARGIN_S  # the other worker answered the rest meanwhile
    assert texts(groups[0].results) == ["tool_timeout: ended after 1 s"]
    assert [texts(g.results)[1] for g in groups[1:]] == [f"echo {i}" for i in range(6)]
    assert {texts(g.results)[0] for g in groups[1:]} <= {str(p) for p in pids + [w.pid for w in pool.workers]}
    live = [w.pid for w in pool.workers]
    pool.close()
    assert all(gone(p) for p in pids + live)


def test_a_worker_dies_with_its_parent_even_while_its_tool_holds_the_gil(tmp_path):
    """PDEATHSIG: the parent (an actor) is SIGKILLed while its worker is deep in C code; the worker goes too."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1])]!r}
        from test_tool_deadline import Misbehaving
        from toolformer.tools.base import ToolRequest
        from toolformer.tools.deadline import CallGroup
        from toolformer.tools.worker import ToolSpec, ToolWorkers
        pool = ToolWorkers(ToolSpec.of(Misbehaving)).setup()
        print(pool.workers[0].pid, flush=True)
        pool.run([CallGroup("t", [ToolRequest("burn")], timeout=3600)])
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        time.sleep(0.5)  # the call is running: the worker holds its GIL in the regex
        assert not gone(worker)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.time() + 10
    while not gone(worker) and time.time() < deadline:
        time.sleep(0.05)
    assert gone(worker)


def test_the_hang_fault_fires_in_the_worker_where_the_call_runs(monkeypatch):
    """``TOOLFORMER_FAULT_HANG_TOOL`` (set after the worker started, as a test may) hangs the real Calculator's
    calls of one text in the worker; they are ended, the other text's calls answer."""
    pool = ToolWorkers(ToolSpec.of("Calculator")).setup()
    try:
        monkeypatch.setenv("TOOLFORMER_FAULT_HANG_TOOL", "Calculator")
        monkeypatch.setenv("TOOLFORMER_FAULT_HANG_TEXT", "t-hang")
        hung = CallGroup("t-hang", [ToolRequest("2 + 3"), ToolRequest("4 * 5")], timeout=0.5)
        ok = CallGroup("t-fine", [ToolRequest("2 + 3"), ToolRequest("4 * 5")], timeout=0.5)
        pool.run([hung, ok])
        assert texts(hung.results) == ["tool_timeout: ended after 0.5 s"] * 2 and texts(ok.results) == ["5", "20"]
        assert pool.stats["ended"] == 3
    finally:
        pool.close()


def test_execute_stage_runs_tools_in_workers_and_the_funnel_counts_ended_calls(monkeypatch):
    """The stage the Ray actors and the local loop run: Calculator in a worker, Calendar in-process; one text's
    calls hang and are ended; the funnel counts them as timeouts and as ended calls; close leaves no worker."""
    from toolformer.annotate.stages import ExecuteCalls
    from toolformer.config import load_config
    from toolformer.report import funnel
    from toolformer.schemas import ANNOTATIONS, WORK, conform
    from toolformer.tools.deadline import InProcessTool

    cand = lambda inp: dict(position=1, char_start=1, input=inp, kept=False)  # noqa: E731
    rows = [dict(text_id=f"t{i}", doc_id=f"d{i}", tool="Calculator", status="annotated", text="x", n_candidates=2,
                 positions=[], x_ids=[], x_offsets=[], candidates=[cand("1 + 2"), cand("3 * 4")]) for i in range(3)]
    rows.append(dict(text_id="t9", doc_id="d9", tool="Calendar", status="annotated", text="x", n_candidates=1,
                     context='{"date": "2017-03-09"}', positions=[], x_ids=[], x_offsets=[], candidates=[cand("")]))
    table = pa.Table.from_pylist(rows, schema=WORK)
    stage = ExecuteCalls(load_config(None, ["annotate.tools=[Calculator,Calendar]", "annotate.tool_timeout_s=0.5"]))
    stage.setup()
    try:
        assert isinstance(stage.tools["Calendar"], InProcessTool) and isinstance(stage.tools["Calculator"], ToolWorkers)
        worker = stage.tools["Calculator"].workers[0].pid
        monkeypatch.setenv("TOOLFORMER_FAULT_HANG_TOOL", "Calculator")
        monkeypatch.setenv("TOOLFORMER_FAULT_HANG_TEXT", "t1")
        out = stage(table)
    finally:
        stage.close()
    cands = out.column("candidates").to_pylist()
    assert [[c["result"] for c in cs] for cs in cands] == [["3", "12"], [None, None], ["3", "12"],
                                                           ["Today is Thursday, March 9, 2017."]]
    assert [c["error"] for c in cands[1]] == ["tool_timeout: ended after 0.5 s"] * 2
    assert out.column("n_executed").to_pylist() == [2, 0, 2, 1]
    f = funnel(conform(out, ANNOTATIONS))
    assert f["Calculator"]["tool_timeouts"] == 2 == f["Calculator"]["tool_calls_ended"]
    assert f["Calendar"]["tool_timeouts"] == 0 and f["Calculator"]["executed"] == 4
    assert gone(worker) and stage.tools == {}


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, shared_data):
    """A real BM25 index over some Wikipedia passages and the LAMA facts they hold (BM25 only: the dense encoder
    is tested with the tools themselves, and each worker below would load it again)."""
    from toolformer.evaluation.lama import google_re_facts
    from toolformer.tools.index_build import IndexConfig, build_index
    from toolformer.tools.passages import read_passages

    facts = [f for f in google_re_facts(shared_data, ("place_of_birth",), per_relation=20) if f.gold_passages][:2]
    wanted = {p for f in facts for p in f.gold_passages}
    wp = shared_data / "wiki_passages"
    passages = [p for p in read_passages([str(wp / "lama_google_re_snippets.jsonl")]) if p["id"] in wanted]
    passages += list(read_passages([str(wp / "flashrag_wiki18_100w_sample.tsv")]))[:60]
    out = tmp_path_factory.mktemp("worker-index")
    build_index(passages, out, IndexConfig(dense=False), sources=["test"])
    return str(out), facts


def test_real_qa_and_wikisearch_answer_in_workers_and_a_hung_qa_worker_is_replaced(small_index, monkeypatch):
    """WikiSearch (its index) set up in a worker answers exactly what it answers in this process; QA (index and
    reader) answers in its worker; a hung QA call is ended, and the replacement, which loads index and reader
    again, answers exactly as before."""
    from toolformer.tools import build_tool

    index_dir, facts = small_index
    questions = [ToolRequest(f"Where was {f.subject} born?") for f in facts]
    searches = [ToolRequest(f.subject) for f in facts]
    options = {"index_dir": index_dir, "mode": "bm25"}
    want_ws = texts(build_tool("WikiSearch", **options).call(searches))
    assert all(w != "no_result" for w in want_ws)
    qa = ToolWorkers(ToolSpec.of("QA", {**options, "max_answer_tokens": 8}), setup_timeout_s=300).start()
    ws = ToolWorkers(ToolSpec.of("WikiSearch", options), setup_timeout_s=300).start()
    try:
        qa.wait_ready(), ws.wait_ready()
        g_qa, g_ws = CallGroup("t1", questions, timeout=120), CallGroup("t1", searches, timeout=60)
        qa.run([g_qa]), ws.run([g_ws])
        assert texts(g_ws.results) == want_ws
        answers = texts(g_qa.results)
        assert any(a != "no_result" for a in answers), answers
        first = qa.workers[0].pid
        monkeypatch.setenv("TOOLFORMER_FAULT_HANG_TOOL", "QA")
        monkeypatch.setenv("TOOLFORMER_FAULT_HANG_TEXT", "t-hang")
        hung, again = CallGroup("t-hang", questions[:1], timeout=1.0), CallGroup("t2", questions, timeout=120)
        qa.run([hung, again])
        assert texts(hung.results) == ["tool_timeout: ended after 1 s"] and texts(again.results) == answers
        assert qa.stats["restarts"] == 1 and gone(first)
    finally:
        qa.close(), ws.close()
