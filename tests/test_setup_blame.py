"""The node pays for its failed engine set-ups (issue 43 item 3, the set-up part): an LM actor whose engine does
not start (its set-up raised, or its watchdog ended it) leaves a note with its node; the driver puts each on that
node's ledger, charged to the node (no shard was in it), and a node whose set-ups keep failing is excluded like
one whose workers keep dying. No shard is charged or retried for it."""

from __future__ import annotations

import pytest

from toolformer.annotate import blame
from toolformer.annotate.blame import SETUP_EVENT, NodeLedger
from toolformer.annotate.failures import SETUP, SetupWatchdog
from toolformer.config import load_config
from toolformer.run.store import Store

A, B = "a" * 56, "b" * 56


@pytest.fixture
def nodes(monkeypatch) -> dict:
    table = {n: {"alive": True, "ip": "10.0.0.1", "reason": 0, "message": "", "resources": {"CPU": 1.0}} for n in (A, B)}
    monkeypatch.setattr(blame, "node_table", lambda: {k: dict(v) for k, v in table.items()})
    return table


def _fail_setup(tmp_path, monkeypatch, node: str, n: int, staging: str = "_staging/p1") -> None:
    """``n`` set-ups that raised on ``node``, as the stage actor reports them (``SetupWatchdog.failed``)."""
    from toolformer.annotate import failures

    monkeypatch.setattr(failures, "_node_id", lambda: node)
    for _ in range(n):
        SetupWatchdog(None, "lm", str(tmp_path), staging).failed(RuntimeError("CUDA error: no kernel image"))


def test_failed_set_ups_go_on_the_node_and_exclude_it(tmp_path, nodes, monkeypatch):
    cfg = load_config(None, [f"output_dir={tmp_path}", "ray.node_max_failures=3"])
    led = NodeLedger(Store(tmp_path), cfg.ray, cfg.shards.max_failures, log_fn=lambda _: None)
    _fail_setup(tmp_path, monkeypatch, A, 2)
    notes = Store(tmp_path).names("_staging/p1", SETUP, suffix=".json")
    assert len(notes) == 2 and Store(tmp_path).read_json("_staging/p1", SETUP, notes[0])["cause"] == "setup_failed"
    assert led.note_deaths({}, "_staging/p1")  # the pass's look at its deaths notes the set-ups too
    events = led.records[A]["events"]
    assert [(e["cause"], e["charged_to"]) for e in events] == [("setup_failed", "node")] * 2
    assert all(e["shard"].startswith(SETUP_EVENT) for e in events)
    assert not led.note_deaths({}, "_staging/p1")  # each note once
    assert led.maybe_exclude(set()) == []  # two failures: not yet
    _fail_setup(tmp_path, monkeypatch, A, 1, "_staging/p2")  # the next pass's pool tried the node again
    assert led.note_deaths({}, "_staging/p2")
    assert led.maybe_exclude(set()) == [A] and led.excluded() == {A}
    assert led.selector() == {"ray.io/node-id": f"!in({A})"}
    assert led.suspects() == set()  # no shard was in a set-up: none is retried or charged for it
    assert B not in led.records
    # a later driver reads the same ledger back
    again = NodeLedger(Store(tmp_path), cfg.ray, cfg.shards.max_failures, log_fn=lambda _: None)
    assert again.excluded() == {A} and len(again.records[A]["events"]) == 3


def test_a_set_up_timeout_is_noted_with_its_node(tmp_path, monkeypatch):
    from toolformer.annotate import failures

    monkeypatch.setattr(failures, "_node_id", lambda: B)
    SetupWatchdog(None, "lm", str(tmp_path), "_staging/p1")._note("setup_timeout", "not ready after 60 s")
    (name,) = Store(tmp_path).names("_staging/p1", SETUP, suffix=".json")
    note = Store(tmp_path).read_json("_staging/p1", SETUP, name)
    assert (note["cause"], note["node_id"], note["stage"]) == ("setup_timeout", B, "lm")


class _Pass:
    """What ``settle_stalled`` reads of a pass: its host's ledger and log, its charges and node-paid shards."""

    def __init__(self, ledger):
        from types import SimpleNamespace

        self.a = SimpleNamespace(ledger=ledger, log=lambda _: None)
        self.out, self.staging, self.charged = SimpleNamespace(node_paid=[]), "_staging/p1", []

    def charge(self, sid, error, tb=""):
        self.charged.append((sid, error))


