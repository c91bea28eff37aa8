"""Packing the pools' actors onto nodes for the plan check (first-fit decreasing over the nodes up now, then the
nodes the autoscaler may add, by several node-choice rules), and the advice its messages give."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

from toolformer.annotate.resources import EPS, _fits, _fmt, _q, _take
from toolformer.annotate.supply import NodeType, Supply

PoolDemand = Any  # toolformer.annotate.plan.PoolDemand (its pool, key, strategy, units())


class _Packing:
    """First-fit decreasing over the nodes up now, then nodes the autoscaler may add (a node type chosen by
    ``rule`` when no open node has room)."""

    def __init__(self, supply: Supply, rule: Callable[[list[NodeType], dict], NodeType]):
        self.supply, self.rule = supply, rule
        self.nodes: list[tuple[NodeType, dict[str, float]]] = [
            (t, dict(t.resources)) for t in supply.node_types for _ in range(t.count)]
        self.added: dict[str, int] = {}
        self.scale = {}
        for t in supply.node_types:
            for k, v in t.resources.items():
                self.scale[k] = max(self.scale.get(k, 0.0), v)

    def copy(self) -> "_Packing":
        other = _Packing.__new__(_Packing)
        other.supply, other.rule, other.scale = self.supply, self.rule, self.scale
        other.nodes = [(t, dict(left)) for t, left in self.nodes]
        other.added = dict(self.added)
        return other

    def size(self, unit: Mapping[str, float]) -> tuple:
        share = max((v / self.scale[k] if self.scale.get(k) else math.inf) for k, v in unit.items()) if unit else 0
        return (share, unit.get("GPU", 0.0), unit.get("CPU", 0.0), unit.get("memory", 0.0))

    def place(self, unit: dict[str, float]) -> bool:
        for _, left in self.nodes:
            if _fits(unit, left):
                _take(left, unit)
                return True
        room = self.supply.may_add_nodes() - sum(self.added.values())
        if room <= 0:
            return False
        types = [t for t in self.supply.node_types if not t.head and self.added.get(t.name, 0) < t.may_add
                 and _fits(unit, t.resources)]
        if not types:
            return False
        t = self.rule(types, unit)
        left = dict(t.resources)
        _take(left, unit)
        self.nodes.append((t, left))
        self.added[t.name] = self.added.get(t.name, 0) + 1
        return True

    def place_all(self, units: list[tuple[PoolDemand, dict]]) -> list[tuple[PoolDemand, dict]]:
        actors = sorted([x for x in units if x[0].pool != "io"], key=lambda x: self.size(x[1]), reverse=True)
        unplaced = [x for x in actors if not self.place(x[1])]
        unplaced += [x for x in units if x[0].pool == "io" and not self.place(x[1])]
        return unplaced

    def grow(self, d: PoolDemand, most: int) -> int:
        n = 0
        while n < most and all(self.place(u) for u in d.units()):
            n += 1
        return n

    def used(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t, left in self.nodes:
            if left != t.resources:
                out[t.name] = out.get(t.name, 0) + 1
        return out


def _capacity(t: NodeType, scale_keys: Iterable[str] = ("GPU", "CPU", "memory")) -> tuple:
    return tuple(t.resources.get(k, 0.0) for k in scale_keys)


def _rule_smallest(types: list[NodeType], unit: dict) -> NodeType:
    return min(types, key=_capacity)


def _rule_largest(types: list[NodeType], unit: dict) -> NodeType:
    return max(types, key=_capacity)


def _rule_spare_gpus(types: list[NodeType], unit: dict) -> NodeType:
    """A unit that asks no GPU goes to a node without GPUs when there is one; else the smallest node."""
    if not unit.get("GPU"):
        return min(types, key=lambda t: (t.resources.get("GPU", 0.0) > 0,) + _capacity(t))
    return min(types, key=_capacity)


def _rule_most_copies(types: list[NodeType], unit: dict) -> NodeType:
    """The node type that holds the most copies of this unit (fewest nodes for a pool of them)."""
    def copies(t: NodeType) -> float:
        return min((t.resources.get(k, 0.0) / v for k, v in unit.items() if v > 0), default=math.inf)
    return max(types, key=lambda t: (copies(t),) + tuple(-x for x in _capacity(t)))


_RULES = (_rule_spare_gpus, _rule_smallest, _rule_largest, _rule_most_copies)


# ---------------------------------------------------------------------------------------------- messages
def _shortfall(unit: Mapping[str, float], types: list[NodeType]) -> str:
    if not types:
        return "the cluster has no node and may add none"
    parts = []
    for k, v in unit.items():
        best = max(t.resources.get(k, 0.0) for t in types)
        if best + EPS < v:
            parts.append(f"no node has more than {_q(k, best)}" if best else f"no node offers {k}")
    if not parts:
        parts.append("no single node has all of it")
    kinds = ", ".join(f"{t.name} ({_fmt(t.resources)})" for t in types)
    return "; ".join(parts) + f" (nodes: {kinds})"


def _advice(d: PoolDemand, unit: Mapping[str, float], types: list[NodeType]) -> str:
    if d.pool == "io":
        return "lower ray.io_num_cpus / ray.io_memory_gb"
    short = [k for k, v in unit.items() if max((t.resources.get(k, 0.0) for t in types), default=0.0) + EPS < v]
    tips = []
    if d.strategy and "GPU" in short:
        tips.append("use nodes with as many GPUs as the engine spans, or lower engine.tensor_parallel_size / "
                    "pipeline_parallel_size (engine.placement_strategy=PACK lets pipeline stages span nodes)")
    for k, key in (("GPU", "num_gpus"), ("CPU", "num_cpus"), ("memory", "memory_gb")):
        if k in short and not (k == "GPU" and d.strategy):
            tips.append(f"lower {d.key}.{key}")
    tips.append("or add a node type that holds it" if tips
                else f"lower what {d.key} asks, or add a node type that holds it")
    return "; ".join(tips)


def _advice_total(resources: list[str], pools: list[PoolDemand]) -> str:
    keys = " / ".join(f"{d.key}.actors" for d in pools if d.pool != "io")
    per = sorted({{"GPU": "num_gpus", "CPU": "num_cpus", "memory": "memory_gb"}.get(k, "resources") for k in resources})
    what = " and ".join({"GPU": "GPUs", "CPU": "CPUs"}.get(k, k) for k in resources)
    return (f"lower {keys or 'ray.io_num_cpus / ray.io_memory_gb'} (or each actor's {' / '.join(per)}), or let the "
            f"cluster add nodes with more {what} (a node type's max_workers / maxReplicas)")


def _nodes_text(supply: Supply) -> str:
    now = ", ".join(f"{t.name} x{t.count}" for t in supply.node_types if t.count) or "none"
    add = ", ".join(f"{t.name} x{'unlimited' if t.max_count is None else int(t.may_add)}"
                    for t in supply.node_types if not t.head and t.may_add > 0) or "none"
    cap = f", {supply.max_workers} workers at most" if supply.max_workers is not None else ""
    return f"the nodes up now ({now}) and those the autoscaler may add ({add}{cap})"
