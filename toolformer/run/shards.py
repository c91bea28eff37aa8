"""Shards of a run: the immutable manifest, per-stage completion markers, failures, quarantine, resume.

A run directory (local path or object-store URI such as ``s3://bucket/run``) holds::

    manifest.json                     shard id, file, input URIs, doc and text counts, sha256 (written once)
    config.yaml                       the resolved config prepare ran with, and its hash
    shards/<shard>.parquet            the documents, chunked into texts (SHARD schema)
    <output>/<shard>.<attempt>.parquet  texts/, annotations/ ...: each commit attempt writes names of its own
    _staging/<pass>/<shard>/*.parquet scored batches of shards not yet committed (deleted once committed)
    progress/*.json                   periodic progress summaries of the annotate job
    markers/<stage>/<shard>.json      the commit point, created last and once: the attempt, the paths of its
                                      outputs, the shard's counts and timings (``stats``), who committed it
    stats/<stage>/<shard>.json        per-shard counts of runs committed before the marker carried them
    failures/<stage>/<shard>.json     one entry per failed attempt (error and traceback)
    quarantine/<stage>/<shard>.json   shards given up on after too many failures; the run goes on

On a local disk every file is written to a temporary name and renamed; on an object store a put is atomic
per object and the marker, created after the outputs, is what makes a shard done. Pending work is
``manifest - done - quarantined``, so re-running the same command resumes.

Writes that decide a shard's state (a marker, a failure, a quarantine) can be fenced: ``RunState(..., fence=f)``
runs each under ``f()`` (``toolformer.run.lease.Fence.hold``), which refuses it once the run's lease is another
driver's; a failure or quarantine a frozen driver lands after a takeover anyway carries its epoch and is ignored
(``toolformer.run.epochs``). The marker is created by one create-if-absent (``conditional.put_if_absent``): a shard is committed
once, by one attempt. Its outputs are written under names of that attempt and the marker names them, so a writer
that lost the run (or a slower attempt) can never replace the files of a committed shard; whatever reads a
committed shard follows its marker (``RunState.output``). An attempt that does not commit deletes its files; one
that dies first leaves files no marker names, which nothing reads. A marker create that is refused is read back
first (``toolformer.run.conditional``): the answer to a put that landed can be lost, and its resend refused by the put itself;
only another attempt's marker deletes this attempt's files. A store that keeps the outcome unknown (409 conflicts,
``conditional.WriteConflict``) keeps them too: the commit raises, no marker names them, the shard is retried.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import traceback
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import pyarrow as pa

from toolformer.run.conditional import conditional
from toolformer.run.epochs import Epochs, modified, read_clean, seconds, stamped_update
from toolformer.run.store import Store


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ShardInfo:
    shard_id: str
    path: str  # relative to the run directory
    inputs: list[str]  # the input files its documents came from
    n_docs: int
    sha256: str
    n_texts: int = 0  # texts after chunking: a shard is complete with n_texts x tools annotation rows


@dataclass
class Manifest:
    shards: list[ShardInfo]
    docs_per_shard: int
    config_hash: str
    inputs: list[str] = field(default_factory=list)
    skips: dict = field(default_factory=dict)  # records prepare skipped, per reason, with places
    created: str = field(default_factory=_now)
    version: int = 2  # 2: shards hold texts (chunked at prepare time)

    def __post_init__(self):
        self._index = {s.shard_id: s for s in self.shards}

    @property
    def n_docs(self) -> int:
        return sum(s.n_docs for s in self.shards)

    @property
    def n_texts(self) -> int:
        return sum(s.n_texts for s in self.shards)

    def shard(self, shard_id: str) -> ShardInfo:
        return self._index[shard_id]

    @classmethod
    def load(cls, store: Store) -> "Manifest":
        if not store.exists("manifest.json"):
            raise FileNotFoundError(f"no manifest.json in {store.uri}: run jobs.prepare first")
        data = store.read_json("manifest.json")
        if data.get("version", 1) < 2:
            raise SystemExit(f"{store.uri} was prepared by an older version (shards of documents, not texts): "
                             "prepare it again into a new output_dir")
        data["shards"] = [ShardInfo(**s) for s in data["shards"]]
        return cls(**data)

    @classmethod
    def prepared(cls, store: Store, config_hash: str, log: Callable[[str], None]) -> "Manifest | None":
        """The run's manifest when it was prepared already (kept whatever config asks now: a run's shards never
        change under it), None when it was not."""
        if not store.exists("manifest.json"):
            return None
        manifest = cls.load(store)
        if manifest.config_hash != config_hash:
            log(f"note: {store.uri} was prepared with config {manifest.config_hash}; keeping its shards")
        return manifest

    def save(self, store: Store) -> None:
        """Written once, by one create-if-absent: a run's shards never change under it (prepare into a new
        directory instead)."""
        data = json.dumps(asdict(self), indent=2, default=str).encode()
        if conditional(store).put_if_absent("manifest.json", data):
            return
        old = store.read_json("manifest.json")
        if [s["sha256"] for s in old["shards"]] != [s.sha256 for s in self.shards]:
            raise FileExistsError(f"{store.uri} already has a different manifest; use a new output_dir")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _appended(old: dict | None, shard_id: str, entry: dict) -> dict:
    """A failure record with ``entry`` in it once (an update retried after its write landed finds it there)."""
    attempts = (old or {}).get("attempts", [])
    if not any(a.get("id") == entry["id"] for a in attempts):
        attempts = attempts + [entry]
    return {"shard_id": shard_id, "attempts": attempts}


@dataclass(frozen=True)
class Charge:
    """A failed attempt as ``RunState.record_failure`` recorded it: its id (None: nothing recorded, the shard was
    committed already) and whether the shard is now quarantined."""

    quarantined: bool
    attempt: str | None = None


class AlreadyCommitted(RuntimeError):
    """The shard's marker exists: another attempt (or driver) committed it; nothing is written twice."""


