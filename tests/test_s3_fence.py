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
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pyarrow as pa
import pytest

from toolformer.run.conditional import S3Conditional, conditional, s3_client
from toolformer.run.lease import LEASE, Lease, LeaseHeld, StaleLease
from toolformer.run.shards import AlreadyCommitted, RunState
from toolformer.run.store import Store

REPO = Path(__file__).resolve().parents[1]
DRIVER = [sys.executable, str(REPO / "tests" / "lease_driver.py")]
LEASE_FILES = {"_lease.json", "_lease.epoch", "_lease.epochs.json"}  # the only objects a driver rewrites (CAS)


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
    assert not state.record_failure("shard-00001", "flaky").quarantined
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


# -- lost answers and conflicts (issue 40): a refused write is read back; a conflict is not a refusal ----------
CONFLICT_XML = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code><Message>A '
                b'conflicting conditional operation is currently in progress against this resource.</Message></Error>')


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data


@contextmanager
def store_answers(key: str, lose: int = 0, conflicts: int = 0, op: str = "PutObject"):
    """The S3 store as the network can make it, for requests of ``op`` on ``key`` (the run-relative key's end):
    the first ``conflicts`` are answered 409 (another conditional write in flight), the next ``lose`` reach the
    store and land, but their answer is lost (a read timeout): botocore then resends them by itself, as it does
    in production. A ``before-send`` hook on the process's client; yields what it did."""
    from botocore.awsrequest import AWSResponse
    from botocore.exceptions import ReadTimeoutError
    from botocore.httpsession import URLLib3Session

    seen: dict = {"conflicts": 0, "landed": [], "sent": 0}
    wire = URLLib3Session()

    def hook(request, **_):
        if not request.url.split("?", 1)[0].endswith(key):
            return None
        seen["sent"] += 1
        if seen["conflicts"] < conflicts:
            seen["conflicts"] += 1
            return AWSResponse(request.url, 409, {"Content-Type": "application/xml"}, _Body(CONFLICT_XML))
        if len(seen["landed"]) < lose:
            seen["landed"].append(wire.send(request).status_code)  # the request reaches the store...
            raise ReadTimeoutError(endpoint_url=request.url)  # ...and its answer never comes back
        return None

    client = s3_client()
    event = f"before-send.s3.{op}"
    client.meta.events.register(event, hook)
    try:
        yield seen
    finally:
        client.meta.events.unregister(event, hook)


STAGING = "_staging/test"


def _staged_on_s3(tmp_path, bucket: str) -> tuple[str, str]:
    """A synthetic staged run (real schemas, two shards) on a local disk and the same bytes on S3."""
    import pyarrow.fs as pafs

    from benchmarks.synthetic import make_staged_run

    local = tmp_path / "run"
    make_staged_run(local, n_texts=40, texts_per_shard=20, seed=5, staging=STAGING)
    remote = f"s3://{bucket}/run"
    s3, root = pafs.FileSystem.from_uri(remote)
    pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    return str(local), remote


def test_a_marker_put_whose_answer_is_lost_commits_the_shard_once_with_its_files(bucket, tmp_path):
    """The marker's create lands, its answer is lost, botocore's resend is refused (412) by the marker it wrote:
    the commit reads it back, finds its own attempt, and keeps its files; the merge reads the shard."""
    from benchmarks.synthetic import TOOLS
    from toolformer.annotate.commit import commit_shard
    from toolformer.cstar.merge import run_merge
    from toolformer.run.shards import Manifest

    local, remote = _staged_on_s3(tmp_path, bucket)
    store = Store(remote)
    manifest = Manifest.load(store)
    with store_answers("run/markers/annotate/shard-00000.json", lose=1) as seen:
        for s in manifest.shards:
            commit_shard(remote, s, list(TOOLS), STAGING)
    assert seen["landed"] == [200] and seen["sent"] == 2  # the first put landed; the resend was refused
    state = RunState(store, "annotate")
    assert state.done() == {"shard-00000", "shard-00001"}
    files = _files(bucket)
    marker = state.marker("shard-00000")
    for out in marker["outputs"].values():  # every file its marker names is there
        assert out["path"] in files and not files[out["path"]]["deleted"], (out, files)
        assert store.read_table(out["path"]).num_rows == out["rows"]
    assert len(files["markers/annotate/shard-00000.json"]["versions"]) == 1
    for s in manifest.shards:  # the same commits on a local disk, without the lost answer
        commit_shard(local, s, list(TOOLS), STAGING)
    on_s3, on_disk = run_merge(remote, 7, parallel=False), run_merge(local, 7, parallel=False)
    assert len(on_s3["parts"]) == len(on_disk["parts"]) == 2  # both shards read
    assert on_s3["texts"] == on_disk["texts"] > 0 and on_s3["calls_per_tool"] == on_disk["calls_per_tool"]
    for part in on_disk["parts"]:  # C*, part by part, the same rows
        name = part.rsplit("/", 1)[-1]
        assert store.read_table("cstar", name).equals(Store(local).read_table("cstar", name))


