"""The annotate job on Ray: every pending shard in one streaming execution, each committed as soon as it is whole.

One Ray Data execution per run (``distributed.py``): actor pools and their engines start once. The driver only
reads a few counts per scored batch (shard id, rows written); when a shard's count reaches ``n_texts x tools``
it submits a commit task (``commit.py``) that checks, orders and writes the shard, stats and marker, while the
run goes on. The driver holds the manifest and counters, never rows.

Failure semantics (README, "What happens when something fails"):
- a failure tied to one shard (its read, its rows in a stage, an actor that died computing it, its commit) is
  charged to that shard alone, at the end of the pass, with its cause; failed shards get another pass until
  they commit or are quarantined at ``shards.max_failures``;
- an error of the execution itself (an actor that cannot start, a lost cluster, every fresh shard of the first
  pass failing) stops the run with ``ExecutionError`` and charges nobody: a rerun after the fix resumes;
- metrics, telemetry and progress never raise into a pass (``Guard``);
- one driver per run (``toolformer/lease.py``): a second one refuses; a dead one's lease is taken over.
Killing the driver loses only uncommitted shards: a rerun of the same command skips every committed one.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections import defaultdict
from typing import Callable

import numpy as np

from toolformer.annotate.commit import STAGE, commit_shard
from toolformer.annotate.distributed import FATAL, annotation_dataset, shard_row_counts
from toolformer.annotate.telemetry import start_sink, summarize
from toolformer.config import RunConfig, config_hash
from toolformer.lease import Lease
from toolformer.report import sum_funnels
from toolformer.shards import Manifest, RunState, Store


COMMIT_WAIT_S = 30  # how often a driver waiting on commits looks for hung ones
COMMIT_TIMEOUT_S = 900  # a commit reads and writes one shard: far less than this


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


class ExecutionError(SystemExit):
    """The execution itself broke (not one shard): the run stops and no shard is charged."""


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
        self.guard = Guard(log)
        self.lease: Lease | None = None
        self.actor_deaths = 0

    def check_config(self) -> None:
        """Shards of one run are annotated with one config: a changed setting needs a new output_dir."""
        h = config_hash(self.cfg)
        if self.store.exists("annotate.json"):
            old = self.store.read_json("annotate.json")["config_hash"]
            untouched = not (self.state.done() or self.state.failed() or self.state.quarantined())
            if old != h and untouched:  # e.g. a run stopped by a bad model path, rerun with the right one
                self.log(f"note: no shard was annotated with config {old}; this run uses {h}")
                self.store.write_json({"config_hash": h}, "annotate.json")
            elif old != h:
                raise SystemExit(
                    f"{self.store.uri} was annotated with config {old}, this one is {h}: its shards would mix "
                    "two settings. Use a new output_dir, or the settings of that run (see its config.yaml)."
                )
        else:
            self.store.write_json({"config_hash": h}, "annotate.json")

    def charge(self, sid: str, error: BaseException | str, tb: str = "") -> None:
        """Record a failed attempt of this shard alone (quarantined at ``shards.max_failures``, or at once when fatal)."""
        if isinstance(error, str):
            message, _, rest = error.partition("\n")
            fatal = message.startswith(FATAL)
            quarantined = self.state.record_failure(sid, message.removeprefix(FATAL), fatal=fatal, tb=tb or rest)
        else:
            quarantined = self.state.record_failure(sid, error)
        self.guard("progress", self.progress.fail, sid)
        self.log(f"  {sid}: {'quarantined' if quarantined else 'failed, will retry'}: "
                 f"{(error if isinstance(error, str) else repr(error)).splitlines()[0][:300]}")

    # -- one pass: a single streaming execution over the given shards ------------------------------------------
    def run_pass(self, shard_ids: list[str], sink_name: str, first: bool) -> None:
        """Annotate these shards; commit each as it completes. Failures are charged at the end of the pass to
        the shard they belong to; an execution that breaks (or a first pass in which every fresh shard failed)
        stops the run with ``ExecutionError`` and charges nobody."""
        from toolformer.annotate.failures import explain, inflight_deaths, worker_exits

        shards = [self.manifest.shard(s) for s in shard_ids]
        expected = shard_row_counts(shards, len(self.tools))
        staging = f"_staging/{uuid.uuid4().hex[:12]}"
        ds = annotation_dataset(self.cfg, self.store.uri, shards, staging, sink_name)
        counts: dict[str, int] = defaultdict(int)
        failed: dict[str, tuple[str | BaseException, str]] = {}  # shard → (error, details)
        inflight: dict = {}  # commit ref → (shard id, submitted at)
        settled: set[str] = set()
        committed: list[str] = []
        fresh = {s for s in shard_ids if not self.state.failures(s)}
        broke: BaseException | None = None
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                if self.lease is not None:
                    self.lease.check()
                for sid, n, err in zip(*(batch.column(c).to_pylist() for c in ("shard_id", "rows", "error"))):
                    if sid in failed or sid in settled:
                        continue
                    if err:
                        failed[sid] = (err, "")
                        continue
                    counts[sid] += n
                    if counts[sid] >= expected[sid]:
                        settled.add(sid)
                        self.submit_commit(sid, staging, inflight)
                committed += self.collect(inflight, failed, wait=False)
                if first and not committed and self._looks_systemic(failed, fresh):
                    broke = ExecutionError(self._systemic_message(failed))
                    break
        except Exception as exc:  # noqa: BLE001 - the execution itself broke: no shard is to blame
            broke = exc
        committed += self.collect(inflight, failed, wait=True)
        if broke is not None:
            self.guard("cleanup", self.store.delete_dir, staging)
            if isinstance(broke, ExecutionError):
                raise broke
            from toolformer.lease import LeaseLost

            if isinstance(broke, LeaseLost):
                raise ExecutionError(str(broke)) from broke
            raise ExecutionError(
                f"the Ray execution stopped: {type(broke).__name__}: {str(broke)[:1500]}\n"
                f"This is not a shard's fault, so no shard was charged: fix the cause (model path, index, "
                f"cluster) and run the same command again; {len(committed)} shards committed in this pass "
                f"are kept.") from broke
        deaths = inflight_deaths(self.store, staging)
        self.actor_deaths += sum(len(v) for v in deaths.values())
        missing = [s for s in shard_ids if s not in failed and s not in settled]
        exits = worker_exits({d["pid"] for s in missing for d in deaths.get(s, [])})
        for sid in shard_ids:
            if sid in failed or sid in settled:
                continue
            if sid in deaths:
                failed[sid] = explain(sid, deaths[sid], exits)
            else:
                failed[sid] = (f"ShardIncomplete: the pass ended with {counts[sid]} of {expected[sid]} rows "
                               f"written (a task of it failed in Ray: see the log)", "")
        self.guard("cleanup", self.store.delete_dir, staging)
        if first and not committed and self._looks_systemic(failed, fresh):
            raise ExecutionError(self._systemic_message(failed))
        for sid, (err, details) in failed.items():
            self.charge(sid, err, details)

    def _looks_systemic(self, failed: dict, fresh: set[str]) -> bool:
        """Every fresh shard that settled so far failed, and at least 3 did: the execution, not the shards."""
        bad = [s for s, (e, _) in failed.items() if s in fresh and not str(e).startswith(FATAL)]
        return len(bad) >= 3

    def _systemic_message(self, failed: dict) -> str:
        first = str(next(iter(failed.values()))[0]).splitlines()[0][:800]
        return (f"the first {len(failed)} shards of this run all failed and none committed, which is a problem "
                f"of the execution, not of the shards (first error: {first}). No shard was charged: fix the "
                f"cause and run the same command again.")

    def submit_commit(self, sid: str, staging: str, inflight: dict) -> None:
        """Start the shard's commit task (a Ray task; the driver keeps only its reference)."""
        import ray

        commit = ray.remote(commit_shard).options(num_cpus=self.cfg.ray.io_num_cpus,
                                                  memory=self.cfg.ray.io_memory_gb * 1024**3, max_retries=1)
        inflight[commit.remote(self.store.uri, self.manifest.shard(sid), self.tools, staging,
                               self.cfg.shards.max_failures)] = (sid, time.monotonic())

    def collect(self, inflight: dict, failed: dict, wait: bool) -> list[str]:
        """Record finished commits (all of them when ``wait``, each within ``COMMIT_TIMEOUT_S``); a commit that
        failed or timed out goes to ``failed``. Returns the shards committed."""
        import ray

        done: list[str] = []
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=len(inflight) if wait else 1,
                                timeout=COMMIT_WAIT_S if wait else 0)
            if not ready:
                if not wait:
                    return done
                for ref, (sid, t0) in list(inflight.items()):
                    if time.monotonic() - t0 > COMMIT_TIMEOUT_S:  # bounded: a hung commit is the shard's failure
                        ray.cancel(ref, force=True)
                        inflight.pop(ref)
                        failed[sid] = (f"CommitTimeout: the commit task ran over {COMMIT_TIMEOUT_S} s", "")
                continue
            for ref in ready:
                sid, _ = inflight.pop(ref)
                try:
                    stats = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a failed commit: the shard is retried
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                    failed[sid] = (f"{type(cause).__name__}: {cause}",
                                   "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)))
                    continue
                done.append(sid)
                if self.metrics:
                    self.guard("metrics", self.metrics.record, stats)
                self.guard("progress", self.progress.add, stats)
            if not wait:
                return done
        return done

    # -- the run --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        from toolformer.lease import Lease

        s = self.cfg.shards
        with Lease(self.store, ttl_s=s.lease_ttl_s, heartbeat_s=s.lease_heartbeat_s, log=self.log) as lease:
            self.lease = lease
            try:
                return self._run()
            finally:
                self.lease = None

    def _run(self) -> dict:
        from toolformer.cluster import init_ray

        self.check_config()
        t_run = time.perf_counter()
        pending = self.state.pending(self.manifest)
        skipped = len(self.manifest.shards) - len(pending)
        self.log(f"{len(self.manifest.shards)} shards: {skipped} already done or quarantined, {len(pending)} pending")
        self.store.delete_dir("_staging")  # a killed driver's batches (we hold the lease): nothing refers to them
        self.progress = Progress(self)
        passes = 0
        if pending:
            init_ray(self.cfg)
            self.metrics = self.guard("metrics", _Metrics)
            self.guard("progress", self.progress.start_bar, len(pending))
            sink_name = f"toolformer-telemetry-{uuid.uuid4().hex[:8]}"
            sink = self.guard("telemetry", start_sink, sink_name)
            todo = pending
            while todo:
                passes += 1
                if passes > 1:
                    self.log(f"pass {passes}: retrying {len(todo)} failed shards")
                self.run_pass(todo, sink_name, first=passes == 1)
                self.guard("progress", self.progress.maybe_flush, force=True)
                # Each pass records an attempt for every shard it did not commit, so this ends by quarantine.
                todo = [s for s in self.state.pending(self.manifest) if s in set(todo)]
            if sink is not None:
                import ray

                self.telemetry = self.guard("telemetry", lambda: ray.get(sink.snapshot.remote(), timeout=60)) or {}
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
            "docs_skipped": self.manifest.skips,  # prepare's counted skips (contaminated among them)
            "actors": summarize(self.telemetry) if self.telemetry else None,
            "actor_deaths_in_batches": self.actor_deaths,  # each one a retry of its shard's batch
            "observability_failures": dict(self.guard.failures),
        }
        self.store.write_json(out, "stats.json")
        if out["shards"]["done"]:
            from toolformer.inspection import write_report

            write_report(self.store.uri, seed=self.cfg.seed)  # report.md: the kept calls in context
        return out


def run_ray_annotate(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    return RayAnnotator(cfg, log).run()
