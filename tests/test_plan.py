"""The plan check (toolformer/annotate/plan.py): the pools' demand derived exactly as the pools ask Ray for it, checked
against a cluster's supply by totals and node by node, refused at once with the pool, the figures and what to
change. Pure functions without Ray; one test against a real local Ray with a custom resource; the index fetch
the cluster files run."""

from __future__ import annotations

import json
import os
import time

import pytest

from toolformer.config import load_config
from toolformer.annotate.plan import (
    GIB,
    NodeType,
    PoolDemand,
    Supply,
    assess,
    check_plan,
    merge_live,
    pool_demands,
    render,
)


def _pool(name: str, actors: int, per: dict, bundles: list | None = None, strategy: str | None = None,
          max_actors: int | None = None) -> PoolDemand:
    per = {k: (v * GIB if k == "memory" else float(v)) for k, v in per.items()}
    bundles = [{k: (v * GIB if k == "memory" else float(v)) for k, v in b.items()} for b in bundles] if bundles \
        else [dict(per)]
    return PoolDemand(name, f"ray.{name}", actors, max_actors or actors, dict(bundles[0]) if strategy else per,
                      bundles, strategy, "a placement group" if strategy else "")


def _io(cpu: float = 0.25, mem: float = 0.5) -> PoolDemand:
    io = {"CPU": cpu, "memory": mem * GIB}
    return PoolDemand("io", "ray.io_num_cpus / ray.io_memory_gb", 1, 1, io, [dict(io)])


def _nodes(name: str, count: int, most: int | None = None, **res) -> NodeType:
    res = {k: (v * GIB if k == "memory" else float(v)) for k, v in res.items()}
    return NodeType(name, res, count, count if most is None else most)


# ---------------------------------------------------------------------------------------------- demand
@pytest.mark.parametrize("overrides", [
    [],
    ["ray.fuse_lm=true", "ray.lm.actors=2", "ray.lm.max_actors=3", "ray.lm.resources={lm_worker: 1}"],
    ["engine.tensor_parallel_size=4", "ray.sample.num_gpus=1", "ray.sample.actors=2", "ray.score.num_gpus=1",
     "ray.sample.resources={lm_worker: 1}"],
])
def test_demand_is_what_the_pools_ask_ray_for(overrides):
    """Each pool's demand matches the map_batches arguments `distributed._pool_args` gives Ray Data: pool sizes,
    CPUs, memory, GPUs, custom resources, and for a parallel engine the placement group's bundles."""
    from toolformer.annotate.distributed import GIB as DGIB
    from toolformer.annotate.distributed import _pool_args

    cfg = load_config("jobs/configs/cluster.yaml" if not overrides else None, overrides)
    demands = {d.pool: d for d in pool_demands(cfg)}
    expected = ["select", "lm"] if cfg.ray.fuse_lm else ["select", "sample", "execute", "score"]
    assert list(demands) == expected + ["io"]
    for name in expected:
        res = getattr(cfg.ray, name)
        args = _pool_args(res, cfg.ray, cfg if name in ("sample", "score", "lm") else None)
        d = demands[name]
        assert (d.actors, d.max_actors) == (args["compute"].min_size, args["compute"].max_size)
        assert d.actor.get("CPU", 0) == args["num_cpus"] and d.actor.get("memory", 0) == args["memory"]
        if "ray_remote_args_fn" in args:  # a placement group per actor: the bundles are the demand
            assert d.bundles == args["ray_remote_args_fn"].args[0] and d.strategy == args["ray_remote_args_fn"].args[1]
            assert "GPU" not in d.actor and "num_gpus" not in args
        else:
            assert d.bundles == [d.actor] and d.strategy is None
            assert d.actor.get("GPU", 0) == args.get("num_gpus", 0)
            assert {k: v for k, v in d.actor.items() if k not in ("CPU", "GPU", "memory")} == args.get("resources", {})
    io = demands["io"]
    assert io.per_actor == {"CPU": cfg.ray.io_num_cpus, "memory": cfg.ray.io_memory_gb * DGIB}


