"""The run report: the annotation funnel per tool and the paper's Table 2 (examples with calls per τf).

The funnel is computed on an annotations table in Arrow (a shard's, or a local run's), so a commit never turns
rows into Python objects; shards' funnels add up (every figure is a count).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The τf values the report shows (the paper's Table 2); scoring stays exact down to the smallest of them.
REPORT_TAU_F = (0.5, 1.0, 2.0)

FUNNEL_COLUMNS = [
    ("texts_seen", "texts"),
    ("texts_passed", "passed heuristic"),
    ("positions", "positions"),
    ("pruned", "pruned"),
    ("samples", "samples"),
    ("closed", "closed ']'"),
    ("parsed", "parsed"),
    ("candidates", "distinct calls"),
    ("executed", "executed"),
]
_SUMS = (("positions", "n_positions"), ("pruned", "n_pruned"), ("samples", "n_samples"),
         ("sampled_tokens", "n_sampled_tokens"), ("closed", "n_closed"), ("parsed", "n_parsed"),
         ("candidates", "n_candidates"), ("executed", "n_executed"), ("kept_at_tool_tau_f", "n_kept"),
         ("lm_ms", "lm_ms"), ("tool_ms", "tool_ms"))  # times only where the table has them (work, staged rows)


def _np(arr) -> np.ndarray:
    return (arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr).to_numpy(zero_copy_only=False)


def funnel(annotations: pa.Table) -> dict[str, dict]:
    """Per tool: texts seen and passing the heuristic, rows per status, positions, samples, parsed, executed,
    and calls (and texts with calls, the paper's Table 2) kept at τf = 0.5 / 1.0 / 2.0."""
    if annotations.num_rows == 0:
        return {}
    tools = np.asarray(_np(annotations.column("tool")), dtype=object)
    status = np.asarray(_np(annotations.column("status")), dtype=object)
    cands = annotations.column("candidates").combine_chunks()
    parents = pc.list_parent_indices(cands).to_numpy(zero_copy_only=False)
    flat = cands.flatten()
    gains = pc.fill_null(flat.field("gain"), float("-inf")).to_numpy(zero_copy_only=False)
    errors = flat.field("error")
    rejected = pc.fill_null(pc.equal(errors, "no_result"), False).to_numpy(zero_copy_only=False)
    raised = pc.fill_null(pc.starts_with(errors, "tool_exception"), False).to_numpy(zero_copy_only=False)
    timed_out = pc.fill_null(pc.starts_with(errors, "tool_timeout"), False).to_numpy(zero_copy_only=False)
    # of those, the calls that were ended (their worker process killed and replaced), not merely abandoned
    ended = pc.fill_null(pc.starts_with(errors, "tool_timeout: ended"), False).to_numpy(zero_copy_only=False)
    died = pc.fill_null(pc.starts_with(errors, "tool_exception: ToolWorkerDied"), False).to_numpy(zero_copy_only=False)
    # Table 2 counts calls that C* can hold: MT calls removed by the post-filter are left out
    post_filtered = pc.fill_null(pc.equal(errors, "mt_input_after_call"), False).to_numpy(zero_copy_only=False)
    out: dict[str, dict] = {}
    for tool in sorted(set(tools)):
        rows = tools == tool
        f: dict[str, int] = {"texts_seen": int(rows.sum()), "texts_passed": int((rows & (status != "heuristic_rejected")).sum())}
        for s in sorted(set(status[rows])):
            f[f"status_{s}"] = int((rows & (status == s)).sum())
        for key, col in _SUMS:
            if col in annotations.column_names:
                f[key] = int(round(np.nan_to_num(_np(annotations.column(col)).astype(float))[rows].sum()))
        mine = rows[parents] if len(parents) else np.zeros(0, dtype=bool)
        # a tool that returned nothing (input rejected, as the paper drops it) vs a tool that raised (a bug)
        f["rejected_inputs"] = int((mine & rejected).sum())
        f["tool_exceptions"] = int((mine & raised).sum())
        f["tool_timeouts"] = int((mine & timed_out).sum())  # no answer within annotate.tool_timeout_s
        f["tool_calls_ended"] = int((mine & ended).sum())  # ... and ended: the worker running it was killed
        f["tool_worker_deaths"] = int((mine & died).sum())  # its worker died during the call (within exceptions)
        for tau in REPORT_TAU_F:
            hit = mine & (gains >= tau) & ~post_filtered
            f[f"kept_calls_tau_{tau}"] = int(hit.sum())
            f[f"texts_with_calls_tau_{tau}"] = int(len(np.unique(parents[hit])))
        out[tool] = f
    return out


def yields(f: dict[str, dict]) -> dict[str, dict]:
    """Per tool, what the sampling bought: parse rate, kept calls per 1,000 sampled tokens, LM-seconds per kept
    call (derived from a funnel's counts, so they hold for a shard or a whole run)."""
    out = {}
    for tool, v in f.items():
        kept, tokens, lm_s = v.get("kept_at_tool_tau_f", 0), v.get("sampled_tokens", 0), v.get("lm_ms", 0) / 1000
        out[tool] = {
            "sampled_tokens": tokens, "pruned_positions": v.get("pruned", 0), "kept": kept,
            "parse_rate": round(v["parsed"] / v["closed"], 4) if v.get("closed") else None,
            "kept_per_1k_sampled_tokens": round(1000 * kept / tokens, 3) if tokens else None,
            "lm_seconds": round(lm_s, 2), "lm_seconds_per_kept_call": round(lm_s / kept, 2) if kept else None,
        }
    return out


def format_yields(f: dict[str, dict]) -> str:
    rows = [["tool", "sampled tokens", "pruned positions", "parse rate", "kept", "kept / 1k sampled tokens",
             "LM s / kept call"]]
    for tool, y in yields(f).items():
        rows.append([tool, str(y["sampled_tokens"]), str(y["pruned_positions"]),
                     "-" if y["parse_rate"] is None else f"{100 * y['parse_rate']:.0f}%", str(y["kept"]),
                     "-" if y["kept_per_1k_sampled_tokens"] is None else f"{y['kept_per_1k_sampled_tokens']:.2f}",
                     "-" if y["lm_seconds_per_kept_call"] is None else f"{y['lm_seconds_per_kept_call']:.1f}"])
    return _table(rows)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[1:]])


