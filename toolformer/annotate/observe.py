"""What the annotate driver reports while it works: Ray metrics, progress summaries, and the guard that keeps
reporting from ever breaking the work (metrics, telemetry or progress that fail are logged once and counted)."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from typing import Any, Callable

import numpy as np

from toolformer.report import sum_funnels


class Metrics:
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
        # Ray's Counter.inc refuses 0; a shard with no documents, texts or candidates is ordinary.
        for counter, value, tags in [(self.docs, stats.get("docs"), None), (self.texts, stats.get("texts"), None),
                                     (self.tokens, stats.get("text_tokens"), None)] + [
                (c, f.get(k), {"tool": tool}) for tool, f in (stats.get("funnel") or {}).items()
                for c, k in ((self.candidates, "candidates"), (self.kept, "kept_at_tool_tau_f"))]:
            if value and value > 0:
                counter.inc(value, tags=tags) if tags else counter.inc(value)

    def states(self, counts: dict[str, int]) -> None:
        for state, n in counts.items():
            self.shards.set(n, tags={"state": state})


class Guard:
    """Runs observability calls (metrics, telemetry, progress) so that they never break the work: the first
    failure of each kind is logged with its traceback, every one is counted (``observability_failures``)."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.failures: dict[str, int] = defaultdict(int)

    def __call__(self, kind: str, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reporting on the work must never stop the work
            if not self.failures[kind]:
                logging.getLogger(__name__).warning("%s failed (later failures are counted, not logged)", kind,
                                                    exc_info=True)
                self.log(f"note: {kind} failed ({type(exc).__name__}: {str(exc)[:200]}); the run goes on")
            self.failures[kind] += 1
            return None


class Progress:
    """Periodic summaries of committed shards: every N shards or T seconds, to ``progress/`` and the log."""

    def __init__(self, annotator: Any):  # the RayAnnotator: its config, state, store, log
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
        sink = getattr(self.a, "sink_name", None)
        if sink:  # per pool: engine, tool and idle time, rows/s (does the GPU wait on the tools?)
            from toolformer.annotate.telemetry import pools_now

            summary["pools"] = self.a.guard("telemetry", pools_now, sink)
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
