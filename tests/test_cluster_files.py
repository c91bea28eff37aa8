"""The cluster files run as written: every local path their commands use reaches the nodes (a file mount, the
job's working_dir, or a COPY into the image), no install hides its failure behind `|| true`, the GPU set pins
what the CPU set pins, and no secret travels in a Ray runtime env (the dashboard shows runtime envs)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "cluster").glob("*.yaml"))
# Paths the cluster launcher writes itself (not ours to mount).
LAUNCHER_WRITES = {"~/ray_bootstrap_config.yaml", "~/ray_bootstrap_key.pem"}
SECRET = re.compile(r"TOKEN(?!IZER)|SECRET|PASSWORD|KEY", re.IGNORECASE)


def _load(rel: str):
    return yaml.safe_load((REPO / rel).read_text())


# ---------------------------------------------------------------- where a path on a node comes from
class Dockerfile:
    """The image of cluster/Dockerfile: its tag (from the `docker build -t` line), WORKDIR, COPYs and RUNs."""

    def __init__(self, path: Path = REPO / "cluster" / "Dockerfile"):
        text = path.read_text()
        m = re.search(r"docker build\b.*?-t\s+(\S+)", text)
        self.tag = m.group(1) if m else None
        self.copies: list[tuple[str, str]] = []  # (image path, repo path)
        self.runs: list[str] = []
        workdir = "/"
        lines = [ln for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        for line in lines:
            op, _, rest = line.strip().partition(" ")
            op = op.upper()
            if op == "WORKDIR":
                workdir = str(PurePosixPath(workdir) / rest.strip())
            elif op in ("COPY", "ADD"):
                args = [a for a in shlex.split(rest) if not a.startswith("--")]
                *srcs, dest = args
                dest_abs = str(PurePosixPath(workdir) / dest)
                for src in srcs:
                    if dest.endswith("/") or len(srcs) > 1:
                        self.copies.append((str(PurePosixPath(dest_abs) / PurePosixPath(src).name), src))
                    else:
                        self.copies.append((dest_abs, src))
            elif op == "RUN":
                self.runs.append(rest)
        self.workdir = workdir


def _resolve(path: str, mounts: list[tuple[str, str]]) -> Path | None:
    """The repo path that a node path comes from, by the longest mount prefix, or None when nothing provides it."""
    node = PurePosixPath(path)
    best = None
    for remote, local in mounts:
        remote_p = PurePosixPath(remote.rstrip("/") or "/")
        if node == remote_p or remote_p in node.parents:
            if best is None or len(remote_p.parts) > len(PurePosixPath(best[0]).parts):
                best = (str(remote_p), local)
    if best is None:
        return None
    rel = node.relative_to(best[0])
    local = Path(best[1]).expanduser()
    local = local if local.is_absolute() else REPO / local
    return (local / rel).resolve()


def _segments(command: str) -> list[list[str]]:
    """The simple commands of a shell line (split at &&, ||, ;, |), each as words."""
    parts = re.split(r"&&|\|\||;|\|", command)
    out = []
    for p in parts:
        try:
            words = shlex.split(p)
        except ValueError:
            words = p.split()
        words = [w for w in words if w not in ("(", ")", "{", "}", "then", "else", "fi", "if", "do", "done")]
        if words:
            out.append(words)
    return out


def _used_paths(command: str, cwd: str) -> list[tuple[str, str]]:
    """(kind, node path) for every local path a command uses: -r requirement files, -e projects, python -m modules,
    --config files, scripts run by python/bash, and any word that names a path under the home directory."""
    used = []

    def absolute(p: str) -> str:
        return p if p.startswith(("/", "~")) else str(PurePosixPath(cwd) / p)

    for words in _segments(command):
        if words[0] == "cd" and len(words) == 2:  # `cd DIR && python -m ...`: the next commands run in DIR
            used.append(("path", absolute(words[1])))
            cwd = absolute(words[1])
            continue
        for i, w in enumerate(words):
            nxt = words[i + 1] if i + 1 < len(words) else None
            if w in ("-r", "--requirement", "-c", "--constraint") and nxt:
                used.append(("requirements", absolute(nxt)))
            elif w.startswith("-r") and len(w) > 2 and not w.startswith("--"):
                used.append(("requirements", absolute(w[2:])))
            elif w in ("-e", "--editable") and nxt and not nxt.startswith(("git+", "http")):
                used.append(("project", absolute(nxt)))
            elif w == "-m" and nxt and i > 0 and re.match(r"python[\d.]*$", PurePosixPath(words[i - 1]).name):
                top = nxt.split(".")[0]
                if top in ("jobs", "toolformer", "benchmarks"):  # the module's file, where the command runs
                    used.append(("module", f"{cwd}/{nxt.replace('.', '/')}"))
            elif w == "--config" and nxt:
                used.append(("config", absolute(nxt)))
            elif w.startswith("--config=") and not w.startswith("--config=~/ray_bootstrap"):
                used.append(("config", absolute(w.split("=", 1)[1])))
            elif re.match(r"(python[\d.]*|bash|sh)$", PurePosixPath(w).name) and nxt and nxt.endswith((".py", ".sh")):
                used.append(("script", absolute(nxt)))
            elif w.startswith("~/") and w not in LAUNCHER_WRITES and (i == 0 or words[i - 1] not in ("-r", "-e")):
                used.append(("path", w))
    return used


def _check_paths(commands: list[str], cwd: str, mounts: list[tuple[str, str]], where: str) -> list[str]:
    problems = []
    for cmd in commands:
        for kind, path in _used_paths(cmd, cwd):
            if kind == "module":
                node_paths = [f"{path}.py", f"{path}/__main__.py"]
            elif kind == "project":  # an install of this project: its pyproject.toml and packages are there
                for part in ("pyproject.toml", "toolformer", "jobs"):
                    found = _resolve(f"{path}/{part}", mounts)
                    if found is None or not found.exists():
                        problems.append(f"{where}: project {path!r} (in {cmd!r}) has no {part} on the node")
                continue
            else:
                node_paths = [path]
            found = [r for r in (_resolve(p, mounts) for p in node_paths) if r is not None and r.exists()]
            if not found:
                problems.append(f"{where}: {kind} {path!r} (in {cmd!r}) is neither mounted nor in the image")
    return problems


def _swallowed(command: str) -> bool:
    return bool(re.search(r"\|\|\s*(true|:)(\s|;|$|\))", command))


# ---------------------------------------------------------------- the Ray cluster launcher
def _launcher_commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    cmds = [c for k in keys for c in (cfg.get(k) or [])]
    for node in (cfg.get("available_node_types") or {}).values():
        for k in ("initialization_commands", "worker_setup_commands"):
            cmds += node.get(k) or []
    return cmds


def _launcher_mounts(cfg: dict) -> list[tuple[str, str]]:
    mounts = [(str(remote), str(local)) for remote, local in (cfg.get("file_mounts") or {}).items()]
    image = (cfg.get("docker") or {}).get("image") or (cfg.get("docker") or {}).get("head_image")
    docker = Dockerfile()
    if image and image == docker.tag:
        mounts += docker.copies
    return mounts


def test_ray_cluster_yaml_paths_are_mounted():
    cfg = _load("ray_cluster.yaml")
    problems = _check_paths(_launcher_commands(cfg), "~", _launcher_mounts(cfg), "ray_cluster.yaml")
    assert not problems, "\n".join(problems)


def test_ray_cluster_yaml_installs_the_project():
    """Nodes get the GPU set and the project itself, not only Ray's base image."""
    cfg = _load("ray_cluster.yaml")
    cmds = " ; ".join(_launcher_commands(cfg))
    image = (cfg.get("docker") or {}).get("image")
    if image != Dockerfile().tag:  # a stock image: the setup commands must install everything
        assert re.search(r"pip install\b[^;&|]*-r\s+\S*cluster/requirements-gpu\.txt", cmds), cmds
        assert re.search(r"pip install\b[^;&|]*--no-deps[^;&|]*-e\s+\S+", cmds), cmds