def test_a_parallel_engine_reserves_its_gpus_and_its_memory():
    cfg = load_config(None, ["engine.tensor_parallel_size=4", "ray.sample.num_gpus=1", "ray.sample.num_cpus=2",
                             "ray.sample.memory_gb=64", "ray.sample.resources={lm_worker: 1}"])
    sample = next(d for d in pool_demands(cfg) if d.pool == "sample")
    assert sample.strategy == "STRICT_PACK" and len(sample.bundles) == 4
    assert sample.bundles[0] == {"CPU": 2, "GPU": 1, "lm_worker": 1, "memory": 64 * GIB}  # the actor runs here
    assert sample.per_actor == {"CPU": 8, "GPU": 4, "lm_worker": 4, "memory": 64 * GIB}
    assert len(sample.units()) == 1  # STRICT_PACK: one node holds the whole group


# ---------------------------------------------------------------------------------------------- the check
def test_more_gpus_than_the_cluster_has_is_refused_with_the_figures():
    """The issue's case: 12 single-GPU actors on a cluster of 8 GPUs that may add none."""
    demands = [_pool("sample", 12, {"GPU": 1, "CPU": 4, "memory": 24, "lm_worker": 1}), _io()]
    supply = Supply([_nodes("gpu-lm", 8, CPU=8, GPU=1, memory=64, lm_worker=1)])
    problems = check_plan(demands, supply)
    assert len(problems) == 1, problems
    p = problems[0]
    assert p.startswith("ray.sample asks 12 GPUs, lm_worker 12 (12 actors x 1 GPU, lm_worker 1)"), p
    assert "the cluster has 8 GPUs, lm_worker 8 and may add 0" in p and "lower ray.sample.actors" in p
    # ... and it fits once the autoscaler may add 4 more nodes of the type
    supply.node_types[0].max_count = 12
    assert check_plan(demands, supply) == []


def test_pools_sharing_a_resource_are_counted_together():
    demands = [_pool("sample", 12, {"GPU": 1, "CPU": 4}), _pool("score", 4, {"GPU": 1, "CPU": 4}), _io()]
    supply = Supply([_nodes("gpu", 14, CPU=8, GPU=1, memory=64)])
    (p,) = check_plan(demands, supply)
    assert p.startswith("ray.sample and ray.score ask 16 GPUs (ray.sample: 12 actors x 1 GPU; ray.score: 4 actors"), p
    assert "has 14 GPUs and may add 0" in p and "ray.sample.actors / ray.score.actors" in p


def test_an_engine_bigger_than_any_node_is_refused_even_when_the_totals_fit():
    """4 GPUs in one STRICT_PACK group cannot run on nodes of 2 GPUs each, however many there are; PACK may span."""
    bundle = {"GPU": 1, "CPU": 2}
    strict = [_pool("sample", 1, {}, bundles=[bundle] * 4, strategy="STRICT_PACK"), _io()]
    supply = Supply([_nodes("gpu2", 4, CPU=16, GPU=2, memory=64)])
    (p,) = check_plan(strict, supply)
    assert "ray.sample: one actor" in p and "all on one node" in p and "asks 4 GPUs" in p, p
    assert "no node has more than 2 GPUs" in p and "tensor_parallel_size" in p
    packed = [_pool("sample", 1, {}, bundles=[bundle] * 4, strategy="PACK"), _io()]
    assert check_plan(packed, supply) == []


def test_memory_is_packed_per_node():
    """3 actors of 24 GiB on 2 nodes of 40 GiB: 72 GiB of 80 in total, but a node holds one actor."""
    demands = [_pool("execute", 3, {"CPU": 1, "memory": 24}), _io(0.1, 0.1)]
    supply = Supply([_nodes("cpu", 2, CPU=16, memory=40)])
    (p,) = check_plan(demands, supply)
    assert "do not fit node by node, although the totals do" in p, p
    assert "ray.execute: 1 of its 3 actors (1 CPU, 24 GiB memory each) find no node with room" in p
    assert check_plan(demands, Supply([_nodes("cpu", 3, CPU=16, memory=40)])) == []


