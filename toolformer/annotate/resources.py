"""Resource arithmetic and wording for the plan check: resources in Ray's units (``memory`` in bytes), shown
in messages with memory in GiB."""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

GIB = 1024**3
EPS = 1e-6
# Ray's own bookkeeping resources of a node, never asked for by a pool.
_IGNORED = re.compile(r"^(node:|object_store_memory$|accelerator_type:|bundle_group_|.*_group_[0-9a-f]+$)")
_HEAD = "node:__internal_head__"


def _num(x: float) -> str:
    if math.isinf(x):
        return "unlimited"
    if abs(x - round(x)) < EPS:
        return str(int(round(x)))
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _q(resource: str, value: float) -> str:
    if resource == "memory":
        return f"{_num(value / GIB)} GiB memory" if not math.isinf(value) else "unlimited memory"
    if resource in ("CPU", "GPU"):
        return f"{_num(value)} {resource}{'s' if resource in ('CPU', 'GPU') and value != 1 else ''}"
    return f"{resource} {_num(value)}"


def _fmt(res: Mapping[str, float]) -> str:
    order = sorted(res, key=lambda k: ({"GPU": 0, "CPU": 1, "memory": 2}.get(k, 3), k))
    return ", ".join(_q(k, res[k]) for k in order) or "nothing"


def _show(res: Mapping[str, float]) -> dict[str, float]:
    """Resources for JSON: memory in GiB (key memory_gib)."""
    out = {}
    for k, v in res.items():
        if k == "memory":
            out["memory_gib"] = round(v / GIB, 3) if not math.isinf(v) else v
        else:
            out[k] = round(v, 4) if not math.isinf(v) else v
    return out


# ---------------------------------------------------------------------------------------------- arithmetic
def _clean(res: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in res.items() if v and float(v) > 0 and not _IGNORED.match(k)}


def _sum(items: Iterable[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        for k, v in item.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _scale(res: Mapping[str, float], n: float) -> dict[str, float]:
    return {k: v * n for k, v in res.items()}


def _fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(v <= have.get(k, 0.0) + EPS * max(1.0, v) for k, v in need.items())


def _take(left: dict[str, float], need: Mapping[str, float]) -> None:
    for k, v in need.items():
        left[k] = left.get(k, 0.0) - v