def test_no_install_is_swallowed():
    cfg = _load("ray_cluster.yaml")
    commands = [("ray_cluster.yaml", c) for c in _launcher_commands(cfg)]
    commands += [("cluster/Dockerfile", c) for c in Dockerfile().runs]
    for rel in CLUSTER_FILES:
        for doc in yaml.safe_load_all((REPO / rel).read_text()):
            if isinstance(doc, dict) and isinstance((doc.get("spec") or {}).get("entrypoint"), str):
                commands.append((rel, doc["spec"]["entrypoint"]))
    bad = [f"{where}: {c!r}" for where, c in commands if _swallowed(c)]
    assert not bad, "a failing command is hidden behind `|| true`:\n" + "\n".join(bad)


def test_the_swallow_detector():
    assert _swallowed("pip install -r x.txt || true")
    assert _swallowed("aws s3 sync a b --only-show-errors || true")
    assert not _swallowed("command -v aws || pip install awscli")


# ---------------------------------------------------------------- KubeRay manifests and runtime envs
def _groups(doc: dict) -> list[dict]:
    spec = doc.get("spec") or {}
    cluster = spec.get("rayClusterSpec") or spec
    return [cluster.get("headGroupSpec") or {}] + list(cluster.get("workerGroupSpecs") or [])


