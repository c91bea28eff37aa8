"""The annotate job on Ray: every pending shard in one streaming execution, each committed as soon as it is whole.

One Ray Data execution per run (``distributed.py``): actor pools and their engines start once. The driver only
reads a few counts per scored batch (shard id, rows written); when a shard's count reaches ``n_texts x tools``
it submits a commit task (``commit.py``) that checks, orders and writes the shard, stats and marker, while the
run goes on. The driver holds the manifest and counters, never rows. A shard that failed (an error row, a
failed commit, an execution that broke) has the attempt recorded with its traceback; after the pass, the
failed shards get another pass until they commit or are quarantined at ``shards.max_failures``. Killing the
driver loses only uncommitted shards: a rerun of the same command skips every committed one.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from typing import Callable

import numpy as np

from toolformer.annotate.commit import STAGE, commit_shard
from toolformer.annotate.distributed import FATAL, annotation_dataset, shard_row_counts
from toolformer.annotate.telemetry import start_sink, summarize
from toolformer.config import RunConfig, config_hash
from toolformer.report import sum_funnels
from toolformer.shards import Manifest, RunState, Store


class _Metrics:
    """The run's counters as Ray metrics (Prometheus, Ray dashboard)."""

    def __init__(self):
        from ray.util.metrics import Counter, Gauge

        self.docs = Counter("toolformer_docs_annotated", "documents in committed shards")
        self.texts = Counter("toolformer_texts_annotated", "texts in committed shards")
        self.tokens = Counter("toolformer_text_tokens", "tokens of the texts annotated")
        self.candidates = Counter("toolformer_candidates", "distinct calls sampled", tag_keys=("tool",))
        self.kept = Counter("toolformer_calls_kept", "calls kept at the tool's tau_f", tag_keys=("tool",))
        self.shards = Gauge("toolformer_shards", "shards by state", tag_keys=("state",))

    def record(self, stats: dict) -> None:
        self.docs.inc(stats["docs"])
        self.texts.inc(stats["texts"])
        self.tokens.inc(max(stats["text_tokens"], 0) or 0)
        for tool, f in stats["funnel"].items():
            if f.get("candidates"):
                self.candidates.inc(f["candidates"], tags={"tool": tool})
            if f.get("kept_at_tool_tau_f"):
                self.kept.inc(f["kept_at_tool_tau_f"], tags={"tool": tool})

    def states(self, counts: dict[str, int]) -> None:
        for state, n in counts.items():
            self.shards.set(n, tags={"state": state})


