"""Merge surviving calls of all tools into the augmented corpus C* (DESIGN §1.4).

    python -m jobs.merge --config jobs/configs/default.yaml name=ccnet10

Reads ``<output_dir>/annotations.parquet`` and ``texts.parquet``, writes ``<output_dir>/cstar.parquet``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

from jobs.cli import offline_by_default, parse

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "default.yaml")


def run_merge(output_dir: str | Path, max_per_tool: int) -> dict:
    from toolformer.merge import merge
    from toolformer.schemas import CSTAR, read_rows, to_table, write_parquet_atomic

    out = Path(output_dir)
    for name in ("annotations.parquet", "texts.parquet"):
        if not (out / name).is_file():
            raise SystemExit(f"{out / name} not found: run jobs.annotate with the same config first")
    texts = {r["text_id"]: r for r in read_rows(out / "texts.parquet")}
    rows = merge(read_rows(out / "annotations.parquet"), texts, max_per_tool)
    path = write_parquet_atomic(to_table(rows, CSTAR), out / "cstar.parquet")
    per_tool = Counter(c["tool"] for r in rows for c in r["calls"])
    summary = {"cstar": str(path), "texts": len(rows), "calls": sum(per_tool.values()), "calls_per_tool": dict(per_tool)}
    (out / "merge.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    offline_by_default()
    cfg, _ = parse(__doc__, argv, DEFAULT_CONFIG)
    summary = run_merge(cfg.output_dir, cfg.merge.max_per_tool)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