def test_every_pool_fits_alone_but_not_all_at_once():
    a = _pool("sample", 2, {"CPU": 3, "memory": 4})
    b = _pool("score", 2, {"CPU": 3, "memory": 4})
    supply = Supply([_nodes("n", 2, CPU=4, memory=64)])
    assert check_plan([a, _io()], supply) == [] and check_plan([b, _io()], supply) == []
    problems = check_plan([a, b, _io()], supply)
    assert problems and "ray.sample and ray.score ask 12 CPUs" in problems[0], problems


def test_the_io_tasks_need_room_beside_the_actors():
    """Pools whose reservations fill the node starve the reader: the run would wait forever."""
    demands = [_pool("select", 1, {"CPU": 1}), _pool("sample", 1, {"CPU": 1}), _io(0.25, 0.5)]
    (p,) = check_plan(demands, Supply([_nodes("local", 1, CPU=2, memory=8)]))
    assert "2.25 CPUs with one I/O task (0.25 CPUs)" in p and "the cluster has 2 CPUs" in p, p


def test_the_autoscaler_caps():
    """Nodes the autoscaler may add count, within each type's max and the cluster-wide max_workers."""
    demands = [_pool("sample", 8, {"GPU": 1, "CPU": 4, "lm_worker": 1}), _pool("execute", 4, {"CPU": 2, "tool": 2}),
               _io()]
    gpu = _nodes("gpu_lm", 0, 4, CPU=48, GPU=4, memory=128, lm_worker=4)
    cpu = _nodes("cpu_tools", 0, 4, CPU=16, memory=88, tool=16)
    head = NodeType("head", {"memory": 8 * GIB}, 1, 1, head=True)
    assert check_plan(demands, Supply([head, gpu, cpu])) == []
    r = assess(demands, Supply([head, gpu, cpu]))
    assert r.nodes_used == {"gpu_lm": 2, "cpu_tools": 1}
    problems = check_plan(demands, Supply([head, gpu, cpu], max_workers=2))  # 2 GPU nodes + 1 tool node needed
    assert problems and "node by node" in problems[0] and "2 workers at most" in problems[0], problems


def test_fractional_gpus_share_a_gpu():
    demands = [_pool("sample", 8, {"GPU": 0.25, "CPU": 1}), _io()]
    assert check_plan(demands, Supply([_nodes("gpu", 2, CPU=8, GPU=1, memory=64)])) == []
    (p,) = check_plan([_pool("sample", 9, {"GPU": 0.25, "CPU": 1}), _io()],
                      Supply([_nodes("gpu", 2, CPU=8, GPU=1, memory=64)]))
    assert "2.25 GPUs" in p, p


def test_a_pool_that_cannot_grow_to_max_actors_is_a_warning():
    demands = [_pool("sample", 2, {"GPU": 1, "CPU": 1}, max_actors=10), _io()]
    r = assess(demands, Supply([_nodes("gpu", 4, CPU=8, GPU=1, memory=64)]))
    assert r.fits and len(r.warnings) == 1 and "ray.sample may grow to 10 actors" in r.warnings[0]
    assert "holds 4 of them" in r.warnings[0]
    out = r.to_dict()
    assert out["fits"] and out["demand_total"]["GPU"] == 2 and out["supply"]["has"]["GPU"] == 4
    json.dumps(out)


def test_an_actor_that_fits_none_of_its_bundles_is_refused():
    """Ray places an actor of a group inside one bundle: its memory must be there (placement.actor_bundles)."""
    d = PoolDemand("sample", "ray.sample", 1, 1, {"CPU": 2, "memory": 8 * GIB}, [{"CPU": 2, "GPU": 1}] * 2,
                   "STRICT_PACK")
    problems = check_plan([d, _io()], Supply([_nodes("gpu", 1, CPU=16, GPU=2, memory=64)]))
    assert any("none of its placement group's bundles holds" in p for p in problems), problems