def _pod_spec(group: dict) -> dict:
    return (group.get("template") or {}).get("spec") or {}


def _containers(doc: dict, init: bool = True):
    """Every container of the cluster's pods (init containers too: they run the same image)."""
    for g in _groups(doc):
        pod = _pod_spec(g)
        yield from (pod.get("initContainers") or []) if init else []
        yield from pod.get("containers") or []


@pytest.mark.parametrize("rel", CLUSTER_FILES)
def test_kuberay_and_runtime_env_paths_are_in_the_image(rel):
    docker = Dockerfile()
    problems = []
    for doc in yaml.safe_load_all((REPO / rel).read_text()):
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") in ("RayCluster", "RayJob"):
            images = {c.get("image") for c in _containers(doc)}
            assert images == {docker.tag}, f"{rel}: images {images} are not the one cluster/Dockerfile builds"
            for c in _containers(doc):  # what a container runs (an init container's fetch) is in the image
                cmd = " ".join(str(x) for x in (c.get("command") or [])[2:] + (c.get("args") or []))
                if cmd:
                    problems += _check_paths([cmd], c.get("workingDir") or docker.workdir, docker.copies, rel)
        if doc.get("kind") == "RayJob":
            spec = doc["spec"]
            env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
            working_dir = env.get("working_dir") or docker.workdir
            problems += _check_paths([spec["entrypoint"]], working_dir, docker.copies, rel)
            for req in env.get("pip") or []:
                if isinstance(req, str) and req.startswith("-r"):
                    problems += _check_paths([f"pip install {req}"], working_dir, docker.copies, rel)
            envs = [env]
        elif doc.get("kind") == "RayCluster":
            envs = []
        else:  # a runtime env file, used with `--working-dir .` (the checkout)
            envs = [doc]
            for req in doc.get("pip") or []:
                if isinstance(req, str) and req.startswith("-r"):
                    problems += _check_paths([f"pip install {req}"], "/wd", [("/wd", ".")], rel)
            excluded = {str(e).strip("/") for e in doc.get("excludes") or []}
            assert not excluded & {"toolformer", "jobs", "jobs/configs"}, f"{rel} excludes the code it runs"
        for env in envs:
            leaked = [k for k in (env.get("env_vars") or {}) if SECRET.search(k)]
            assert not leaked, f"{rel}: secrets in a runtime env (shown on the dashboard): {leaked}"
    assert not problems, "\n".join(problems)


