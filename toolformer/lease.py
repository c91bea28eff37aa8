"""One driver per run: a lease file in the run directory, created atomically and renewed by a heartbeat.

    with Lease(store, ttl_s=120, heartbeat_s=15, log=print) as lease:   # raises LeaseHeld if another driver holds it
        ...                                                               # lease.check() raises LeaseLost if taken

``_lease.json`` names the holder (host, pid, start time, the command) and when it was last renewed. A second
driver refuses with that information while the lease is fresh; it takes the lease over when the holder is a
dead process on the same host, or when the lease has not been renewed for ``ttl_s`` (a driver on a lost node).
A holder that finds its lease taken stops writing.

Atomic create, by store:
- local disk (and any POSIX mount): the record is written to a temporary file and hard-linked to
  ``_lease.json`` (``link`` fails if the name exists, and a reader never sees a half-written lease); look, take
  over and create happen under ``flock`` on ``_lease.json.lock`` (bounded wait), so of drivers taking over a
  stale lease at once exactly one wins and the others find its fresh lease and refuse;
- S3: ``PutObject`` with ``If-None-Match: *`` (conditional writes, through boto3 when installed); a stale
  lease is replaced with ``If-Match: <its ETag>``, so of two takers only one replaces it;
- GCS: an upload with ``if_generation_match=0`` (through google-cloud-storage when installed); a stale lease
  is replaced with ``if_generation_match=<its generation>``;
- any other store: write, wait, read back (not atomic: two drivers starting within a second of each other can
  both believe they hold it; the renewal then finds out and one stops). A warning says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable, Iterator

from toolformer.shards import Store

LEASE = "_lease.json"
LOCK_WAIT_S = 30.0  # how long a driver waits for another one inside acquire (a few file operations)
log = logging.getLogger(__name__)


class LeaseHeld(SystemExit):
    """Another driver holds the run."""


class LeaseLost(RuntimeError):
    """This driver's lease was taken over (it was not renewed in time): stop writing."""


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class Lease:
    def __init__(self, store: Store, ttl_s: float = 120.0, heartbeat_s: float = 15.0,
                 log: Callable[[str], None] = print):
        self.store, self.ttl_s, self.heartbeat_s, self.say = store, ttl_s, max(0.05, heartbeat_s), log
        self.owner = uuid.uuid4().hex
        self.started = time.time()
        self.lost: str | None = None
        self.renewals = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the record -----------------------------------------------------------------------------------------
    def record(self) -> dict:
        now = time.time()
        return {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                "started": _iso(self.started), "renewed_at": now, "renewed": _iso(now), "ttl_s": self.ttl_s,
                "command": " ".join(sys.argv)[:500]}

    def read(self) -> dict | None:
        try:
            return _parsed(self.store.read_bytes(LEASE))
        except FileNotFoundError:
            return None
        except OSError:  # unreadable: treat as stale, as a half-written one
            return {"owner": None, "renewed_at": 0}

    def stale(self, held: dict) -> str | None:
        """Why a lease held by someone else may be taken over (None: it is live)."""
        if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int) and not _pid_alive(held["pid"]):
            return f"its driver (pid {held['pid']}) is no longer running"
        age = time.time() - float(held.get("renewed_at") or 0)
        if age > float(held.get("ttl_s") or self.ttl_s):
            return f"it was last renewed {age:.0f} s ago (ttl {held.get('ttl_s') or self.ttl_s:g} s)"
        return None

    # -- atomic create ----------------------------------------------------------------------------------------
    def _create(self, data: bytes) -> bool:
        """Write the lease only if there is none; True when this call created it."""
        s = self.store
        if s.local:
            path = s.path(LEASE)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{self.owner}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic, fails if the name exists; the lease appears whole
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        scheme = s.uri.split("://", 1)[0]
        if scheme == "s3":
            return _s3_create(s.path(LEASE), data)
        if scheme in ("gs", "gcs"):
            return _gcs_create(s.path(LEASE), data)
        log.warning("%s: this store has no atomic create; the lease is written and read back instead", s.uri)
        if s.exists(LEASE):
            return False
        s.write_bytes(data, LEASE)
        time.sleep(1.0)
        held = self.read()
        return bool(held) and held.get("owner") == self.owner

    def _replace_stale(self, held: dict, data: bytes) -> bool:
        """Replace the stale lease ``held`` with ours; True if this call did (a racing driver may beat us).
        Object stores: a conditional put on the stale object's version; other stores: read, compare, write."""
        scheme = self.store.uri.split("://", 1)[0]
        if scheme == "s3":
            return _s3_create(self.store.path(LEASE), data, replace_etag=held.get("_etag"))
        if scheme in ("gs", "gcs"):
            return _gcs_create(self.store.path(LEASE), data, replace_generation=held.get("_generation"))
        current = self.read()
        if current is None or current.get("owner") != held.get("owner"):
            return False
        self.store.delete_file(LEASE)
        return self._create(data)

    def _refuse(self, held: dict) -> LeaseHeld:
        return LeaseHeld(
            f"{self.store.uri} is being written by another driver: host {held.get('host')}, pid "
            f"{held.get('pid')}, started {held.get('started')}, lease renewed {held.get('renewed')} "
            f"(ttl {held.get('ttl_s')} s; command: {held.get('command')}). Wait for it to finish, stop it, or "
            f"remove {self.store.path(LEASE)} if you are sure it is gone.")

    # -- acquire / renew / release -----------------------------------------------------------------------------
    def acquire(self) -> "Lease":
        data = json.dumps(self.record(), indent=2).encode()
        if self.store.local:
            with _flock(self.store.path(LEASE) + ".lock", LOCK_WAIT_S):
                held = self.read()
                if held is not None:
                    why = self.stale(held)
                    if why is None:
                        raise self._refuse(held)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.store.path(LEASE))
                    self.say(f"taking over the run's lease from host {held.get('host')} pid {held.get('pid')}: {why}")
                if not self._create(data):  # only a driver that ignores the lock file gets here
                    raise self._refuse(self.read() or {})
            self._start_heartbeat()
            return self
        for _ in range(5):  # bounded: each round either creates, refuses, or lost a race to another taker
            if self._create(data):
                self._start_heartbeat()
                return self
            held = self._read_versioned()
            if held is None:
                continue
            why = self.stale(held)
            if why is None:
                raise self._refuse(held)
            if self._replace_stale(held, data):
                self.say(f"taking over the run's lease from host {held.get('host')} pid {held.get('pid')}: {why}")
                self._start_heartbeat()
                return self
        raise LeaseHeld(f"{self.store.uri}: could not take the lease (other drivers keep racing for it)")

    def _read_versioned(self) -> dict | None:
        """The lease with its object version (``_etag`` on S3, ``_generation`` on GCS) for a conditional replace."""
        scheme = self.store.uri.split("://", 1)[0]
        try:
            if scheme == "s3":
                return _s3_read(self.store.path(LEASE))
            if scheme in ("gs", "gcs"):
                return _gcs_read(self.store.path(LEASE))
        except FileNotFoundError:
            return None
        return self.read()

    def renew(self) -> None:
        held = self.read()
        if held is None or held.get("owner") != self.owner:
            self.lost = (f"the lease was taken over by host {held.get('host')} pid {held.get('pid')}"
                         if held else "the lease file disappeared")
            return
        self.store.write_bytes(json.dumps(self.record(), indent=2).encode(), LEASE)
        self.renewals += 1

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            last_ok = time.time()
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.renew()
                    last_ok = time.time()
                except Exception as exc:  # noqa: BLE001 - an unreachable store: keep trying until the ttl
                    if time.time() - last_ok > self.ttl_s:
                        self.lost = f"could not renew the lease for {self.ttl_s:g} s ({type(exc).__name__}: {exc})"
                if self.lost:
                    return

        self._thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"{self.store.uri}: {self.lost}; this driver stops writing")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            held = self.read()
            if held and held.get("owner") == self.owner:
                self.store.delete_file(LEASE)
        except Exception:  # noqa: BLE001 - an expired lease is harmless: the next driver takes it over
            log.warning("could not release the lease of %s", self.store.uri, exc_info=True)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def _flock(path: str, timeout_s: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing, never deleted: deleting a lock file races),
    waited for at most ``timeout_s``."""
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LeaseHeld(f"{path}: another driver kept the lease lock for {timeout_s:g} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _s3_create(path: str, data: bytes, replace_etag: str | None = None) -> bool:
    """Create the object only if absent, or (``replace_etag``) replace it only if it is still that version."""
    import boto3  # S3's conditional write; pyarrow's S3 filesystem has no create-if-absent
    from botocore.exceptions import ClientError

    bucket, key = path.split("/", 1)
    cond = {"IfMatch": replace_etag} if replace_etag else {"IfNoneMatch": "*"}
    try:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data, **cond)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
            return False
        raise


def _s3_read(path: str) -> dict:
    import boto3
    from botocore.exceptions import ClientError

    bucket, key = path.split("/", 1)
    try:
        obj = boto3.client("s3").get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise FileNotFoundError(path) from exc
        raise
    return _parsed(obj["Body"].read()) | {"_etag": obj["ETag"]}


def _gcs_create(path: str, data: bytes, replace_generation: int | None = None) -> bool:
    """Create the object only if absent, or (``replace_generation``) replace it only if it is still that one."""
    from google.api_core.exceptions import NotFound, PreconditionFailed
    from google.cloud import storage

    bucket, key = path.split("/", 1)
    try:
        storage.Client().bucket(bucket).blob(key).upload_from_string(data, if_generation_match=replace_generation or 0)
        return True
    except (PreconditionFailed, NotFound):
        return False


def _gcs_read(path: str) -> dict:
    from google.cloud import storage

    bucket, key = path.split("/", 1)
    blob = storage.Client().bucket(bucket).get_blob(key)
    if blob is None:
        raise FileNotFoundError(path)
    return _parsed(blob.download_as_bytes()) | {"_generation": blob.generation}


def _parsed(raw: bytes) -> dict:
    try:
        return json.loads(raw)
    except ValueError:  # half-written by a store without atomic puts: treat as stale
        return {"owner": None, "renewed_at": 0}
