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
from dataclasses import dataclass, field
from typing import Callable, Optional

from toolformer.annotate.packing import _RULES, _Packing, _advice, _advice_total, _nodes_text, _shortfall
from toolformer.annotate.resources import EPS, GIB, _clean, _fits, _fmt, _num, _scale, _show, _sum
from toolformer.annotate.supply import (  # noqa: F401 - the supply side, re-exported for jobs.plan and the tests
    NodeType, Supply, live_supply, load_cluster_file, merge_live, render, supply_from_file, supply_from_kuberay,
    supply_from_launcher)
from toolformer.config import RunConfig


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
