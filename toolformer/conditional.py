"""Compare-and-swap on one small object of a run directory, per store: what the lease and its fence rest on.

    cas = conditional(store)
    rec = cas.read("_lease.json")                 # {"owner": ..., ...} with its version, or None
    cas.create("_lease.json", data)               # True only if there was none
    cas.replace("_lease.json", data, rec)         # True only if it is still the version read
    cas.delete("_lease.json", rec)                # True only if it is still the version read
    with cas.exclusive("_lease.json"): ...        # a critical section against every other driver's (local only)
    cas.put_if_absent("markers/a/s.json", data)   # one create-if-absent, no lock: an object written once (a marker)
    cas.update_json("failures/a/s.json", fn)      # read, change, write back unless someone wrote meanwhile (retried)

- local disk (and any POSIX mount): every operation runs under ``flock`` on ``<name>.lock`` (bounded wait), a
  create hard-links a fully written temporary file (``link`` fails if the name exists), a replace is an atomic
  rename after comparing the owner under the lock;
- S3: ``PutObject`` with ``If-None-Match: *`` / ``If-Match: <ETag>`` and ``DeleteObject`` with ``If-Match``
  (conditional writes, through boto3);
- GCS: ``if_generation_match`` on upload and delete (through google-cloud-storage);
- any other store: read, compare, write: not atomic, and said so once in the log.

``put_if_absent`` is what makes a shard committed once: its marker is created by that one operation (local: the
hard link; S3: ``If-None-Match: *``; GCS: ``if_generation_match=0``), never by an existence check then a put.
``update_json`` is for the small records several writers may change (a shard's failure record): on S3 and GCS the
write back is conditional on the version read, so two writers never lose each other's change; on a local disk
the writers that matter hold the lease's lock (``Fence.hold``) around it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:  # only a type here: shards.py uses this module (markers, failure records)
    from toolformer.shards import Store

LOCK_WAIT_S = 30.0  # how long a driver waits for another one inside a critical section (a few file operations)
UPDATE_TRIES = 8  # conditional read-change-write rounds before giving up (each lost only to another writer's write)
log = logging.getLogger(__name__)


class LockTimeout(RuntimeError):
    """Another process kept the run's lock longer than ``LOCK_WAIT_S``."""


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, default=str).encode()


def parsed(raw: bytes) -> dict:
    try:
        out = json.loads(raw)
        return out if isinstance(out, dict) else {"owner": None, "renewed_at": 0}
    except ValueError:  # half-written by a store without atomic puts: treat as stale
        return {"owner": None, "renewed_at": 0}


