"""Merge surviving calls of all tools into the augmented corpus C* (DESIGN §1.4).

    python -m jobs.merge --config jobs/configs/default.yaml name=ccnet10

Reads the annotations and texts of ``<output_dir>`` (the committed shards of a Ray run, or the single files
of ``annotate.runner=local``) and writes ``<output_dir>/cstar.parquet``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

from jobs.cli import offline_by_default, parse

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "default.yaml")


def read_annotation_run(output_dir: str | Path) -> tuple[list[dict], list[dict], dict]:
    """(annotation rows, text rows, provenance) of a run directory, sharded (Ray) or single-file (local)."""
    import pyarrow.parquet as pq

    from toolformer.shards import Manifest, RunState, Store

    store = Store(output_dir)
    if store.exists("manifest.json"):
        manifest = Manifest.load(store)
        state = RunState(store, "annotate")
        done = state.done()
        if not done:
            raise SystemExit(f"no annotated shards in {store.uri}: run jobs.annotate with the same config first")
        read = lambda name: [r for p in state.committed_outputs(manifest, name)
                             for r in pq.read_table(p, filesystem=store.fs).to_pylist()]
        info = {"shards_merged": len(done), "shards_total": len(manifest.shards),
                "shards_quarantined": sorted(state.quarantined())}
        return read("annotations"), read("texts"), info
    for name in ("annotations.parquet", "texts.parquet"):
        if not store.exists(name):
            raise SystemExit(f"{store.path(name)} not found: run jobs.annotate with the same config first")
    return store.read_table("annotations.parquet").to_pylist(), store.read_table("texts.parquet").to_pylist(), {}


def run_merge(output_dir: str | Path, max_per_tool: int) -> dict:
    from toolformer.merge import merge
    from toolformer.schemas import CSTAR, to_table
    from toolformer.shards import Store

    annotations, text_rows, info = read_annotation_run(output_dir)
    texts = {r["text_id"]: r for r in text_rows}
    rows = merge(annotations, texts, max_per_tool)
    store = Store(output_dir)
    path = store.write_table(to_table(rows, CSTAR), "cstar.parquet")
    per_tool = Counter(c["tool"] for r in rows for c in r["calls"])
    summary = {"cstar": str(path), "texts": len(rows), "calls": sum(per_tool.values()),
               "calls_per_tool": dict(per_tool), **info}
    store.write_json(summary, "merge.json")
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    offline_by_default()
    cfg, _ = parse(__doc__, argv, DEFAULT_CONFIG)
    summary = run_merge(cfg.output_dir, cfg.merge.max_per_tool)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
