"""One driver per run: a fenced lease in the run directory, renewed by a heartbeat.

    with Lease(store, ttl_s=120, heartbeat_s=15, log=print) as lease:   # raises LeaseHeld if another driver holds it
        lease.check()                                                     # raises LeaseLost: stop writing
        with lease.fence().hold(): ...                                    # a write only the holder's epoch may make

``_lease.json`` names the holder (a random owner token, host, pid, start time, the command), its **epoch** (one
more than the lease it replaced: ``_lease.epoch`` keeps the count across releases) and when it was last renewed.

- A second driver waits for the lease up to ``wait_s`` (``shards.lease_wait_s``: by default the lease TTL, the
  time a holder that died elsewhere takes to go stale), then refuses with exit code 75 (``LeaseHeld``: try again
  later; a rerun heals). A holder that finishes meanwhile hands the run over at once.
- A second driver refuses while the lease is fresh. It takes the lease over when the holder is a dead process on
  the same host, or when the lease has not been renewed for ``ttl_s`` (a driver on a lost node, a paused one). A
  holder on another host is never judged by its pid.
- Create, renew, take-over and release are compare-and-swap on the holder's token (``toolformer.run.conditional``): a driver
  never renews or deletes a lease it no longer holds.
- A driver that has not renewed for ``ttl_s - margin_s`` stops writing (``check`` raises ``LeaseLost``) before
  anyone may take over: the deadline is read from a clock that never jumps and keeps counting while the machine is
  suspended (``CLOCK_BOOTTIME`` on Linux; ``CLOCK_MONOTONIC`` stops during a suspend), so a driver frozen past its
  TTL (SIGSTOP, a long GC pause, a suspended VM) finds out at its next check, before its next write.
- Every commit carries the lease's owner and epoch (``Fence``): the store refuses it when the run's lease is no
  longer that one. On a local or POSIX disk the check and the write happen under the lease's lock, so a takeover
  cannot slip between them; on object stores the check immediately precedes the marker's create-if-absent.
- Every epoch's start (the store's time of its lease record) and clean end go to ``_lease.epochs.json``, and every
  driver-side record carries its writer's epoch: a write a frozen driver lands after a takeover is ignored by its
  readers (``toolformer.run.epochs``).
- A commit task checks the lease's deadline as the driver does (``Fence.hold``): the fence carries what was left of
  the driver's deadline when it was handed out, and the task counts it down on its own ``CLOCK_BOOTTIME``.
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
from dataclasses import dataclass
from typing import Callable, Iterator

from toolformer.run.conditional import LockTimeout, conditional
from toolformer.run.epochs import note_released, note_start
from toolformer.run.store import Store

LEASE = "_lease.json"
EPOCH = "_lease.epoch"
STORE_DOWN_ENV = "TOOLFORMER_FAULT_LEASE_STORE_DOWN"  # test hook: while this file exists, renewals fail
log = logging.getLogger(__name__)


EXIT_LEASE_HELD = 75  # EX_TEMPFAIL: another driver holds the run; the same command later resumes it


class LeaseHeld(SystemExit):
    """Another driver holds the run (after ``wait_s``): exit 75, the message said last."""

    def __init__(self, message: str):
        super().__init__(EXIT_LEASE_HELD)
        self.message = message
        self.last_line = f"{message} (exit {EXIT_LEASE_HELD}: the run is another driver's; try again later)"

    def __str__(self) -> str:
        return self.message


class LeaseLost(RuntimeError):
    """This driver no longer holds the run (taken over, or not renewed in time): stop writing."""


class StaleLease(RuntimeError):
    """A write fenced by a lease that is no longer the run's: refused."""


