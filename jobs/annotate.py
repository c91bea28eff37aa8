"""Annotate a corpus with API calls and keep the calls that help (one process; the Ray job comes later).

    python -m jobs.annotate --config jobs/configs/default.yaml name=ccnet10 \
        corpus.paths=[../shared/data/webtext/ccnet_output_10docs_exact.jsonl]

Writes ``<output_dir>/texts.parquet``, ``annotations.parquet`` and ``stats.json`` (config hash, engine and
dtype, corpus accounting, funnel), then prints the funnel per tool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jobs.cli import offline_by_default, parse

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "default.yaml")


def main(argv: Sequence[str] | None = None) -> dict:
    offline_by_default()
    cfg, _ = parse(__doc__, argv, DEFAULT_CONFIG)
    from toolformer.annotate.pipeline import run_annotate
    from toolformer.report import format_funnel

    stats = run_annotate(cfg)
    print(format_funnel(stats["funnel"]))
    print(f"annotations: {Path(cfg.output_dir) / 'annotations.parquet'}")
    return stats


if __name__ == "__main__":
    main()
