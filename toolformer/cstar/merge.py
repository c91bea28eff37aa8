"""C* as a sharded Parquet dataset: the distributed merge that writes it, and where readers find it.

    <run>/cstar/part-NNNNN.parquet   C* rows of annotation shard NNNNN (texts in their shard order)
    <run>/merge.json                 written last: the parts, counts per tool, provenance

The merge runs as Ray tasks, never holding the run in one process: per part, the kept candidates (column
projection, a row filter on ``n_kept``) reduced to each text's best gain per tool and to the part's top
``max_per_tool`` per tool; a tree of reduce tasks keeps the run's top ``max_per_tool`` per tool (memory bounded
by that cap); then per part a task joins the allowed calls with the part's texts and writes its C* file. A
single-process run (one part) goes through the same steps in this process.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolformer.cstar.augment import BEST, augment, best_gains, in_position_set, kept_candidates, result_check, top_per_tool
from toolformer.run.parts import AnnotationRun, RunPart
from toolformer.run.store import Store

CSTAR_DIR = "cstar"
FAN_IN = 8  # top-k tables merged per reduce task: memory stays within FAN_IN x max_per_tool x tools rows


def part_name(part: RunPart) -> str:
    return f"part-{part.index:05d}.parquet"


def _kept(store: Store, part: RunPart, check: bool = False, position_set: str | None = None) -> pa.Table:
    """The part's kept candidates with a result; with ``check`` (``annotate.result_check``) without the
    Calculator calls whose result the text then contradicts; with ``position_set`` (``merge.position_set``) only
    those at the positions that set chose, before anything is ranked: a setting takes exactly its own calls."""
    table = pq.read_table(store.path(part.annotations), filesystem=store.fs,
                          columns=["text_id", "tool", "candidates"], filters=[("n_kept", ">", 0)])
    kept = kept_candidates(table, position_set=position_set)
    if check and kept.num_rows:
        ids = sorted(set(kept.column("text_id").to_pylist()))
        texts = pq.read_table(store.path(part.texts), filesystem=store.fs, columns=["text_id", "text"],
                              filters=[("text_id", "in", ids)])
        kept = result_check(kept, dict(zip(texts.column("text_id").to_pylist(), texts.column("text").to_pylist())))
    return kept


def part_top(run_uri: str, part: RunPart, k: int, check: bool = False, position_set: str | None = None) -> pa.Table:
    """The part's top ``k`` texts per tool by best kept gain."""
    return top_per_tool(best_gains(_kept(Store(run_uri), part, check, position_set)), k)


def reduce_top(k: int, *tables: pa.Table) -> pa.Table:
    return top_per_tool(pa.concat_tables([BEST.empty_table(), *tables]), k)


def _rejections(store: Store, part: RunPart, position_set: str | None = None) -> dict[str, Counter]:
    """Candidates (of ``position_set`` when given) a rule removed before merging, per tool: the MT post-filter,
    and Calculator no-ops (rejected by the tool, so never scored)."""
    from toolformer.tools.calculator import is_no_op

    table = pq.read_table(store.path(part.annotations), filesystem=store.fs, columns=["tool", "candidates"])
    cands = table.column("candidates").combine_chunks()
    tools = table.column("tool").take(pc.list_parent_indices(cands)).to_pylist()
    flat = cands.flatten()
    mine = in_position_set(flat, position_set).to_pylist()
    out = {"mt_post_filter": Counter(), "no_op": Counter()}
    for tool, err, inp, ok in zip(tools, flat.field("error").to_pylist(), flat.field("input").to_pylist(), mine):
        if not ok:
            continue
        if err == "mt_input_after_call":
            out["mt_post_filter"][tool] += 1
        elif err == "no_result" and tool == "Calculator" and is_no_op(inp or ""):
            out["no_op"][tool] += 1
    return out


