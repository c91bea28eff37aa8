"""``python -m jobs.bench pass_start``: how long an annotate pass takes to start on S3 (moto's server on loopback)
at 10k and 100k shards: which shards are left (markers, quarantine) and which are fresh (failures), from a few
listings (issue 43 item 7), against one read per shard (what a pass did before: measured at the smaller size,
scaled to the larger one, and said so in its key). The goal: a pass start at 100k shards in under 60 s.

Each size gets a run directory with its manifest and, as a long run has them, markers for 90 % of the shards,
failure records for 5 % and quarantine records for 1 %, written with 32 threads before the clock starts.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.harness import REPO, finish, peak_rss_mb

RESULTS = REPO / "benchmarks" / "results" / "pass_start.json"
GOAL_S = 60.0


def _server():
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                    "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true"}


def _fill(bucket: str, n: int) -> dict:
    """The run's manifest and its records, as a long run leaves them; returns their counts."""
    import boto3

    from toolformer.run.shards import Manifest, ShardInfo

    client = boto3.client("s3")
    ids = [f"shard-{i:06d}" for i in range(n)]
    manifest = Manifest([ShardInfo(s, f"shards/{s}.parquet", ["in.jsonl"], 10, "0" * 64, 10) for s in ids], 10, "bench")
    body = json.dumps({"shards": [vars(s) for s in manifest.shards], "docs_per_shard": 10, "config_hash": "bench",
                       "version": 2}).encode()
    client.put_object(Bucket=bucket, Key="run/manifest.json", Body=body)
    records = [f"run/markers/annotate/{s}.json" for s in ids[: int(0.9 * n)]]
    records += [f"run/failures/annotate/{s}.json" for s in ids[int(0.9 * n): int(0.95 * n)]]
    records += [f"run/quarantine/annotate/{s}.json" for s in ids[int(0.95 * n): int(0.96 * n)]]
    attempts = json.dumps({"attempts": [{"id": "x", "error": "flaky"}]}).encode()

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=attempts if "/failures/" in key else b"{}")

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, records))
    return {"shards": n, "records": len(records), "manifest_mb": round(len(body) / 2**20, 1)}


def _measure(bucket: str, per_shard_reads: bool) -> dict:
    """One pass start as the driver makes it (``_passes`` and ``Pass``): the pending shards, then the fresh ones."""
    from toolformer.run.shards import Manifest, RunState
    from toolformer.run.store import Store

    store = Store(f"s3://{bucket}/run")
    t0 = time.perf_counter()
    manifest = Manifest.load(store)
    t_manifest = time.perf_counter() - t0
    state = RunState(store, "annotate")
    t1 = time.perf_counter()
    left = state.pending(manifest)
    failed = state.failed()
    fresh = [s for s in left if s not in failed]
    out = {"manifest_load_s": round(t_manifest, 2), "pass_start_s": round(time.perf_counter() - t1, 2),
           "left": len(left), "fresh": len(fresh)}
    if per_shard_reads:  # before: a failure-record read per left shard
        t2 = time.perf_counter()
        old = [s for s in left if not state.failures(s)]
        out["per_shard_reads_s"] = round(time.perf_counter() - t2, 2)
        out["same_fresh_shards"] = old == fresh
    return out


def run(args) -> dict:
    import os
    import uuid

    import boto3

    server, env = _server()
    os.environ.update(env)
    result: dict = {"benchmark": "pass_start", "store": "moto's S3 server on loopback (ThreadedMotoServer)",
                    "goal_s": GOAL_S, "sizes": {}}
    try:
        for n in args.sizes:
            bucket = f"bench-{uuid.uuid4().hex[:10]}"
            boto3.client("s3").create_bucket(Bucket=bucket)
            t0 = time.perf_counter()
            filled = _fill(bucket, n)
            filled["fill_s"] = round(time.perf_counter() - t0, 1)
            result["sizes"][str(n)] = {**filled, **_measure(bucket, per_shard_reads=n <= args.per_shard_max)}
    finally:
        server.stop()
    small, large = str(min(args.sizes)), str(max(args.sizes))
    s = result["sizes"]
    if "per_shard_reads_s" in s[small] and small != large:
        scale = s[large]["left"] / max(1, s[small]["left"])
        s[large]["per_shard_reads_s_estimated"] = round(s[small]["per_shard_reads_s"] * scale, 1)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    checks = {"pass_start_at_the_largest_size_under_goal": s[large]["pass_start_s"] < GOAL_S,
              "fresh_shards_as_per_shard_reads_give": all(v.get("same_fresh_shards", True) for v in s.values()),
              # left: neither committed nor quarantined (9 %); fresh: of those, no failure recorded (4 %)
              "fresh_counted_right": all(v["left"] == int(k) - int(0.9 * int(k)) - (int(0.96 * int(k)) - int(0.95 * int(k)))
                                         and v["fresh"] == v["left"] - (int(0.95 * int(k)) - int(0.9 * int(k)))
                                         for k, v in s.items())}
    return finish(result, checks, args.out)


def add_arguments(t) -> None:
    t.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="shards per run")
    t.add_argument("--per-shard-max", type=int, default=10_000,
                   help="measure the old per-shard reads up to this size (scaled beyond it)")
    t.add_argument("--out", default=str(RESULTS), help="where the JSON is written too ('' for nowhere)")
