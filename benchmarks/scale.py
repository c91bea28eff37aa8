"""``python -m jobs.bench scale``: seconds and peak memory of committing, merging and reporting on runs of
10,000, 100,000 and 1,000,000 texts. The runs are synthetic (real schemas, manifest, shard files and staged
batches; random text and candidates, see ``synthetic.py``) and generated into a scratch folder. Each phase runs
in its own driver process with its own local Ray, as a user runs the job: ``driver_peak_rss_mb`` is that
process's peak, ``worker_peak_rss_mb`` the largest Ray worker's (sampled every 0.2 s). ``seconds`` is the phase's
work once Ray and its task workers are up; starting them (a one-time cost per cluster, ~5 s here) is
``worker_startup_seconds``.

    python -m jobs.bench scale                                  # 10k, 100k, 1M texts, 1,000 texts per shard
    python -m jobs.bench scale --sizes 10000 100000 --texts-per-shard 500

Goal: driver peak under 1 GB at every size and within 1.5x from the smallest to the largest size; seconds
per 1,000 texts never above 1.5x the smallest run's (the strict max/min ratio across sizes is printed too:
a cost per text that falls with size is fine). The command exits non-zero, after its JSON, when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import WorkerRSS, emit, peak_rss_mb, threads

STAGING = "_staging/bench"


def _config(run: str):
    from toolformer.config import load_config

    return load_config(None, [f"output_dir={run}", "annotate.tools=[Calculator,Calendar]",
                              "shards.progress_every_shards=100000", "shards.progress_every_s=1e9"])


def _warm_import() -> int:
    import toolformer.annotate.commit  # noqa: F401 - what the commit and merge tasks import
    import toolformer.cstar  # noqa: F401

    return os.getpid()


def start_workers(cfg) -> float:
    """Start Ray and as many task workers as run at once, each with the library imported: a one-time cost per
    cluster, reported apart (``worker_startup_seconds``) so that ``seconds`` is the work itself."""
    import ray

    from toolformer.cluster import init_ray

    t0 = time.perf_counter()
    init_ray(cfg)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) / cfg.ray.io_num_cpus))
    warm = ray.remote(_warm_import).options(num_cpus=cfg.ray.io_num_cpus)
    ray.get([warm.remote() for _ in range(slots)])
    return time.perf_counter() - t0


def phase_commit(run: str) -> dict:
    """Commit every staged shard through the job's own commit path (``RayAnnotator.submit_commit``)."""
    from toolformer.annotate.ray_job import Progress, RayAnnotator

    cfg = _config(run)
    startup = start_workers(cfg)
    a = RayAnnotator(cfg, log=lambda _: None)
    a.progress = Progress(a)
    t0 = time.perf_counter()
    inflight: dict = {}
    for s in a.manifest.shards:
        a.submit_commit(s.shard_id, STAGING, inflight)
    a.collect(inflight, wait=True)
    a.progress.maybe_flush(force=True)
    seconds = time.perf_counter() - t0
    counts = a.state.counts(a.manifest)
    if counts["done"] != counts["total"]:
        raise SystemExit(f"commit: {counts}")
    return {"seconds": seconds, "worker_startup_seconds": round(startup, 2), "shards": counts["done"]}


def phase_merge(run: str) -> dict:
    from toolformer.cstar import run_merge

    cfg = _config(run)
    startup = start_workers(cfg)
    t0 = time.perf_counter()
    summary = run_merge(run, cfg.merge.max_per_tool, cfg)
    return {"seconds": time.perf_counter() - t0, "worker_startup_seconds": round(startup, 2),
            "cstar_texts": summary["texts"], "cstar_calls": summary["calls"], "parts": len(summary["parts"])}


def phase_status(run: str) -> dict:
    from jobs.status import run_status

    t0 = time.perf_counter()
    s = run_status(run)
    return {"seconds": time.perf_counter() - t0, "docs_processed": s["docs"]["processed"]}


PHASES = {"commit": phase_commit, "merge": phase_merge, "status": phase_status}


def _child(phase: str, run: str) -> None:
    """One phase in this (fresh) process: its figures and this driver's peak memory as one JSON line."""
    with WorkerRSS() as workers:
        out = PHASES[phase](run)
    out.update(driver_peak_rss_mb=round(peak_rss_mb()), worker_peak_rss_mb=round(workers.peak_mb))
    print("RESULT " + json.dumps(out))


def _run_phase(phase: str, run: Path) -> dict:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child", phase, str(run)],
                          capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{phase} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    out = json.loads(line.removeprefix("RESULT "))
    out["seconds"] = round(out["seconds"], 2)
    return out


def run(args: argparse.Namespace) -> dict:
    from benchmarks.synthetic import make_staged_run

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="toolformer-bench-scale-"))
    points = []
    for n in args.sizes:
        run_dir = work / f"run-{n}"
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        manifest = make_staged_run(run_dir, n, args.texts_per_shard, seed=0, staging=STAGING)
        point = {"texts": n, "shards": len(manifest.shards), "generate_seconds": round(time.perf_counter() - t0, 1)}
        for phase in ("commit", "status", "merge"):
            point[phase] = _run_phase(phase, run_dir)
            point[phase]["seconds_per_1k_texts"] = round(1000 * point[phase]["seconds"] / n, 4)
        points.append(point)
        print(json.dumps(point), file=sys.stderr)
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    first, last = points[0], points[-1]
    checks, ratios = {}, {}
    for phase in ("commit", "status", "merge"):
        rss = [p[phase]["driver_peak_rss_mb"] for p in points]
        per_k = [p[phase]["seconds_per_1k_texts"] for p in points]
        checks[f"{phase}_driver_rss_under_1gb"] = max(rss) < 1024
        checks[f"{phase}_driver_rss_within_1.5x"] = last[phase]["driver_peak_rss_mb"] <= 1.5 * first[phase]["driver_peak_rss_mb"]
        # Enforced: the cost per text does not grow with the run (at most 1.5x the smallest run's). A cost per
        # text that falls with size (fixed per-run work amortized) passes; the strict max/min ratio is reported.
        # status reads one small file per shard: a few ms in all, so its ratio is noise below 1 s.
        if phase != "status" or max(p[phase]["seconds"] for p in points) > 1.0:
            checks[f"{phase}_seconds_per_1k_not_above_1.5x_smallest"] = max(per_k) <= 1.5 * per_k[0]
        ratios[f"{phase}_seconds_per_1k_max_over_min"] = round(max(per_k) / min(per_k), 2) if min(per_k) else None
    return {"benchmark": "scale", "synthetic": True,
            "data": "synthetic text and candidates (random words; ~11 candidates per text, 5% kept) in the real "
                    "schemas, manifest, shard files and staged batches",
            "texts_per_shard": args.texts_per_shard, "tools": ["Calculator", "Calendar"], "cpus": threads(),
            "points": points, "checks": checks, "per_1k_ratios": ratios, "ok": all(checks.values())}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--texts-per-shard", type=int, default=1000)
    p.add_argument("--work-dir")
    p.add_argument("--keep", action="store_true", help="keep the synthetic runs")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=2, metavar=("PHASE", "RUN"), help=argparse.SUPPRESS)
    add_arguments(p)
    args = p.parse_args(argv)
    if args.child:
        _child(*args.child)
        return
    result = run(args)
    emit(result)
    if not result["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
