"""Which tool a model chose, per evaluation set, and how right each choice was (issue 42, item 6): the paper's claim
is a model that picks among its tools (QA on facts, the Calendar on dates, the Calculator on math, nothing on plain
text), so a report shows the pick, not only the accuracy.

An item's choice is the tool of its first call (``none`` when it called none; ``malformed`` when what it wrote
after ``[`` parsed as no call of its tools), whether or not the call returned a result: what the model decided.
``worked`` counts the choices whose call did return one."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

NONE, MALFORMED = "none", "malformed"


def choice_of(row: dict) -> str:
    calls = row.get("calls") or []
    return (calls[0].get("tool") or MALFORMED) if calls else NONE


def tool_choice(rows: Iterable[dict]) -> dict[str, dict[str, dict]]:
    """Per task, per choice: items, right, accuracy (%), share of the task's items (%), calls that worked.
    ``rows``: the evaluation's per-item rows (``task``, ``correct``, ``calls`` with ``tool`` and ``ok``)."""
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    for row in rows:
        c = counts[row["task"]][choice_of(row)]
        c[0] += 1
        c[1] += bool(row.get("correct"))
        c[2] += bool(row.get("calls") and row["calls"][0].get("ok"))
    out: dict[str, dict[str, dict]] = {}
    for task, by_choice in sorted(counts.items()):
        total = sum(n for n, _, _ in by_choice.values())
        out[task] = {choice: {"n": n, "right": r, "accuracy": round(100 * r / n, 1),
                              "share": round(100 * n / total, 1), "worked": w}
                     for choice, (n, r, w) in sorted(by_choice.items(), key=lambda kv: (kv[0] == NONE, kv[0]))}
    return out


def choice_table(table: dict[str, dict[str, dict]]) -> str:
    """The tool-choice table as markdown: a row per set and choice."""
    lines = ["| set | choice | items | share | accuracy | calls that returned a result |", "|---|---|---|---|---|---|"]
    for task, by_choice in table.items():
        for choice, v in by_choice.items():
            worked = "–" if choice == NONE else f"{v['worked']} of {v['n']}"
            lines.append(f"| {task} | {choice} | {v['n']} | {v['share']} % | {v['accuracy']} % | {worked} |")
    return "\n".join(lines)
