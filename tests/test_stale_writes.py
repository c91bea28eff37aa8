"""No stale write lands (issue 43 item 2), against a real S3 API on loopback (moto's server): a driver that passed
its fence check and froze before its write (the check and the put are two requests on an object store) wakes up
after another driver took the run over. Its quarantine, its failure charge, its stop record and its node-ledger
save land in the bucket, and change nothing the new driver (or any later reader) reads."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from test_s3_fence import bucket, s3_env  # noqa: F401 - the moto server and a fresh bucket

from toolformer.annotate.blame import NodeLedger
from toolformer.annotate.nodes import NODES
from toolformer.config import load_config
from toolformer.run.epochs import HISTORY, Epochs, read_clean
from toolformer.run.lease import Lease
from toolformer.run.shards import RunState
from toolformer.run.store import Store

TTL, BEAT = 3.0, 0.5


class Frozen:
    """A fence that checks the lease as the driver's own (``Lease.writing``) and then freezes until released:
    the write inside it runs after the wake-up, as a driver paused between its check and its put."""

    def __init__(self, lease: Lease):
        self.lease, self.entered, self.wake = lease, threading.Event(), threading.Event()

    @contextlib.contextmanager
    def __call__(self):
        with self.lease.writing() as epoch:  # the check passes: this driver still holds the run
            pass
        self.lease._stop.set()  # frozen: no heartbeat either
        self.entered.set()
        assert self.wake.wait(60)
        yield epoch


def _take_over(store: Store) -> Lease:
    deadline = time.monotonic() + 30
    while True:
        try:
            return Lease(store, ttl_s=TTL, heartbeat_s=BEAT, log=lambda _: None).acquire()
        except SystemExit:  # LeaseHeld: the frozen driver's lease is not stale yet
            assert time.monotonic() < deadline
            time.sleep(0.5)


@pytest.mark.parametrize("what", ["quarantine", "ledger"])
def test_a_write_frozen_before_a_takeover_changes_nothing_the_new_driver_reads(bucket, what):  # noqa: F811
    store = Store(f"s3://{bucket}/run")
    old = Lease(store, ttl_s=TTL, heartbeat_s=BEAT, log=lambda _: None, margin_s=1.0).acquire()
    frozen = Frozen(old)
    cfg = load_config(None, [])
    if what == "quarantine":
        stale = RunState(store, "annotate", max_failures=1, fence=frozen)
        writer = threading.Thread(target=lambda: stale.record_failure("shard-00001", "RuntimeError: late"))
    else:
        ledger = NodeLedger(store, cfg.ray, 1, fence=frozen, log_fn=lambda _: None)
        writer = threading.Thread(target=lambda: ledger.add("node-a", "shard-00001", "worker_died", "late", "node"))
    writer.start()
    assert frozen.entered.wait(30)
    new = _take_over(store)  # the frozen driver's lease went stale: taken over, epoch 2
    try:
        assert new.epoch == old.epoch + 1
        reader = RunState(store, "annotate", max_failures=1, fence=new.writing)
        before = (reader.quarantined(), reader.failures("shard-00001"),
                  NodeLedger(store, cfg.ray, 1, log_fn=lambda _: None).records)
        time.sleep(1.1)  # the store stamps in seconds: the late write lands in a later one
        frozen.wake.set()
        writer.join(30)
        assert not writer.is_alive()
        # the late write is in the bucket ...
        assert store.names(*(("quarantine", "annotate") if what == "quarantine" else NODES), suffix=".json")
        # ... and nobody reads it: the same state as before it landed, for the new driver and any later reader
        after = (reader.quarantined(), reader.failures("shard-00001"),
                 NodeLedger(store, cfg.ray, 1, log_fn=lambda _: None).records)
        assert before == (set(), [], {}) and after[0] == set() and after[1] == []
        assert all(not r["events"] and not r.get("excluded_at") for r in after[2].values())
        if what == "quarantine":  # the new driver's own charge of the shard quarantines it (the stale record replaced)
            assert reader.record_failure("shard-00001", "RuntimeError: now").quarantined
            assert reader.quarantined() == {"shard-00001"}
            assert [a["lease_epoch"] for a in reader.failures("shard-00001")] == [new.epoch]
        else:  # the new driver's save keeps its own events, drops the stale one for good
            led = NodeLedger(store, cfg.ray, 1, fence=new.writing, log_fn=lambda _: None)
            led.add("node-a", "shard-00002", "worker_died", "now", "node")
            rec = read_clean(Store(f"s3://{bucket}/run"), "events", *NODES, "node-a.json")
            assert [e["shard"] for e in rec["events"]] == ["shard-00002"]
            assert [e["shard"] for e in store.read_json(*NODES, "node-a.json")["events"]] == ["shard-00002"]
        epochs = Epochs.load(store)
        assert set(epochs.starts) == {old.epoch, new.epoch} and not epochs.released
        assert store.exists(HISTORY)
    finally:
        new.release()
    assert new.epoch in Epochs.load(store).released


def test_a_stop_record_written_late_is_dropped(bucket):  # noqa: F811
    """The run's stop record (the looping guard counts its entries) takes no entry from a stale driver."""
    from toolformer.run.conditional import conditional
    from toolformer.run.epochs import stamped_update

    store = Store(f"s3://{bucket}/run")
    old = Lease(store, ttl_s=TTL, heartbeat_s=BEAT, log=lambda _: None, margin_s=1.0).acquire()
    name = "failures/_run/annotate.json"
    with old.writing() as epoch:
        stamped_update(conditional(store), store, name, lambda o: {"stops": (o or {}).get("stops", []) + [{"id": "a"}]},
                       epoch, "stops")
    old._stop.set()
    new = _take_over(store)
    try:
        time.sleep(1.1)
        stamped_update(conditional(store), store, name, lambda o: {"stops": (o or {}).get("stops", []) + [{"id": "b"}]},
                       old.epoch, "stops")  # the frozen driver's late write
        assert [s["id"] for s in read_clean(store, "stops", name)["stops"]] == ["a"]
        with new.writing() as epoch:
            stamped_update(conditional(store), store, name,
                           lambda o: {"stops": (o or {}).get("stops", []) + [{"id": "c"}]}, epoch, "stops")
        assert [s["id"] for s in store.read_json(name)["stops"]] == ["a", "c"]
    finally:
        new.release()
