"""Do the annotate run's pools fit a cluster? Demand (every pool at its smallest size, from the config) against
supply (a cluster file's node types x max workers, or a running cluster and what its autoscaler may add), with
the same check the annotate driver runs before any pool starts (toolformer/annotate/plan.py). Also the two small steps the
cluster files use: rendering their ${TOOLFORMER_...} placeholders and fetching the search index onto a node.

    python -m jobs.plan --config jobs/configs/cluster.yaml --cluster-file cluster/rayjob.yaml   # before you apply it
    python -m jobs.plan --config jobs/configs/cluster.yaml --address auto                      # a running cluster
    python -m jobs.plan --config jobs/configs/cluster.yaml --cluster-file ray_cluster.yaml --json
    TOOLFORMER_INDEX_URI=s3://bucket/indexes python -m jobs.plan render cluster/raycluster.yaml | kubectl apply -f -
    python -m jobs.plan fetch-index s3://bucket/indexes /indexes     # what the cluster files run on a tool node

Exit status 1 when the plan cannot fit (the problems are printed, each naming the pool, the figures and what to
change).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

FETCHED = ".fetched.json"  # written last into the destination: the copy is complete (a restarted pod skips it)


def fetch_index(source: str, dest: str) -> dict:
    """Copy an index folder (s3://, gs://, hdfs:// or a local path; credentials from the node: instance role,
    IRSA / workload identity, or the usual AWS_* / GOOGLE_* variables) into ``dest``. An empty source copies
    nothing and says so (the tools that need the index then stop the run with a missing-index error). A copy
    already complete from the same source is kept."""
    if not source:
        print(f"jobs.plan fetch-index: no index source given (TOOLFORMER_INDEX_URI was not set when the cluster "
              f"file was rendered): nothing copied to {dest}; WikiSearch/QA stop the run with a missing-index error",
              flush=True)
        return {"source": "", "dest": dest, "copied": False}
    import pyarrow.fs as pafs

    if "://" not in source:
        source = os.path.abspath(source)
    os.makedirs(dest, exist_ok=True)
    marker = os.path.join(dest, FETCHED)
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("source") == source:
            print(f"jobs.plan fetch-index: {dest} already holds {source} ({done.get('bytes')} bytes)", flush=True)
            return {**done, "copied": False}
        os.remove(marker)
    t0 = time.time()
    src_fs, src_path = pafs.FileSystem.from_uri(source)
    info = src_fs.get_file_info(src_path)
    if info.type == pafs.FileType.NotFound:
        raise SystemExit(f"jobs.plan fetch-index: {source} does not exist (or these credentials cannot see it)")
    pafs.copy_files(src_path, dest, source_filesystem=src_fs, destination_filesystem=pafs.LocalFileSystem())
    size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(dest) for name in names)
    done = {"source": source, "dest": dest, "bytes": size, "seconds": round(time.time() - t0, 1)}
    with open(marker + ".tmp", "w") as f:
        json.dump(done, f)
    os.replace(marker + ".tmp", marker)
    print(f"jobs.plan fetch-index: copied {source} to {dest} ({size} bytes in {done['seconds']} s)", flush=True)
    return {**done, "copied": True}


def _render(argv: Sequence[str]) -> None:
    from toolformer.annotate.plan import render

    p = argparse.ArgumentParser(prog="python -m jobs.plan render",
                                description="Fill a cluster file's ${TOOLFORMER_...} placeholders from the environment")
    p.add_argument("file")
    p.add_argument("-o", "--out", help="write here instead of stdout")
    args = p.parse_args(argv)
    import yaml

    try:
        text = render(open(args.file).read())
        list(yaml.safe_load_all(text))  # the result still parses
    except ValueError as exc:
        raise SystemExit(f"{args.file}: {exc}")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def _fetch(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m jobs.plan fetch-index", description=fetch_index.__doc__)
    p.add_argument("source", help="the folder that holds the index folders (e.g. s3://bucket/indexes); '' for none")
    p.add_argument("dest", help="where the tools read them (e.g. /indexes)")
    args = p.parse_args(argv)
    fetch_index(args.source, args.dest)


def main(argv: Sequence[str] | None = None) -> dict:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "render":
        _render(args_list[1:])
        return {}
    if args_list and args_list[0] == "fetch-index":
        _fetch(args_list[1:])
        return {}
    from jobs.cli import offline_by_default
    from toolformer.config import load_config
    from toolformer.annotate.plan import assess, describe, live_supply, pool_demands, supply_from_file

    offline_by_default()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (see jobs/configs/)")
    p.add_argument("--cluster-file", default=None,
                   help="ray_cluster.yaml, cluster/raycluster.yaml or cluster/rayjob.yaml (default: ray.cluster_file)")
    p.add_argument("--address", default=None, help="a running Ray cluster (auto, ray://..., or RAY_ADDRESS)")
    p.add_argument("--json", action="store_true", help="the figures as JSON")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ray.sample.actors=8")
    args = p.parse_args(args_list)
    cfg = load_config(args.config, args.overrides)
    from toolformer.annotate.placement import check_parallelism

    try:
        check_parallelism(cfg)
    except ValueError as exc:
        raise SystemExit(str(exc))
    demands = pool_demands(cfg)
    path = args.cluster_file or cfg.ray.cluster_file
    address = args.address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if path and not args.address:
        supply = supply_from_file(path)
    elif address:
        import ray

        ray.init(address=address, log_to_driver=False)
        try:
            supply = live_supply(cfg)
        finally:
            ray.shutdown()
    else:
        raise SystemExit("give --cluster-file FILE (or ray.cluster_file) or --address ADDRESS (or RAY_ADDRESS): "
                         "the supply to check the plan against")
    report = assess(demands, supply)
    out = report.to_dict()
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(describe(report))
        for w in report.warnings:
            print(f"warning: {w}")
        for n in supply.notes:
            print(f"note: {n}")
        print("fits" if report.fits else "does not fit:\n" + "\n".join(f"- {x}" for x in report.problems))
    if report.problems:
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()