def test_a_stall_is_the_nodes_unless_it_follows_the_shard_or_no_other_node_could_run_it(tmp_path, nodes):
    from toolformer.annotate.node_faults import settle_stalled
    from toolformer.annotate.supervise import Verdict

    cfg = load_config(None, [f"output_dir={tmp_path}"])
    led = NodeLedger(Store(tmp_path), cfg.ray, cfg.shards.max_failures, log_fn=lambda _: None)

    def stall(node):
        rec = {"stage": "lm", "pid": 7, "node_id": node, "shards": ["s1"], "_name": f"lm-{node[:4]}.json"}
        return Verdict("stalled", "no progress for 30 s", [], {}, {"s1": [rec]})

    p = _Pass(led)
    settle_stalled(p, "s1", stall(A))  # B could run the pool: A pays, s1 is retried
    assert p.out.node_paid == ["s1"] and not p.charged
    assert [(e["cause"], e["charged_to"]) for e in led.records[A]["events"]] == [("stalled", "node")]
    assert led.suspects() == {"s1"}
    p = _Pass(led)
    settle_stalled(p, "s1", stall(B))  # it stalled again, on another node: the shard's own
    assert not p.out.node_paid and p.charged[0][0] == "s1"
    assert p.charged[0][1].startswith("Stalled: s1 was being computed") and "stalled on 2 nodes" in p.charged[0][1]
    nodes.pop(B)  # one machine left: nobody else could have run it
    p = _Pass(led)
    settle_stalled(p, "s2", Verdict("stalled", "x", [], {}, {"s2": [{"stage": "lm", "pid": 8, "node_id": A}]}))
    assert p.charged and "no other node could run its pool" in p.charged[0][1]


def test_a_full_disk_in_a_shards_rows_is_its_nodes(tmp_path, nodes, monkeypatch):
    """A stage that raised ENOSPC on node A: A pays and the shard is retried; the same shard's own bug (any other
    error) is still its own; ENOSPC again on another node makes it the shard's."""
    from toolformer.annotate import failures
    from toolformer.annotate.distributed import describe_error
    from toolformer.annotate.node_faults import node_error

    cfg = load_config(None, [f"output_dir={tmp_path}"])
    led = NodeLedger(Store(tmp_path), cfg.ray, cfg.shards.max_failures, log_fn=lambda _: None)
    monkeypatch.setattr(failures, "_node_id", lambda: A)
    full = describe_error(OSError(28, "No space left on device"), "lm")
    assert full.startswith("OSError: [Errno 28] No space left on device\n[on node " + A)
    p = _Pass(led)
    assert node_error(p, "s1", full) and p.out.node_paid == ["s1"] and not p.charged
    assert [(e["cause"], e["charged_to"]) for e in led.records[A]["events"]] == [("disk_full", "node")]
    assert not node_error(p, "s2", describe_error(ValueError("bad row"), "lm"))  # the shard's own: caller charges
    monkeypatch.setattr(failures, "_node_id", lambda: B)
    p = _Pass(led)
    assert node_error(p, "s1", describe_error(OSError(28, "No space left on device"), "lm"))
    assert p.charged and "disk_full on 2 nodes" in p.charged[0][1] and not p.out.node_paid


def test_a_set_up_that_fails_on_every_node_excludes_none(tmp_path, nodes, monkeypatch):
    """A bad model path fails everywhere: the execution's, not the nodes' (no node is excluded for it); and on one
    machine a failed set-up is nobody's to exclude."""
    cfg = load_config(None, [f"output_dir={tmp_path}", "ray.node_max_failures=2"])
    led = NodeLedger(Store(tmp_path), cfg.ray, cfg.shards.max_failures, log_fn=lambda _: None)
    _fail_setup(tmp_path, monkeypatch, A, 1)
    led.note_deaths({}, "_staging/p1")
    assert [e["charged_to"] for e in led.records[A]["events"]] == ["node"]
    _fail_setup(tmp_path, monkeypatch, B, 2, "_staging/p2")
    led.note_deaths({}, "_staging/p2")
    assert {e["charged_to"] for n in (A, B) for e in led.records[n]["events"]} == {"none"}  # A's taken back too
    assert led.maybe_exclude(set()) == [] and not led.excluded()
    nodes.pop(B)
    one = NodeLedger(Store(tmp_path / "one"), cfg.ray, cfg.shards.max_failures, log_fn=lambda _: None)
    _fail_setup(tmp_path / "one", monkeypatch, A, 3)
    one.note_deaths({}, "_staging/p1")
    assert {e["charged_to"] for e in one.records[A]["events"]} == {"none"} and one.maybe_exclude(set()) == []