class LeaseExpired(StaleLease):
    """A write fenced by a lease whose deadline may have passed (another driver may take over): refused."""


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def _int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@dataclass(frozen=True)
class Fence:
    """What a write must still match to land: the run's lease owner and epoch, and (from ``Lease.fence``) its
    deadline. Picklable: a commit task gets one.

    The deadline, counted the way the driver counts its own: ``budget_s`` is what was left of the driver's
    ``ttl - margin`` when the fence was handed out, counted from the renewal stamped ``renewed_at``. The holder of
    the fence counts time since ``issued_at`` (the driver's wall clock) and since it first used the fence (on its
    own ``CLOCK_BOOTTIME``, which a paused or suspended task cannot escape), and takes the larger: a task queued
    or frozen past the budget refuses. Each renewal the driver made since (the lease record's ``renewed_at``,
    both stamps from the driver's clock) adds the time between the two renewals, so a slow commit of a live driver
    is not refused."""

    uri: str
    owner: str
    epoch: int
    budget_s: float | None = None  # None: no deadline (a fence built by hand)
    renewed_at: float = 0.0
    issued_at: float = 0.0

    def __getstate__(self) -> dict:  # a task's own clock reading never travels with the fence
        return {k: v for k, v in self.__dict__.items() if k != "_armed"}

    def arm(self) -> "Fence":
        """Start this process's count of the deadline (a commit task calls it first thing); returns self."""
        if "_armed" not in self.__dict__:
            object.__setattr__(self, "_armed", deadline_clock())
        return self

    def left_s(self, held: dict) -> float | None:
        """Seconds left before the lease ``held`` (this fence's) may be taken over, less the margin."""
        if self.budget_s is None:
            return None
        self.arm()
        elapsed = max(deadline_clock() - self.__dict__["_armed"], time.time() - self.issued_at)
        renewed_since = max(0.0, float(held.get("renewed_at") or 0.0) - self.renewed_at)
        return self.budget_s + renewed_since - elapsed

    @contextlib.contextmanager
    def hold(self) -> Iterator[int]:
        """Run the block only while the run's lease is this one and its deadline has not passed (under the
        lease's lock on a local disk)."""
        cas = conditional(Store(self.uri))
        with cas.exclusive(LEASE):
            held = cas.read(LEASE)
            if held is None or held.get("owner") != self.owner or held.get("epoch") != self.epoch:
                now = "no lease" if held is None else (
                    f"epoch {held.get('epoch')} held by host {held.get('host')} pid {held.get('pid')}")
                raise StaleLease(f"{self.uri}: a write of lease epoch {self.epoch} refused: the run's lease is now "
                                 f"{now}")
            left = self.left_s(held)
            if left is not None and left <= 0:
                raise LeaseExpired(f"{self.uri}: a write of lease epoch {self.epoch} refused: the lease was not "
                                   f"renewed in time ({-left:.1f} s past its deadline less the margin): another "
                                   "driver may take the run over")
            yield self.epoch  # stamped on the record written (toolformer.run.epochs)


def deadline_clock() -> float:
    """Seconds on the lease deadline's clock: CLOCK_BOOTTIME where the system has it (it counts a suspended VM's
    time, which the TTL does on every other driver's wall clock), the monotonic clock elsewhere."""
    if _BOOTTIME is not None:
        return time.clock_gettime(_BOOTTIME)
    return time.monotonic()


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def lease_margin(ttl_s: float, heartbeat_s: float, margin_s: float | None = None) -> float:
    """How long before a taker may come a driver stops writing: ``margin_s``, by default a few heartbeats or a
    quarter of the TTL, at most 90 % of it. On an object store it must exceed ``conditional.WRITE_WINDOW_S`` (a
    write that passed its fence check lands within that), which the config check enforces."""
    default = max(2 * max(0.05, heartbeat_s), 0.25 * ttl_s)
    return min(margin_s if margin_s is not None else default, 0.9 * ttl_s)


def lease_wait(shards) -> float:
    """How long a job waits for a held lease (``shards.lease_wait_s``; None: the TTL)."""
    return float(shards.lease_ttl_s if shards.lease_wait_s is None else shards.lease_wait_s)


