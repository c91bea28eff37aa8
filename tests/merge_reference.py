"""The merge rules of DESIGN §1.4 written the obvious way, over Python rows in one process: the oracle the
Arrow/Ray merge (``toolformer.cstar.merge``) is tested against. Test-only."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from toolformer.cstar.augment import insert_calls


def kept_calls(annotation_rows: Iterable[dict]) -> dict[str, list[dict]]:
    """text_id → kept candidates (with their tool), from annotation rows."""
    out: dict[str, list[dict]] = defaultdict(list)
    for row in annotation_rows:
        for cand in row.get("candidates") or []:
            if cand.get("kept") and cand.get("result") is not None:
                out[row["text_id"]].append({**cand, "tool": row["tool"]})
    return out


def cap_per_tool(calls: dict[str, list[dict]], max_per_tool: int) -> dict[str, list[dict]]:
    """Keep a tool's calls in at most ``max_per_tool`` texts: those where its best gain is largest."""
    best: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for text_id, cands in calls.items():
        per_tool: dict[str, float] = {}
        for c in cands:
            per_tool[c["tool"]] = max(per_tool.get(c["tool"], float("-inf")), c["gain"])
        for tool, gain in per_tool.items():
            best[tool].append((gain, text_id))
    allowed = {tool: {tid for _, tid in sorted(pairs, key=lambda p: (-p[0], p[1]))[:max_per_tool]}
               for tool, pairs in best.items()}
    return {tid: kept for tid, cands in calls.items() if (kept := [c for c in cands if tid in allowed[c["tool"]]])}


def merge(annotation_rows: Iterable[dict], texts: dict[str, dict], max_per_tool: int = 25_000) -> list[dict]:
    """C* rows (``text_id, doc_id, text, n_calls, calls``), in text_id order."""
    calls = cap_per_tool(kept_calls(annotation_rows), max_per_tool)
    out = []
    for text_id in sorted(calls):
        source = texts[text_id]
        text, inserted = insert_calls(source["text"], calls[text_id])
        out.append(dict(text_id=text_id, doc_id=source["doc_id"], text=text, n_calls=len(inserted), calls=inserted))
    return out


def reference_cstar(run_dir, max_per_tool: int = 25_000) -> list[dict]:
    """The reference merge of a whole run (sharded or single-file), rows sorted by text_id."""
    import pyarrow.parquet as pq

    from toolformer.run.parts import AnnotationRun

    run = AnnotationRun(str(run_dir))
    annotations, texts = [], {}
    for part in run.parts():
        annotations += pq.read_table(run.store.path(part.annotations)).to_pylist()
        texts.update({t["text_id"]: t for t in pq.read_table(run.store.path(part.texts)).to_pylist()})
    return merge(annotations, texts, max_per_tool)


def sharded_cstar(run_dir) -> list[dict]:
    """A run's merged C* (every part), rows sorted by text_id, without the shard column."""
    import pyarrow.parquet as pq

    from toolformer.cstar.merge import cstar_files

    rows = [r for f in cstar_files(str(run_dir)) for r in pq.read_table(f).to_pylist()]
    for r in rows:
        r.pop("shard_id")
    return sorted(rows, key=lambda r: r["text_id"])
