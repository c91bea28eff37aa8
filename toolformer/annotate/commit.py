"""Committing a shard of the Ray job, in a Ray task and in Arrow: gather its staged rows, check that they
account for every text and tool, put them in a deterministic order, and write texts, annotations, stats and
(last) the marker. Memory is bounded by one shard. The files are the attempt's own (``shards.RunState.commit``): a
commit task of a driver that lost the run writes nothing a committed shard reads.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from toolformer.report import funnel
from toolformer.schemas import ANNOTATIONS, SHARD, STAGED, TEXTS, conform
from toolformer.run.shards import RunState, ShardInfo
from toolformer.run.store import Store

STAGE = "annotate"
LATENCY_SAMPLES = 200  # per tool and shard: enough for the progress summaries' percentiles


class ShardIncomplete(RuntimeError):
    """A shard's staged output does not account for all of its texts."""


def read_staged(store: Store, staging: str, shard_id: str) -> pa.Table:
    if not store.exists(staging, shard_id):
        return STAGED.empty_table()
    files = [store.path(staging, shard_id, n) for n in store.names(staging, shard_id, suffix=".parquet")]
    if not files:
        return STAGED.empty_table()
    return conform(pads.dataset(files, filesystem=store.fs, format="parquet", schema=STAGED).to_table(), STAGED)


def _first_per_key(table: pa.Table, keys: list[str]) -> pa.Table:
    """One row per key (a retried batch may have been staged twice: same rows, same values)."""
    idx = table.append_column("_i", pa.array(np.arange(table.num_rows)))
    first = idx.group_by(keys, use_threads=False).aggregate([("_i", "min")]).column("_i_min")
    return table.take(first)


def order_and_check(staged: pa.Table, texts: pa.Table, tools: list[str], shard_id: str) -> pa.Table:
    """The shard's annotation rows in text order then tool order; ``ShardIncomplete`` unless every text has
    exactly one row per tool."""
    rows = _first_per_key(staged, ["text_id", "tool"])
    text_idx = pc.index_in(rows.column("text_id"), value_set=texts.column("text_id"))
    tool_idx = pc.index_in(rows.column("tool"), value_set=pa.array(tools))
    stray = pc.or_(pc.is_null(text_idx), pc.is_null(tool_idx))
    if pc.any(stray).as_py():
        bad = rows.filter(stray)
        raise ShardIncomplete(f"{shard_id}: {bad.num_rows} staged rows name a text or tool not in the shard "
                              f"(first: {bad.column('text_id')[0].as_py()} / {bad.column('tool')[0].as_py()})")
    want = texts.num_rows * len(tools)
    if rows.num_rows != want:
        per_text = np.bincount(text_idx.to_numpy(zero_copy_only=False), minlength=texts.num_rows)
        short = np.flatnonzero(per_text < len(tools))
        missing = texts.column("text_id").take(pa.array(short[:3])).to_pylist()
        docs = pc.unique(texts.column("doc_id").take(pa.array(short))).to_pylist()
        raise ShardIncomplete(f"{shard_id}: {rows.num_rows} of {want} annotation rows; {len(short)} texts "
                              f"({len(docs)} documents) lack a tool's row (first: {missing})")
    keyed = rows.append_column("_t", text_idx).append_column("_k", tool_idx)
    return keyed.sort_by([("_t", "ascending"), ("_k", "ascending")]).drop_columns(["_t", "_k"])


def latency_samples(rows: pa.Table, k: int = LATENCY_SAMPLES) -> dict[str, list[float]]:
    """Per tool, milliseconds per call of the rows that called it (evenly spaced, at most k)."""
    n = rows.column("n_candidates").to_numpy(zero_copy_only=False)
    ms = rows.column("tool_ms").to_numpy(zero_copy_only=False)
    tools = np.asarray(rows.column("tool").to_pylist(), dtype=object)
    out = {}
    for tool in sorted(set(tools)):
        m = (tools == tool) & (n > 0) & (ms > 0)
        per_call = ms[m] / n[m]
        if len(per_call):
            pick = np.linspace(0, len(per_call) - 1, min(k, len(per_call))).astype(int)
            out[tool] = [round(float(v), 3) for v in per_call[pick]]
    return out


def commit_shard(run_uri: str, shard: ShardInfo, tools: list[str], staging: str, max_failures: int = 3,
                 fence=None) -> dict:
    """Check, order and commit one shard's staged rows; returns its stats (+ ``latency_ms`` samples). With a
    ``fence`` (``toolformer.run.lease.Fence``) the store refuses the commit once the run's lease is another driver's,
    or once the driver's deadline (as handed out with the fence) has passed on this task's own clock."""
    if fence is not None:
        fence.arm()  # the deadline counts down from here on this node's CLOCK_BOOTTIME (and from its issue)
    store = Store(run_uri)
    texts = conform(store.read_table(shard.path), SHARD)
    if texts.num_rows != shard.n_texts:
        raise ShardIncomplete(f"{shard.shard_id}: the shard file has {texts.num_rows} texts, the manifest {shard.n_texts}")
    staged = read_staged(store, staging, shard.shard_id)
    rows = order_and_check(staged, texts, tools, shard.shard_id)
    annotations = conform(rows, ANNOTATIONS)
    tokens = rows.group_by("text_id", use_threads=False).aggregate([("n_tokens", "max")]).column("n_tokens_max")
    stats = {
        "shard_id": shard.shard_id, "docs": len(pc.unique(texts.column("doc_id"))), "texts": texts.num_rows,
        "rows": annotations.num_rows, "text_tokens": int(pc.sum(pc.fill_null(tokens, 0)).as_py() or 0),
        "funnel": funnel(rows),  # the staged rows: their LM and tool times go into the funnel too
    }
    state = RunState(store, STAGE, max_failures, fence=fence.hold if fence is not None else None)
    stamp = {"lease_epoch": fence.epoch} if fence is not None else None
    state.commit(shard.shard_id, {"texts": conform(texts, TEXTS), "annotations": annotations}, stats, stamp)
    store.delete_dir(staging, shard.shard_id)
    return {**stats, "latency_ms": latency_samples(rows)}