def test_the_image_builds_from_the_checkout():
    docker = Dockerfile()
    assert docker.tag, "cluster/Dockerfile names the tag it builds (docker build ... -t TAG)"
    for _, src in docker.copies:
        assert (REPO / src).exists(), f"cluster/Dockerfile copies {src}, which the checkout does not have"
    problems = _check_paths(docker.runs, docker.workdir, docker.copies, "cluster/Dockerfile")
    assert not problems, "\n".join(problems)


def test_path_checker_catches_an_unmounted_file():
    """The check above fails on what the launcher config used to do: install from a path nothing mounts."""
    cmd = "pip install --no-cache-dir -r ~/toolformer/cluster/requirements-gpu.txt"
    assert _check_paths([cmd], "~", [("~/.ray/auth_token", "~/.ray/auth_token")], "x")
    assert not _check_paths([cmd], "~", [("~/toolformer", ".")], "x")
    assert _check_paths(["python -m jobs.nosuchjob --config jobs/configs/cluster.yaml"], "/app",
                        [("/app/jobs", "jobs")], "x")
    assert not _check_paths(["python -m jobs.annotate --config jobs/configs/cluster.yaml"], "/app",
                            [("/app/jobs", "jobs")], "x")


# ---------------------------------------------------------------- one set of versions
def _pins(rel: str) -> dict[str, str | None]:
    pins = {}
    for line in (REPO / rel).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(==\s*([^\s;,]+))?", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(4)
    return pins


def test_gpu_set_pins_what_the_cpu_set_pins():
    cpu, gpu = _pins("requirements.txt"), _pins("cluster/requirements-gpu.txt")
    for name in ("transformers", "ray", "pyarrow", "boto3", "botocore"):  # boto3: the S3 lease and markers
        assert gpu.get(name), f"cluster/requirements-gpu.txt does not pin {name}"
        assert gpu[name] == cpu[name], f"{name}: GPU {gpu[name]} != CPU {cpu[name]}"
    differ = {n: (cpu[n], gpu[n]) for n in cpu.keys() & gpu.keys() if cpu[n] and gpu[n] and cpu[n] != gpu[n]}
    assert not differ, f"pinned differently on CPU and GPU: {differ}"


# ---------------------------------------------------------------- no secret in the driver's runtime env
def test_secrets_stay_out_of_the_runtime_env():
    from toolformer.cluster import forwarded_env

    environ = {
        "HF_HOME": "/cache/hf", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_HOST_IP": "127.0.0.1",
        "TOOLFORMER_FAULT_POISON_SHARD": "3", "TOKENIZERS_PARALLELISM": "false",
        "HF_TOKEN": "hf_x", "HUGGING_FACE_HUB_TOKEN": "hf_y", "HF_HUB_TOKEN": "hf_z", "VLLM_API_KEY": "k",
        "TOOLFORMER_SECRET": "s", "HF_PASSWORD": "p", "hf_token_path_key": "t",
        "AWS_SECRET_ACCESS_KEY": "a", "PATH": "/usr/bin", "HOME": "/root",
    }
    env = forwarded_env(environ)
    assert env == {"HF_HOME": "/cache/hf", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "VLLM_HOST_IP": "127.0.0.1", "TOOLFORMER_FAULT_POISON_SHARD": "3",
                   "TOKENIZERS_PARALLELISM": "false"}


# ---------------------------------------------------------------- the cluster holds the job's pools (issue 27)
LAUNCHER = "ray_cluster.yaml"
KUBERAY = ["cluster/raycluster.yaml", "cluster/rayjob.yaml"]
JOB_CONFIG = "jobs/configs/cluster.yaml"
INDEX_URI = "s3://test-bucket/indexes"


def _render(rel: str, env: dict | None = None) -> list[dict]:
    """A cluster file as `python -m jobs.plan render` makes it (the placeholders filled from `env`)."""
    from toolformer.annotate.plan import load_cluster_file

    return load_cluster_file(REPO / rel, {"TOOLFORMER_INDEX_URI": INDEX_URI} if env is None else env)


