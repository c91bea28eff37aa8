"""``python -m jobs.bench scale``: seconds and peak memory of committing, merging and reporting on runs of
10,000, 100,000 and 1,000,000 texts. The runs are synthetic (real schemas, manifest, shard files and staged
batches; random text and candidates, see ``synthetic.py``) and generated into a scratch folder. Each phase runs
in its own driver process with its own local Ray, as a user runs the job: ``driver_peak_rss_mb`` is that
process's peak, ``worker_peak_rss_mb`` the largest Ray worker's (sampled every 0.2 s). ``seconds`` is the phase's
work once Ray and its task workers are up; starting them (a one-time cost per cluster, ~5 s here) is
``worker_startup_seconds``.

    python -m jobs.bench scale                                  # 10k, 100k, 1M texts, 1,000 texts per shard
    python -m jobs.bench scale --sizes 10000 100000 --texts-per-shard 500
    python -m jobs.bench scale --only prepare                   # the prepare point alone (below)

The prepare point runs the Ray prepare job (``toolformer.prepare.distributed``) on synthetic cc_net ``.json.gz`` files
(``synthetic.write_ccnet_files``: 500 documents a file, 1% repeated pages, 0.2% malformed lines) of 2,000 and
20,000 documents, with the embedded model's tokenizer and the default 256-token texts: driver peak RSS and
seconds per 1,000 documents (scan, dedup, chunk, tokenize and write shards; Ray and warm workers excluded),
beside the one-loop ``prepare_local`` on the same files in one process (the baseline, timed once transformers
and the tokenizer are loaded, as the Ray side's workers are; its shards must be the Ray job's, checksum for
checksum). Worker memory is that of the benchmark's own Ray only.

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
    import toolformer.cstar.merge  # noqa: F401

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
    """Commit every staged shard through the job's own commit path (``passes.Commits``)."""
    from toolformer.annotate.passes import Commits
    from toolformer.annotate.ray_job import RayAnnotator

    cfg = _config(run)
    startup = start_workers(cfg)
    a = RayAnnotator(cfg, log=lambda _: None)
    t0 = time.perf_counter()
    commits = Commits(a, STAGING)
    for s in a.manifest.shards:
        commits.submit(s.shard_id)
    _, failed = commits.collect(wait=True)
    if failed:
        raise SystemExit(f"commit: {len(failed)} shards failed, e.g. {next(iter(failed.items()))}")
    a.progress.maybe_flush(force=True)
    seconds = time.perf_counter() - t0
    counts = a.state.counts(a.manifest)
    if counts["done"] != counts["total"]:
        raise SystemExit(f"commit: {counts}")
    return {"seconds": seconds, "worker_startup_seconds": round(startup, 2), "shards": counts["done"]}


def phase_merge(run: str) -> dict:
    from toolformer.cstar.merge import run_merge

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


def _private_ray(cfg) -> None:
    """A new local Ray on loopback, as ``init_ray`` starts for a run, even where another ``ray start`` head runs
    on this machine (a bare ``ray.init()`` joins that one, and its other work would skew the figures)."""
    import ray

    from toolformer.paths import repo_root

    forwarded = ("TOOLFORMER_", "VLLM_", "HF_", "TRANSFORMERS_", "TOKENIZERS_PARALLELISM")  # as init_ray does
    env = {k: v for k, v in os.environ.items() if k.startswith(forwarded)}
    env["PYTHONPATH"] = str(repo_root())
    ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": env}, log_to_driver=False)


def _warm_prepare(model: str, cache_dir: str | None) -> int:
    from toolformer.prepare.distributed import _tokenizer

    _tokenizer(model, cache_dir)  # what every shard task loads once per worker
    return os.getpid()


def phase_prepare(run: str) -> dict:
    """``prepare_ray`` on the cc_net files in ``<run>/inputs``, into ``<run>/out``."""
    import ray

    from toolformer.prepare.distributed import prepare_ray

    cfg = _prepare_cfg(run, "out")
    t0 = time.perf_counter()
    _private_ray(cfg)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
    warm = ray.remote(_warm_prepare).options(num_cpus=1)
    ray.get([warm.remote(cfg.model.name_or_path, cfg.model.cache_dir) for _ in range(slots)])
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats: dict = {}
    manifest = prepare_ray(cfg, log=lambda _: None, stats=stats)
    seconds = time.perf_counter() - t0
    ray.shutdown()
    return {"seconds": seconds, "worker_startup_seconds": round(startup, 2), **_manifest_figures(manifest),
            "buckets": stats.get("buckets")}


def _prepare_cfg(run: str, out: str):
    from toolformer.config import load_config

    return load_config(None, [f"output_dir={run}/{out}", f"corpus.paths=[{run}/inputs/*.json.gz]",
                              "shards.docs_per_shard=1000"])


def _manifest_figures(manifest) -> dict:
    import hashlib

    checksums = hashlib.sha256(" ".join(s.sha256 for s in manifest.shards).encode()).hexdigest()[:16]
    return {"docs": manifest.n_docs, "texts": manifest.n_texts, "shards": len(manifest.shards),
            "inputs": len(manifest.inputs), "skips": manifest.skips["by_reason"], "shard_checksums": checksums}


