"""What every conditional write follows, on any store: the bounds of one write, the errors of the store, the
generic read-compare-write, and the versioned compare-and-swap that S3 and GCS share (the rules in
``toolformer/run/conditional/__init__.py``)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any, Callable, Iterator

from toolformer.run.store import Store

UPDATE_TRIES = 8  # conditional read-change-write rounds, or 409 conflicts in a row, before giving up

# The object-store clients' bounds. One request gives up after CONNECT_TIMEOUT_S to connect or READ_TIMEOUT_S
# without a byte of the answer, and is sent at most MAX_ATTEMPTS times in all (the client's own resends).
CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 2.0  # a small object's PUT or GET: S3's latency guidance is to resend one not answered in 2 s
MAX_ATTEMPTS = 2
# The longest one request can take, resends included: botocore's standard mode sleeps at most 2^(i-1) s before
# resend i (a throttled answer), plus at most 5 s more when the answer asks for it (x-amz-retry-after).
REQUEST_BOUND_S = MAX_ATTEMPTS * (CONNECT_TIMEOUT_S + READ_TIMEOUT_S) + sum(2 ** i + 5 for i in range(MAX_ATTEMPTS - 1))
# One conditional write (a create, a replace, an update's rounds, 409 retries) starts no request that could end
# later than this after the write began, so no write lands later than this after the fence check before it: two
# requests (an update's read and its write) and 2 s for the further rounds of a fast store.
WRITE_WINDOW_S = 2 * REQUEST_BOUND_S + 2.0
log = logging.getLogger(__name__)


class StoreFault(RuntimeError):
    """The store, not the data, failed a write: whoever asked for it is not to blame (retry it later)."""


class WriteConflict(StoreFault):
    """The store kept answering 409 (another conditional write of the key in flight): the write's outcome is not
    "exists already", it is unknown, and the object is not ours (read back)."""


class StoreUnavailable(StoreFault):
    """The store did not answer a request within its bounds (timeouts, dropped connections, 5xx, throttling)."""


class UpdateConflict(StoreFault):
    """Other writers kept changing a record for ``UPDATE_TRIES`` rounds (or the write's window ran out)."""


def _same(raw: bytes | None, data: bytes) -> bool:
    """Whether the object read back is this write's own: the very bytes it sent."""
    return raw is not None and raw == data


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, default=str).encode()


def parsed(raw: bytes) -> dict:
    try:
        out = json.loads(raw)
        return out if isinstance(out, dict) else {"owner": None, "renewed_at": 0}
    except ValueError:  # half-written by a store without atomic puts: treat as stale
        return {"owner": None, "renewed_at": 0}


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
        """Create ``name`` unless it exists (True: created, or it holds these very bytes). Not atomic here."""
        if self.store.exists(name):
            return _same(self.store.read_bytes(name), data)
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


class VersionedConditional(Conditional):
    """A store whose objects carry a version that a write or delete can be made conditional on (S3, GCS). The
    subclasses send one request each (``_get``, ``_put``, ``_remove``); the rules are here, once: a refused write is
    read back, a conflict is retried within the write's window, then raised."""

    atomic = True

    def _get(self, name: str) -> tuple[bytes, Any] | None:  # (bytes, version), None when absent
        raise NotImplementedError

    def _put(self, name: str, data: bytes, version: Any) -> bool:
        """One conditional put (version None: only if absent): True written, False its precondition failed;
        ``WriteConflict`` on a 409-like answer (another conditional write of the key in flight)."""
        raise NotImplementedError

    def _remove(self, name: str, version: Any) -> bool:
        raise NotImplementedError

    def _retrying(self, name: str, request: Callable[[], bool], began: float) -> bool:
        """``request`` until it answers other than a conflict: at most ``UPDATE_TRIES`` conflicts, and no request
        started that could end past the write's window; then ``WriteConflict``."""
        conflicts = 0
        while True:
            try:
                return request()
            except WriteConflict as exc:
                conflicts += 1
                pause = 0.05 * conflicts
                late = time.monotonic() + pause + REQUEST_BOUND_S > began + WRITE_WINDOW_S
                if conflicts >= UPDATE_TRIES or late:
                    raise WriteConflict(
                        f"{self.store.path(name)}: {conflicts} conflicting writes in a row (409: another conditional "
                        f"write of the object in flight){' and no time left in the write window' if late else ''}; "
                        f"the write did not land (read back): {exc}") from None
                time.sleep(pause)

    def _write(self, name: str, data: bytes, version: Any, began: float | None = None) -> bool:
        """A conditional put; when refused (or out of conflict retries), read back: these very bytes there mean it
        went through (a resend of a put that had landed), anything else a refusal (or the conflict, raised)."""
        began = time.monotonic() if began is None else began
        try:
            if self._retrying(name, lambda: self._put(name, data, version), began):
                return True
        except StoreFault:  # conflicts or no answer: the outcome is unknown until read back
            if self._ours(name, data):
                return True
            raise
        return self._ours(name, data)

    def _ours(self, name: str, data: bytes) -> bool:
        got = self._get(name)
        if _same(None if got is None else got[0], data):
            log.info("%s: a write answered as refused holds its own bytes: an earlier try of it landed",
                     self.store.path(name))
            return True
        return False

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
        return self._retrying(name, lambda: self._remove(name, seen.get("_version")), time.monotonic())

    def update_json(self, name: str, change: Callable[[Any], Any]) -> Any:
        began, lost = time.monotonic(), 0
        for attempt in range(UPDATE_TRIES):  # bounded: a round is lost only to another writer's write
            if attempt and time.monotonic() + 2 * REQUEST_BOUND_S > began + WRITE_WINDOW_S:
                break  # another round (a read and a write) could end past the write's window
            lost = attempt + 1
            got = self._get(name)
            new = change(None if got is None else json.loads(got[0]))
            version = None if got is None else got[1]
            if new is None:
                if got is None or self._retrying(name, lambda: self._remove(name, version), began):
                    return None
            elif self._write(name, _dump(new), version, began):
                return new
            time.sleep(0.05 * (attempt + 1))
        raise UpdateConflict(f"{self.store.path(name)}: changed by other writers {lost} times in a row (the write's "
                             f"window is {WRITE_WINDOW_S:g} s)")