def write_part(run_uri: str, part: RunPart, allowed: pa.Table, check: bool = False,
               position_set: str | None = None, keep_uncalled: bool = False) -> dict:
    """Join the part's allowed kept calls with its texts, write its C* file (with ``keep_uncalled`` every text of
    the part, those without a call as they are); counts for merge.json (per tool: calls, texts, the largest number
    of calls in one text, calls removed by each rule; texts without a call) and an 8-byte hash per C* text with a
    call's original (duplicates are counted over the texts with calls, which the cap bounds)."""
    store = Store(run_uri)
    unchecked = _kept(store, part, False, position_set)
    kept = _kept(store, part, True, position_set) if check else unchecked
    ids = sorted(set(kept.column("text_id").to_pylist()))
    rows = None
    if ids or keep_uncalled:
        texts = pq.read_table(store.path(part.texts), filesystem=store.fs, columns=["text_id", "doc_id", "text"],
                              **({} if keep_uncalled else {"filters": [("text_id", "in", ids)]}))
        rows = augment(texts, kept, allowed, part.shard_id, keep_uncalled)
        originals = dict(zip(texts.column("text_id").to_pylist(), texts.column("text").to_pylist()))
    removed = _rejections(store, part, position_set)
    allowed_calls = (kept.join(allowed.select(["tool", "text_id"]), keys=["tool", "text_id"], join_type="inner")
                     if kept.num_rows and allowed.num_rows else kept.slice(0, 0))
    kept_per_tool = Counter(kept.column("tool").to_pylist())
    allowed_per_tool = Counter(allowed_calls.column("tool").to_pylist())
    out = {"part": None, "texts": 0, "texts_without_calls": 0, "calls_per_tool": {}, "texts_per_tool": {},
           "max_calls_per_text": {},
           "removed": {"max_per_tool_cap": dict(kept_per_tool - allowed_per_tool),
                       **({"result_check": dict(Counter(unchecked.column("tool").to_pylist()) - kept_per_tool)}
                          if check else {}),
                       "mt_post_filter": dict(removed["mt_post_filter"]), "no_op": dict(removed["no_op"])},
           "hashes": []}
    if rows is None or rows.num_rows == 0:
        out["removed"]["one_call_per_position"] = dict(allowed_per_tool)
        return out
    store.write_table(rows, CSTAR_DIR, part_name(part))
    per_tool, texts_per_tool, most = Counter(), Counter(), Counter()
    for calls in rows.column("calls").to_pylist():
        mine = Counter(c["tool"] for c in calls)
        per_tool.update(mine)
        texts_per_tool.update(mine.keys())
        for tool, n in mine.items():
            most[tool] = max(most[tool], n)
    n_calls = rows.column("n_calls").to_pylist()
    out.update(part=f"{CSTAR_DIR}/{part_name(part)}", texts=rows.num_rows, calls_per_tool=dict(per_tool),
               texts_without_calls=sum(n == 0 for n in n_calls),
               texts_per_tool=dict(texts_per_tool), max_calls_per_text=dict(most),
               hashes=[hashlib.blake2b(originals[t].encode(), digest_size=8).hexdigest()
                       for t, n in zip(rows.column("text_id").to_pylist(), n_calls) if n])
    out["removed"]["one_call_per_position"] = dict(allowed_per_tool - per_tool)
    return out


def _runner(parallel: bool) -> Callable[..., list]:
    """Map a function over argument tuples: as Ray tasks (results in order), or in this process."""
    if not parallel:
        return lambda fn, calls, **_: [fn(*args) for args in calls]
    import ray

    def run(fn, calls: Sequence[tuple], **opts: Any) -> list:
        remote = ray.remote(fn).options(**opts)
        return ray.get([remote.remote(*args) for args in calls])

    return run