# ---------------------------------------------------------------------------------------------- supply
def test_live_nodes_count_against_the_declared_node_types():
    declared = Supply([NodeType("head", {}, 1, 1, head=True),
                       NodeType("gpu-lm", {"CPU": 8, "GPU": 1, "memory": 64 * GIB, "lm_worker": 1}, 0, 16),
                       NodeType("cpu-tools", {"CPU": 16, "memory": 128 * GIB, "tool_worker": 16}, 0, 4)],
                      source="RayCluster")
    nodes = [
        {"Alive": True, "Resources": {"CPU": 0.0, "memory": 30 * GIB, "node:__internal_head__": 1.0,
                                      "node:10.0.0.1": 1.0, "object_store_memory": 9e9}},
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0, "memory": 64 * GIB, "lm_worker": 1.0,
                                      "accelerator_type:A10G": 1.0}, "Labels": {"ray.io/node-group": "gpu-lm"}},
        {"Alive": True, "Resources": {"CPU": 16.0, "memory": 120 * GIB, "tool_worker": 16.0}},  # matched by shape
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0, "lm_worker": 1.0}},
        {"Alive": True, "Resources": {"CPU": 4.0, "memory": 8 * GIB, "other": 1.0}},  # not a declared type
    ]
    s = merge_live(nodes, declared, [])
    by = {t.name: t for t in s.node_types}
    assert by["gpu-lm"].count == 1 and by["gpu-lm"].may_add == 15
    assert by["cpu-tools"].count == 1 and by["cpu-tools"].resources["memory"] == 120 * GIB  # the smaller of the two
    assert by["head"].head and by["head"].may_add == 0 and "node:10.0.0.1" not in by["head"].resources
    other = next(t for t in s.node_types if "other" in t.resources)
    assert other.count == 1 and other.may_add == 0
    assert s.has("GPU") == 1 and s.may_add("GPU") == 15


def test_the_gcs_cluster_config_is_read(monkeypatch):
    """Autoscalers that report it (the v2 autoscaler in newer Ray, Anyscale) put node types and max counts in the
    GCS: the same figures Ray Data reads for its own scaling."""
    import ray._private.state
    from ray.core.generated import autoscaler_pb2

    from toolformer.annotate.supply import _from_gcs

    config = autoscaler_pb2.ClusterConfig()
    g = config.node_group_configs.add()
    g.name, g.max_count = "gpu", 6
    g.resources["GPU"], g.resources["CPU"], g.resources["memory"] = 4, 48, 128 * GIB
    unlimited = config.node_group_configs.add()
    unlimited.name, unlimited.max_count = "cpu", -1
    unlimited.resources["CPU"] = 16
    monkeypatch.setattr(ray._private.state.state, "get_cluster_config", lambda: config)
    s = _from_gcs()
    got = [(t.name, t.max_count, t.resources.get("GPU")) for t in s.node_types]
    assert got == [("gpu", 6, 4.0), ("cpu", None, None)]
    assert s.may_add("GPU") == 24 and s.may_add("CPU") == float("inf")
    monkeypatch.setattr(ray._private.state.state, "get_cluster_config", lambda: None)
    assert _from_gcs() is None


# ---------------------------------------------------------------------------------------------- cluster files
def test_render_fills_our_placeholders_only():
    text = ('a: "${TOOLFORMER_INDEX_URI:-}"\nb: ${TOOLFORMER_X:-fallback}\n# ${TOOLFORMER_INDEX_URI:-} in a comment\n'
            'c: echo "$(id -u)" ${HOME} $RAY_HEAD_IP ${RAY_X:-y}\n')
    out = render(text, {"TOOLFORMER_INDEX_URI": "s3://b/indexes"})
    assert out.splitlines() == ['a: "s3://b/indexes"', "b: fallback", "# ${TOOLFORMER_INDEX_URI:-} in a comment",
                                'c: echo "$(id -u)" ${HOME} $RAY_HEAD_IP ${RAY_X:-y}']
    assert render(text, {}).splitlines()[0] == 'a: ""'  # unset: the default (empty counts as unset)
    with pytest.raises(ValueError, match="TOOLFORMER_NEEDED"):
        render("x: ${TOOLFORMER_NEEDED}\n", {})


