"""The annotate job on Ray: pending shards in waves, committed shard by shard, failures isolated.

A wave is one Ray Data execution over a few shards (select → sample → execute → score actor pools), written
to a staging area partitioned by shard. Each shard is then checked (every document accounted for, every text
with a row per tool), sorted into a deterministic order and committed: outputs, stats, then the marker. A
wave that fails is retried shard by shard to find the culprit; a shard that keeps failing is quarantined
with its traceback and the run goes on. Killing the driver loses at most the wave in flight.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import defaultdict
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from toolformer.config import RunConfig, config_hash
from toolformer.report import funnel, sum_funnels
from toolformer.schemas import ANNOTATIONS, TEXTS, to_table
from toolformer.shards import Manifest, RunState, Store, sha256_bytes

STAGE = "annotate"


class ShardIncomplete(RuntimeError):
    """A shard's staged output does not account for all of its documents."""


def init_ray(cfg: RunConfig) -> None:
    """Connect to the cluster (a submitted job, ``ray.address``) or start a local Ray on loopback."""
    import ray

    if ray.is_initialized():
        return
    from toolformer.annotate.distributed import repo_root

    env = {k: v for k, v in os.environ.items()
           if k.startswith(("TOOLFORMER_", "VLLM_", "HF_", "TRANSFORMERS_")) or k == "TOKENIZERS_PARALLELISM"}
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:
        # A submitted job: its runtime env (working_dir, env_vars) already reaches every worker, and Ray refuses
        # a driver env that sets the same keys again; add only what it lacks.
        try:
            given = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        except (ValueError, AttributeError):
            given = {}
        env = {k: v for k, v in env.items() if k not in given}
    else:
        # A driver started by hand: workers import the package from this checkout.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo_root()), os.environ.get("PYTHONPATH")) if p)
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=True)
    else:
        # A private Ray for this run; every listener stays on loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": env})


class _Metrics:
    """The wave counters as Ray metrics (Prometheus, Ray dashboard)."""

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