def run_merge(output_dir: str, max_per_tool: int, cfg=None, parallel: bool | None = None) -> dict:
    """Merge a run's committed parts into ``<output_dir>/cstar/``; returns the summary written to merge.json.
    ``parallel`` (default: for sharded runs) runs the steps as Ray tasks, otherwise in this process."""
    t0 = time.perf_counter()
    run = AnnotationRun(output_dir)
    parts = run.parts()
    store = run.store
    parallel = run.sharded if parallel is None else parallel
    check = bool(getattr(getattr(cfg, "annotate", None), "result_check", False))
    position_set = getattr(getattr(cfg, "merge", None), "position_set", None)
    keep_uncalled = bool(getattr(getattr(cfg, "merge", None), "keep_uncalled", False))
    opts: dict[str, Any] = {}
    if parallel:
        import ray

        from toolformer.cluster import init_ray
        from toolformer.config import RunConfig

        init_ray(cfg or RunConfig(output_dir=output_dir))
        c = (cfg or RunConfig()).ray
        opts = {"num_cpus": c.io_num_cpus, "memory": c.io_memory_gb * 1024**3}
    pmap = _runner(parallel)
    store.delete_file("merge.json")  # the commit point of a merge: a reader never sees a half-written C*
    store.delete_dir(CSTAR_DIR)
    if parallel:
        # Top-k per part, then a tree of reduce tasks: only object refs (never rows) pass through the driver.
        remote_top = ray.remote(part_top).options(**opts)
        level = [remote_top.remote(store.uri, p, max_per_tool, check, position_set) for p in parts]
        remote_reduce = ray.remote(reduce_top).options(**opts)
        while len(level) > 1:
            level = [remote_reduce.remote(max_per_tool, *level[i : i + FAN_IN]) for i in range(0, len(level), FAN_IN)]
        allowed = level[0]  # an object ref, handed to every write task as it is
    else:
        allowed = reduce_top(max_per_tool, *[part_top(store.uri, p, max_per_tool, check, position_set) for p in parts])
    written = pmap(write_part, [(store.uri, p, allowed, check, position_set, keep_uncalled) for p in parts], **opts)
    per_tool: Counter = Counter()
    texts_per_tool: Counter = Counter()
    most: Counter = Counter()
    removed: dict[str, Counter] = {}
    hashes: Counter = Counter()
    for w in written:
        per_tool.update(w["calls_per_tool"])
        texts_per_tool.update(w["texts_per_tool"])
        for tool, n in w["max_calls_per_text"].items():
            most[tool] = max(most[tool], n)
        for rule, counts in w["removed"].items():
            removed.setdefault(rule, Counter()).update(counts)
        hashes.update(w["hashes"])
    checks = {
        "calls_per_text": {t: {"texts": texts_per_tool[t], "calls": per_tool[t],
                               "mean": round(per_tool[t] / texts_per_tool[t], 3), "max": most[t]}
                           for t in sorted(per_tool)},
        "duplicate_texts": sum(n - 1 for n in hashes.values() if n > 1),  # C* texts with calls whose original is another's
        "removed_by_rule": {rule: dict(sorted(c.items())) for rule, c in sorted(removed.items())},
    }
    summary = {"cstar": store.path(CSTAR_DIR), "parts": [w["part"] for w in written if w["part"]],
               "texts": sum(w["texts"] for w in written), "calls": sum(per_tool.values()),
               **({"keep_uncalled": True, "texts_without_calls": sum(w.get("texts_without_calls", 0) for w in written),
                   "texts_with_calls": sum(w["texts"] - w.get("texts_without_calls", 0) for w in written)}
                  if keep_uncalled else {}),
               "calls_per_tool": dict(sorted(per_tool.items())), "max_per_tool": max_per_tool, "checks": checks,
               "result_check": check, "position_set": position_set,
               **run.info(), "seconds": round(time.perf_counter() - t0, 2)}
    from toolformer.cstar.card import write_card

    write_card(store.uri, summary, CSTAR_DIR)  # cstar/README.md: YAML header, sources, licences, funnel
    store.write_json(summary, "merge.json")
    return summary


def cstar_files(path: str) -> list[str]:
    """C* Parquet files from a run directory (its merge.json), a C* folder, a glob or a single file (any URI)."""
    import fsspec

    store = Store(path)
    if store.exists("merge.json"):
        return [store.path(p) if store.local else f"{path.rstrip('/')}/{p}" for p in store.read_json("merge.json")["parts"]]
    fs, _, found = fsspec.get_fs_token_paths(path)
    files: list[str] = []
    for f in found:
        if fs.isdir(f):
            files += sorted(x for x in fs.find(f) if x.endswith(".parquet") and "/." not in x)
        elif f.endswith(".parquet"):
            files.append(f)
    if not files:
        raise FileNotFoundError(f"no C* in {path}: run jobs.merge first (or give a C* folder, glob or file)")
    return files if store.local else [fs.unstrip_protocol(f) for f in files]