def test_a_lease_renewal_whose_answer_is_lost_keeps_the_lease(bucket):
    store = Store(f"s3://{bucket}/run")
    lease = Lease(store, ttl_s=60, heartbeat_s=30, log=lambda _: None).acquire()
    try:
        with store_answers("run/_lease.json", lose=1) as seen:
            lease.renew()
        assert seen["landed"] == [200] and seen["sent"] == 2
        assert lease.lost is None and lease.renewals == 1
        lease.check()  # still the run's driver
        held = lease.read()
        assert held["owner"] == lease.owner and held["renewed_at"] == lease._renewed_at
        state = RunState(store, "annotate", fence=lease.fence().hold)
        state.commit("shard-00000", {"texts": pa.table({"a": [1]})}, {"docs": 1})  # its fence still holds
        assert state.done() == {"shard-00000"}
    finally:
        lease.release()
    assert lease.read() is None  # released: it was ours


def test_a_lease_acquire_whose_answer_is_lost_holds_the_lease(bucket):
    store = Store(f"s3://{bucket}/run")
    with store_answers("run/_lease.json", lose=1) as seen:
        lease = Lease(store, ttl_s=60, heartbeat_s=30, log=lambda _: None).acquire()
    try:
        assert seen["landed"] == [200] and seen["sent"] == 2
        held = lease.read()
        assert held["owner"] == lease.owner and held["epoch"] == lease.epoch == 1
        lease.check()
        with pytest.raises(LeaseHeld):  # and it is held: a second driver refuses
            Lease(store, ttl_s=60, log=lambda _: None).acquire()
    finally:
        lease.release()


def test_a_failure_record_update_whose_answer_is_lost_counts_the_attempt_once(bucket):
    store = Store(f"s3://{bucket}/run")
    state = RunState(store, "annotate")
    state.record_failure("shard-00000", "first")
    with store_answers("run/failures/annotate/shard-00000.json", lose=1) as seen:
        state.record_failure("shard-00000", "second")
    assert seen["landed"] == [200]
    assert [a["error"] for a in state.failures("shard-00000")] == ["first", "second"]


def test_nine_409s_at_the_marker_raise_keep_the_files_and_the_shard_is_retried(bucket):
    """409 is "another conditional write in flight", never "exists already": after UPDATE_TRIES of them the
    commit raises a store fault (which the job charges to the store, not the shard), keeps its files, writes no
    marker; the shard's next commit goes through."""
    from ray.exceptions import RayTaskError

    store = Store(f"s3://{bucket}/run")
    state = RunState(store, "annotate")
    with store_answers("run/markers/annotate/shard-00000.json", conflicts=9) as seen:
        with pytest.raises(Exception, match=r"8 conflicting writes in a row \(409") as caught:
            state.commit("shard-00000", {"texts": pa.table({"a": [1]})}, {"docs": 1})
        from toolformer.annotate.passes import commit_failure
        from toolformer.run.conditional import UPDATE_TRIES, StoreFault, WriteConflict

        assert isinstance(caught.value, WriteConflict) and isinstance(caught.value, StoreFault)
        assert seen["conflicts"] == UPDATE_TRIES == 8
        assert state.marker("shard-00000") is None and state.done() == set()
        kept = _alive(_files(bucket), "texts/")
        assert len(kept) == 1 and store.read_table(next(iter(kept))).column("a").to_pylist() == [1]
        # as a commit task's error reaches the driver: the store's fault, so the shard is not charged
        assert commit_failure(RayTaskError("commit_shard", "", caught.value))[0] == "store"
        assert state.failures("shard-00000") == []
        marker = state.commit("shard-00000", {"texts": pa.table({"a": [2]})}, {"docs": 1})  # the retry
        assert seen["conflicts"] == 9  # the ninth 409, then the put went through
    assert state.done() == {"shard-00000"}
    assert store.read_table(state.output("shard-00000", "texts")).column("a").to_pylist() == [2]
    assert marker["outputs"]["texts"]["path"] in _alive(_files(bucket), "texts/")
