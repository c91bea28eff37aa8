"""Merge surviving calls of all tools into the augmented corpus C* (DESIGN §1.4), with Ray tasks.

    python -m jobs.merge --config jobs/configs/default.yaml name=ccnet10

Reads the committed shards of ``<output_dir>`` (or the single files of ``annotate.runner=local``) and writes C*
as a sharded Parquet dataset ``<output_dir>/cstar/part-NNNNN.parquet`` (one part per annotation shard), then
``merge.json`` (counts per tool, the parts) last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from jobs.cli import run_job
from toolformer.config import RunConfig

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "default.yaml")


def main(argv: Sequence[str] | None = None) -> dict:
    return run_job(__doc__, argv, DEFAULT_CONFIG, "merge", _run)


def _run(cfg: RunConfig):
    from toolformer.cstar.merge import run_merge

    summary = run_merge(cfg.output_dir, cfg.merge.max_per_tool, cfg)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