def _presets() -> dict:
    """jobs/configs/cluster.yaml as it is, and each commented preset uncommented over it."""
    from omegaconf import OmegaConf

    from toolformer.config import RunConfig

    text = (REPO / JOB_CONFIG).read_text()
    base = OmegaConf.create(yaml.safe_load(text))
    out = {"cluster.yaml": OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), base))}
    for block in re.split(r"\n# \(\w\) ", text.split("# ---- Presets")[1])[1:]:
        body = "\n".join(line[2:] for line in block.splitlines()[1:] if re.match(r"# (\w+|  \w+):( |$)", line))
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), base, OmegaConf.create(yaml.safe_load(body)))
        out[f"preset ({block[0]})"] = OmegaConf.to_object(merged)
    return out


def test_every_cluster_file_renders_and_works_as_it_is():
    """No edited literal: every ${TOOLFORMER_...} placeholder has a default (the file works unrendered: the
    node's shell sees it empty), the rendered file parses, and the launcher config passes Ray's own schema."""
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    from toolformer.annotate.plan import render

    for rel in [LAUNCHER, *KUBERAY]:
        text = (REPO / rel).read_text()
        assert "${TOOLFORMER_INDEX_URI:-}" in text, f"{rel}: the index source is not a placeholder"
        render(text, {})  # no placeholder without a default
        assert _render(rel, {}) and _render(rel)
        assert INDEX_URI in render(text, {"TOOLFORMER_INDEX_URI": INDEX_URI})
    literal = [line for line in (REPO / LAUNCHER).read_text().splitlines()
               if "YOUR-" in line and not line.lstrip().startswith("#")]
    assert not literal, f"{LAUNCHER}: literals to edit: {literal}"
    for env in ({}, {"TOOLFORMER_INDEX_URI": INDEX_URI}):
        validate_config(fillout_defaults(_render(LAUNCHER, env)[0]))


@pytest.mark.parametrize("rel", [LAUNCHER, *KUBERAY])
def test_the_cluster_holds_the_pools_of_the_job_config(rel):
    """The pools of jobs/configs/cluster.yaml at their smallest sizes fit the node types the file declares x their
    max workers, by the same check the driver runs before any pool starts (toolformer.annotate.plan.check_plan)."""
    from toolformer.config import load_config
    from toolformer.annotate.plan import assess, pool_demands, supply_from_file

    demands = pool_demands(load_config(REPO / JOB_CONFIG))
    supply = supply_from_file(REPO / rel, {"TOOLFORMER_INDEX_URI": INDEX_URI})
    report = assess(demands, supply)
    assert report.fits, "\n".join(report.problems)
    gpus = sum(d.totals.get("GPU", 0) for d in demands)
    assert gpus == 16 and supply.has("GPU") + supply.may_add("GPU") >= 64  # 12 + 4 now, 48 + 16 at max_actors
    assert not report.warnings, report.warnings  # every pool can also grow to its max_actors


def test_the_presets_fit_where_their_nodes_are():
    """Each preset of jobs/configs/cluster.yaml fits the launcher config and the RayCluster; the RayJob's 1-GPU pods
    hold every preset but (b) (4 GPUs per engine, one node), which the check refuses at once, naming the pool."""
    from toolformer.annotate.plan import check_plan, pool_demands, supply_from_file

    supplies = {rel: supply_from_file(REPO / rel, {}) for rel in [LAUNCHER, *KUBERAY]}
    for name, cfg in _presets().items():
        for rel, supply in supplies.items():
            problems = check_plan(pool_demands(cfg), supply)
            if name == "preset (b)" and rel == "cluster/rayjob.yaml":
                assert problems and problems[0].startswith("ray.sample: one actor"), problems
                assert "asks 4 GPUs" in problems[0] and "no node has more than 1 GPU" in problems[0]
            else:
                assert not problems, f"{name} on {rel}:\n" + "\n".join(problems)