class RunState:
    """Which shards of a stage are done, failed or quarantined, read from the markers in the store."""

    def __init__(self, store: Store, stage: str, max_failures: int = 3,
                 fence: Callable[[], AbstractContextManager] | None = None):
        self.store, self.stage, self.max_failures = store, stage, max_failures
        self.fence = fence or nullcontext

    def done(self) -> set[str]:
        return {n.removesuffix(".json") for n in self.store.names("markers", self.stage, suffix=".json")}

    def quarantined(self) -> set[str]:
        """Quarantined shards; a quarantine a stale driver wrote after a takeover is not one (``run.epochs``)."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self.store.path("quarantine", self.stage), allow_not_found=True)
        infos = [i for i in self.store.fs.get_file_info(sel)
                 if i.type == pafs.FileType.File and i.base_name.endswith(".json") and not i.base_name.startswith(".")]
        epochs = Epochs.load(self.store) if infos else None
        horizon = epochs.horizon() if epochs else None
        out = set()
        for info in infos:
            name = info.base_name
            mtime = seconds(info.mtime)
            if horizon is not None and mtime is not None and mtime >= horizon:  # after a takeover: whose is it?
                try:
                    if epochs.stale(self.store.read_json("quarantine", self.stage, name).get("lease_epoch"), mtime):
                        continue
                except FileNotFoundError:  # retracted meanwhile
                    continue
            out.add(name.removesuffix(".json"))
        return out

    def failures(self, shard_id: str) -> list[dict]:
        record = read_clean(self.store, "attempts", "failures", self.stage, f"{shard_id}.json")
        return (record or {}).get("attempts", [])

    def failed(self) -> set[str]:
        return {n.removesuffix(".json") for n in self.store.names("failures", self.stage, suffix=".json")}

    def pending(self, manifest: Manifest) -> list[str]:
        skip = self.done() | self.quarantined()
        return [s.shard_id for s in manifest.shards if s.shard_id not in skip]

    def counts(self, manifest: Manifest) -> dict[str, int]:
        """Shards by state: done, quarantined, failed and waiting for a retry, pending (all not yet done)."""
        done, quarantined = self.done(), self.quarantined()
        total = len(manifest.shards)
        return {"total": total, "done": len(done), "pending": total - len(done) - len(quarantined),
                "failed_retryable": len(self.failed() - done - quarantined), "quarantined": len(quarantined)}

    def record_failure(self, shard_id: str, error: BaseException | str, fatal: bool = False, tb: str = "") -> Charge:
        """Count a failed attempt; quarantine the shard at ``max_failures`` (or at once when ``fatal``). A shard
        already committed is never charged (a late report of an earlier attempt): a shard ends committed or
        quarantined, not both."""
        if isinstance(error, BaseException):
            message = f"{type(error).__name__}: {error}"
            tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        else:
            message = error
        with self.fence() as epoch:
            if self.store.exists(*self._marker(shard_id)):
                return Charge(quarantined=False)
            attempt = uuid.uuid4().hex[:12]
            entry = {"at": _now(), "id": attempt, "error": message[:2000], "traceback": tb[-20000:],
                     "lease_epoch": epoch}
            # Conditional on the version read (object stores): a charge written meanwhile is kept, not lost; a
            # stale driver's charge landed after a takeover is dropped (run.epochs)
            cas = conditional(self.store)
            record = stamped_update(cas, self.store, self._failures(shard_id),
                                    lambda old: _appended(old, shard_id, entry), epoch, "attempts")
            attempts = record["attempts"]
            if fatal or len(attempts) >= self.max_failures:
                self._quarantine(cas, shard_id, {"shard_id": shard_id, "attempts": len(attempts), "error": message[:2000],
                                                 "traceback": tb[-20000:], "at": _now(), "lease_epoch": epoch})
                return Charge(quarantined=True, attempt=attempt)
            return Charge(quarantined=False, attempt=attempt)

    def _quarantine(self, cas, shard_id: str, record: dict) -> None:
        """Created once, stamped with the writer's epoch (a stale one is not read as a quarantine, and is replaced)."""
        name, data = f"quarantine/{self.stage}/{shard_id}.json", json.dumps(record, indent=2).encode()
        if cas.put_if_absent(name, data):
            return
        parts = ("quarantine", self.stage, f"{shard_id}.json")
        try:
            held = self.store.read_json(*parts)
        except FileNotFoundError:
            held = None
        if held is not None and Epochs.load(self.store).stale(held.get("lease_epoch"), modified(self.store, *parts)):
            self.store.delete_file(*parts)
            cas.put_if_absent(name, data)

    def retract(self, shard_id: str, attempt: str) -> None:
        """Take back one recorded attempt (and the quarantine it caused): it was not the shard's fault."""

        def without(old: dict | None) -> dict | None:
            kept = [a for a in (old or {}).get("attempts", []) if a.get("id") != attempt]
            return {"shard_id": shard_id, "attempts": kept} if kept else None  # None: the record is deleted

        with self.fence() as epoch:
            record = stamped_update(conditional(self.store), self.store, self._failures(shard_id), without, epoch,
                                    "attempts")
            if len((record or {}).get("attempts", [])) < self.max_failures:
                self.store.delete_file("quarantine", self.stage, f"{shard_id}.json")

    def _marker(self, shard_id: str) -> tuple[str, ...]:
        return ("markers", self.stage, f"{shard_id}.json")

    def _failures(self, shard_id: str) -> str:
        return f"failures/{self.stage}/{shard_id}.json"

    def commit(self, shard_id: str, outputs: dict[str, pa.Table], stats: dict, stamp: dict | None = None) -> dict:
        """Write every output of a shard under names of this attempt, then create its marker (naming them, with
        ``stats`` and ``stamp``: who committed it): the shard is done once the marker is. ``AlreadyCommitted`` when
        its marker exists (before anything is written, or at the marker: then this attempt's files are deleted)."""
        with self.fence():  # a driver that lost the run writes no output at all
            if self.store.exists(*self._marker(shard_id)):
                raise AlreadyCommitted(f"{shard_id} is committed already")
        attempt = uuid.uuid4().hex[:12]
        files: dict[str, dict] = {}
        step = "outputs"
        try:
            for name, table in outputs.items():
                files[name] = {"path": f"{name}/{shard_id}.{attempt}.parquet", "rows": table.num_rows}
                self.store.write_table(table, files[name]["path"])
            marker = {"shard_id": shard_id, "stage": self.stage, "attempt": attempt, "outputs": files,
                      "stats": stats, "committed": _now(), **(stamp or {})}
            data = json.dumps(marker, indent=2, default=str).encode()
            with self.fence():  # refused once the lease is another's or past its deadline: nothing is committed
                step = "marker"  # from here the outcome may be unknown (a put that failed late): files are kept
                created = conditional(self.store).put_if_absent("/".join(self._marker(shard_id)), data)
                step = "done"
        except BaseException:
            if step == "outputs":
                self._discard(files)
            raise  # at the marker (a store fault, a refused fence): its outcome is unknown or nil; files kept
        if not created:  # read back (toolformer.run.conditional): the marker there is another attempt's, not this one's
            self._discard(files)
            raise AlreadyCommitted(f"{shard_id} was committed by another attempt meanwhile")
        return marker

    def _discard(self, files: dict[str, dict]) -> None:
        """Delete an attempt's own files (no marker names them); best effort: an orphan is never read."""
        for f in files.values():
            try:
                self.store.delete_file(f["path"])
            except OSError:
                pass

    def marker(self, shard_id: str) -> dict | None:
        """The shard's marker; None while it is not committed."""
        try:
            return self.store.read_json(*self._marker(shard_id))
        except FileNotFoundError:
            return None

    def output(self, shard_id: str, name: str, marker: dict | None = None) -> str:
        """The path (relative to the run) of a committed shard's output ``name``, as its marker names it. Markers
        without it (written by hand) mean the fixed name of runs committed before attempt-unique names."""
        m = self.marker(shard_id) if marker is None else marker
        return ((m or {}).get("outputs") or {}).get(name, {}).get("path") or f"{name}/{shard_id}.parquet"

    def stats(self, shard_ids: Iterable[str] | None = None) -> list[dict]:
        """The counts of committed shards: carried by their markers (older runs: ``stats/<stage>/<shard>.json``)."""
        out = []
        for s in (sorted(self.done()) if shard_ids is None else shard_ids):
            m = self.marker(s)
            if m is not None and "stats" in m:
                out.append(m["stats"])
            elif m is not None and self.store.exists("stats", self.stage, f"{s}.json"):
                out.append(self.store.read_json("stats", self.stage, f"{s}.json"))
        return out

    def committed_outputs(self, manifest: Manifest, name: str) -> list[str]:
        """Paths of a stage output for every done shard, in manifest order, as the markers name them (what merge
        reads)."""
        done = self.done()
        return [self.store.path(self.output(s.shard_id, name)) for s in manifest.shards if s.shard_id in done]
