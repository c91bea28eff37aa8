"""Shard a corpus for the Ray annotate job: fixed-size Parquet shards and an immutable manifest.

    python -m jobs.prepare --config jobs/configs/default.yaml name=ccnet \\
        'corpus.paths=[s3://my-bucket/cc_net/2019-09/en_head_*.json.gz]' shards.docs_per_shard=1000

Inputs are local paths, globs or any fsspec URI; the run directory (``output_dir``) may be an object store
URI too. Writes ``shards/shard-NNNNN.parquet`` (doc_id, shard_id, url, date, title, text, source, meta),
``manifest.json`` (shard id, input URIs, doc count, sha256) and ``config.yaml`` with its hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jobs.cli import run_job
from toolformer.config import RunConfig

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "default.yaml")


def main(argv: Sequence[str] | None = None):
    return run_job(__doc__, argv, DEFAULT_CONFIG, "prepare", _run)


def _run(cfg: RunConfig):
    from toolformer.prepare import prepare

    return prepare(cfg)


if __name__ == "__main__":
    main()