def test_the_check_catches_the_rayjob_that_waited_forever():
    """The RayJob this issue found: 8 fixed single-GPU pods under pools that ask 12 + 4 single-GPU actors."""
    from toolformer.config import load_config
    from toolformer.annotate.plan import check_plan, pool_demands, supply_from_kuberay

    (job,) = _render("cluster/rayjob.yaml")
    spec = job["spec"]["rayClusterSpec"]
    spec.pop("enableInTreeAutoscaling")
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu-lm")
    gpu.update(replicas=8, minReplicas=8, maxReplicas=8)
    (p,) = check_plan(pool_demands(load_config(REPO / JOB_CONFIG)), supply_from_kuberay(job))
    assert p.startswith("ray.sample and ray.score ask 16 GPUs, lm_worker 16 (ray.sample: 12 actors x 1 GPU"), p
    assert "the cluster has 8 GPUs, lm_worker 8 and may add 0" in p


def test_kuberay_supply_is_what_rays_autoscaler_derives():
    """The node resources the check counts come from Ray's own KubeRay autoscaling config (pod limits,
    rayStartParams), here cross-checked by hand against the manifest's text."""
    from toolformer.annotate.plan import supply_from_file

    by = {t.name: t for t in supply_from_file(REPO / "cluster/raycluster.yaml", {}).node_types}
    assert by["gpu-lm"].resources == {"CPU": 8, "GPU": 1, "memory": 64 * 1024**3, "lm_worker": 1}
    assert (by["gpu-lm"].count, by["gpu-lm"].max_count) == (2, 16)
    assert by["gpu-lm-8x"].resources["GPU"] == 8 and by["gpu-lm-8x"].resources["lm_worker_8x"] == 8
    assert by["cpu-tools"].resources["tool_worker"] == 16 and by["headgroup"].head
    job = {t.name: t for t in supply_from_file(REPO / "cluster/rayjob.yaml", {}).node_types}
    assert (job["gpu-lm"].count, job["gpu-lm"].max_count) == (16, 64)
    assert (job["cpu-tools"].count, job["cpu-tools"].max_count) == (1, 8)


def _prerequisites(rel: str) -> list[str]:
    """Files a manifest says to apply first (`kubectl apply -f cluster/x.yaml` in its comments)."""
    return sorted(set(re.findall(r"kubectl apply -f (cluster/[\w.-]+\.ya?ml)", (REPO / rel).read_text())) - {rel})


def _references(pod: dict) -> dict[str, set[tuple[str, bool]]]:
    """(name, optional) of every PersistentVolumeClaim, Secret and ConfigMap a pod spec refers to."""
    refs: dict[str, set] = {"PersistentVolumeClaim": set(), "Secret": set(), "ConfigMap": set()}
    for v in pod.get("volumes") or []:
        if "persistentVolumeClaim" in v:
            refs["PersistentVolumeClaim"].add((v["persistentVolumeClaim"]["claimName"], False))
        if "secret" in v:
            refs["Secret"].add((v["secret"]["secretName"], bool(v["secret"].get("optional"))))
        if "configMap" in v:
            refs["ConfigMap"].add((v["configMap"]["name"], bool(v["configMap"].get("optional"))))
        for src in (v.get("projected") or {}).get("sources") or []:
            for kind, key in (("Secret", "secret"), ("ConfigMap", "configMap")):
                if key in src:
                    refs[kind].add((src[key]["name"], bool(src[key].get("optional"))))
    for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        for e in c.get("envFrom") or []:
            for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if key in e:
                    refs[kind].add((e[key]["name"], bool(e[key].get("optional"))))
        for e in c.get("env") or []:
            for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                ref = (e.get("valueFrom") or {}).get(key)
                if ref:
                    refs[kind].add((ref["name"], bool(ref.get("optional"))))
    for s in pod.get("imagePullSecrets") or []:
        refs["Secret"].add((s["name"], False))
    return refs


