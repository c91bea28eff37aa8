"""Fenced on S3 (issue 34 item 5), against a real S3 API on loopback: moto's server, started and stopped here on
127.0.0.1 and a free port. The marker is one create-if-absent (``If-None-Match: *``), a failure record a
conditional update (``If-Match``), a shard's outputs are its attempt's own files; and two real driver processes
(``tests/lease_driver.py``) on one ``s3://`` run: the first frozen inside a commit past its TTL and resumed while
the second holds the run commits nothing and overwrites nothing (the bucket is versioned: no object of the run
ever gets a second version), the second finishes, no shard is committed twice."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

import pyarrow as pa
import pytest

from toolformer.conditional import S3Conditional, conditional
from toolformer.lease import LEASE, Lease, LeaseHeld, StaleLease
from toolformer.shards import AlreadyCommitted, RunState, Store

REPO = Path(__file__).resolve().parents[1]
DRIVER = [sys.executable, str(REPO / "tests" / "lease_driver.py")]
LEASE_FILES = {"_lease.json", "_lease.epoch"}  # the only objects a driver rewrites (compare-and-swap)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env():
    """moto's S3 server on loopback for this module; the variables that point boto3 and pyarrow at it."""
    # requirements.txt pins moto (make venv installs it); a GPU node's set does not carry the test-only servers
    ThreadedMotoServer = pytest.importorskip("moto.server", reason="moto (requirements.txt) is not installed"
                                             ).ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
    finally:
        server.stop()


@pytest.fixture()
def bucket(s3_env, monkeypatch):
    """A fresh versioned bucket (every overwrite leaves a version behind); the test process pointed at it."""
    import boto3

    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    name = f"run-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def _files(bucket: str) -> dict[str, dict]:
    """The run's objects (not pyarrow's directory placeholders), relative to the run: per key its versions (ids)
    and whether it is deleted now (its latest version is a delete marker)."""
    import boto3

    out: dict[str, dict] = {}
    pages = boto3.client("s3").get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="run/")
    for page in pages:
        for v in page.get("Versions", []):
            out.setdefault(v["Key"], {"versions": [], "deleted": False})["versions"].append(v["VersionId"])
        for d in page.get("DeleteMarkers", []):
            entry = out.setdefault(d["Key"], {"versions": [], "deleted": False})
            entry["deleted"] = entry["deleted"] or d["IsLatest"]
    return {k.removeprefix("run/"): {"versions": sorted(v["versions"]), "deleted": v["deleted"]}
            for k, v in out.items() if not k.endswith("/")}


def _alive(files: dict, prefix: str) -> set[str]:
    return {k for k, v in files.items() if k.startswith(prefix) and not v["deleted"]}


# -- the conditional operations ------------------------------------------------------------------------------
def test_put_if_absent_creates_once_and_updates_never_lose_a_write(bucket):
    cas = conditional(Store(f"s3://{bucket}/run"))
    assert isinstance(cas, S3Conditional)
    assert cas.put_if_absent("markers/a/s.json", b'{"attempt": "one"}')
    assert not cas.put_if_absent("markers/a/s.json", b'{"attempt": "two"}')  # a second create is refused
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
    assert cas.update_json("failures/a/s.json", lambda old: None) is None
    assert cas.read("failures/a/s.json") is None
    assert len(_files(bucket)["markers/a/s.json"]["versions"]) == 1  # never overwritten


def test_the_lease_and_fenced_commits_on_s3(bucket):
    store = Store(f"s3://{bucket}/run")
    first = Lease(store, ttl_s=60, heartbeat_s=5, log=lambda _: None).acquire()
    with pytest.raises(LeaseHeld):
        Lease(store, ttl_s=60, log=lambda _: None).acquire()
    state = RunState(store, "annotate", fence=first.fence().hold)
    marker = state.commit("shard-00000", {"texts": pa.table({"a": [1]})}, {"docs": 1}, {"lease_epoch": first.epoch})
    assert marker["outputs"]["texts"]["path"] == f"texts/shard-00000.{marker['attempt']}.parquet"
    assert state.stats() == [{"docs": 1}] and state.output("shard-00000", "texts") == marker["outputs"]["texts"]["path"]
    with pytest.raises(AlreadyCommitted):
        state.commit("shard-00000", {"texts": pa.table({"a": [2]})}, {})
    assert not state.record_failure("shard-00001", "flaky")
    assert len(state.failures("shard-00001")) == 1
    # taken over (as after the TTL): the old epoch's commits and charges are refused, nothing of them written
    held = conditional(store).read(LEASE)
    assert conditional(store).replace(LEASE, json.dumps(held | {"owner": "second", "epoch": 9}).encode(), held)
    with pytest.raises(StaleLease):
        state.commit("shard-00001", {"texts": pa.table({"a": [3]})}, {})
    with pytest.raises(StaleLease):
        state.record_failure("shard-00001", "from the old driver")
    first.release()
    files = _files(bucket)
    assert [k for k in files if k.startswith("texts/")] == [marker["outputs"]["texts"]["path"]]  # none refused
    assert len(state.failures("shard-00001")) == 1
    assert json.loads(store.read_bytes(LEASE))["owner"] == "second"  # not ours: kept


