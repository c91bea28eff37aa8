"""The cluster files run as written: every local path their commands use reaches the nodes (a file mount, the
job's working_dir, or a COPY into the image), no install hides its failure behind `|| true`, the GPU set pins
what the CPU set pins, and no secret travels in a Ray runtime env (the dashboard shows runtime envs)."""

from __future__ import annotations

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
def _containers(doc: dict):
    spec = doc.get("spec") or {}
    cluster = spec.get("rayClusterSpec") or spec
    groups = [cluster.get("headGroupSpec") or {}] + list(cluster.get("workerGroupSpecs") or [])
    for g in groups:
        yield from ((g.get("template") or {}).get("spec") or {}).get("containers") or []


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
    for name in ("transformers", "ray", "pyarrow"):
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
