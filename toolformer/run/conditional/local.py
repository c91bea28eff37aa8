"""A local or POSIX-mounted disk: every compare-and-swap under ``flock`` on ``<name>.lock``; a create is a hard
link of a fully written file."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

from toolformer.run.conditional.base import Conditional, _same, parsed

LOCK_WAIT_S = 30.0  # how long a driver waits for another one inside a critical section (a few file operations)


class LockTimeout(RuntimeError):
    """Another process kept the run's lock longer than ``LOCK_WAIT_S``."""


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
        except FileExistsError:  # NFS resends a LINK whose answer was lost, and the resend finds its own link
            return self._ours(name, data)
        finally:
            os.unlink(tmp)
        return True

    def _ours(self, name: str, data: bytes) -> bool:
        try:
            with open(self.store.path(name), "rb") as f:
                return _same(f.read(), data)
        except FileNotFoundError:
            return False

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
