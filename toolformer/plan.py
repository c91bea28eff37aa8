"""The plan check: before any actor pool starts, do the pools fit the cluster (the nodes it has and the nodes its
autoscaler may add)? A plan that cannot fit is an error at once, never a run that waits for actors forever.

- ``pool_demands(cfg)``: what each pool of the annotate run asks, derived as ``toolformer.annotate.distributed``
  asks Ray Data for it: per actor its CPUs, GPUs, memory and custom resources (``ray.<pool>``), or, for an LM
  pool whose engine spans GPUs (tensor x pipeline parallel), its placement group's bundles; the pool's smallest
  size (``actors``, what Ray Data starts before any work) and its largest (``max_actors``); and the I/O tasks.
- ``check_plan(demands, supply)``: the problems (an empty list: it fits). A bundle no node type can hold, the
  totals of every resource against what the cluster has and may add, then every pool's smallest size at the same
  time, node by node (first-fit decreasing, several node-choice rules: a plan is refused only when none packs it),
  plus one I/O task beside them. ``assess`` also returns warnings (a pool that cannot grow to ``max_actors``) and
  the figures.
- ``live_supply(cfg)``: the nodes of the running Ray cluster and what its autoscaler may add, read from (first
  that answers) ``ray.cluster_file``, the autoscaler's cluster config in the GCS, the Ray cluster launcher's
  ``~/ray_bootstrap_config.yaml`` on the head, or the RayCluster object on KubeRay; else "may add 0", with a note.
- ``supply_from_file(path)``: the supply a cluster file declares (launcher YAML, RayCluster or RayJob manifest).
- ``check_plan_or_exit(cfg)``: what the annotate driver calls right after ``ray.init``.
- ``render(text)``: fills ``${TOOLFORMER_...}`` placeholders of a cluster file from the environment.

Resources are in Ray's units (``memory`` in bytes); messages show memory in GiB.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from toolformer.config import RunConfig

GIB = 1024**3
EPS = 1e-6
# Ray's own bookkeeping resources of a node, never asked for by a pool.
_IGNORED = re.compile(r"^(node:|object_store_memory$|accelerator_type:|bundle_group_|.*_group_[0-9a-f]+$)")
_HEAD = "node:__internal_head__"


# ---------------------------------------------------------------------------------------------- demand
@dataclass
class PoolDemand:
    """One actor pool (or the I/O tasks) of the run: what one actor asks for and how many start."""

    pool: str  # select, sample, execute, score, lm; "io" for the read / stage-write / commit tasks
    key: str  # the config that sets it, for messages: "ray.sample"
    actors: int  # the smallest size: Ray Data starts these before any work (io: one task)
    max_actors: int  # the size the pool may grow to
    actor: dict[str, float]  # what one actor asks for itself (its own CPUs and memory, inside its group if any)
    bundles: list[dict[str, float]]  # what one actor reserves: [actor], or its placement group's bundles
    strategy: Optional[str] = None  # STRICT_PACK (one node) or PACK (may span nodes) for a placement group
    how: str = ""  # how the per-actor figure comes about, for messages

    @property
    def per_actor(self) -> dict[str, float]:
        return _sum(self.bundles)

    @property
    def totals(self) -> dict[str, float]:
        return _scale(self.per_actor, self.actors)

    def units(self) -> list[dict[str, float]]:
        """Per actor, the pieces the scheduler places one node each: the whole group (STRICT_PACK, or no group),
        or each bundle apart (PACK)."""
        return [dict(b) for b in self.bundles] if self.strategy == "PACK" else [self.per_actor]

    def to_dict(self) -> dict:
        return {"pool": self.pool, "key": self.key, "actors": self.actors, "max_actors": self.max_actors,
                "per_actor": _show(self.per_actor), "bundles": [_show(b) for b in self.bundles],
                "strategy": self.strategy, "totals": _show(self.totals), "how": self.how}


def pool_names(cfg: RunConfig) -> list[str]:
    """The pools of the run, in pipeline order (as ``annotation_dataset`` builds them)."""
    return ["select"] + (["lm"] if cfg.ray.fuse_lm else ["sample", "execute", "score"])


def pool_demands(cfg: RunConfig) -> list[PoolDemand]:
    """Every pool's demand, then the I/O tasks' (one task must fit beside the actors: read, stage-write and
    commit tasks run one at a time at least). Mirrors ``distributed._pool_args`` and ``placement.lm_pool_args``."""
    from toolformer.annotate.placement import LM_POOLS, actor_bundles, world_size

    r = cfg.ray
    n = world_size(cfg)
    out = []
    for name in pool_names(cfg):
        res = getattr(r, name)
        size = max(1, res.actors)
        largest = max(size, res.max_actors or size)
        own = _clean({"CPU": res.num_cpus, "memory": res.memory_gb * GIB})
        if name in LM_POOLS and n > 1:  # the GPUs and custom resources are the group's bundles
            groups = [_clean(b) for b in actor_bundles(cfg, res)]
            how = (f"a placement group of {n} bundles (engine.tensor_parallel_size x pipeline_parallel_size = {n}), "
                   f"{cfg.engine.placement_strategy}")
            out.append(PoolDemand(name, f"ray.{name}", size, largest, own, groups, cfg.engine.placement_strategy, how))
        else:
            actor = dict(own)
            if res.num_gpus:
                actor["GPU"] = res.num_gpus
            actor.update(res.resources)
            actor = _clean(actor)
            out.append(PoolDemand(name, f"ray.{name}", size, largest, actor, [dict(actor)]))
    io = _clean({"CPU": r.io_num_cpus, "memory": r.io_memory_gb * GIB})
    out.append(PoolDemand("io", "ray.io_num_cpus / ray.io_memory_gb", 1, 1, io, [dict(io)],
                          how="the read, stage-write and commit tasks (one at a time at least)"))
    return out


# ---------------------------------------------------------------------------------------------- supply
@dataclass
class NodeType:
    """Nodes of one shape: ``count`` up now (for a cluster file: the nodes it starts with), at most ``max_count``
    of them (the autoscaler's max workers of the type; None: no limit)."""

    name: str
    resources: dict[str, float]
    count: int = 0
    max_count: Optional[int] = 0
    head: bool = False

    @property
    def may_add(self) -> float:
        if self.max_count is None:
            return math.inf
        return max(0, self.max_count - self.count)

    def to_dict(self) -> dict:
        return {"name": self.name, "resources": _show(self.resources), "count": self.count,
                "max_count": self.max_count, "may_add": None if self.max_count is None else int(self.may_add),
                "head": self.head}


@dataclass
class Supply:
    """What the cluster has and may add; ``max_workers`` caps the worker (non-head) nodes in all."""

    node_types: list[NodeType]
    max_workers: Optional[int] = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def workers_now(self) -> int:
        return sum(t.count for t in self.node_types if not t.head)

    def may_add_nodes(self) -> float:
        """Worker nodes the autoscaler may still add in all (the cluster-wide cap and each type's)."""
        per_type = sum(t.may_add for t in self.node_types if not t.head)
        if self.max_workers is None:
            return per_type
        return min(per_type, max(0, self.max_workers - self.workers_now()))

    def has(self, resource: str) -> float:
        return sum(t.count * t.resources.get(resource, 0.0) for t in self.node_types)

    def may_add(self, resource: str) -> float:
        """The most of one resource the autoscaler may add (largest nodes first, within the caps)."""
        left, total = self.may_add_nodes(), 0.0
        for t in sorted(self.node_types, key=lambda t: -t.resources.get(resource, 0.0)):
            per = t.resources.get(resource, 0.0)
            if t.head or per <= 0 or left <= 0:
                continue
            k = min(t.may_add, left)
            if math.isinf(k):
                return math.inf
            total += k * per
            left -= k
        return total

    def to_dict(self) -> dict:
        return {"source": self.source, "max_workers": self.max_workers,
                "node_types": [t.to_dict() for t in self.node_types], "notes": list(self.notes)}


# ---------------------------------------------------------------------------------------------- the check
@dataclass
class Assessment:
    problems: list[str]
    warnings: list[str]
    demands: list[PoolDemand]
    supply: Supply
    nodes_used: dict[str, int] = field(default_factory=dict)  # per node type, nodes the smallest plan needs

    @property
    def fits(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        demand = [d.to_dict() for d in self.demands]
        totals = _sum([d.totals if d.pool != "io" else d.per_actor for d in self.demands])
        supply = self.supply.to_dict()
        supply["has"] = _show({k: self.supply.has(k) for k in totals})
        supply["may_add"] = {k: (None if math.isinf(v) else v) for k, v in
                             _show({k: self.supply.may_add(k) for k in totals}).items()}
        return {"fits": not self.problems, "problems": self.problems, "warnings": self.warnings,
                "demand": demand, "demand_total": _show(totals), "supply": supply, "nodes_used": self.nodes_used}


def check_plan(demands: list[PoolDemand], supply: Supply) -> list[str]:
    """The reasons the pools' smallest sizes (and one I/O task) cannot all run on this cluster; [] when they fit."""
    return assess(demands, supply).problems


def assess(demands: list[PoolDemand], supply: Supply) -> Assessment:
    pools = [d for d in demands if d.pool != "io"]
    io = [d for d in demands if d.pool == "io"]
    problems: list[str] = []
    warnings: list[str] = []
    usable = [t for t in supply.node_types if t.count > 0 or t.may_add > 0]

    # 1. An actor of a placement group runs inside one of its bundles: one must hold its own request.
    for d in pools:
        if d.strategy and not any(_fits(d.actor, b) for b in d.bundles):
            problems.append(f"{d.key}: an actor asks {_fmt(d.actor)} for itself, which none of its placement group's "
                            f"bundles holds ({'; '.join(_fmt(b) for b in d.bundles)}): Ray cannot create it")

    # 2. Every piece must fit one node of some type.
    broken = set()
    for d in pools + io:
        for unit in {json.dumps(u, sort_keys=True): u for u in d.units()}.values():
            if any(_fits(unit, t.resources) for t in usable):
                continue
            broken.add(d.pool)
            what = "one actor" if d.pool != "io" else "one I/O task"
            if d.strategy == "STRICT_PACK" and len(d.bundles) > 1:
                what += f" ({d.how}: all on one node)"
            elif d.strategy == "PACK":
                what = "one bundle of an actor's placement group"
            short = _shortfall(unit, usable)
            problems.append(f"{d.key}: {what} asks {_fmt(unit)}, which no node holds: {short} - "
                            f"{_advice(d, unit, usable)}")

    # 3. Totals of each resource, every pool at its smallest size plus one I/O task; one problem per set of pools.
    if not broken:
        need: dict[str, list[tuple[PoolDemand, float]]] = {}
        for d in pools + io:
            for k, v in (d.totals if d.pool != "io" else d.per_actor).items():
                need.setdefault(k, []).append((d, v))
        lacking: dict[tuple, list[str]] = {}  # the pools asking, and the resources they lack together
        for k, parts in need.items():
            total = sum(v for _, v in parts)
            if total <= supply.has(k) + supply.may_add(k) + EPS:
                continue
            lacking.setdefault(tuple(d.key for d, v in parts if v > 0), []).append(k)
        for keys, resources in lacking.items():
            asking = [d for d in pools if d.key in keys]
            with_io = [d for d in io if d.key in keys]
            one = len(asking) == 1

            def each(d: PoolDemand) -> str:
                per = _fmt({k: d.per_actor[k] for k in resources if k in d.per_actor})
                return ("" if one else f"{d.key}: ") + f"{d.actors} actor{'s' * (d.actors != 1)} x {per}"

            total = {k: sum(v for _, v in need[k]) for k in resources}
            has = _fmt({k: supply.has(k) for k in resources}) if any(supply.has(k) for k in resources) else "none"
            add = {k: supply.may_add(k) for k in resources}
            add_text = _fmt(add) if any(add.values()) else "0"
            if asking:
                own = _sum([{k: d.totals[k] for k in resources if k in d.totals} for d in asking])
                text = (f"{' and '.join(d.key for d in asking)} {'asks' if one else 'ask'} {_fmt(own)} "
                        f"({'; '.join(each(d) for d in asking)})")
                if with_io:
                    task = _fmt({k: with_io[0].per_actor.get(k, 0.0) for k in resources})
                    text += f", {_fmt(total)} with one I/O task ({task})"
            else:
                text = f"one I/O task asks {_fmt(total)}"
            problems.append(f"{text}, the cluster has {has} and may add {add_text} - "
                            f"{_advice_total(resources, asking or with_io)}")

    nodes_used: dict[str, int] = {}
    if not problems:
        # 4. Node by node, every pool's smallest size at once, then one I/O task.
        units = [(d, u) for d in pools for _ in range(d.actors) for u in d.units()]
        units += [(d, d.per_actor) for d in io]
        best = None
        for rule in _RULES:
            state = _Packing(supply, rule)
            unplaced = state.place_all(units)
            if not unplaced:
                best = (state, [])
                break
            if best is None or len(unplaced) < len(best[1]):
                best = (state, unplaced)
        state, unplaced = best
        if unplaced:
            by_pool: dict[str, list] = {}
            for d, u in unplaced:
                by_pool.setdefault(d.key, []).append((d, u))
            parts = []
            for key, items in by_pool.items():
                d, u = items[0]
                if d.pool == "io":
                    parts.append(f"one I/O task ({_fmt(u)}) finds no room beside the pools' actors")
                else:
                    parts.append(f"{key}: {len(items)} of its {d.actors * len(d.units())} "
                                 f"{'actors' if len(d.units()) == 1 else 'bundles'} ({_fmt(u)} each) find no node "
                                 f"with room")
            problems.append("the pools' smallest sizes do not fit node by node, although the totals do: "
                            + "; ".join(parts) + f" (first-fit decreasing over {_nodes_text(supply)}) - lower "
                            "the pools' actors or what each actor asks (num_cpus, memory_gb) so that whole actors "
                            "fit the nodes, or use larger nodes")
        else:
            nodes_used = state.used()
            # 5. How far each pool may grow beside the others' smallest sizes.
            for d in pools:
                if d.max_actors <= d.actors:
                    continue
                more = state.copy().grow(d, d.max_actors - d.actors)
                if d.actors + more < d.max_actors:
                    warnings.append(f"{d.key} may grow to {d.max_actors} actors (max_actors), the cluster holds "
                                    f"{d.actors + more} of them beside the other pools' smallest sizes: the rest would "
                                    "stay pending (harmless, but no faster)")
    return Assessment(problems, warnings, demands, supply, nodes_used)


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


# ---------------------------------------------------------------------------------------------- cluster files
_VAR = re.compile(r"\$\{(TOOLFORMER_[A-Z0-9_]+)(?::-([^}]*))?\}")


def render(text: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """Fill the ``${TOOLFORMER_NAME}`` / ``${TOOLFORMER_NAME:-default}`` placeholders of a cluster file from the
    environment (an empty value counts as unset, as in the shell). Other ``${...}`` (shell variables of the
    file's commands) stay as they are. A placeholder without a default whose variable is unset is an error."""
    env = os.environ if environ is None else environ
    missing: list[str] = []

    def sub(m: re.Match) -> str:
        value = env.get(m.group(1))
        if value:
            return value
        if m.group(2) is not None:
            return m.group(2)
        missing.append(m.group(1))
        return m.group(0)

    # Comment lines stay as written (they show the placeholders to the reader).
    out = "".join(line if line.lstrip().startswith("#") else _VAR.sub(sub, line) for line in text.splitlines(True))
    if missing:
        raise ValueError(f"set {', '.join(sorted(set(missing)))} in the environment: the file has no default for it")
    return out


def load_cluster_file(path: str | Path, environ: Optional[Mapping[str, str]] = None) -> list[dict]:
    """The YAML documents of a cluster file, rendered."""
    import yaml

    return [d for d in yaml.safe_load_all(render(Path(path).read_text(), environ)) if isinstance(d, dict)]


def supply_from_file(path: str | Path, environ: Optional[Mapping[str, str]] = None) -> Supply:
    """The supply a launcher YAML or a KubeRay RayCluster / RayJob manifest declares."""
    for doc in load_cluster_file(path, environ):
        if "available_node_types" in doc:
            return supply_from_launcher(doc, source=str(path))
        if doc.get("kind") in ("RayCluster", "RayJob"):
            return supply_from_kuberay(doc, source=str(path))
    raise ValueError(f"{path}: neither a Ray cluster launcher config (available_node_types) nor a KubeRay "
                     "RayCluster / RayJob manifest")


def supply_from_launcher(cfg: Mapping[str, Any], source: str = "launcher config") -> Supply:
    """Node types of a Ray cluster launcher config (or the autoscaler's own ``~/ray_bootstrap_config.yaml``): each
    with the resources it declares, ``min_workers`` nodes to start with and up to ``max_workers``."""
    head_type = cfg.get("head_node_type")
    types, notes = [], []
    for name, nt in (cfg.get("available_node_types") or {}).items():
        res = _clean(nt.get("resources") or {})
        head = name == head_type
        if not head and "CPU" not in (nt.get("resources") or {}):
            notes.append(f"{source}: node type {name} declares no CPU (the cloud provider fills CPU/GPU/memory in "
                         "at `ray up`): declare them in its resources for the plan check")
        count = 1 if head else int(nt.get("min_workers", 0) or 0)
        most = 1 if head else int(nt.get("max_workers", cfg.get("max_workers", 2)))
        types.append(NodeType(name, res, count, max(most, count), head))
    max_workers = cfg.get("max_workers")
    return Supply(types, int(max_workers) if max_workers is not None else None, source, notes)


def _ray_cr(doc: Mapping[str, Any]) -> dict:
    meta = dict(doc.get("metadata") or {})
    meta.setdefault("name", "raycluster")
    meta.setdefault("namespace", "default")
    spec = doc["spec"]["rayClusterSpec"] if doc.get("kind") == "RayJob" else doc["spec"]
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": meta, "spec": spec}


def supply_from_kuberay(doc: Mapping[str, Any], source: str = "RayCluster") -> Supply:
    """Worker groups of a RayCluster (or a RayJob's rayClusterSpec), with the resources Ray's own KubeRay
    autoscaler derives for them (CPU/GPU/memory from the pod's limits or rayStartParams, custom resources from
    rayStartParams). ``replicas`` pods to start with; up to ``maxReplicas`` when enableInTreeAutoscaling is on,
    else the cluster stays at ``replicas``."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = _ray_cr(doc)
    derived = _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]
    spec = cr["spec"]
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    types = [NodeType("headgroup", _clean(derived["headgroup"]["resources"]), 1, 1, head=True)]
    for g in spec.get("workerGroupSpecs") or []:
        hosts = int(g.get("numOfHosts", 1) or 1)
        lo, hi = int(g.get("minReplicas", 0) or 0), int(g.get("maxReplicas", 2**31 - 1))
        replicas = min(max(int(g.get("replicas", lo) or 0), lo), hi)
        if g.get("suspend"):
            replicas = hi = 0
        count = replicas * hosts
        most = hi * hosts if autoscaling else count
        types.append(NodeType(g["groupName"], _clean(derived[g["groupName"]]["resources"]), count, most))
    notes = [] if autoscaling else [f"{source}: enableInTreeAutoscaling is off, the cluster stays at its replicas"]
    return Supply(types, None, source, notes)


# ---------------------------------------------------------------------------------------------- the live cluster
def _from_gcs() -> Optional[Supply]:
    """The autoscaler's cluster config in the GCS (reported by autoscalers that do: Ray's v2 autoscaler in newer
    versions, Anyscale)."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    types = []
    for g in config.node_group_configs:
        most = None if g.max_count == -1 else int(g.max_count)
        types.append(NodeType(g.name or "group", _clean(dict(g.resources)), 0, most))
    return Supply(types, None, "the autoscaler's cluster config (GCS)")


def _from_launcher_head() -> Optional[Supply]:
    """The Ray cluster launcher's autoscaling config, on the head (where a submitted job's driver runs)."""
    import yaml

    path = Path(os.path.expanduser("~/ray_bootstrap_config.yaml"))
    if not path.is_file():
        return None
    supply = supply_from_launcher(yaml.safe_load(path.read_text()), source=str(path))
    for t in supply.node_types:  # these are the node types; the nodes up now come from the cluster
        t.count = 0
    return supply


_SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")  # what every pod has mounted


def _from_kuberay() -> Optional[Supply]:
    """The RayCluster object on KubeRay (RAY_CLUSTER_NAME is set in every pod KubeRay makes; the head pod's
    service account reads its own RayCluster when the in-tree autoscaler is on)."""
    name = os.environ.get("RAY_CLUSTER_NAME")
    sa = _SERVICE_ACCOUNT
    if not name or not (sa / "token").is_file():
        return None
    from ray.autoscaler._private.kuberay.node_provider import KubernetesHttpApiClient

    namespace = (sa / "namespace").read_text().strip()
    cr = KubernetesHttpApiClient(namespace).get(f"rayclusters/{name}")
    supply = supply_from_kuberay(cr, source=f"RayCluster {namespace}/{name}")
    for t in supply.node_types:
        t.count = 0
    return supply


_READERS = (_from_gcs, _from_launcher_head, _from_kuberay)


def _shape(res: Mapping[str, float]) -> tuple:
    """What identifies a node's type: its CPUs, GPUs and custom resources (memory varies a little)."""
    return tuple(sorted((k, round(v, 3)) for k, v in res.items() if k != "memory"))


def merge_live(nodes: list[dict], declared: Optional[Supply], notes: list[str]) -> Supply:
    """The live nodes (``ray.nodes()``) counted against the declared node types: a node of a declared type (by
    its ``ray.io/node-group`` label, else by its shape) counts toward that type's max; other nodes stay as they
    are (may add 0)."""
    types: list[NodeType] = []
    if declared is not None:
        types = [NodeType(t.name, dict(t.resources), 0, t.max_count, False) for t in declared.node_types if not t.head]
    extra: dict[tuple, NodeType] = {}
    for n in nodes:
        if not n.get("Alive", True):
            continue
        raw = n.get("Resources") or {}
        res = _clean(raw)
        head = _HEAD in raw
        group = (n.get("Labels") or {}).get("ray.io/node-group")
        match = None
        if not head:
            match = next((t for t in types if group and t.name == group), None) or next(
                (t for t in types if _shape(t.resources) == _shape(res)), None)
        if match is not None:
            match.count += 1
            match.resources = {k: min(v, res.get(k, v)) for k, v in match.resources.items()}
            continue
        key = (head, _shape(res))
        if key not in extra:
            extra[key] = NodeType("head" if head else (group or f"node {_fmt(res)}"), res, 0, 0, head)
        t = extra[key]
        t.count += 1
        t.max_count = t.count
        t.resources = {k: min(v, res.get(k, 0.0)) for k, v in t.resources.items()}
    for t in types:
        if t.max_count is not None and t.max_count < t.count:
            t.max_count = t.count
    source = "the running cluster" + (f" and {declared.source}" if declared is not None else "")
    all_notes = list(notes) + (list(declared.notes) if declared is not None else [])
    return Supply(list(extra.values()) + types, declared.max_workers if declared else None, source, all_notes)


def live_supply(cfg: Optional[RunConfig] = None) -> Supply:
    """The running cluster's nodes (``ray.nodes()``) and what its autoscaler may add: ``ray.cluster_file`` when set,
    else the first of the GCS cluster config, the launcher's bootstrap config on this node, the RayCluster object
    on KubeRay; when none answers, "may add 0" with a note saying how to declare it. Needs ``ray.init`` done."""
    import ray

    nodes = ray.nodes()
    notes: list[str] = []
    declared = None
    path = cfg.ray.cluster_file if cfg is not None else None
    if path:
        declared = supply_from_file(path)
        declared.source = f"ray.cluster_file={path}"
    else:
        for reader in _READERS:
            try:
                declared = reader()
            except Exception as exc:  # a reader that cannot answer (no permission, no network): try the next
                notes.append(f"{(reader.__doc__ or reader.__name__).splitlines()[0].strip()} could not be read: "
                             f"{type(exc).__name__}: {str(exc)[:200]}")
                declared = None
            if declared is not None:
                break
    autoscaled = declared is not None
    supply = merge_live(nodes, declared, [])
    if not autoscaled and _autoscaler_may_run(cfg):
        dead = sum(1 for n in nodes if not n.get("Alive", True))
        notes.append("the cluster did not tell what its autoscaler may add, so only the nodes up now count"
                     + (f" ({dead} node{'s' * (dead != 1)} of it died and count as gone)" if dead else "")
                     + ": set ray.cluster_file to its launcher YAML or KubeRay manifest (or ray.plan_check=warn)")
    supply.notes = notes + supply.notes
    return supply


def _autoscaler_may_run(cfg: Optional[RunConfig]) -> bool:
    """False for a private Ray the run started itself (``cluster.init_ray`` without an address): no autoscaler."""
    return bool((cfg is not None and cfg.ray.address) or os.environ.get("RAY_ADDRESS")
                or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


# ---------------------------------------------------------------------------------------------- the driver's call
def describe(report: Assessment) -> str:
    """One line per pool: demand, then the supply and the verdict."""
    lines = []
    for d in report.demands:
        if d.pool == "io":
            lines.append(f"  {d.key}: one task at a time at least, {_fmt(d.per_actor)}")
            continue
        grow = f" (up to {d.max_actors})" if d.max_actors > d.actors else ""
        lines.append(f"  {d.key}: {d.actors} actor{'s' * (d.actors != 1)}{grow} x {_fmt(d.per_actor)}"
                     + (f" [{d.how}]" if d.strategy else "") + f" = {_fmt(d.totals)}")
    s = report.supply
    lines.append(f"  supply ({s.source}): " + "; ".join(
        f"{t.name}{' (head)' if t.head else ''} {t.count} up"
        + (f", may add {_num(t.may_add)}" if not t.head else "") + f" x {_fmt(t.resources)}" for t in s.node_types)
        + (f"; {s.max_workers} workers at most" if s.max_workers is not None else ""))
    if report.nodes_used:
        lines.append("  the smallest plan takes " + ", ".join(f"{k} x{v}" for k, v in report.nodes_used.items()))
    return "\n".join(lines)


def check_plan_or_exit(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    """The plan check the annotate driver runs right after ``ray.init``, before any pool starts.

    Returns the assessment as a dict (``fits``, ``problems``, ``warnings``, ``demand``, ``supply``). Raises
    ``SystemExit`` with a message naming each pool, the figures and what to change when the pools' smallest sizes
    cannot fit and ``ray.plan_check`` is ``error`` (the default); with ``warn`` it logs the message and returns.
    ``off`` skips the check. A cluster whose state cannot be read skips the check with a line (never an error)."""
    mode = str(cfg.ray.plan_check or "error").lower()
    if mode in ("off", "false", "no"):  # `ray.plan_check=off` arrives as YAML's false
        return {}
    if mode not in ("error", "warn"):
        raise SystemExit(f"ray.plan_check must be error, warn or off, got {cfg.ray.plan_check!r}")
    demands = pool_demands(cfg)
    try:
        supply = live_supply(cfg)
    except (OSError, ValueError) as exc:  # a bad ray.cluster_file is the user's to fix
        if cfg.ray.cluster_file:
            raise SystemExit(f"ray.cluster_file={cfg.ray.cluster_file}: {exc}") from None
        log(f"plan check skipped: the cluster's nodes could not be read ({type(exc).__name__}: {exc})")
        return {}
    except Exception as exc:
        log(f"plan check skipped: the cluster's nodes could not be read ({type(exc).__name__}: {exc})")
        return {}
    report = assess(demands, supply)
    for w in report.warnings:
        log(f"plan: {w}")
    if report.problems:
        notes = "".join(f"\nnote: {n}" for n in supply.notes)
        msg = ("the plan cannot fit the cluster (ray.plan_check):\n" + "\n".join(f"- {p}" for p in report.problems)
               + "\n" + describe(report) + notes + "\nNo pool was started. Change the settings named above (or "
               "ray.plan_check=warn to start anyway).")
        if mode == "error":
            raise SystemExit(msg)
        log(msg)
    else:
        used = ", ".join(f"{k} x{v}" for k, v in report.nodes_used.items())
        log(f"plan: the pools' smallest sizes fit ({used or 'the nodes up now'})")
    return report.to_dict()
