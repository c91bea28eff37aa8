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
    ("samples", "samples"),
    ("closed", "closed ']'"),
    ("parsed", "parsed"),
    ("candidates", "distinct calls"),
    ("executed", "executed"),
]
_SUMS = (("positions", "n_positions"), ("samples", "n_samples"), ("closed", "n_closed"), ("parsed", "n_parsed"),
         ("candidates", "n_candidates"), ("executed", "n_executed"), ("kept_at_tool_tau_f", "n_kept"))


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
    out: dict[str, dict] = {}
    for tool in sorted(set(tools)):
        rows = tools == tool
        f: dict[str, int] = {"texts_seen": int(rows.sum()), "texts_passed": int((rows & (status != "heuristic_rejected")).sum())}
        for s in sorted(set(status[rows])):
            f[f"status_{s}"] = int((rows & (status == s)).sum())
        for key, col in _SUMS:
            f[key] = int(np.nan_to_num(_np(annotations.column(col)).astype(float))[rows].sum())
        mine = rows[parents] if len(parents) else np.zeros(0, dtype=bool)
        # a tool that returned nothing (input rejected, as the paper drops it) vs a tool that raised (a bug)
        f["rejected_inputs"] = int((mine & rejected).sum())
        f["tool_exceptions"] = int((mine & raised).sum())
        for tau in REPORT_TAU_F:
            hit = mine & (gains >= tau)
            f[f"kept_calls_tau_{tau}"] = int(hit.sum())
            f[f"texts_with_calls_tau_{tau}"] = int(len(np.unique(parents[hit])))
        out[tool] = f
    return out


def format_funnel(f: dict[str, dict]) -> str:
    headers = ["tool"] + [h for _, h in FUNNEL_COLUMNS] + [f"kept τf={t}" for t in REPORT_TAU_F]
    rows = []
    for tool, v in f.items():
        rows.append([tool] + [str(v.get(k, 0)) for k, _ in FUNNEL_COLUMNS]
                    + [f"{v.get(f'kept_calls_tau_{t}', 0)} ({v.get(f'texts_with_calls_tau_{t}', 0)} texts)" for t in REPORT_TAU_F])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def sum_funnels(funnels: Iterable[dict[str, dict]]) -> dict[str, dict]:
    """Funnels of several shards added up (every figure is a count)."""
    out: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for f in funnels:
        for tool, counts in f.items():
            for key, value in counts.items():
                out[tool][key] += value
    return {tool: dict(v) for tool, v in sorted(out.items())}
