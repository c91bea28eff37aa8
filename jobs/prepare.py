"""Shard a corpus for the Ray annotate job: fixed-size Parquet shards and an immutable manifest.

    python -m jobs.prepare --config jobs/configs/default.yaml name=ccnet \\
        'corpus.paths=[s3://my-bucket/cc_net/2019-09/en_head_*.json.gz]' shards.docs_per_shard=1000

Runs as a Ray job (on the cluster of RAY_ADDRESS or ``ray.address``, else a private local Ray): one task per
input file reads and validates it, one task per id bucket finds duplicate document ids (first occurrence
wins), one task per shard chunks, tokenizes and writes it; the manifest is written last. Run the same command
again to resume a stopped prepare: inputs already read (``<output_dir>/_prepare/inputs/<n>.json``) and shards
already written are not done again. ``prepare.runner=local`` reads the corpus in one loop in this process
instead (tiny corpora, ``memory://`` inputs); both write the same shards and manifest.

Inputs are local paths, globs or any fsspec URI; the run directory (``output_dir``) may be an object store
URI too. Writes ``shards/shard-NNNNN.parquet`` (doc_id, shard_id, url, date, title, text, source, meta),
``manifest.json`` (shard id, input URIs, doc count, sha256) and ``config.yaml`` with its hash.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from jobs.cli import run_job
from toolformer.config import RunConfig
from toolformer.prepare.local import RUNNERS

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "default.yaml")
RUNNER_KEY = "prepare.runner="


def main(argv: Sequence[str] | None = None):
    # The runner is this job's own switch, not a config key: it changes how shards are made, never what they hold.
    argv = list(sys.argv[1:] if argv is None else argv)
    runners = [a.removeprefix(RUNNER_KEY) for a in argv if a.startswith(RUNNER_KEY)]
    runner = runners[-1] if runners else "ray"
    if runner not in RUNNERS:
        raise SystemExit(f"prepare.runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    argv = [a for a in argv if not a.startswith(RUNNER_KEY)]
    return run_job(__doc__, argv, DEFAULT_CONFIG, "prepare", lambda cfg: _run(cfg, runner))


def _run(cfg: RunConfig, runner: str):
    from toolformer.prepare.local import prepare

    return prepare(cfg, runner=runner)


if __name__ == "__main__":
    main()