def test_fetch_index_copies_once_and_says_when_there_is_nothing(tmp_path, capsys):
    from jobs.plan import fetch_index

    src = tmp_path / "bucket" / "indexes"
    (src / "wiki-dpr" / "dense").mkdir(parents=True)
    (src / "wiki-dpr" / "meta.json").write_text("{}")
    (src / "wiki-dpr" / "dense" / "index.faiss").write_bytes(b"x" * 1000)
    dest = tmp_path / "indexes"
    first = fetch_index(str(src), str(dest))
    assert first["copied"] and (dest / "wiki-dpr" / "dense" / "index.faiss").stat().st_size == 1000
    again = fetch_index(str(src), str(dest))  # a restarted pod: the complete copy is kept
    assert not again["copied"] and again["bytes"] == first["bytes"]
    none = fetch_index("", str(tmp_path / "empty"))
    assert not none["copied"] and "nothing copied" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="does not exist"):
        fetch_index(str(tmp_path / "missing"), str(tmp_path / "x"))


def test_jobs_plan_against_a_cluster_file(capsys):
    from jobs.plan import main

    out = main(["--config", "jobs/configs/cluster.yaml", "--cluster-file", "cluster/rayjob.yaml", "--json"])
    assert out["fits"] and json.loads(capsys.readouterr().out)["nodes_used"] == {"gpu-lm": 16, "cpu-tools": 1}
    with pytest.raises(SystemExit) as exc:
        main(["--config", "jobs/configs/cluster.yaml", "--cluster-file", "cluster/rayjob.yaml", "ray.sample.actors=61"])
    assert exc.value.code == 1 and "ray.sample and ray.score ask 65 GPUs" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- a real Ray
@pytest.fixture()
def private_ray():
    import ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, resources={"lm_worker": 1}, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_a_real_ray_refuses_two_lm_actors_on_one_lm_worker_at_once(private_ray, monkeypatch):
    """A local Ray with one `lm_worker`: a plan asking 2 lm_worker actors stops before any pool starts, with a
    message naming the pool and the numbers; 1 actor fits; with ray.plan_check=warn it is said, not raised. An
    actor of a parallel engine's placement group (placement.actor_bundles) is really created by this Ray."""
    from toolformer.annotate.plan import check_plan_or_exit

    for key in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        monkeypatch.delenv(key, raising=False)
    base = ["ray.sample.num_cpus=0.3", "ray.sample.memory_gb=0.5", "ray.sample.resources={lm_worker: 1}",
            "ray.score.num_cpus=0.3", "ray.score.memory_gb=0.5", "ray.select.memory_gb=0.2",
            "ray.execute.memory_gb=0.2", "ray.io_memory_gb=0.2"]
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        check_plan_or_exit(load_config(None, base + ["ray.sample.actors=2"]), log=lambda _: None)
    msg = str(exc.value)
    assert time.monotonic() - t0 < 30
    assert "ray.sample asks lm_worker 2 (2 actors x lm_worker 1), the cluster has lm_worker 1 and may add 0" in msg, msg
    assert "lower ray.sample.actors" in msg and "No pool was started" in msg
    said = []
    out = check_plan_or_exit(load_config(None, base + ["ray.sample.actors=2", "ray.plan_check=warn"]), log=said.append)
    assert not out["fits"] and any("ray.sample asks lm_worker 2" in s for s in said)
    ok = check_plan_or_exit(load_config(None, base + ["ray.sample.actors=1"]), log=said.append)
    assert ok["fits"] and ok["supply"]["source"] == "the running cluster" and not ok["supply"]["notes"]
    assert check_plan_or_exit(load_config(None, base + ["ray.sample.actors=2", "ray.plan_check=off"])) == {}

    # The placement group a TP-2 actor reserves, with its memory in the first bundle: Ray creates the actor.
    from toolformer.annotate.placement import _placement_group_strategy, actor_bundles

    cfg = load_config(None, ["engine.tensor_parallel_size=2", "ray.sample.num_cpus=0.25", "ray.sample.memory_gb=0.25"])
    bundles = actor_bundles(cfg, cfg.ray.sample)
    assert bundles[0]["memory"] == 0.25 * GIB

    @private_ray.remote
    class Probe:
        def ping(self):
            return "ok"

    opts = _placement_group_strategy(bundles, "STRICT_PACK")
    probe = Probe.options(num_cpus=0.25, memory=0.25 * GIB, **opts).remote()
    assert private_ray.get(probe.ping.remote(), timeout=60) == "ok"


