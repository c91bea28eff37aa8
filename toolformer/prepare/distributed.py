"""Prepare as a Ray job: the corpus read, deduplicated, chunked and written to shards by Ray tasks; resumable.

It writes the same shards (ids, bytes, sha256) and the same manifest (skips per reason with their examples,
inputs, counts) as ``toolformer.prepare.local.prepare_local``, which reads the corpus in one loop: shards hold
``shards.docs_per_shard`` unique valid documents in global read order (spanning inputs), ``corpus.offset`` and
``corpus.limit`` count unique valid documents in that order, and a document id seen at an earlier place is a
duplicate (first occurrence wins). Work and markers live under ``<output_dir>/_prepare/``:

1. scan, one task per input (a file, a save_to_disk folder, or the embedded corpus): parse and validate every
   record; write the valid documents (``docs/<n>.parquet``), their ids hash-partitioned into buckets
   (``ids/<n>.parquet``, a row group per bucket), every skip with its place (``skips/<n>.parquet``), then the
   marker ``inputs/<n>.json`` (counts and skip summary). A stopped prepare resumes here: an input with a
   marker is not read again.
2. dedup, one task per bucket: that bucket's ids from every input, sorted by (id, input, record); all but
   the first of an id are duplicates (``dups/<n>/<bucket>.parquet``, marker ``buckets/<bucket>.json``).
3. cut, in the driver from per-input counts: which unique documents each shard takes (slices of inputs). Where
   ``corpus.limit`` ends the read inside an input, a task finds the record the one-loop read stops at, so that
   skips after it are not counted, exactly as that read never reaches them.
4. shards, one task per shard: read its slices, chunk and tokenize (``texts_of``), write
   ``shards/<shard>.parquet`` and the marker ``_prepare/shards/<shard>.json``.
5. the driver writes ``config.yaml``, then ``manifest.json`` (last), then removes ``_prepare``.

The driver holds per-input counts, the shard plan and the manifest; never documents, texts or ids.
"""


from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import time
from typing import Any, Callable, Iterable

from toolformer.config import RunConfig, config_hash, to_dict
from toolformer.corpus.readers import corpus_inputs
from toolformer.prepare.tasks import (  # noqa: F401 - re-exported: the tasks live there
    INPUTS_PER_BUCKET, MAX_BUCKETS, MAX_EXAMPLES, PLAN_VERSION, RECORD, WORK, _name, _shard_plan_key, _tokenizer,
    dedup_bucket, kth_unique, merge_skips, scan_input, skips_before, write_shard)
from toolformer.run.shards import Manifest, ShardInfo, shard_name
from toolformer.run.store import Store

STOP_AFTER_ENV = "TOOLFORMER_FAULT_PREPARE_STOP_AFTER"
TASK_TIMEOUT_S = 3600  # a prepare task reads one input or writes one shard: far less than this


class PrepareStopped(RuntimeError):
    """Raised by the fault hook: the driver stopped after some inputs, as an interrupted prepare does."""


# ---- the driver ------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _remote(fn: Callable, num_cpus: float = 1):
    """One remote function per task kind, made once per process: each new one is exported to the cluster again.
    Retries are bounded: a worker that dies (OOM, node lost) costs its task at most three more tries."""
    import ray

    return ray.remote(fn).options(max_retries=3, num_cpus=num_cpus)


def _stop_fault(done_here: int) -> bool:
    """Fault hook for the resume tests: stop the driver after this many inputs were scanned in this run."""
    from toolformer.run.faults import fire_once

    after = os.environ.get(STOP_AFTER_ENV)
    return bool(after) and done_here >= int(after) and fire_once(
        os.environ.get("TOOLFORMER_FAULT_ONCE_FILE"), f"prepare stopped after {done_here} inputs")


