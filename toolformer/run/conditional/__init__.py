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

**A refused write is read back before it counts as refused.** An S3 or GCS client resends a request by itself
after a timeout, a dropped connection or a 5xx; when the first try landed and only its answer was lost, the
resend is refused (412) by the very object it wrote. So every conditional write that is refused reads the object:
if it holds exactly the bytes this write sent (each writer's bytes carry a token of its own: a marker's attempt,
the lease's owner, epoch and renewal time, a failure entry's id), the write went through. Only someone else's
object is a refusal. This is the one place that rule lives: markers, the manifest, lease acquire, renew and
take-over, failure records, on every store.

**A conflict is not a refusal.** S3 answers 409 while another conditional write of the key is in flight; those are
retried a bounded number of times within the write's window, then ``WriteConflict`` is raised (after a read-back):
an error of the store, which a caller charges to the infrastructure, never "it exists already".

**Every request is bounded** (``CONNECT_TIMEOUT_S``, ``READ_TIMEOUT_S``, ``MAX_ATTEMPTS``): one conditional write,
its conflict retries included, starts no request that could end later than ``WRITE_WINDOW_S`` after the write
began. The lease's margin must exceed it (``config`` refuses less): a write begins after its fence check, and must
have landed before another driver may take the run over.
"""

from __future__ import annotations

import logging
from toolformer.run.conditional.base import (CONNECT_TIMEOUT_S, MAX_ATTEMPTS, READ_TIMEOUT_S, REQUEST_BOUND_S,
                                         UPDATE_TRIES, WRITE_WINDOW_S, Conditional, StoreFault, StoreUnavailable,
                                         UpdateConflict, VersionedConditional, WriteConflict, parsed)
from toolformer.run.conditional.gcs import GCSConditional
from toolformer.run.conditional.local import LOCK_WAIT_S, LocalConditional, LockTimeout, flock
from toolformer.run.conditional.s3 import S3Conditional, s3_client

from toolformer.run.store import Store

log = logging.getLogger(__name__)
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


__all__ = ["CONNECT_TIMEOUT_S", "GCSConditional", "LOCK_WAIT_S", "LocalConditional", "LockTimeout", "MAX_ATTEMPTS",
           "READ_TIMEOUT_S", "REQUEST_BOUND_S", "S3Conditional", "StoreFault", "StoreUnavailable", "UPDATE_TRIES",
           "UpdateConflict", "VersionedConditional", "WRITE_WINDOW_S", "WriteConflict", "Conditional", "conditional",
           "flock", "parsed", "s3_client"]