def test_a_real_ray_with_what_the_autoscaler_may_add(private_ray, monkeypatch, tmp_path):
    """The same one-`lm_worker` Ray joined as a cluster: told nothing about an autoscaler, the refusal says so;
    with the autoscaler's node types (ray.cluster_file, the launcher's bootstrap config on the head, or the
    RayCluster object read with the pod's service account) the nodes it may add count and 2 actors fit."""
    import yaml

    from toolformer.annotate import supply as plan  # _SERVICE_ACCOUNT lives with the supply readers
    from toolformer.annotate.plan import check_plan_or_exit, live_supply

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # as a driver that joined a cluster sees it
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/ray_bootstrap_config.yaml
    monkeypatch.delenv("RAY_CLUSTER_NAME", raising=False)
    cfg_args = ["ray.sample.num_cpus=0.3", "ray.sample.memory_gb=0.5", "ray.sample.resources={lm_worker: 1}",
                "ray.sample.actors=2"]
    with pytest.raises(SystemExit) as exc:
        check_plan_or_exit(load_config(None, cfg_args), log=lambda _: None)
    assert "note: the cluster did not tell what its autoscaler may add" in str(exc.value)

    group = {"groupName": "lm", "replicas": 0, "minReplicas": 0, "maxReplicas": 3,
             "rayStartParams": {"num-cpus": "2", "resources": '"{\\"lm_worker\\": 1}"'},
             "template": {"spec": {"containers": [{"name": "ray-worker", "image": "x",
                                                   "resources": {"limits": {"cpu": "2", "memory": "8Gi"}}}]}}}
    cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "t", "namespace": "ns"},
          "spec": {"enableInTreeAutoscaling": True,
                   "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
                       {"name": "ray-head", "image": "x", "resources": {"limits": {"cpu": "2", "memory": "8Gi"}}}]}}},
                   "workerGroupSpecs": [group]}}
    manifest = tmp_path / "raycluster.yaml"
    manifest.write_text(yaml.safe_dump(cr))
    out = check_plan_or_exit(load_config(None, cfg_args + [f"ray.cluster_file={manifest}"]), log=lambda _: None)
    assert out["fits"] and out["nodes_used"] == {"head": 1, "lm": 1}

    # The launcher's autoscaling config on the head node.
    (tmp_path / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump({
        "max_workers": 4, "head_node_type": "head",
        "available_node_types": {"head": {"resources": {"CPU": 2}, "node_config": {}},
                                 "lm": {"resources": {"CPU": 2, "memory": 8 * GIB, "lm_worker": 1},
                                        "min_workers": 0, "max_workers": 2, "node_config": {}}}}))
    supply = live_supply(load_config(None, cfg_args))
    assert supply.source.endswith("ray_bootstrap_config.yaml") and supply.may_add("lm_worker") == 2
    (tmp_path / "ray_bootstrap_config.yaml").unlink()

    # KubeRay: RAY_CLUSTER_NAME and the pod's service account; the RayCluster object through Ray's own client.
    from ray.autoscaler._private.kuberay import node_provider

    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t")
    (sa / "namespace").write_text("ns")
    monkeypatch.setattr(plan, "_SERVICE_ACCOUNT", sa)
    monkeypatch.setenv("RAY_CLUSTER_NAME", "t")
    asked = []
    monkeypatch.setattr(node_provider.KubernetesHttpApiClient, "get", lambda self, path: asked.append(path) or cr)
    supply = live_supply(load_config(None, cfg_args))
    assert asked == ["rayclusters/t"] and supply.source.startswith("the running cluster and RayCluster ns/t")
    assert supply.may_add("lm_worker") == 3 and not supply.notes
