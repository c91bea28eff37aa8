"""The fenced lease (issue 27 item 5): compare-and-swap renewals, a driver that stops writing before anyone may take
over, commits refused from an older epoch, takeovers from another host only after the TTL. The two-driver cases
run real driver processes (``tests/lease_driver.py``); the second one in a UTS namespace of its own, so that it
really is another host to the lease."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from toolformer.run.lease import LEASE, STORE_DOWN_ENV, Lease, LeaseExpired, LeaseHeld, LeaseLost, StaleLease
from toolformer.run.shards import AlreadyCommitted, RunState
from toolformer.run.store import Store

REPO = Path(__file__).resolve().parents[1]
DRIVER = [sys.executable, str(REPO / "tests" / "lease_driver.py")]
OTHER_HOST = ["unshare", "--uts", "sh", "-c", 'hostname other-host && exec "$0" "$@"']


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _other_host_works() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run([*OTHER_HOST, "hostname"], capture_output=True, text=True).stdout.strip() == "other-host"


def _wait_for(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}: {path.read_text() if path.exists() else ''}")


def _markers(run: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run / "markers" / "annotate").glob("*.json")}


# -- in one process ------------------------------------------------------------------------------------------------
def test_a_commit_of_an_older_epoch_is_refused(tmp_path):
    store = Store(tmp_path)
    first = Lease(store, ttl_s=60, heartbeat_s=60, log=lambda _: None).acquire()
    state = RunState(store, "annotate", fence=first.fence().hold)
    state.commit("shard-00000", {"texts": pa.table({"a": [1]})}, {})
    with pytest.raises(AlreadyCommitted):  # a shard is committed once
        state.commit("shard-00000", {"texts": pa.table({"a": [1]})}, {})
    # another driver takes over (as after a TTL): a new owner and epoch in the lease file
    store.write_json(first.record() | {"owner": "second", "epoch": first.epoch + 1, "host": "node-b"}, LEASE)
    with pytest.raises(StaleLease, match="node-b"):
        state.commit("shard-00001", {"texts": pa.table({"a": [2]})}, {})
    with pytest.raises(StaleLease):
        state.record_failure("shard-00002", "a charge from the old driver")
    assert not store.exists("markers", "annotate", "shard-00001.json")
    assert not [n for n in store.names("texts") if n.startswith("shard-00001")]  # not even its outputs
    assert not store.exists("failures", "annotate", "shard-00002.json")
    first.release()
    assert json.loads(store.read_bytes(LEASE))["owner"] == "second"  # compare-and-delete: not ours, kept


def test_a_driver_that_cannot_renew_stops_before_the_ttl(tmp_path):
    lease = Lease(Store(tmp_path), ttl_s=2.0, heartbeat_s=0.2, log=lambda _: None, margin_s=0.8).acquire()
    try:
        lease._stop.set()  # the heartbeat stops, as in a frozen process or an unreachable store
        lease.check()
        time.sleep(1.4)  # past ttl - margin, before the ttl
        with pytest.raises(LeaseLost, match="not renewed"):
            lease.check()
        with pytest.raises(LeaseLost):
            with lease.writing():
                pass
    finally:
        lease.release()


def test_a_commit_task_refuses_past_the_drivers_deadline_unless_the_driver_renewed(tmp_path):
    """The fence a commit task gets carries what was left of the driver's deadline; the task counts it down on its
    own clock and refuses once it is spent, even before anyone took over, unless the driver renewed since."""
    lease = Lease(Store(tmp_path), ttl_s=2.0, heartbeat_s=0.2, log=lambda _: None, margin_s=0.8).acquire()
    try:
        lease._stop.set()  # no more renewals, as a frozen driver's
        lease._thread.join()
        fence = pickle.loads(pickle.dumps(lease.fence().arm()))  # as a commit task gets it
        assert "_armed" not in fence.__dict__  # the driver's clock reading does not travel
        with fence.hold():
            pass
        time.sleep(1.4)  # past ttl - margin: the lease still names this driver, no one has taken over
        with pytest.raises(LeaseExpired, match="not renewed in time"):
            with fence.hold():
                pass
        lease.renew()  # the driver renewed meanwhile: the same fence lets a write through again
        with fence.hold():
            pass
    finally:
        lease.release()


def test_epochs_grow_across_releases_and_takeovers(tmp_path):
    store = Store(tmp_path)
    with Lease(store, log=lambda _: None) as a:
        assert a.epoch == 1
    with Lease(store, log=lambda _: None) as b:
        assert b.epoch == 2
    store.write_json({"owner": "gone", "epoch": 7, "host": "x", "pid": 1, "renewed_at": 0, "ttl_s": 1}, LEASE)
    with Lease(store, log=lambda _: None) as c:
        assert c.epoch == 8


def test_a_lease_from_another_host_is_never_taken_by_its_pid(tmp_path):
    store = Store(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    fresh = Lease(store).record() | {"host": "other-host", "pid": int(dead.stdout), "owner": "elsewhere"}
    store.write_json(fresh, LEASE)
    with pytest.raises(LeaseHeld, match="other-host"):  # the pid means nothing on this host
        Lease(store, ttl_s=60, log=lambda _: None).acquire()
    store.write_json(fresh | {"renewed_at": time.time() - 120, "ttl_s": 60}, LEASE)
    said: list[str] = []
    with Lease(store, ttl_s=60, log=said.append):
        pass
    assert "last renewed" in said[0]


# -- two driver processes, the second on another host ----------------------------------------------------------
needs_uts = pytest.mark.skipif(not _other_host_works(), reason="unshare --uts is not permitted here")


@needs_uts
def test_a_driver_paused_past_its_ttl_commits_nothing_after_the_takeover(tmp_path):
    run, ttl = tmp_path / "run", 4.0
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = subprocess.Popen([*DRIVER, str(run), "12", "0.4", str(ttl), "0.5"], env=_env(), stdout=a_log.open("w"),
                         stderr=subprocess.STDOUT)
    try:
        _wait_for(a_log, "committed shard-00001")
        os.kill(a.pid, signal.SIGSTOP)  # a GC pause, a frozen VM: its heartbeat stops with it
        paused = {s for s, m in _markers(run).items()}
        time.sleep(ttl + 1.0)
        b = subprocess.run([*OTHER_HOST, *DRIVER, str(run), "12", "0.05", str(ttl), "0.5"], env=_env(),
                           capture_output=True, text=True, timeout=120)
        assert b.returncode == 0, b.stdout + b.stderr
        assert "taking over the run's lease from host" in b.stdout and "last renewed" in b.stdout, b.stdout
        os.kill(a.pid, signal.SIGCONT)
        assert a.wait(timeout=60) == 3
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGKILL)
    a_out = a_log.read_text()
    said = {line.split()[1] for line in a_out.splitlines() if line.startswith("committed ")}
    assert "stops writing" in a_out and said == paused  # after its pause it committed nothing
    epochs = {s: m["lease_epoch"] for s, m in _markers(run).items()}
    assert sorted(epochs) == [f"shard-{i:05d}" for i in range(12)]  # every shard once
    assert {s for s, e in epochs.items() if e == 1} == paused  # the first driver's: only before its pause
    assert set(epochs.values()) == {1, 2}


@needs_uts
def test_a_driver_whose_store_is_unreachable_stops_before_anyone_may_take_over(tmp_path):
    run, ttl = tmp_path / "run", 4.0
    down = tmp_path / "store-down"
    a_log = tmp_path / "a.log"
    a = subprocess.Popen([*DRIVER, str(run), "40", "0.2", str(ttl), "0.5"], env=_env(**{STORE_DOWN_ENV: str(down)}),
                         stdout=a_log.open("w"), stderr=subprocess.STDOUT)
    try:
        _wait_for(a_log, "committed shard-00001")
        down.touch()  # from now on every renewal of the first driver fails
        t_down = time.monotonic()
        assert a.wait(timeout=30) == 3
        stopped_after = time.monotonic() - t_down
        assert stopped_after < ttl, stopped_after  # it stopped writing before its lease could be taken
        first = set(_markers(run))
        time.sleep(max(0.0, ttl + 1.0 - stopped_after))
        b = subprocess.run([*OTHER_HOST, *DRIVER, str(run), "40", "0.01", str(ttl), "0.5"], env=_env(),
                           capture_output=True, text=True, timeout=120)
        assert b.returncode == 0 and "taking over" in b.stdout, b.stdout + b.stderr
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGKILL)
    assert "not renewed" in a_log.read_text()
    epochs = {s: m["lease_epoch"] for s, m in _markers(run).items()}
    assert len(epochs) == 40 and {s for s, e in epochs.items() if e == 1} == first