class RayPrepare:
    """One prepare run: the phases above, each resumed from its markers."""

    def __init__(self, cfg: RunConfig, store: Store, log: Callable[[str], None], lease=None):
        import ray

        self.cfg, self.store, self.log, self.lease = cfg, store, log, lease
        self.window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))  # tasks in flight, never all
        self.stats: dict[str, int] = {}

    def _each(self, submits: Iterable[Callable[[], Any]], done: Callable[[Any], None],
              stop: Callable[[], bool] = lambda: False) -> None:
        """Run tasks at most ``window`` at a time, handing each result to ``done`` as it completes. When ``stop``
        says so, submit no more, let those in flight finish (their markers land), and raise PrepareStopped."""

        inflight: list = []
        stopping = False
        for submit in submits:
            inflight.append(submit())
            while len(inflight) >= self.window or (inflight and stopping):
                inflight = self._next(inflight, done)
                stopping = stopping or stop()
            if stopping:
                raise PrepareStopped("stopped by " + STOP_AFTER_ENV)
        while inflight:
            inflight = self._next(inflight, done)

    def _next(self, inflight: list, done: Callable[[Any], None]) -> list:
        """Wait for one task, bounded: no task finishing for ``TASK_TIMEOUT_S`` stops the prepare with the
        cause (a hung reader, a cluster that cannot place the tasks); the lease is checked meanwhile."""
        import ray

        deadline = time.monotonic() + TASK_TIMEOUT_S
        while True:
            if self.lease is not None:
                self.lease.check()
            ready, rest = ray.wait(inflight, num_returns=1, timeout=10)
            if ready:
                done(ray.get(ready[0], timeout=TASK_TIMEOUT_S))
                return rest
            if time.monotonic() > deadline:
                raise PrepareStopped(f"no prepare task finished in {TASK_TIMEOUT_S} s ({len(inflight)} in flight): "
                                     f"the cluster cannot run them (see `ray status`) or a reader hangs")

    # -- plan
    def plan(self) -> None:
        c = self.cfg.corpus
        self.inputs = corpus_inputs(c.paths, c.format)
        bad = [p for p, _ in self.inputs if p.startswith("memory://")] + (
            [self.store.uri] if str(self.store.uri).startswith("memory://") else [])
        if bad:
            raise ValueError(f"{bad[0]}: a memory:// file lives in this process only, which Ray workers cannot "
                             "read; prepare it with the local runner (prepare.runner=local)")
        date = dt.date.today().isoformat() if c.embedded_date == "today" else c.embedded_date
        self.settings = {"max_doc_chars": c.max_doc_chars, "min_text_chars": c.min_text_chars,
                         "fields": to_dict(self.cfg)["corpus"]["fields"] or {}, "embedded_lang": c.embedded_lang,
                         "embedded_date": date,
                         "decontaminate": {"tasks": list(c.decontaminate), "n": c.decontaminate_n,
                                           "data": c.decontaminate_data, "paths": dict(c.decontaminate_paths or {})}}
        self.buckets = min(MAX_BUCKETS, max(1, -(-len(self.inputs) // INPUTS_PER_BUCKET)))
        plan = {"version": PLAN_VERSION, "inputs": [list(i) for i in self.inputs], "settings": self.settings,
                "buckets": self.buckets}
        if self.store.exists(WORK, "plan.json") and self.store.read_json(WORK, "plan.json") != plan:
            self.log(f"note: {WORK}/ holds the work of other inputs or settings; starting over")
            self.store.delete_dir(WORK)
        self.store.write_json(plan, WORK, "plan.json")

    # -- phase 1
    def scan(self) -> None:
        n_inputs = len(self.inputs)
        done = {int(x.removesuffix(".json")) for x in self.store.names(WORK, "inputs", suffix=".json")}
        todo = [n for n in range(n_inputs) if n not in done]
        self.n_records, self.n_valid = [0] * n_inputs, [0] * n_inputs
        for n in sorted(done):
            m = self.store.read_json(WORK, "inputs", f"{_name(n)}.json")
            self.n_records[n], self.n_valid[n] = m["n_records"], m["n_valid"]
        self.log(f"scan: {len(todo)} of {n_inputs} inputs to read ({len(done)} done before)")
        task = _remote(scan_input)
        scanned: list[int] = []

        def record(m: dict) -> None:
            self.n_records[m["input"]], self.n_valid[m["input"]] = m["n_records"], m["n_valid"]
            scanned.append(m["input"])

        submits = (functools.partial(task.remote, self.store.uri, n, *self.inputs[n], self.settings, self.buckets)
                   for n in todo)
        try:
            self._each(submits, record, stop=lambda: _stop_fault(len(scanned)))
        finally:
            self.stats["inputs_scanned"] = len(scanned)
        self.stats["inputs_reused"] = len(done)

    # -- phase 2
    def dedup(self) -> None:
        done = {int(x.removesuffix(".json")) for x in self.store.names(WORK, "buckets", suffix=".json")}
        markers = [self.store.read_json(WORK, "buckets", f"{b:05d}.json") for b in sorted(done)]
        task = _remote(dedup_bucket)
        todo = [b for b in range(self.buckets) if b not in done]
        self._each((functools.partial(task.remote, self.store.uri, b, len(self.inputs)) for b in todo), markers.append)
        self.dups = [0] * len(self.inputs)
        self.dup_first: list[list] = []
        for m in markers:
            for n, count in m["dups"].items():
                self.dups[int(n)] += count
            self.dup_first.extend(m["first"])
        self.dup_first.sort(key=lambda e: (e[0], e[1]))
        self.stats["buckets"] = self.buckets

    # -- phase 3
    def _next_record(self, n: int, k: int) -> tuple[int, int] | None:
        """The record the read meets after record k of input n (k = -1: the input's first)."""
        if k + 1 < self.n_records[n]:
            return n, k + 1
        return next(((j, 0) for j in range(n + 1, len(self.inputs)) if self.n_records[j]), None)

    def cut(self) -> None:
        """Which unique documents are emitted, and where the read stops (``stop``: the record it meets once
        ``offset + limit`` unique documents were read; None when it reads everything)."""
        import ray

        c = self.cfg.corpus
        self.unique = [v - d for v, d in zip(self.n_valid, self.dups)]
        total = sum(self.unique)
        want = None if c.limit is None else c.offset + c.limit
        self.end = total if want is None else min(want, total)
        self.stop: tuple[int, int] | None = None
        if want is None or want > total:
            return
        if want == 0:
            self.stop = self._next_record(0, -1)
            return
        before = 0
        for n, u in enumerate(self.unique):
            if before + u >= want:
                k_last = ray.get(_remote(kth_unique).remote(self.store.uri, n, want - before - 1), timeout=TASK_TIMEOUT_S)
                self.stop = self._next_record(n, k_last)
                return
            before += u

    def shard_plan(self) -> list[list[list[int]]]:
        """Slices (input, first, end) of unique documents per shard: ``docs_per_shard`` of them in read order."""
        size = max(1, self.cfg.shards.docs_per_shard)
        shards, current, filled, before = [], [], 0, 0
        for n, u in enumerate(self.unique):
            a, hi = max(self.cfg.corpus.offset - before, 0), min(self.end - before, u)
            before += u
            while a < hi:
                take = min(size - filled, hi - a)
                current.append([n, a, a + take])
                filled, a = filled + take, a + take
                if filled == size:
                    shards.append(current)
                    current, filled = [], 0
        if current:
            shards.append(current)
        return shards

    def skips(self) -> dict:
        """The manifest's skip summary: whole inputs before the stop, the stopping input up to it, duplicates."""
        import ray

        last = self.stop[0] if self.stop else len(self.inputs)
        parts = (self.store.read_json(WORK, "inputs", f"{_name(n)}.json")["skips"] for n in range(last))
        tail, dups = [], sum(self.dups[:last])
        if self.stop:
            partial = ray.get(_remote(skips_before).remote(self.store.uri, *self.stop), timeout=TASK_TIMEOUT_S)
            tail, dups = [partial["part"]], dups + partial["dups"]
        firsts = [e for e in self.dup_first if self.stop is None or (e[0], e[1]) < self.stop][:MAX_EXAMPLES]
        dup_part = [] if not dups else [{"counts": {"duplicate_doc_id": dups},
                                         "examples": {"duplicate_doc_id": [e[2] for e in firsts]},
                                         "first": {"duplicate_doc_id": [firsts[0][0], firsts[0][1], RECORD, 0]}}]
        return merge_skips([*parts, *tail, *dup_part])

    # -- phase 4
    def write_shards(self, plan: list[list[list[int]]]) -> list[ShardInfo]:
        model = [self.cfg.model.name_or_path, self.cfg.model.cache_dir]
        max_tokens = self.cfg.corpus.max_text_tokens
        infos: list[ShardInfo | None] = [None] * len(plan)
        done = set(self.store.names(WORK, "shards", suffix=".json"))
        todo = []
        for i, slices in enumerate(plan):
            sid = shard_name(i)
            if f"{sid}.json" in done and self.store.exists("shards", f"{sid}.parquet"):
                m = self.store.read_json(WORK, "shards", f"{sid}.json")
                if m["plan"] == _shard_plan_key(slices, model, max_tokens):
                    infos[i] = ShardInfo(**m["info"])
                    continue
            todo.append(i)
        self.log(f"shards: {len(todo)} of {len(plan)} to write")
        task = _remote(write_shard)

        def record(info: dict) -> None:
            infos[int(info["shard_id"].rsplit("-", 1)[1])] = ShardInfo(**info)
            self.log(f"  {info['shard_id']}: {info['n_docs']} documents, {info['n_texts']} texts")

        self._each((functools.partial(task.remote, self.store.uri, shard_name(i), plan[i], model, max_tokens)
                    for i in todo), record)
        self.stats["shards_written"], self.stats["shards_reused"] = len(todo), len(plan) - len(todo)
        return [i for i in infos if i is not None]

    def run(self, keep_work: bool = False) -> Manifest:
        from omegaconf import OmegaConf

        self.plan()
        self.scan()
        self.dedup()
        self.cut()
        shards = self.write_shards(self.shard_plan())
        skips = self.skips()
        manifest = Manifest(shards=shards, docs_per_shard=max(1, self.cfg.shards.docs_per_shard),
                            config_hash=config_hash(self.cfg),
                            inputs=list(dict.fromkeys(i for s in shards for i in s.inputs)), skips=skips)
        with self.lease.writing() if self.lease is not None else contextlib.nullcontext():
            self.store.write_bytes(OmegaConf.to_yaml(OmegaConf.create(to_dict(self.cfg))).encode(), "config.yaml")
            manifest.save(self.store)  # last: a run directory without a manifest is one prepare did not finish
        if not keep_work:
            self.store.delete_dir(WORK)
        self.log(f"{manifest.n_docs} documents ({manifest.n_texts} texts) in {len(shards)} shards; "
                 f"skipped {skips['total']} records → {self.store.uri}")
        return manifest


def prepare_ray(cfg: RunConfig, log: Callable[[str], None] = print, keep_work: bool = False,
                stats: dict | None = None, lease=None) -> Manifest:
    """Shard the configured corpus with Ray tasks (see the module docstring); resumes a stopped prepare. A run
    directory that already has a manifest is left as it is. ``keep_work`` keeps ``_prepare/`` (tests);
    ``stats`` receives how many inputs and shards this call did and reused. It runs under the run's lease
    (``lease``, or one of its own): one driver prepares a run, and one that lost the lease writes no manifest."""
    import ray

    from toolformer.run.lease import Lease, lease_wait

    store = Store(cfg.output_dir)
    if (manifest := Manifest.prepared(store, config_hash(cfg), log)) is not None:
        return manifest
    s = cfg.shards
    own = None if lease is not None else Lease(store, ttl_s=s.lease_ttl_s, heartbeat_s=s.lease_heartbeat_s, log=log,
                                               margin_s=s.lease_margin_s, wait_s=lease_wait(s))
    started = not ray.is_initialized()
    with own if own is not None else contextlib.nullcontext(lease) as held:
        if started:
            from toolformer.cluster import init_ray

            init_ray(cfg)
        job = RayPrepare(cfg, store, log, held)
        try:
            return job.run(keep_work)
        finally:
            if stats is not None:
                stats.update(job.stats)
            if started:
                ray.shutdown()