class Progress:
    """Periodic summaries of committed shards: every N shards or T seconds, to ``progress/`` and the log."""

    def __init__(self, annotator: "RayAnnotator"):
        self.a = annotator
        self.index = 0
        self.bar = None
        self.t_start = time.perf_counter()
        self.totals = {"docs": 0, "texts": 0, "text_tokens": 0}
        self._reset()

    def _reset(self) -> None:
        self.t0 = time.perf_counter()
        self.stats: list[dict] = []
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.failed: list[str] = []

    def add(self, stats: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
        self.stats.append({k: v for k, v in stats.items() if k != "latency_ms"})
        for tool, ms in stats.get("latency_ms", {}).items():
            self.latency[tool] += ms
        self.maybe_flush()

    def fail(self, sid: str) -> None:
        self.failed.append(sid)

    def start_bar(self, shards: int) -> None:
        from toolformer.console import Progress

        self.bar = Progress(shards, "shards committed", "shards", every_s=60)

    def maybe_flush(self, force: bool = False) -> None:
        cfg = self.a.cfg.shards
        due = len(self.stats) >= max(1, cfg.progress_every_shards) or (
            self.stats and time.perf_counter() - self.t0 >= cfg.progress_every_s)
        if due or (force and (self.stats or self.failed)):
            self.flush()

    def flush(self) -> None:
        seconds = time.perf_counter() - self.t0
        f = sum_funnels(s["funnel"] for s in self.stats)
        docs, texts, tokens = (sum(s[k] for s in self.stats) for k in ("docs", "texts", "text_tokens"))
        tools = {}
        for tool, v in f.items():
            lat = self.latency.get(tool, [])
            cands, kept = v.get("candidates", 0), v.get("kept_at_tool_tau_f", 0)
            tools[tool] = {
                "candidates": cands, "kept": kept, "keep_rate": round(kept / cands, 4) if cands else None,
                "tool_call_ms_p50": round(float(np.percentile(lat, 50)), 3) if lat else None,
                "tool_call_ms_p95": round(float(np.percentile(lat, 95)), 3) if lat else None,
            }
        for k, v in (("docs", docs), ("texts", texts), ("text_tokens", tokens)):
            self.totals[k] += v
        elapsed = time.perf_counter() - self.t_start
        # Rates over the whole run so far: commits arrive in bursts, so per-interval rates would swing wildly.
        rate = lambda n: round(n / elapsed, 3) if elapsed else None  # noqa: E731
        summary = {
            "progress_id": f"{time.strftime('%Y%m%dT%H%M%S')}-{self.index:05d}",
            "committed": [s["shard_id"] for s in self.stats], "failed": self.failed, "seconds": round(seconds, 2),
            "docs": docs, "texts": texts, "text_tokens": tokens, "run_seconds": round(elapsed, 2),
            "run_docs": self.totals["docs"], "run_texts": self.totals["texts"],
            "docs_per_s": rate(self.totals["docs"]), "texts_per_s": rate(self.totals["texts"]),
            "tokens_per_s": rate(self.totals["text_tokens"]), "tools": tools,
            "shards": self.a.state.counts(self.a.manifest),
        }
        self.a.store.write_json(summary, "progress", f"{summary['progress_id']}.json")
        if self.a.metrics:
            self.a.metrics.states(summary["shards"])
        from toolformer.console import is_quiet

        if is_quiet():  # the bar shows progress on the terminal; the summaries go to progress/ and the log
            logging.getLogger("toolformer.progress").info(json.dumps(summary))
        else:
            self.a.log(json.dumps(summary))
        self.index += 1
        self._reset()


class RayAnnotator:
    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print):
        self.cfg, self.log = cfg, log
        self.store = Store(cfg.output_dir)
        self.manifest = Manifest.load(self.store)
        self.state = RunState(self.store, STAGE, cfg.shards.max_failures)
        self.tools = list(cfg.annotate.tools)
        self.metrics: _Metrics | None = None
        self.telemetry: dict[str, dict] = {}

    def check_config(self) -> None:
        """Shards of one run are annotated with one config: a changed setting needs a new output_dir."""
        h = config_hash(self.cfg)
        if self.store.exists("annotate.json"):
            old = self.store.read_json("annotate.json")["config_hash"]
            if old != h:
                raise SystemExit(
                    f"{self.store.uri} was annotated with config {old}, this one is {h}: its shards would mix "
                    "two settings. Use a new output_dir, or the settings of that run (see its config.yaml)."
                )
        else:
            self.store.write_json({"config_hash": h}, "annotate.json")

    def fail(self, sid: str, error: BaseException | str) -> None:
        if isinstance(error, str):
            message, _, tb = error.partition("\n")
            fatal = message.startswith(FATAL)
            quarantined = self.state.record_failure(sid, message.removeprefix(FATAL), fatal=fatal, tb=tb)
        else:
            quarantined = self.state.record_failure(sid, error)
        self.progress.fail(sid)
        self.log(f"  {sid}: {'quarantined' if quarantined else 'failed, will retry'}: "
                 f"{(error if isinstance(error, str) else repr(error)).splitlines()[0][:300]}")

    # -- one pass: a single streaming execution over the given shards ------------------------------------------
    def run_pass(self, shard_ids: list[str], sink_name: str) -> None:
        shards = [self.manifest.shard(s) for s in shard_ids]
        expected = shard_row_counts(shards, len(self.tools))
        staging = f"_staging/{uuid.uuid4().hex[:12]}"
        ds = annotation_dataset(self.cfg, self.store.uri, shards, staging, sink_name)
        counts: dict[str, int] = defaultdict(int)
        failed: dict[str, str] = {}
        inflight: dict = {}  # commit ref → shard id
        settled: set[str] = set()
        broke: BaseException | None = None
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                for sid, n, err in zip(*(batch.column(c).to_pylist() for c in ("shard_id", "rows", "error"))):
                    if sid in failed or sid in settled:
                        continue
                    if err:
                        failed[sid] = err
                        self.fail(sid, err)
                        continue
                    counts[sid] += n
                    if counts[sid] >= expected[sid]:
                        settled.add(sid)
                        self.submit_commit(sid, staging, inflight)
                self.collect(inflight, wait=False)
        except Exception as exc:  # noqa: BLE001 - the execution as a whole broke: every unfinished shard failed
            broke = exc
            self.log(f"the pass over {len(shard_ids)} shards broke: {type(exc).__name__}: {str(exc)[:300]}")
        self.collect(inflight, wait=True)
        for sid in shard_ids:
            if sid in failed or sid in settled:
                continue
            self.fail(sid, broke if broke is not None else
                      f"ShardIncomplete: the pass ended with {counts[sid]} of {expected[sid]} rows written")
        self.store.delete_dir(staging)

    def submit_commit(self, sid: str, staging: str, inflight: dict) -> None:
        """Start the shard's commit task (a Ray task; the driver keeps only its reference)."""
        import ray

        commit = ray.remote(commit_shard).options(num_cpus=self.cfg.ray.io_num_cpus,
                                                  memory=self.cfg.ray.io_memory_gb * 1024**3, max_retries=1)
        inflight[commit.remote(self.store.uri, self.manifest.shard(sid), self.tools, staging,
                               self.cfg.shards.max_failures)] = sid

    def collect(self, inflight: dict, wait: bool) -> None:
        """Record finished commits (all of them when ``wait``)."""
        import ray

        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=len(inflight) if wait else 1, timeout=None if wait else 0)
            if not ready:
                return
            for ref in ready:
                sid = inflight.pop(ref)
                try:
                    stats = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a failed commit: the shard is retried
                    self.fail(sid, exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc)
                    continue
                if self.metrics:
                    self.metrics.record(stats)
                self.progress.add(stats)
            if not wait:
                return

    # -- the run --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        from toolformer.cluster import init_ray

        self.check_config()
        t_run = time.perf_counter()
        pending = self.state.pending(self.manifest)
        skipped = len(self.manifest.shards) - len(pending)
        self.log(f"{len(self.manifest.shards)} shards: {skipped} already done or quarantined, {len(pending)} pending")
        self.store.delete_dir("_staging")  # a killed driver's batches: never committed, nothing refers to them
        self.progress = Progress(self)
        passes = 0
        if pending:
            init_ray(self.cfg)
            self.metrics = _Metrics()
            self.progress.start_bar(len(pending))
            sink_name = f"toolformer-telemetry-{uuid.uuid4().hex[:8]}"
            sink = start_sink(sink_name)
            todo = pending
            while todo:
                passes += 1
                if passes > 1:
                    self.log(f"pass {passes}: retrying {len(todo)} failed shards")
                self.run_pass(todo, sink_name)
                self.progress.maybe_flush(force=True)
                # Each pass records an attempt for every shard it did not commit, so this ends by quarantine.
                todo = [s for s in self.state.pending(self.manifest) if s in set(todo)]
            import ray

            self.telemetry = ray.get(sink.snapshot.remote())
        return self.summary(t_run, skipped, passes)

    def summary(self, t_run: float, skipped: int, passes: int) -> dict:
        stats = self.state.stats()
        out = {
            "output_dir": self.store.uri, "config_hash": config_hash(self.cfg), "model": self.cfg.model.name_or_path,
            "dtype": self.cfg.model.dtype, "call_syntax": self.cfg.annotate.call_syntax,
            "shards": self.state.counts(self.manifest),
            "skipped_at_start": skipped, "passes": passes, "seconds": round(time.perf_counter() - t_run, 2),
            "docs": sum(s["docs"] for s in stats), "texts": sum(s["texts"] for s in stats),
            "funnel": sum_funnels(s["funnel"] for s in stats),
            "actors": summarize(self.telemetry) if self.telemetry else None,
        }
        self.store.write_json(out, "stats.json")
        if out["shards"]["done"]:
            from toolformer.inspection import write_report

            write_report(self.store.uri, seed=self.cfg.seed)  # report.md: the kept calls in context
        return out


def run_ray_annotate(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    return RayAnnotator(cfg, log).run()
