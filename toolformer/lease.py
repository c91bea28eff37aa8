"""One driver per run: a lease file in the run directory, created atomically and renewed by a heartbeat.

    with Lease(store, ttl_s=120, heartbeat_s=15, log=print) as lease:   # raises LeaseHeld if another driver holds it
        ...                                                               # lease.check() raises LeaseLost if taken

``_lease.json`` names the holder (host, pid, start time, the command) and when it was last renewed. A second
driver refuses with that information while the lease is fresh; it takes the lease over when the holder is a
dead process on the same host, or when the lease has not been renewed for ``ttl_s`` (a driver on a lost node).
A holder that finds its lease taken stops writing.

Atomic create, by store:
- local disk (and any POSIX mount): ``open(O_CREAT | O_EXCL)``; a stale lease is first renamed away
  (``rename`` is atomic: of two drivers taking over at once, one wins and the other retries and then refuses);
- S3: ``PutObject`` with ``If-None-Match: *`` (conditional writes, through boto3 when installed);
- GCS: an upload with ``if_generation_match=0`` (through google-cloud-storage when installed);
- any other store: write, wait, read back (not atomic: two drivers starting within a second of each other can
  both believe they hold it; the renewal then finds out and one stops). A warning says so.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable

from toolformer.shards import Store

LEASE = "_lease.json"
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
            return json.loads(self.store.read_bytes(LEASE))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):  # half-written by a store without atomic puts: treat as stale
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
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
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

    def _remove_stale(self, held: dict) -> bool:
        """Remove a stale lease; True if this call removed exactly that one (a racing driver may beat us)."""
        s = self.store
        if s.local:
            aside = s.path(f".{LEASE}.{self.owner}.stale")
            try:
                os.rename(s.path(LEASE), aside)  # atomic: one of two racing drivers gets it
            except FileNotFoundError:
                return False
            os.unlink(aside)
            return True
        current = self.read()
        if current is None or current.get("owner") != held.get("owner"):
            return False
        s.delete_file(LEASE)
        return True

    # -- acquire / renew / release -----------------------------------------------------------------------------
    def acquire(self) -> "Lease":
        data = json.dumps(self.record(), indent=2).encode()
        for _ in range(5):  # bounded: each round either creates, refuses, or lost a race to another taker
            if self._create(data):
                self._start_heartbeat()
                return self
            held = self.read()
            if held is None:
                continue
            why = self.stale(held)
            if why is None:
                raise LeaseHeld(
                    f"{self.store.uri} is being written by another driver: host {held.get('host')}, pid "
                    f"{held.get('pid')}, started {held.get('started')}, lease renewed {held.get('renewed')} "
                    f"(ttl {held.get('ttl_s')} s; command: {held.get('command')}). Wait for it to finish, stop it, or "
                    f"remove {self.store.path(LEASE)} if you are sure it is gone.")
            if self._remove_stale(held):
                self.say(f"taking over the run's lease from host {held.get('host')} pid {held.get('pid')}: {why}")
        raise LeaseHeld(f"{self.store.uri}: could not take the lease (other drivers keep racing for it)")

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


def _s3_create(path: str, data: bytes) -> bool:
    import boto3  # S3's conditional write; pyarrow's S3 filesystem has no create-if-absent
    from botocore.exceptions import ClientError

    bucket, key = path.split("/", 1)
    try:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise


def _gcs_create(path: str, data: bytes) -> bool:
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    bucket, key = path.split("/", 1)
    try:
        storage.Client().bucket(bucket).blob(key).upload_from_string(data, if_generation_match=0)
        return True
    except PreconditionFailed:
        return False
