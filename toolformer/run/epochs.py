"""Stale writes made harmless: a record a driver lands after another driver took the run over is ignored.

On an object store the fence check (``Fence.hold``) and the write after it are two requests. A driver frozen
between them (a long GC pause, SIGSTOP, a suspended VM) lands its write when it wakes, after another driver may
have taken the run over; nothing can stop that write, so it is made harmless on the reader's side:

- every driver-side record carries the **lease epoch** of its writer (``lease_epoch``), and a record that several
  writes build up (a shard's failures, a node's ledger, the run's stops) names what its **last write** added
  (``last_write``: the epoch, the entries it added, the flags it set);
- ``_lease.epochs.json`` holds when each epoch began, in the store's own time (the modification time of that
  epoch's lease record, stamped by the store that also stamps every record), and which epochs ended by a clean
  release (their driver wrote nothing after it);
- a write of epoch ``e`` whose record changed at or after the start of a later epoch is **stale** (``stale``):
  readers drop what it added (``clean``) or ignore the record, and the next writer of the record drops it for good.
  A write that lost its version to another writer's is refused by the store itself (conditional writes).

On a local disk the check and the write happen under the lease's lock, so no stale write lands; the records carry
their epoch all the same. One clock decides: the store's (object stores stamp with second resolution, so a stale
write in the very second of a takeover counts as stale; a live driver stops writing ``margin`` seconds before its
lease may be taken over, ``toolformer.run.lease``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from toolformer.run.store import Store

HISTORY = "_lease.epochs.json"
LAST_WRITE = "last_write"


def modified(store: Store, *parts: str) -> float | None:
    """When the store last changed this object (its clock, seconds since the epoch); None when absent."""
    import pyarrow.fs as pafs

    info = store.fs.get_file_info(store.path(*parts))
    return None if info.type == pafs.FileType.NotFound else seconds(info.mtime)


def seconds(mtime) -> float | None:
    """A store's modification time in whole seconds: S3 stamps a HEAD in seconds and a listing in milliseconds, so
    every time compared is cut to the second (a write in the very second an epoch began counts as after it)."""
    return None if mtime is None else float(int(mtime.timestamp()))


@dataclass
class Epochs:
    """When each lease epoch of a run began (the store's time) and which ended by a clean release."""

    starts: dict[int, float] = field(default_factory=dict)
    released: set[int] = field(default_factory=set)

    @classmethod
    def load(cls, store: Store) -> "Epochs":
        try:
            raw = json.loads(store.read_bytes(HISTORY))
        except FileNotFoundError:
            return cls()
        return cls({int(k): float(v) for k, v in (raw.get("starts") or {}).items()},
                   {int(e) for e in raw.get("released") or []})

    def horizon(self) -> float | None:
        """No record changed before this moment can be stale (None: no epoch followed another, none is)."""
        later = [t for e, t in self.starts.items() if e > min(self.starts)] if self.starts else []
        return min(later) if later else None

    def stale(self, epoch: Any, mtime: float | None) -> bool:
        """A write of ``epoch`` that landed at ``mtime``: after a later epoch began, and its own epoch did not end by
        a clean release."""
        if epoch is None or mtime is None or int(epoch) in self.released:
            return False
        later = [t for e, t in self.starts.items() if e > int(epoch)]
        return bool(later) and mtime >= min(later)


def note_start(store: Store, cas, epoch: int, lease_name: str, ended: int | None = None) -> None:
    """Record when ``epoch`` began: its lease record's modification time, read right after it was written.
    ``ended``: an epoch known to write nothing more (its driver's process is gone), counted as released."""
    began = modified(store, lease_name)
    if began is None:
        return

    def add(old: dict | None) -> dict:
        old = old or {}
        released = sorted({*(old.get("released") or []), *([ended] if ended else [])})
        return {"starts": {**(old.get("starts") or {}), str(epoch): began}, "released": released}

    cas.update_json(HISTORY, add)


def note_released(cas, epoch: int) -> None:
    """``epoch`` ended by a release: nothing of it lands later, and its last writes are never judged stale."""

    def add(old: dict | None) -> dict:
        old = old or {}
        return {"starts": old.get("starts") or {}, "released": sorted({*(old.get("released") or []), epoch})}

    cas.update_json(HISTORY, add)


def clean(record: dict | None, mtime: float | None, epochs: Epochs, entries: str, key: str = "id",
          flags: Iterable[str] = ()) -> dict | None:
    """``record`` without what its last write added when that write was stale: the entries (``record[entries]``,
    each named by ``key``) it added, and the ``flags`` it set (back to None)."""
    if not record:
        return record
    last = record.get(LAST_WRITE) or {}
    if not last or not epochs.stale(last.get("epoch"), mtime):
        return record
    added = set(last.get("added") or [])
    out = dict(record)
    out[entries] = [e for e in record.get(entries) or [] if e.get(key) not in added]
    for flag in last.get("set") or []:
        if flag in flags:
            out[flag] = None
    out[LAST_WRITE] = {"epoch": last.get("epoch"), "added": [], "set": [], "stale": True}
    return out


def stamped_update(cas, store: Store, name: str, change: Callable[[dict | None], dict | None], epoch: int | None,
                   entries: str, key: str = "id", flags: Iterable[str] = ()) -> dict | None:
    """A conditional read-change-write of a record built up by several writes: the record as read is cleaned of a
    stale last write first, and the result names what this write added (its entries and flags) under its epoch."""
    flags = tuple(flags)

    def apply(old: dict | None) -> dict | None:
        epochs = Epochs.load(store) if old and old.get(LAST_WRITE) else Epochs()
        # the version's own time: read after the bytes, a newer version's time at worst, and then the write's
        # precondition (the version read) fails and the round runs again
        before = clean(old, modified(store, name), epochs, entries, key, flags) if old else old
        new = change(before)
        if new is None:
            return None
        had = {e.get(key) for e in (before or {}).get(entries) or []}
        added = [e.get(key) for e in new.get(entries) or [] if e.get(key) not in had]
        set_flags = [f for f in flags if new.get(f) is not None and (before or {}).get(f) is None]
        return {**new, LAST_WRITE: {"epoch": epoch, "added": added, "set": set_flags}}

    return cas.update_json(name, apply)


def read_clean(store: Store, entries: str, *parts: str, key: str = "id", flags: Iterable[str] = (),
               epochs: Epochs | None = None) -> dict | None:
    """A record built up by several writes, as its readers must see it (``clean``); None when absent."""
    try:
        record = store.read_json(*parts)
    except FileNotFoundError:
        return None
    if not isinstance(record, dict) or not record.get(LAST_WRITE):
        return record
    epochs = epochs if epochs is not None else Epochs.load(store)
    return clean(record, modified(store, *parts), epochs, entries, key, tuple(flags))
