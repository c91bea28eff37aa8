"""``python -m jobs.bench ray``: the Ray job on a real annotated run of at least 12 shards, against the
single-process pipeline on the same documents; the split layout (sample / execute / score pools) and the fused
one (``ray.fuse_lm``: one LM pool that samples, runs the tools and scores); engine starts and the share of wall
time each LM actor computed; the cost of resuming. Each run is a fresh driver with its own local Ray.

Checks (exit 1 when false): the Ray outputs equal the single-process output (discrete fields exactly, losses
within 1e-3 nats), and each run started exactly one engine per LM actor.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.harness import REPO, threads, timed_job

DISCRETE = ("text_id", "doc_id", "tool", "status", "heuristic", "n_tokens", "positions", "n_samples", "n_closed",
            "n_parsed", "n_candidates", "n_executed", "n_kept")


def annotations(run: Path) -> list[dict]:
    if (run / "annotations.parquet").exists():
        return pq.read_table(run / "annotations.parquet").to_pylist()
    from toolformer.run.shards import Manifest, RunState
    from toolformer.run.store import Store

    store = Store(run)  # the committed shards' files, as their markers name them (each attempt writes its own)
    paths = RunState(store, "annotate").committed_outputs(Manifest.load(store), "annotations")
    return [r for p in paths for r in pq.read_table(p).to_pylist()]


def same_annotations(a: list[dict], b: list[dict], tol: float = 1e-3) -> tuple[bool, str]:
    """Row for row: discrete fields equal, losses within ``tol``; (equal, first difference)."""
    if len(a) != len(b) or not a:
        return False, f"{len(a)} vs {len(b)} rows"
    for x, y in zip(a, b):
        for k in DISCRETE:
            if x[k] != y[k]:
                return False, f"{x['text_id']}/{x['tool']}: {k}"
        if len(x["candidates"]) != len(y["candidates"]):
            return False, f"{x['text_id']}/{x['tool']}: candidates"
        for c, d in zip(x["candidates"], y["candidates"]):
            if any(c[k] != d[k] for k in ("position", "char_start", "call", "input", "result", "error", "kept")):
                return False, f"{x['text_id']}/{x['tool']}: candidate {c['input']!r}"
            for k in ("loss_none", "loss_call_only", "loss_call_result", "gain"):
                if (c[k] is None) != (d[k] is None) or (c[k] is not None and not math.isclose(c[k], d[k], abs_tol=tol)):
                    return False, f"{x['text_id']}/{x['tool']}: {k}"
    return True, ""


def run(args) -> dict:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="toolformer-bench-ray-"))
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    cfg_args = ["--config", args.config, f"corpus.limit={args.docs}", f"shards.docs_per_shard={args.docs_per_shard}",
                *args.overrides]
    base = work / "prepared"
    shutil.rmtree(base, ignore_errors=True)
    t_prep, _ = timed_job(["jobs.prepare", *cfg_args, f"output_dir={base}"], env)
    manifest = json.loads((base / "manifest.json").read_text())
    result: dict = {"benchmark": "ray", "docs": sum(s["n_docs"] for s in manifest["shards"]),
                    "texts": sum(s["n_texts"] for s in manifest["shards"]), "shards": len(manifest["shards"]),
                    "cpus": threads(), "prepare_seconds": round(t_prep, 1)}
    local = work / "local"
    shutil.rmtree(local, ignore_errors=True)
    t_local, _ = timed_job(["jobs.annotate", *cfg_args, f"output_dir={local}", "annotate.runner=local"], env)
    local_stats = json.loads((local / "stats.json").read_text())
    result["single_process"] = {"seconds": round(t_local, 1),
                                "engine_start_s": round(local_stats["seconds"]["engine_start"], 1)}
    reference = annotations(local)
    layouts = {"split": [f"ray.sample.actors={args.lm_actors}", f"ray.score.actors={args.lm_actors}"],
               "fused": ["ray.fuse_lm=true", f"ray.lm.actors={args.fused_actors}"]}
    checks, goals = {}, {}
    for name, extra in layouts.items():
        run_dir = work / f"ray-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(base, run_dir)
        t, _ = timed_job(["jobs.annotate", *cfg_args, f"output_dir={run_dir}", *extra], env)
        stats = json.loads((run_dir / "stats.json").read_text())
        actors = stats["actors"]
        n_lm = (args.fused_actors if name == "fused" else 2 * args.lm_actors)
        same, diff = same_annotations(annotations(run_dir), reference)
        result[f"ray_{name}"] = {
            "seconds": round(t, 1), "run_seconds": stats["seconds"], "passes": stats["passes"],
            "shards_done": stats["shards"]["done"], "engine_starts": actors["engine_starts"], "lm_actors": n_lm,
            "lm_busy_share": {f"{a['stage']}-{a['pid']}": a["busy_share"] for a in actors["lm_actors"]},
            "lm_setup_s": {f"{a['stage']}-{a['pid']}": a["setup_s"] for a in actors["lm_actors"]},
            "lm_batches": {f"{a['stage']}-{a['pid']}": a["batches"] for a in actors["lm_actors"]},
            "docs_per_s": round(stats["docs"] / t, 4), "equal_to_single_process": same, "first_difference": diff,
        }
        checks[f"{name}_equal_to_single_process"] = same
        checks[f"{name}_one_engine_per_lm_actor"] = actors["engine_starts"] == n_lm
        goals[f"{name}_every_lm_actor_busy_80pct"] = all((a["busy_share"] or 0) >= 0.8 for a in actors["lm_actors"])
    # Resume: the same command again on a finished run skips every shard (driver start to exit).
    t_skip, _ = timed_job(["jobs.annotate", *cfg_args, f"output_dir={work / 'ray-split'}", *layouts["split"]], env)
    result["resume"] = {"finished_shards": len(manifest["shards"]), "seconds_to_skip_all": round(t_skip, 2)}
    result["resume"]["pending_of_10000_with_9990_markers_seconds"] = _pending_at_scale(work / "resume-10k")
    result.update(checks=checks, goals=goals, ok=all(checks.values()))
    return result


def _pending_at_scale(root: Path) -> float:
    """The bookkeeping alone at scale: 9,990 markers of a 10,000-shard manifest listed and subtracted."""
    from toolformer.run.shards import Manifest, RunState, ShardInfo
    from toolformer.run.store import Store

    shutil.rmtree(root, ignore_errors=True)
    store = Store(root)
    Manifest([ShardInfo(f"shard-{i:05d}", f"shards/shard-{i:05d}.parquet", [], 1000, "0" * 64, 2000)
              for i in range(10_000)], 1000, "bench").save(store)
    for i in range(9_990):
        store.write_json({"shard_id": f"shard-{i:05d}"}, "markers", "annotate", f"shard-{i:05d}.json")
    t0 = time.perf_counter()
    pending = RunState(store, "annotate").pending(Manifest.load(store))
    assert len(pending) == 10
    return round(time.perf_counter() - t0, 3)


def add_arguments(r) -> None:
    r.add_argument("--config", default=str(REPO / "jobs" / "configs" / "bench_ray.yaml"))
    r.add_argument("--docs", type=int, default=24)
    r.add_argument("--docs-per-shard", type=int, default=2, help="24 documents → 12 shards")
    r.add_argument("--lm-actors", type=int, default=1, help="actors per LM pool in the split layout")
    r.add_argument("--fused-actors", type=int, default=2, help="LM actors in the fused layout (one per core here)")
    r.add_argument("--work-dir", default=None)
    r.add_argument("overrides", nargs="*")