def format_funnel(f: dict[str, dict], docs_skipped: dict | None = None) -> str:
    """The funnel per tool; with ``docs_skipped`` (a ``SkipLog.as_dict()``: the corpus's skipped records) a line
    above it says what never became a text, per reason (``contaminated``: shares an n-gram with an evaluation input)."""
    rows = [["tool"] + [h for _, h in FUNNEL_COLUMNS] + [f"kept τf={t}" for t in REPORT_TAU_F]]
    for tool, v in f.items():
        rows.append([tool] + [str(v.get(k, 0)) for k, _ in FUNNEL_COLUMNS]
                    + [f"{v.get(f'kept_calls_tau_{t}', 0)} ({v.get(f'texts_with_calls_tau_{t}', 0)} texts)" for t in REPORT_TAU_F])
    return (skipped_line(docs_skipped) + "\n\n" if docs_skipped else "") + _table(rows)


def skipped_line(docs_skipped: dict) -> str:
    by = docs_skipped.get("by_reason") or {}
    parts = ", ".join(f"{reason} {n}" for reason, n in sorted(by.items())) or "none"
    return f"Documents skipped before annotation: {parts}."


def sum_funnels(funnels: Iterable[dict[str, dict]]) -> dict[str, dict]:
    """Funnels of several shards added up (every figure is a count)."""
    out: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for f in funnels:
        for tool, counts in f.items():
            for key, value in counts.items():
                out[tool][key] += value
    return {tool: dict(v) for tool, v in sorted(out.items())}
