"""What a Ray cluster offers the plan check: node types (resources, how many are up, how many the autoscaler may
add), read from a cluster file (launcher YAML, KubeRay RayCluster / RayJob) or from the running cluster (its nodes,
and the first that answers of ``ray.cluster_file``, the GCS cluster config, the launcher's bootstrap config on the
head, the RayCluster object on KubeRay)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from toolformer.annotate.resources import _HEAD, _clean, _fmt, _show
from toolformer.config import RunConfig


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