def phase_prepare_local(run: str) -> dict:
    """The baseline: the one-loop prepare (``prepare_local``) on the same files, in this one process."""
    from transformers import AutoTokenizer

    from toolformer.models import resolve_model
    from toolformer.prepare.local import prepare_local

    cfg = _prepare_cfg(run, "out-local")
    # Warm, as the Ray side's workers are: transformers imported and the tokenizer read once before the clock.
    AutoTokenizer.from_pretrained(resolve_model(cfg.model.name_or_path, cfg.model.cache_dir))
    t0 = time.perf_counter()
    manifest = prepare_local(cfg, log=lambda _: None)
    return {"seconds": time.perf_counter() - t0, **_manifest_figures(manifest)}


PHASES = {"commit": phase_commit, "merge": phase_merge, "status": phase_status, "prepare": phase_prepare,
          "prepare_local": phase_prepare_local}


class OwnWorkerRSS(WorkerRSS):
    """``WorkerRSS`` over this process's own Ray only (the private Ray it started: its workers descend from it),
    so that other Ray clusters on a shared machine do not count."""

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            try:
                procs = me.children(recursive=True)
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::"):
                        self.peak_mb = max(self.peak_mb, p.memory_info().rss / 2**20)
                except psutil.Error:  # a process that ended while being read
                    continue
            self._stop.wait(self.interval_s)


def _child(phase: str, run: str) -> None:
    """One phase in this (fresh) process: its figures and this driver's peak memory as one JSON line."""
    with (OwnWorkerRSS() if phase.startswith("prepare") else WorkerRSS()) as workers:
        out = PHASES[phase](run)
    out.update(driver_peak_rss_mb=round(peak_rss_mb()), worker_peak_rss_mb=round(workers.peak_mb))
    print("RESULT " + json.dumps(out))


def _run_phase(phase: str, run: Path) -> dict:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    env.setdefault("RAY_raylet_start_wait_time_s", "120")  # Ray's 60 s is too short on a loaded 2-core machine
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child", phase, str(run)],
                          capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{phase} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    out = json.loads(line.removeprefix("RESULT "))
    out["seconds"] = round(out["seconds"], 2)
    return out


def run_prepare(args: argparse.Namespace) -> dict:
    """The prepare point: the Ray prepare job at each of ``--prepare-sizes`` documents of synthetic cc_net."""
    from benchmarks.synthetic import write_ccnet_files

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="toolformer-bench-prepare-"))
    points = []
    for n in args.prepare_sizes:
        run_dir = work / f"prepare-{n}"
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        files = write_ccnet_files(run_dir / "inputs", n, args.docs_per_file, seed=0)
        size_mb = round(sum(f.stat().st_size for f in files) / 2**20, 1)
        point = {"documents": n, "files": len(files), "input_mb": size_mb,
                 "generate_seconds": round(time.perf_counter() - t0, 1), **_run_phase("prepare", run_dir)}
        if not args.no_baseline:
            local = _run_phase("prepare_local", run_dir)
            point["one_loop"] = {k: local[k] for k in ("seconds", "driver_peak_rss_mb", "shard_checksums")}
            point["one_loop"]["seconds_per_1k_docs"] = round(1000 * local["seconds"] / n, 3)
            point["speedup_over_one_loop"] = round(local["seconds"] / point["seconds"], 2)
        point["load_average_1m"] = round(os.getloadavg()[0], 1)  # the machine is shared: seconds depend on it
        point["seconds_per_1k_docs"] = round(1000 * point["seconds"] / n, 3)
        points.append(point)
        print(json.dumps(point), file=sys.stderr)
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    first, last = points[0], points[-1]
    rss = [p["driver_peak_rss_mb"] for p in points]
    per_k = [p["seconds_per_1k_docs"] for p in points]
    checks = {"prepare_driver_rss_under_1gb": max(rss) < 1024,
              "prepare_driver_rss_within_1.5x": last["driver_peak_rss_mb"] <= 1.5 * first["driver_peak_rss_mb"]}
    if not args.no_baseline:  # the Ray job writes the very shards the one loop writes
        checks["prepare_same_shards_as_one_loop"] = all(p["shard_checksums"] == p["one_loop"]["shard_checksums"]
                                                         for p in points)
    return {"benchmark": "scale", "point": "prepare", "command": "python -m jobs.bench scale --only prepare",
            "synthetic": True,
            "data": f"synthetic cc_net .json.gz ({args.docs_per_file} documents a file, random words in sentences and "
                    "lines, 1% repeated pages, 0.2% malformed lines); embedded model's tokenizer, 256-token texts, "
                    "1,000 documents per shard",
            "cpus": threads(), "points": points, "checks": checks,
            "seconds_per_1k_max_over_min": round(max(per_k) / min(per_k), 2) if min(per_k) else None,
            "ok": all(checks.values())}


def run(args: argparse.Namespace) -> dict:
    if getattr(args, "only", None) == "prepare":
        return run_prepare(args)
    result = run_points(args)
    prepare = run_prepare(args)
    result["prepare"] = {k: v for k, v in prepare.items() if k not in ("benchmark", "ok")}
    result["checks"].update(prepare["checks"])
    result["ok"] = result["ok"] and prepare["ok"]
    return result


def run_points(args: argparse.Namespace) -> dict:
    """Commit, status and merge at each of ``--sizes`` texts."""
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
    p.add_argument("--only", choices=["prepare"], help="run only this point (prepare: the Ray prepare job)")
    p.add_argument("--prepare-sizes", type=int, nargs="+", default=[2_000, 20_000], help="documents, prepare point")
    p.add_argument("--docs-per-file", type=int, default=500, help="cc_net documents per input file, prepare point")
    p.add_argument("--no-baseline", action="store_true", help="prepare point: skip the one-loop prepare baseline")


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