def _undefined(docs: list[dict], defined_docs: list[dict]) -> list[str]:
    defined = {(d.get("kind"), (d.get("metadata") or {}).get("name")) for d in defined_docs}
    problems = []
    for doc in docs:
        if doc.get("kind") not in ("RayCluster", "RayJob"):
            continue
        for g in _groups(doc):
            pod = _pod_spec(g)
            where = g.get("groupName", "head")
            volumes = {v["name"] for v in pod.get("volumes") or []}
            for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
                for m in c.get("volumeMounts") or []:
                    if m["name"] not in volumes:
                        problems.append(f"{where}/{c['name']}: mounts volume {m['name']!r}, which the pod "
                                        "does not define")
            for kind, names in _references(pod).items():
                for name, optional in names:
                    if not optional and (kind, name) not in defined:
                        problems.append(f"{where}: refers to {kind} {name!r}, defined in no applied file")
    return problems


@pytest.mark.parametrize("rel", KUBERAY)
def test_every_volume_secret_and_configmap_is_defined(rel):
    """Every volume a container mounts is a volume of its pod, and every claim, secret and config map the pods
    refer to is defined in the manifest or a file it says to apply first."""
    docs = _render(rel)
    defined = docs + [d for pre in _prerequisites(rel) for d in _render(pre)]
    problems = _undefined(docs, defined)
    assert not problems, "\n".join(problems)


def test_the_reference_check_catches_a_claim_nobody_defines():
    """What the manifests used to do: mount the index from a PersistentVolumeClaim defined nowhere."""
    (doc,) = _render("cluster/raycluster.yaml")
    tools = next(g for g in doc["spec"]["workerGroupSpecs"] if g["groupName"] == "cpu-tools")
    _pod_spec(tools)["volumes"] = [{"name": "indexes", "persistentVolumeClaim": {"claimName": "toolformer-indexes"}}]
    assert _undefined([doc], [doc]) == ["cpu-tools: refers to PersistentVolumeClaim 'toolformer-indexes', defined in "
                                        "no applied file"]
    claim = {"kind": "PersistentVolumeClaim", "metadata": {"name": "toolformer-indexes"}}
    assert _undefined([doc], [doc, claim]) == []
    _pod_spec(tools)["containers"][0]["envFrom"] = [{"secretRef": {"name": "s3-creds"}}]
    assert _undefined([doc], [doc, claim]) == ["cpu-tools: refers to Secret 's3-creds', defined in no applied file"]


def _index_dirs() -> set[str]:
    cfg = _load(JOB_CONFIG)
    return {o["index_dir"] for o in ((cfg.get("annotate") or {}).get("tool_options") or {}).values()
            if isinstance(o, dict) and o.get("index_dir")}


def _tool_resources() -> set[str]:
    """The custom resources of the pools that run the tools (execute; lm when fused)."""
    ray_cfg = _load(JOB_CONFIG)["ray"]
    pools = ["lm"] if ray_cfg.get("fuse_lm") else ["execute"]
    return {k for p in pools for k in (ray_cfg.get(p) or {}).get("resources") or {}}


def test_the_index_reaches_the_tool_workers():
    """The index folder the tools read (annotate.tool_options.*.index_dir) is on every node type that can run a
    tool actor: KubeRay pods mount a volume there that an init container fills from TOOLFORMER_INDEX_URI; the
    launcher's nodes copy it there in their setup. Unrendered, the copy has no source and says so."""
    dirs, wanted = _index_dirs(), _tool_resources()
    assert dirs == {"/indexes/wiki-dpr"} and wanted == {"tool_worker"}
    fetch = f'python -m jobs.plan fetch-index "{INDEX_URI}" /indexes'
    for rel in KUBERAY:
        (doc,) = [d for d in _render(rel) if d.get("kind") in ("RayCluster", "RayJob")]
        hosts = [g for g in _groups(doc)[1:] if wanted & set(json.loads(
            g.get("rayStartParams", {}).get("resources", '"{}"')[1:-1].replace("\\", "")))]
        assert hosts, f"{rel}: no worker group offers {wanted}"
        for g in hosts:
            pod = _pod_spec(g)
            ray_mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts") or []}
            for d in dirs:
                mount = next((p for p in ray_mounts if d == p or d.startswith(p.rstrip("/") + "/")), None)
                assert mount, f"{rel} {g['groupName']}: nothing mounted at {d}"
                volume = ray_mounts[mount]
                fillers = [c for c in pod.get("initContainers") or []
                           if any(m["name"] == volume and m["mountPath"] == mount for m in c.get("volumeMounts") or [])
                           and fetch in " ".join(c.get("args") or [])]
                assert fillers, f"{rel} {g['groupName']}: no init container copies {INDEX_URI} into {mount}"
    (launcher,) = _render(LAUNCHER)
    hosts = {n: t for n, t in launcher["available_node_types"].items() if wanted & set(t.get("resources") or {})}
    assert set(hosts) == {"cpu_tools"}
    for name, t in hosts.items():
        cmds = " ; ".join(t.get("worker_setup_commands") or [])
        assert fetch in cmds and all(d.startswith("/indexes/") for d in dirs), f"{LAUNCHER} {name}: {cmds}"
    unrendered = yaml.safe_load((REPO / LAUNCHER).read_text())["available_node_types"]["cpu_tools"]
    assert 'fetch-index "${TOOLFORMER_INDEX_URI:-}" /indexes' in unrendered["worker_setup_commands"][0]


