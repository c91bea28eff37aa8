"""The run report: the annotation funnel per tool and the paper's Table 2 (examples with calls per τf)."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

TAU_F = (0.5, 1.0, 2.0)

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


def funnel(annotation_rows: Iterable[dict]) -> dict[str, dict]:
    """Per tool: texts seen and passing the heuristic, positions, samples, parsed, executed, and calls
    (and texts with calls, the paper's Table 2) kept at τf = 0.5 / 1.0 / 2.0."""
    out: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for row in annotation_rows:
        f = out[row["tool"]]
        f["texts_seen"] += 1
        f["texts_passed"] += row["status"] != "heuristic_rejected"
        f[f"status_{row['status']}"] += 1
        for key, col in (("positions", "n_positions"), ("samples", "n_samples"), ("closed", "n_closed"),
                         ("parsed", "n_parsed"), ("candidates", "n_candidates"), ("executed", "n_executed"),
                         ("kept_at_tool_tau_f", "n_kept")):
            f[key] += int(row[col] or 0)
        gains = [c["gain"] for c in row["candidates"] or [] if c.get("gain") is not None]
        for tau in TAU_F:
            hits = sum(g >= tau for g in gains)
            f[f"kept_calls_tau_{tau}"] += hits
            f[f"texts_with_calls_tau_{tau}"] += hits > 0
    return {tool: dict(v) for tool, v in sorted(out.items())}


def format_funnel(f: dict[str, dict]) -> str:
    headers = ["tool"] + [h for _, h in FUNNEL_COLUMNS] + [f"kept τf={t}" for t in TAU_F]
    rows = []
    for tool, v in f.items():
        rows.append([tool] + [str(v.get(k, 0)) for k, _ in FUNNEL_COLUMNS]
                    + [f"{v.get(f'kept_calls_tau_{t}', 0)} ({v.get(f'texts_with_calls_tau_{t}', 0)} texts)" for t in TAU_F])
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
