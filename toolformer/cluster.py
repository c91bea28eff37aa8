"""Ray start-up for every job: join the cluster a job was submitted to, or start a private Ray on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping

from toolformer.config import RunConfig
from toolformer.paths import repo_root

# Environment variables every worker must see as the driver does (offline hub, vLLM settings, fault hooks).
_FORWARDED = ("TOOLFORMER_", "VLLM_", "HF_", "TRANSFORMERS_")
# Never forwarded: a runtime env is shown on the dashboard. Credentials (HF_TOKEN, an API key) stay on the node
# that has them; workers that need one get it from their own node (e.g. `hf auth login` there, or a k8s Secret).
_SECRET_NAMES = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})
_SECRET = re.compile(r"TOKEN(?!IZER)|SECRET|PASSWORD|KEY", re.IGNORECASE)  # TOKENIZERS_PARALLELISM is no secret


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The driver's variables that go into the workers' runtime env: the forwarded prefixes and
    TOKENIZERS_PARALLELISM, less anything whose name says it holds a credential."""
    return {k: v for k, v in environ.items()
            if (k.startswith(_FORWARDED) or k == "TOKENIZERS_PARALLELISM")
            and k not in _SECRET_NAMES and not _SECRET.search(k)}


def init_ray(cfg: RunConfig) -> None:
    """Connect to the cluster (a submitted job, ``ray.address``) or start a local Ray on loopback."""
    import ray

    if ray.is_initialized():
        return
    env = forwarded_env(os.environ)
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:
        # A submitted job: its runtime env (working_dir, env_vars) already reaches every worker, and Ray refuses
        # a driver env that sets the same keys again; add only what it lacks.
        try:
            given = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        except (ValueError, AttributeError):
            given = {}
        env = {k: v for k, v in env.items() if k not in given}
    else:
        # A driver started by hand: workers import the package from this checkout.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo_root()), os.environ.get("PYTHONPATH")) if p)
    from toolformer.console import is_quiet

    # Workers' output reaches the terminal only with --verbose; otherwise it stays in Ray's session logs.
    to_driver = not is_quiet()
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    with _keeps_sigterm_handler():
        _ray_init(cfg, address, env, to_driver)


@contextlib.contextmanager
def _keeps_sigterm_handler() -> Iterator[None]:
    """``ray.init`` installs its own SIGTERM handler in the driver (``sys.exit`` from wherever the driver is); a
    job's own (``jobs.cli``: unwind, release the run's lease, exit 143) is put back after it."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    ours = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    except SystemExit as exc:  # a SIGTERM while Ray started: Ray's handler exited with the signal's number
        if exc.code == signal.SIGTERM and callable(ours):
            ours(signal.SIGTERM, None)
        raise
    finally:
        if main and callable(ours) and signal.getsignal(signal.SIGTERM) is not ours:
            signal.signal(signal.SIGTERM, ours)


def _ray_init(cfg: RunConfig, address: str | None, env: dict, to_driver: bool) -> None:
    import ray

    if address:
        # A cluster on loopback: Ray takes this machine's interface address as the driver's node address and then
        # finds no raylet there (the driver never connects); pin it to loopback as the cluster's nodes are.
        host = address.removeprefix("ray://").rsplit(":", 1)[0]
        pin = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=to_driver, **pin)
    else:
        # A private Ray for this run; every listener stays on loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # address="local": a new Ray even when a `ray start` cluster runs on this machine (a bare ray.init()
        # would join that one, and refuse num_cpus).
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": env}, log_to_driver=to_driver)