def test_a_stale_attempt_deletes_its_own_files_and_never_touches_the_committed_ones(bucket):
    """Two attempts of one shard: the slower one writes its outputs after the other committed; its marker create
    is refused, its files are deleted, and the committed shard's files are never written again."""
    store = Store(f"s3://{bucket}/run")
    state = RunState(store, "annotate")
    slow = RunState(store, "annotate")

    class Late:  # the slow attempt's fence: lets its first check through, then the other attempt commits
        calls = 0

        def __call__(self):
            Late.calls += 1
            if Late.calls == 2:
                state.commit("shard-00000", {"texts": pa.table({"a": [1]})}, {"by": "fast"})
            return nullcontext()

    slow.fence = Late()
    with pytest.raises(AlreadyCommitted):
        slow.commit("shard-00000", {"texts": pa.table({"a": [2]})}, {"by": "slow"})
    files = _files(bucket)
    committed = state.output("shard-00000", "texts")
    assert state.stats() == [{"by": "fast"}] and store.read_table(committed).column("a").to_pylist() == [1]
    assert _alive(files, "texts/") == {committed}  # the slow attempt's own file: written, then deleted
    assert all(len(v["versions"]) == 1 for k, v in files.items() if k not in LEASE_FILES)


# -- two drivers on one s3:// run ----------------------------------------------------------------------------
def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _wait(what, timeout: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def _said(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads a process's state from /proc")
def test_a_driver_frozen_inside_a_commit_past_its_ttl_commits_and_overwrites_nothing_on_s3(bucket, s3_env, tmp_path):
    run, ttl, n = f"s3://{bucket}/run", 4.0, 10
    env = {**os.environ, **s3_env, "PYTHONPATH": str(REPO)}
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    # the first driver fences its commits as commit tasks do, and freezes itself inside shard-00002's commit:
    # after the fence check that precedes the outputs, before writing them (SIGSTOP: its heartbeat stops too)
    a = subprocess.Popen([*DRIVER, run, str(n), "0.1", str(ttl), "0.5", "task", "shard-00002"], env=env,
                         stdout=a_log.open("w"), stderr=subprocess.STDOUT)
    b = None
    try:
        _wait(lambda: _said(a_log, "pausing in shard-00002") and _stopped(a.pid), 60)
        paused_at = time.monotonic()
        before = {k for k in _files(bucket) if k.startswith("markers/")}
        _wait(lambda: time.monotonic() - paused_at > ttl + 1.0, ttl + 5)
        b = subprocess.Popen([*DRIVER, run, str(n), "0.5", str(ttl), "0.5"], env=env, stdout=b_log.open("w"),
                             stderr=subprocess.STDOUT)
        _wait(lambda: _said(b_log, "committed shard-00002"), 60)  # the second holds the run, and a shard the
        snapshot = _files(bucket)                                     # first was inside of is committed
        os.kill(a.pid, signal.SIGCONT)  # resumed while the second still holds the run
        assert a.wait(timeout=60) == 3
        assert b.poll() is None, "the second driver was to hold the run while the first resumed"
        assert b.wait(timeout=60) == 0
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
    a_out, b_out = a_log.read_text(), b_log.read_text()
    assert "stopped:" in a_out and "lease epoch 1 refused" in a_out, a_out
    assert "taking over the run's lease" in b_out and "last renewed" in b_out, b_out
    said_a = {line.split()[1] for line in a_out.splitlines() if line.startswith("committed ")}
    assert said_a == {"shard-00000", "shard-00001"} == {k.split("/")[-1].removesuffix(".json") for k in before}

    files = _files(bucket)
    store = Store(run)
    state = RunState(store, "annotate")
    markers = {s: state.marker(s) for s in sorted(state.done())}
    assert sorted(markers) == [f"shard-{i:05d}" for i in range(n)]  # every shard, once
    assert {s for s, m in markers.items() if m["lease_epoch"] == 1} == {"shard-00000", "shard-00001"}
    assert {m["lease_epoch"] for m in markers.values()} == {1, 2}
    for key, was in snapshot.items():  # nothing there when the first resumed was written again or deleted
        if key not in LEASE_FILES:
            assert files[key] == was, key
    for key, now in files.items():  # no object of the run has a second version: nothing was ever overwritten
        if key not in LEASE_FILES:
            assert len(now["versions"]) == 1, (key, now)
    named = {m["outputs"]["texts"]["path"] for m in markers.values()}
    assert _alive(files, "texts/") == named  # the frozen commit's own files, written after it resumed: deleted
    assert [k for k, v in files.items() if k.startswith("texts/shard-00002.") and v["deleted"]], files
    for s, m in markers.items():
        assert store.read_table(m["outputs"]["texts"]["path"]).column("i").to_pylist() == [int(s[-5:])]