def test_versions_agree_across_the_cluster_files():
    """One Ray and one Python everywhere: the image's base, the GPU set's pin, the manifests' rayVersion and the
    launcher's image; the RayJob's runtime env sets what cluster/runtime_env.yaml sets."""
    text = (REPO / "cluster" / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)", text, re.M)
    assert base, "cluster/Dockerfile is not built FROM a rayproject/ray image"
    ray_version, python = base.group(1), f"{base.group(2)}.{base.group(3)}"
    assert _pins("cluster/requirements-gpu.txt")["ray"] == ray_version
    launcher_image = _load(LAUNCHER)["docker"]["image"]
    assert launcher_image.startswith(f"rayproject/ray:{ray_version}-py{python.replace('.', '')}"), launcher_image
    for rel in KUBERAY:
        (doc,) = yaml.safe_load_all((REPO / rel).read_text())
        spec = doc["spec"].get("rayClusterSpec") or doc["spec"]
        assert spec["rayVersion"] == ray_version, rel
    requires = re.search(r'requires-python\s*=\s*">=(\d+\.\d+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert tuple(map(int, python.split("."))) >= tuple(map(int, requires.split(".")))
    (job,) = yaml.safe_load_all((REPO / "cluster" / "rayjob.yaml").read_text())
    job_env = (yaml.safe_load(job["spec"]["runtimeEnvYAML"]).get("env_vars") or {})
    file_env = _load("cluster/runtime_env.yaml").get("env_vars") or {}
    assert job_env == file_env, (job_env, file_env)


def test_the_rayjob_resubmits_once_because_the_job_heals_itself():
    """docs/operations.md "Healing in the job": dead pools, stalls and lost nodes are healed inside one submission,
    so the RayJob resubmits only once (a lost driver or head), and a run ended with quarantined shards (exit 3) is
    not started over and over."""
    import yaml

    job = yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())
    assert job["spec"]["backoffLimit"] == 1
    assert "exit 3" in (REPO / "cluster" / "rayjob.yaml").read_text()


def test_the_rayjob_is_spot_ready():
    """Issue 43 item 4: the head (the driver and its lease) on on-demand capacity, the GPU workers on spot (with the
    spot taint tolerated), and the job rerun on the codes a rerun heals only (jobs.retry, tests/test_retry.py)."""
    import yaml

    job = yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["nodeSelector"] == {"karpenter.sh/capacity-type": "on-demand"}
    gpu = [g for g in cluster["workerGroupSpecs"] if "nvidia.com/gpu" in str(g["template"])]
    assert gpu and all(g["template"]["spec"]["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"} for g in gpu)
    assert all(any(t.get("value") == "spot" for t in g["template"]["spec"]["tolerations"]) for g in gpu)
    assert job["spec"]["entrypoint"].split()[:5] == ["python", "-m", "jobs.retry", "--", "python"]