@contextlib.contextmanager
def flock(path: str, timeout_s: float = LOCK_WAIT_S) -> Iterator[None]:
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
                    raise LockTimeout(f"{path}: another driver kept the lock for {timeout_s:g} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Conditional:
    """The generic store: read, compare, write (not atomic)."""

    atomic = False

    def __init__(self, store: Store):
        self.store = store

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        yield

    def read(self, name: str) -> dict | None:
        try:
            return parsed(self.store.read_bytes(name))
        except FileNotFoundError:
            return None

    def create(self, name: str, data: bytes) -> bool:
        if self.store.exists(name):
            return False
        self.store.write_bytes(data, name)
        time.sleep(1.0)  # another writer racing us shows up in the read-back
        held = self.read(name)
        return bool(held) and held.get("owner") == json.loads(data).get("owner")

    def replace(self, name: str, data: bytes, seen: dict) -> bool:
        current = self.read(name)
        if current is None or current.get("owner") != seen.get("owner") or current.get("epoch") != seen.get("epoch"):
            return False
        self.store.write_bytes(data, name)
        return True

    def delete(self, name: str, seen: dict) -> bool:
        current = self.read(name)
        if current is None or current.get("owner") != seen.get("owner"):
            return False
        self.store.delete_file(name)
        return True

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Create ``name`` unless it exists (True: created). Not atomic on this generic store."""
        if self.store.exists(name):
            return False
        self.store.write_bytes(data, name)
        return True

    def update_json(self, name: str, change: Callable[[Any], Any]) -> Any:
        """Write back ``change(current)`` (current: the parsed object, None when absent; a None result deletes it)
        and return it. Here: read then write (a local disk's writers hold the lease's lock around it)."""
        try:
            current = json.loads(self.store.read_bytes(name))
        except FileNotFoundError:
            current = None
        new = change(current)
        if new is None:
            self.store.delete_file(name)
        else:
            self.store.write_bytes(_dump(new), name)
        return new

    # Inside ``exclusive``: the same operations (a local store overrides them not to take its lock twice).
    def create_locked(self, name: str, data: bytes) -> bool:
        return self.create(name, data)

    def replace_locked(self, name: str, data: bytes, seen: dict) -> bool:
        return self.replace(name, data, seen)


class LocalConditional(Conditional):
    """Local or POSIX-mounted disk: every compare-and-swap under ``flock`` on ``<name>.lock``."""

    atomic = True

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        with flock(self.store.path(name) + ".lock"):
            yield

    def read(self, name: str) -> dict | None:
        try:
            with open(self.store.path(name), "rb") as f:
                return parsed(f.read())
        except FileNotFoundError:
            return None
        except OSError:  # unreadable: treat as stale, as a half-written one
            return {"owner": None, "renewed_at": 0}

    def _link(self, name: str, data: bytes) -> bool:
        path = self.store.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, fails if the name exists; the record appears whole
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def create(self, name: str, data: bytes) -> bool:
        with self.exclusive(name):
            return self._link(name, data)

    def create_locked(self, name: str, data: bytes) -> bool:
        return self._link(name, data)

    def put_if_absent(self, name: str, data: bytes) -> bool:
        return self._link(name, data)  # the link alone is atomic; an object never replaced needs no lock file

    def replace(self, name: str, data: bytes, seen: dict) -> bool:
        with self.exclusive(name):
            return self.replace_locked(name, data, seen)

    def replace_locked(self, name: str, data: bytes, seen: dict) -> bool:
        """``replace`` for a caller already inside ``exclusive(name)``."""
        current = self.read(name)
        if current is None or current.get("owner") != seen.get("owner") or current.get("epoch") != seen.get("epoch"):
            return False
        self.store.write_bytes(data, name)  # temporary file + rename: readers see the old or the new record
        return True

    def delete(self, name: str, seen: dict) -> bool:
        with self.exclusive(name):
            current = self.read(name)
            if current is None or current.get("owner") != seen.get("owner"):
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.store.path(name))
            return True


class UpdateConflict(RuntimeError):
    """Other writers kept changing a record for ``UPDATE_TRIES`` rounds."""


class VersionedConditional(Conditional):
    """A store whose objects carry a version that a write or delete can be made conditional on (S3, GCS)."""

    atomic = True

    def _get(self, name: str) -> tuple[bytes, Any] | None:  # (bytes, version), None when absent
        raise NotImplementedError

    def _write(self, name: str, data: bytes, version: Any) -> bool:  # version None: only if absent
        raise NotImplementedError

    def _remove(self, name: str, version: Any) -> bool:
        raise NotImplementedError

    def read(self, name: str) -> dict | None:
        got = self._get(name)
        return None if got is None else parsed(got[0]) | {"_version": got[1]}

    def create(self, name: str, data: bytes) -> bool:
        return self._write(name, data, None)

    def put_if_absent(self, name: str, data: bytes) -> bool:
        return self._write(name, data, None)

    def replace(self, name: str, data: bytes, seen: dict) -> bool:
        return bool(seen.get("_version")) and self._write(name, data, seen["_version"])

    def delete(self, name: str, seen: dict) -> bool:
        return self._remove(name, seen.get("_version"))

    def update_json(self, name: str, change: Callable[[Any], Any]) -> Any:
        for attempt in range(UPDATE_TRIES):  # bounded: a round is lost only to another writer's write
            got = self._get(name)
            new = change(None if got is None else json.loads(got[0]))
            version = None if got is None else got[1]
            if new is None:
                if got is None or self._remove(name, version):
                    return None
            elif self._write(name, _dump(new), version):
                return new
            time.sleep(0.05 * (attempt + 1))
        raise UpdateConflict(f"{self.store.path(name)}: changed by other writers {UPDATE_TRIES} times in a row")


_s3_clients: dict = {}


def s3_client():
    """One boto3 client per process and endpoint (``AWS_ENDPOINT_URL`` points it at another S3 API: a test's)."""
    import boto3  # pyarrow's S3 filesystem has no conditional put

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint not in _s3_clients:
        _s3_clients[endpoint] = boto3.client("s3")
    return _s3_clients[endpoint]


class S3Conditional(VersionedConditional):
    """S3 conditional writes: create with ``If-None-Match: *``, replace and delete with ``If-Match: <ETag>``
    (S3 added them in 2024; an older botocore has no such PutObject parameters: the pinned one does, see
    requirements.txt and cluster/requirements-gpu.txt)."""

    _FAILED = ("PreconditionFailed", "NoSuchKey", "412")
    _CONFLICT = ("ConditionalRequestConflict", "409")  # another conditional write of the key in flight: ask again

    def _key(self, name: str) -> tuple[str, str]:
        bucket, key = self.store.path(name).split("/", 1)
        return bucket, key

    def _refused(self, exc) -> bool:
        return exc.response.get("Error", {}).get("Code") in self._FAILED

    def _conditional(self, call, **kwargs) -> bool:
        """True when the conditional request went through, False when its precondition did not hold."""
        from botocore.exceptions import ClientError

        for attempt in range(UPDATE_TRIES):  # bounded: a 409 only while another request on the key is in flight
            try:
                call(**kwargs)
                return True
            except ClientError as exc:
                if self._refused(exc):
                    return False
                if exc.response.get("Error", {}).get("Code") not in self._CONFLICT:
                    raise
            time.sleep(0.05 * (attempt + 1))
        return False

    def _get(self, name: str) -> tuple[bytes, Any] | None:
        from botocore.exceptions import ClientError

        bucket, key = self._key(name)
        try:
            obj = s3_client().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return obj["Body"].read(), obj["ETag"]

    def _write(self, name: str, data: bytes, version: Any) -> bool:
        bucket, key = self._key(name)
        cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        return self._conditional(s3_client().put_object, Bucket=bucket, Key=key, Body=data, **cond)

    def _remove(self, name: str, version: Any) -> bool:
        bucket, key = self._key(name)
        return self._conditional(s3_client().delete_object, Bucket=bucket, Key=key, IfMatch=version or "*")


class GCSConditional(VersionedConditional):
    """GCS preconditions: ``if_generation_match=0`` to create, ``=<generation>`` to replace or delete."""

    def _blob(self, name: str):
        from google.cloud import storage

        bucket, key = self.store.path(name).split("/", 1)
        return storage.Client().bucket(bucket).blob(key)

    def _get(self, name: str) -> tuple[bytes, Any] | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        blob = self._blob(name)
        for _ in range(UPDATE_TRIES):  # the bytes of the generation read: replaced between the two calls, read again
            try:
                blob.reload()
                return blob.download_as_bytes(if_generation_match=blob.generation), blob.generation
            except NotFound:
                return None
            except PreconditionFailed:
                continue
        raise UpdateConflict(f"{self.store.path(name)}: replaced {UPDATE_TRIES} times while being read")

    def _write(self, name: str, data: bytes, version: Any) -> bool:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self._blob(name).upload_from_string(data, if_generation_match=0 if version is None else int(version))
            return True
        except (PreconditionFailed, NotFound):
            return False

    def _remove(self, name: str, version: Any) -> bool:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self._blob(name).delete(if_generation_match=version)
            return True
        except (PreconditionFailed, NotFound):
            return False


_warned: set[str] = set()


def conditional(store: Store) -> Conditional:
    """The compare-and-swap of this store's kind."""
    if store.local:
        return LocalConditional(store)
    scheme = store.uri.split("://", 1)[0]
    if scheme == "s3":
        return S3Conditional(store)
    if scheme in ("gs", "gcs"):
        return GCSConditional(store)
    if store.uri not in _warned:
        _warned.add(store.uri)
        log.warning("%s: this store has no conditional writes; the lease is written and read back instead "
                    "(not atomic: two drivers starting within a second can both start, the renewal then stops one)",
                    store.uri)
    return Conditional(store)