class Lease:
    def __init__(self, store: Store, ttl_s: float = 120.0, heartbeat_s: float = 15.0,
                 log: Callable[[str], None] = print, margin_s: float | None = None, wait_s: float = 0.0):
        self.store, self.ttl_s, self.heartbeat_s, self.say = store, ttl_s, max(0.05, heartbeat_s), log
        self.wait_s = max(0.0, float(wait_s or 0.0))
        self.margin_s = lease_margin(ttl_s, heartbeat_s, margin_s)
        self.cas = conditional(store)
        self.owner = uuid.uuid4().hex
        self.started = time.time()
        self.epoch = 0
        self.lost: str | None = None
        self.renewals = 0
        self._renewed = deadline_clock()
        self._renewed_at = self._writing_at = 0.0  # the renewed_at stamp of the record written at _renewed
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the record -----------------------------------------------------------------------------------------
    def record(self) -> dict:
        now = time.time()
        return {"owner": self.owner, "epoch": self.epoch, "host": socket.gethostname(), "pid": os.getpid(),
                "started": _iso(self.started), "renewed_at": now, "renewed": _iso(now), "ttl_s": self.ttl_s,
                "command": " ".join(sys.argv)[:500]}

    def _data(self) -> bytes:
        rec = self.record()
        self._writing_at = rec["renewed_at"]
        return json.dumps(rec, indent=2).encode()

    def read(self) -> dict | None:
        return self.cas.read(LEASE)

    def stale(self, held: dict) -> str | None:
        """Why a lease held by someone else may be taken over (None: it is live)."""
        if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int) and not _pid_alive(held["pid"]):
            return f"its driver (pid {held['pid']}) is no longer running"
        age = time.time() - float(held.get("renewed_at") or 0)
        if age > float(held.get("ttl_s") or self.ttl_s):
            return f"it was last renewed {age:.0f} s ago (ttl {held.get('ttl_s') or self.ttl_s:g} s)"
        return None

    def _refuse(self, held: dict) -> LeaseHeld:
        return LeaseHeld(
            f"{self.store.uri} is being written by another driver: host {held.get('host')}, pid "
            f"{held.get('pid')}, started {held.get('started')}, lease renewed {held.get('renewed')} "
            f"(ttl {held.get('ttl_s')} s; command: {held.get('command')}). Wait for it to finish, stop it, or "
            f"remove {self.store.path(LEASE)} if you are sure it is gone.")

    def _last_epoch(self) -> int:
        try:
            return _int(self.store.read_bytes(EPOCH).decode().strip())
        except FileNotFoundError:
            return 0

    # -- acquire / renew / release -----------------------------------------------------------------------------
    def acquire(self) -> "Lease":
        """Take the lease, waiting up to ``wait_s`` while another driver holds it (then ``LeaseHeld``)."""
        deadline = deadline_clock() + self.wait_s
        told = False
        while True:
            try:
                return self._acquire_once()
            except LeaseHeld as held:
                left = deadline - deadline_clock()
                if left <= 0:
                    self.say(held.last_line)
                    raise
                if not told:
                    self.say(f"{held.message}\nwaiting up to {left:.0f} s for it (shards.lease_wait_s)")
                    told = True
                time.sleep(min(left, max(0.5, min(5.0, self.heartbeat_s))))

    def _acquire_once(self) -> "Lease":
        for _ in range(5):  # bounded: each round creates, refuses, or lost a race to another taker
            try:
                with self.cas.exclusive(LEASE):
                    held = self.cas.read(LEASE)
                    why = None if held is None else self.stale(held)
                    if held is not None and why is None:
                        raise self._refuse(held)
                    self.epoch = max(int((held or {}).get("epoch") or 0), self._last_epoch()) + 1
                    data = self._data()
                    won = self.cas.create_locked(LEASE, data) if held is None else \
                        self.cas.replace_locked(LEASE, data, held)
                    if won:  # the count only grows: a late write of an older count cannot lower it
                        self.cas.update_json(EPOCH, lambda old: max(_int(old), self.epoch))
                        gone = held is not None and why is not None and why.startswith("its driver (pid")
                        note_start(self.store, self.cas, self.epoch, LEASE,
                                   ended=int(held.get("epoch") or 0) if gone else None)
            except LockTimeout as exc:
                raise LeaseHeld(str(exc)) from None
            if won:
                if held is not None:
                    self.say(f"taking over the run's lease from host {held.get('host')} pid {held.get('pid')}: "
                             f"{why} (epoch {self.epoch})")
                self._renewed, self._renewed_at = deadline_clock(), self._writing_at
                self._start_heartbeat()
                return self
        raise LeaseHeld(f"{self.store.uri}: could not take the lease (other drivers keep racing for it)")

    def renew(self) -> None:
        """Compare-and-swap the record for a fresh one; a lease that is no longer ours is never written."""
        down = os.environ.get(STORE_DOWN_ENV)
        if down and os.path.exists(down):
            raise OSError(f"{self.store.uri}: unreachable (fault injection: {down})")
        with self._mutex:
            if self.lost:
                return
            with self.cas.exclusive(LEASE):
                held = self.cas.read(LEASE)
                if held is None or held.get("owner") != self.owner:
                    self.lost = (f"the lease was taken over by host {held.get('host')} pid {held.get('pid')} "
                                 f"(epoch {held.get('epoch')})" if held else "the lease file disappeared")
                    return
                if not self.cas.replace_locked(LEASE, self._data(), held):
                    self.lost = "the lease changed under this driver while it renewed it"
                    return
            self._renewed, self._renewed_at = deadline_clock(), self._writing_at
            self.renewals += 1

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.renew()
                except Exception as exc:  # noqa: BLE001 - an unreachable store: check() fences on the deadline
                    log.warning("could not renew the lease of %s: %s: %s", self.store.uri, type(exc).__name__, exc)
                if self.lost:
                    return

        self._thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise ``LeaseLost`` when this driver must stop writing: its lease was taken, or it could not renew it
        for ``ttl_s - margin_s`` (after which another driver may soon take over)."""
        with self._mutex:
            silent = deadline_clock() - self._renewed
            if not self.lost and silent > self.ttl_s - self.margin_s:
                self.lost = (f"the lease was not renewed for {silent:.0f} s (ttl {self.ttl_s:g} s less a margin of "
                             f"{self.margin_s:g} s): another driver may take the run over")
        if self.lost:
            raise LeaseLost(f"{self.store.uri}: {self.lost}; this driver stops writing")

    def fence(self) -> Fence:
        """The fence of a write made now (a commit task's): the owner, the epoch and what is left of the deadline."""
        with self._mutex:
            left = self.ttl_s - self.margin_s - (deadline_clock() - self._renewed)
            return Fence(self.store.uri, self.owner, self.epoch, budget_s=left, renewed_at=self._renewed_at,
                         issued_at=time.time())

    @contextlib.contextmanager
    def writing(self) -> Iterator[int]:
        """A driver-side write: checked against the deadline, then fenced by the epoch (yielded: the record's
        stamp, ``toolformer.run.epochs``)."""
        self.check()
        try:
            with self.fence().hold() as epoch:
                yield epoch
        except StaleLease as exc:
            with self._mutex:
                self.lost = self.lost or str(exc)
            raise LeaseLost(f"{exc}; this driver stops writing") from exc

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            held = self.read()
            if held and held.get("owner") == self.owner:
                note_released(self.cas, self.epoch)  # nothing of this epoch lands later: none of it is stale
                self.cas.delete(LEASE, held)  # compare-and-delete: a lease taken meanwhile stays
        except Exception:  # noqa: BLE001 - an expired lease is harmless: the next driver takes it over
            log.warning("could not release the lease of %s", self.store.uri, exc_info=True)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