class RayAnnotator:
    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print):
        self.cfg, self.log = cfg, log
        self.store = Store(cfg.output_dir)
        self.manifest = Manifest.load(self.store)
        self.state = RunState(self.store, STAGE, cfg.shards.max_failures)
        self.tools = list(cfg.annotate.tools)
        self.metrics: _Metrics | None = None
        self.latencies: dict[str, list[float]] = defaultdict(list)

    # -- checks before any work -------------------------------------------------------------------------------
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

    def verified(self, shard_ids: list[str]) -> list[str]:
        """Shards whose bytes match the manifest; a mismatch is not transient, so it is quarantined at once."""
        if not self.cfg.shards.verify_checksums:
            return shard_ids
        ok = []
        for sid in shard_ids:
            info = self.manifest.shard(sid)
            try:
                digest = sha256_bytes(self.store.read_bytes(info.path))
            except OSError as exc:
                digest = f"unreadable ({exc})"
            if digest == info.sha256:
                ok.append(sid)
            else:
                self.state.record_failure(sid, f"checksum mismatch: {info.path} is {digest}, manifest says {info.sha256}", fatal=True)
                self.log(f"  {sid}: quarantined (checksum mismatch)")
        return ok

    # -- one wave ---------------------------------------------------------------------------------------------
    def run_wave(self, shard_ids: list[str]) -> tuple[list[str], list[str]]:
        """Annotate the shards in one Ray Data execution, then commit each; returns (committed, failed)."""
        from toolformer.annotate.distributed import annotation_dataset

        staging = f"_staging/{uuid.uuid4().hex}"
        paths = [self.store.path(self.manifest.shard(s).path) for s in shard_ids]
        try:
            ds = annotation_dataset(self.cfg, paths, self.store.fs)
            ds.write_parquet(self.store.path(staging), filesystem=self.store.fs, partition_cols=["shard_id"],
                             ray_remote_args={"num_cpus": self.cfg.ray.io_num_cpus})
            committed, failed = [], []
            for sid in shard_ids:
                try:
                    self.commit(sid, staging)
                    committed.append(sid)
                except Exception as exc:  # noqa: BLE001 - one bad shard must not stop the others
                    self.state.record_failure(sid, exc)
                    failed.append(sid)
                    self.log(f"  {sid}: commit failed: {exc}")
            return committed, failed
        finally:
            self.store.delete_dir(staging)

    def commit(self, sid: str, staging: str) -> dict:
        info = self.manifest.shard(sid)
        doc_ids = pq.read_table(self.store.path(info.path), filesystem=self.store.fs, columns=["doc_id"]).column("doc_id").to_pylist()
        part = self.store.path(staging, f"shard_id={sid}")
        rows = pq.read_table(part, filesystem=self.store.fs).to_pylist() if self.store.exists(staging, f"shard_id={sid}") else []
        seen = {r["doc_id"] for r in rows}
        missing = [d for d in doc_ids if d not in seen]
        if missing or len(doc_ids) != info.n_docs:
            raise ShardIncomplete(f"{sid}: {len(missing)} of {info.n_docs} documents have no annotation rows (first: {missing[:3]})")
        tool_order = {t: i for i, t in enumerate(self.tools)}
        per_text = defaultdict(list)
        for r in rows:
            per_text[r["text_id"]].append(r["tool"])
        bad = [t for t, tools in per_text.items() if sorted(tools) != sorted(self.tools)]
        if bad:
            raise ShardIncomplete(f"{sid}: texts without exactly one row per tool: {bad[:3]}")
        doc_order = {d: i for i, d in enumerate(doc_ids)}
        rows.sort(key=lambda r: (doc_order[r["doc_id"]], r["chunk"], tool_order.get(r["tool"], 99)))
        texts, seen_t = [], set()
        for r in rows:
            if r["text_id"] not in seen_t:
                seen_t.add(r["text_id"])
                texts.append(r)
        stats = self.shard_stats(sid, doc_ids, texts, rows)
        self.state.commit(sid, {"texts": to_table(texts, TEXTS), "annotations": to_table(rows, ANNOTATIONS)}, stats)
        for r in rows:
            if r["n_candidates"] and r["tool_ms"]:
                self.latencies[r["tool"]].append(r["tool_ms"] / r["n_candidates"])
        if self.metrics:
            self.metrics.record(stats)
        return stats

    def shard_stats(self, sid: str, doc_ids: list[str], texts: list[dict], rows: list[dict]) -> dict:
        tokens = defaultdict(int)
        for r in rows:
            tokens[r["text_id"]] = max(tokens[r["text_id"]], r["n_tokens"] or 0)
        return {"shard_id": sid, "docs": len(doc_ids), "texts": len(texts), "rows": len(rows),
                "text_tokens": sum(tokens.values()), "funnel": funnel(rows)}

    # -- the run ----------------------------------------------------------------------------------------------
    def state_counts(self) -> dict[str, int]:
        done, quarantined = self.state.done(), self.state.quarantined()
        failed = self.state.failed() - done - quarantined
        total = len(self.manifest.shards)
        return {"done": len(done), "quarantined": len(quarantined), "failed_retryable": len(failed),
                "pending": total - len(done) - len(quarantined)}

    def run(self) -> dict:
        self.check_config()
        t_run = time.perf_counter()
        pending = self.state.pending(self.manifest)
        skipped = len(self.manifest.shards) - len(pending)
        self.log(f"{len(self.manifest.shards)} shards: {skipped} already done or quarantined, {len(pending)} pending")
        self.store.delete_dir("_staging")  # a killed driver's waves: never committed, nothing refers to them
        if not pending:
            return self.summary(t_run, skipped, [])
        init_ray(self.cfg)
        self.metrics = _Metrics()
        waves = []
        size = max(1, self.cfg.shards.wave_shards)
        for k in range(0, len(pending), size):
            wave = self.verified(pending[k : k + size])
            if not wave:
                continue
            t0 = time.perf_counter()
            self.latencies.clear()
            try:
                committed, failed = self.run_wave(wave)
            except Exception as exc:  # noqa: BLE001 - the wave as a whole failed: find which shard
                self.log(f"wave of {len(wave)} shards failed ({type(exc).__name__}); retrying its shards one by one")
                committed, failed = [], []
                if len(wave) == 1:
                    self.state.record_failure(wave[0], exc)
                    failed.append(wave[0])
                else:
                    for sid in wave:
                        try:
                            c, f = self.run_wave([sid])
                        except Exception as exc1:  # noqa: BLE001
                            self.state.record_failure(sid, exc1)
                            c, f = [], [sid]
                        committed += c
                        failed += f
            self.end_wave(waves, committed, failed, t0)
        # Shards that failed but may succeed on another try (an actor lost twice, a flaky store) are retried
        # one at a time until they commit or reach max_failures and are quarantined.
        retry = [s for s in self.state.pending(self.manifest) if s in set(pending)]
        while retry:
            sid = retry.pop(0)
            t0 = time.perf_counter()
            self.latencies.clear()
            try:
                committed, failed = self.run_wave([sid])
            except Exception as exc:  # noqa: BLE001
                self.state.record_failure(sid, exc)
                committed, failed = [], [sid]
            self.end_wave(waves, committed, failed, t0)
            if failed and sid not in self.state.quarantined():
                retry.append(sid)
        return self.summary(t_run, skipped, waves)

    def end_wave(self, waves: list[dict], committed: list[str], failed: list[str], t0: float) -> None:
        summary = self.wave_summary(len(waves), committed, failed, time.perf_counter() - t0)
        waves.append(summary)
        self.store.write_json(summary, "waves", f"{summary['wave_id']}.json")
        if self.metrics:
            self.metrics.states(summary["shards"])
        self.log(json.dumps(summary))

    def wave_summary(self, index: int, committed: list[str], failed: list[str], seconds: float) -> dict:
        stats = self.state.stats(committed)
        f = sum_funnels(s["funnel"] for s in stats)
        docs, texts, tokens = (sum(s[k] for s in stats) for k in ("docs", "texts", "text_tokens"))
        per_tool = {}
        for tool, v in f.items():
            lat = self.latencies.get(tool, [])
            per_tool[tool] = {
                "candidates": v.get("candidates", 0),
                "kept": v.get("kept_at_tool_tau_f", 0),
                "keep_rate": round(v.get("kept_at_tool_tau_f", 0) / v["candidates"], 4) if v.get("candidates") else None,
                "tool_call_ms_p50": round(float(np.percentile(lat, 50)), 3) if lat else None,
                "tool_call_ms_p95": round(float(np.percentile(lat, 95)), 3) if lat else None,
            }
        return {
            "wave_id": f"{time.strftime('%Y%m%dT%H%M%S')}-{index:04d}",
            "committed": committed, "failed": failed, "seconds": round(seconds, 2),
            "docs": docs, "texts": texts, "text_tokens": tokens,
            "docs_per_s": round(docs / seconds, 3) if seconds else None,
            "texts_per_s": round(texts / seconds, 3) if seconds else None,
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
            "tools": per_tool, "shards": self.state_counts(),
        }

    def summary(self, t_run: float, skipped: int, waves: list[dict]) -> dict:
        stats = self.state.stats()
        out = {
            "output_dir": self.store.uri, "config_hash": config_hash(self.cfg), "shards": self.state_counts(),
            "skipped_at_start": skipped, "waves": len(waves), "seconds": round(time.perf_counter() - t_run, 2),
            "docs": sum(s["docs"] for s in stats), "texts": sum(s["texts"] for s in stats),
            "funnel": sum_funnels(s["funnel"] for s in stats),
        }
        self.store.write_json(out, "stats.json")
        return out


def run_ray_annotate(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    return RayAnnotator(cfg, log).run()
