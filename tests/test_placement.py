"""LM actors of any size: placement-group bundles for tensor/pipeline parallel engines, fractional GPUs checked
against the memory each engine may take (config logic, no GPU needed)."""

from __future__ import annotations

import pytest

from toolformer.annotate.placement import bundles, check_parallelism, lm_pool_args, world_size
from toolformer.config import RunConfig, load_config


def test_fractional_gpus_must_fit_their_memory_share():
    check_parallelism(load_config(None, ["ray.sample.num_gpus=0.5", "ray.score.num_gpus=0.5",
                                         "engine.gpu_memory_utilization=0.45"]))
    check_parallelism(load_config(None, ["ray.lm.num_gpus=0.25", "engine.gpu_memory_utilization=0.22"]))
    with pytest.raises(ValueError, match=r"2 engines on a GPU.*together 1.70 of its memory.*<= 0.5"):
        check_parallelism(load_config(None, ["ray.sample.num_gpus=0.5", "engine.gpu_memory_utilization=0.85"]))
    with pytest.raises(ValueError, match="whole engines"):
        check_parallelism(load_config(None, ["ray.score.num_gpus=0.3", "engine.gpu_memory_utilization=0.2"]))


def test_parallel_engines_take_whole_gpus_in_a_placement_group():
    cfg = load_config(None, ["engine.tensor_parallel_size=4", "ray.sample.num_gpus=1", "ray.sample.num_cpus=2",
                             "ray.sample.resources={lm_worker: 1}"])
    check_parallelism(cfg)
    assert world_size(cfg) == 4
    assert bundles(cfg, cfg.ray.sample) == [{"CPU": 2.0, "GPU": 1, "lm_worker": 1.0}] * 4
    args = lm_pool_args(cfg, cfg.ray.sample)
    assert args["num_gpus"] is None and args["resources"] is None  # the bundles hold them, not the actor
    assert args["ray_remote_args_fn"].args[1] == "STRICT_PACK"
    two_stages = load_config(None, ["engine.tensor_parallel_size=2", "engine.pipeline_parallel_size=2",
                                    "engine.placement_strategy=PACK", "ray.score.num_gpus=1"])
    assert world_size(two_stages) == 4 and lm_pool_args(two_stages, two_stages.ray.score)["ray_remote_args_fn"].args[1] == "PACK"
    with pytest.raises(ValueError, match="takes whole GPUs"):
        check_parallelism(load_config(None, ["engine.tensor_parallel_size=2", "ray.sample.num_gpus=0.5"]))
    with pytest.raises(ValueError, match="STRICT_PACK or PACK"):
        check_parallelism(load_config(None, ["engine.placement_strategy=SPREAD"]))
    assert lm_pool_args(load_config(None, []), load_config(None, []).ray.sample) == {}  # TP 1: nothing changes


def test_pools_size_in_actors_not_gpus():
    from toolformer.annotate.distributed import _pool_args

    cfg = load_config(None, ["engine.tensor_parallel_size=4", "ray.sample.actors=2", "ray.sample.num_gpus=1"])
    args = _pool_args(cfg.ray.sample, cfg.ray, cfg)
    assert args["compute"].min_size == 2 and "num_gpus" not in args  # 2 actors x 4 bundles = 8 GPUs
    assert callable(args["ray_remote_args_fn"])


def test_pools_bound_restarts_and_retries():
    """Ray Data's defaults (-1) retry a batch that kills its actor forever: ours are finite, one shard per task."""
    from toolformer.annotate.distributed import _pool_args

    cfg = load_config(None, ["ray.batch_attempts=2", "ray.max_actor_restarts=5"])
    args = _pool_args(cfg.ray.lm, cfg.ray, cfg)
    assert args["max_task_retries"] == 1 and args["max_restarts"] == 5
    assert args["batch_size"] is None and args["compute"].max_tasks_in_flight_per_actor == 1


def test_the_cluster_presets_are_valid():
    """Each commented preset of jobs/configs/cluster.yaml, uncommented over the file, passes the checks."""
    import re
    from pathlib import Path

    import yaml
    from omegaconf import OmegaConf

    text = (Path(__file__).resolve().parents[1] / "jobs" / "configs" / "cluster.yaml").read_text()
    presets = re.split(r"\n# \(\w\) ", text.split("# ---- Presets")[1])[1:]
    assert len(presets) == 3
    base = OmegaConf.create(yaml.safe_load(text))
    for block in presets:
        body = "\n".join(line[2:] for line in block.splitlines()[1:] if re.match(r"# (\w+|  \w+):( |$)", line))
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), base, OmegaConf.create(yaml.safe_load(body)))
        cfg = OmegaConf.to_object(merged)
        check_parallelism(cfg)
        assert cfg.ray.sample.actors >= 1 and cfg.model.dtype == "bfloat16"
