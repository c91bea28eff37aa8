"""Compare-and-swap on one small object of a run directory, per store: what the lease and its fence rest on.

    cas = conditional(store)
    rec = cas.read("_lease.json")                 # {"owner": ..., ...} with its version, or None
    cas.create("_lease.json", data)               # True only if there was none
    cas.replace("_lease.json", data, rec)         # True only if it is still the version read
    cas.delete("_lease.json", rec)                # True only if it is still the version read
    with cas.exclusive("_lease.json"): ...        # a critical section against every other driver's (local only)

- local disk (and any POSIX mount): every operation runs under ``flock`` on ``<name>.lock`` (bounded wait), a
  create hard-links a fully written temporary file (``link`` fails if the name exists), a replace is an atomic
  rename after comparing the owner under the lock;
- S3: ``PutObject`` with ``If-None-Match: *`` / ``If-Match: <ETag>`` and ``DeleteObject`` with ``If-Match``
  (conditional writes, through boto3);
- GCS: ``if_generation_match`` on upload and delete (through google-cloud-storage);
- any other store: read, compare, write: not atomic, and said so once in the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Iterator

from toolformer.shards import Store

LOCK_WAIT_S = 30.0  # how long a driver waits for another one inside a critical section (a few file operations)
log = logging.getLogger(__name__)


class LockTimeout(RuntimeError):
    """Another process kept the run's lock longer than ``LOCK_WAIT_S``."""


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


class S3Conditional(Conditional):
    """S3 conditional writes: create with ``If-None-Match: *``, replace and delete with ``If-Match: <ETag>``."""

    atomic = True
    _FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412")

    def _client(self):
        import boto3  # pyarrow's S3 filesystem has no conditional put

        return boto3.client("s3")

    def _key(self, name: str) -> tuple[str, str]:
        bucket, key = self.store.path(name).split("/", 1)
        return bucket, key

    def read(self, name: str) -> dict | None:
        from botocore.exceptions import ClientError

        bucket, key = self._key(name)
        try:
            obj = self._client().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return parsed(obj["Body"].read()) | {"_version": obj["ETag"]}

    def _put(self, name: str, data: bytes, **cond) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = self._key(name)
        try:
            self._client().put_object(Bucket=bucket, Key=key, Body=data, **cond)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in self._FAILED:
                return False
            raise

    def create(self, name: str, data: bytes) -> bool:
        return self._put(name, data, IfNoneMatch="*")

    def replace(self, name: str, data: bytes, seen: dict) -> bool:
        return bool(seen.get("_version")) and self._put(name, data, IfMatch=seen["_version"])

    def delete(self, name: str, seen: dict) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = self._key(name)
        try:
            self._client().delete_object(Bucket=bucket, Key=key, IfMatch=seen.get("_version", "*"))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in self._FAILED:
                return False
            raise


class GCSConditional(Conditional):
    """GCS preconditions: ``if_generation_match=0`` to create, ``=<generation>`` to replace or delete."""

    atomic = True

    def _blob(self, name: str):
        from google.cloud import storage

        bucket, key = self.store.path(name).split("/", 1)
        return storage.Client().bucket(bucket).blob(key)

    def read(self, name: str) -> dict | None:
        from google.api_core.exceptions import NotFound

        blob = self._blob(name)
        try:
            blob.reload()
            raw = blob.download_as_bytes(if_generation_match=blob.generation)
        except NotFound:
            return None
        return parsed(raw) | {"_version": blob.generation}

    def _upload(self, name: str, data: bytes, generation: int) -> bool:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self._blob(name).upload_from_string(data, if_generation_match=generation)
            return True
        except (PreconditionFailed, NotFound):
            return False

    def create(self, name: str, data: bytes) -> bool:
        return self._upload(name, data, 0)

    def replace(self, name: str, data: bytes, seen: dict) -> bool:
        return bool(seen.get("_version")) and self._upload(name, data, int(seen["_version"]))

    def delete(self, name: str, seen: dict) -> bool:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self._blob(name).delete(if_generation_match=seen.get("_version"))
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
