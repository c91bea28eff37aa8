"""The ``toolformer`` command: one entry point for every job, with the same config files and dotted overrides.

    toolformer annotate --config jobs/configs/default.yaml name=ccnet 'corpus.paths=[data/*.jsonl.gz]'
    toolformer annotate --help        # every config key with its default and what it is for
    toolformer status runs/ccnet --examples

``python -m jobs.<job>`` does the same. Installed into ``.venv/bin`` by ``make`` (an editable install of this
checkout, declared in pyproject.toml).
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

JOBS = {
    "prepare": ("jobs.prepare", "shard a corpus into Parquet shards of texts with a manifest"),
    "annotate": ("jobs.annotate", "annotate with API calls and keep the ones that help (Ray job, resumable)"),
    "status": ("jobs.status", "where a run stands; --examples: the kept calls in context"),
    "merge": ("jobs.merge", "merge the kept calls into C* (sharded Parquet + dataset card)"),
    "finetune": ("jobs.finetune", "finetune on C* with DeepSpeed on Ray Train"),
    "evaluate": ("jobs.evaluate", "downstream tasks with and without tools"),
    "build-index": ("jobs.build_index", "the search index (BM25 + dense) for WikiSearch and QA"),
    "bootstrap": ("jobs.bootstrap", "rounds of annotate -> merge -> finetune, each with the last round's model"),
    "demo": ("jobs.demo", "the whole job, small, on the embedded defaults"),
    "bench": ("jobs.bench", "benchmarks that print JSON"),
}


def usage() -> str:
    width = max(map(len, JOBS))
    return "\n".join(["usage: toolformer <job> [--config FILE] [key.sub=value ...] [--verbose]", "", "jobs:",
                      *[f"  {name.ljust(width)}  {text}" for name, (_, text) in JOBS.items()], "",
                      "toolformer <job> --help lists the job's options and every config key with its default."])


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if args[0] not in JOBS:
        raise SystemExit(f"toolformer: unknown job {args[0]!r}\n\n{usage()}")
    module = importlib.import_module(JOBS[args[0]][0])
    sys.argv = [f"toolformer {args[0]}", *args[1:]]  # so that --help names the command as the user typed it
    module.main(args[1:])


if __name__ == "__main__":
    main()
