"""The soak's test bench: its inputs and config, a multi-node Ray cluster on loopback in a private temp dir, driver
processes it starts and kills, and a CPU meter."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from benchmarks.harness import REPO

C4 = "webtext/c4_sample_1000.jsonl.gz"
LM_CPUS = 0.5  # what an LM actor asks; the state API tells LM actors from the select actor (0.1) by it
GIB = 1024**3
OTHER_HOST = ["unshare", "--uts", "sh", "-c", 'hostname soak-other-host && exec "$0" "$@"']


# -- inputs ---------------------------------------------------------------------------------------------------
def shared_data() -> Path:
    return Path(os.environ.get("TOOLFORMER_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_inputs(folder: Path, n_docs: int, faults: set[str]) -> dict:
    """C4 documents (≤ 600 characters, so each is one shard of one or two texts; plus two longer ones that
    prepare skips as too long), documents with no number and no date (no tool's heuristic passes), and a file
    of malformed JSON lines. Returns the files and how many records each holds (the documents in)."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(shared_data() / C4, "rt") as f:
        docs = [json.loads(line) for line in f]
    short = [d for d in docs if len(d["text"]) <= 600]
    plain = [d for d in short if not re.search(r"\d", d["text"])]  # no number anywhere
    n_plain = 2 if "no_eligible" in faults else 0
    # The documents whose arithmetic the Calculator's heuristic accepts come first: the tool faults (a call that
    # hangs, one that holds the GIL) need texts with calls, early in the run, before the faults this process fires.
    from toolformer.tools.calculator import calculator_rule

    pool = [d for d in short if not any(d is p for p in plain[:n_plain])]
    arithmetic = [i for i, d in enumerate(pool) if calculator_rule(d["text"], d["url"], 0.0, 0)][:6]
    rest = [i for i in range(len(pool)) if i not in arithmetic][: max(0, n_docs - n_plain - len(arithmetic))]
    picked = [pool[i] for i in arithmetic + rest]
    if len(picked) < n_docs - n_plain:
        raise SystemExit(f"{C4} has only {len(picked)} short documents, {n_docs - n_plain} asked")
    long = [d for d in docs if len(d["text"]) > 600][:2]
    files = {"c4.jsonl": picked[: len(picked) // 2] + long + picked[len(picked) // 2:]}
    if n_plain:
        # Real web text with its URL and date removed: no date for Calendar, no number for the Calculator.
        files["no_eligible.jsonl"] = [{"text": d["text"]} for d in plain[:n_plain]]
    out = {}
    for name, records in files.items():
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))
        out[str(folder / name)] = len(records)
    if "malformed" in faults:
        bad = ['{"text": "an unterminated record', "not json at all", '{"text": 12, "url": ', "[1, 2,", "\x00\x01{"]
        (folder / "malformed.jsonl").write_text("\n".join(bad) + "\n")
        out[str(folder / "malformed.jsonl")] = len(bad)
    return out


CONFIG = """\
name: soak
model: {{name_or_path: {model}, dtype: float32}}
engine: {{max_model_len: 1024, cpu_kv_cache_gib: 1, top_logprobs: 20}}
corpus:
  paths: {paths}
  max_text_tokens: 64
  max_doc_chars: 600
annotate:
  tools: [Calculator, Calendar]
  call_syntax: constrained   # a random model's free samples never parse; constrained ones are calls to run
  defaults: {{max_call_tokens: 12}}
  per_tool:
    Calculator: {{tau_s: 0.0, top_k: 2, num_samples: 2, max_call_tokens: 24}}
    Calendar: {{tau_s: 0.0, top_k: 2, num_samples: 2}}
  batch_size: 4
shards: {{docs_per_shard: 1, progress_every_shards: 25}}
ray:
  fuse_lm: true
  # LM actors on worker nodes only, one per node (the custom resource stands in for a GPU node's accelerator):
  # removing a worker always takes an LM actor with it, whose restart waits for a node to join
  lm: {{actors: {lm_actors}, num_cpus: {lm_cpus}, memory_gb: 1.0, resources: {{lm_slot: 1}}}}
  select: {{num_cpus: 0.1, memory_gb: 0.25}}
  io_memory_gb: 0.25
"""



# -- the cluster ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SoakCluster:
    """A head and worker nodes on loopback in a private temp dir (its own address file: other Ray users of this
    machine never see it), stopped by its own handles."""

    def __init__(self, temp_dir: Path, workers: int = 2, cpus: int = 1, memory_gib: float = 4.0,
                 health_check_s: float | None = None):
        """``health_check_s``: the GCS marks a lost node dead only after about this long (Ray's health-check
        settings, as a real cluster's 50-65 s), instead of a loopback's few seconds."""
        from ray.cluster_utils import Cluster

        self.temp_dir, self.cpus, self.memory = str(temp_dir), cpus, int(memory_gib * GIB)
        self.dashboard_port = _free_port()
        slow = {}
        if health_check_s:  # threshold x (period + timeout): 6 x (8 + 2) s = 60 s for health_check_s=60
            period = max(1.0, health_check_s / 6 - 2.0)
            slow = {"_system_config": {"health_check_failure_threshold": 6, "health_check_period_ms": int(period * 1000),
                                       "health_check_timeout_ms": 2000, "health_check_initial_delay_ms": 1000}}
        self.cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=cpus, memory=self.memory, node_ip_address="127.0.0.1", temp_dir=self.temp_dir,
            include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=self.dashboard_port, **slow))
        for _ in range(workers):
            self.add()

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self):
        """A worker node: 1 CPU and one LM slot."""
        return self.cluster.add_node(num_cpus=self.cpus, memory=self.memory, node_ip_address="127.0.0.1",
                                     temp_dir=self.temp_dir, resources={"lm_slot": 1})

    def workers(self) -> list:
        return list(self.cluster.worker_nodes)

    def shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()


def ray_actors(address: str) -> list[dict]:
    """Every actor Ray's state API knows (alive and dead) with its pid, node, resources and restarts."""
    from ray.util.state import list_actors

    try:
        return [a if isinstance(a, dict) else a.__dict__ for a in list_actors(
            address=address, limit=10_000, detail=True, raise_on_missing_output=False, timeout=20)]
    except Exception:  # noqa: BLE001 - the state API is an observer: a failed query is retried at the next poll
        return []


def is_lm(actor: dict) -> bool:
    """An LM actor: it asks for an ``lm_slot`` (and 0.5 CPU; the select actor asks 0.1 and no slot)."""
    res = actor.get("required_resources") or {}
    return bool(res.get("lm_slot")) or abs(float(res.get("CPU", 0)) - LM_CPUS) < 1e-6


class CpuMeter:
    """CPU-seconds of this process and every process below it (drivers, Ray's daemons and workers, the engines in
    them), sampled every ``interval_s`` in a thread; a process keeps its last sample after it ends. On a machine
    shared with other work, wall time stretches with their load; the CPU a run needed does not (much)."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.seen: dict[tuple[int, float], float] = {}  # (pid, start time) → CPU seconds at its last sample
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                self.seen[(p.pid, p.create_time())] = t.user + t.system  # its own, not its reaped children's
            except psutil.Error:
                continue

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._sample()
            self._stop.wait(self.interval_s)

    def total(self) -> float:
        with self._lock:
            self._sample()
            return sum(self.seen.values())

    def stop(self) -> None:
        self._stop.set()



# -- drivers --------------------------------------------------------------------------------------------------------
class Driver:
    """One driver process (a job), its log, and when it ended (stamped by a thread the moment it exits)."""

    def __init__(self, cmd: list[str], env: dict, log: Path, role: str, t0: float):
        self.role, self.log, self.t0 = role, log, t0
        self.started = time.perf_counter()
        self.out = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.killed = False
        self.ended: float | None = None  # stamped the moment the process exits (a thread waits on it)
        threading.Thread(target=self._stamp, daemon=True).start()

    def _stamp(self) -> None:
        self.proc.wait()
        self.ended = time.perf_counter()

    def kill(self) -> None:
        self.killed = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def signal(self, sig: int) -> None:
        """A signal to the driver process alone (its Ray workers and daemons go on)."""
        os.kill(self.proc.pid, sig)

    def text(self) -> str:
        if not self.out.closed:
            self.out.flush()
        return self.log.read_text(errors="replace")

    def record(self) -> dict:
        self.out.close()
        text = self.log.read_text(errors="replace")
        return {"role": self.role, "pid": self.proc.pid, "started_s": round(self.started - self.t0, 1),
                "seconds": round((self.ended or time.perf_counter()) - self.started, 1), "rc": self.proc.returncode,
                "killed": self.killed, "log": str(self.log), "last_lines": text.strip().splitlines()[-6:]}


def wait(driver: Driver, timeout: float) -> None:
    try:
        driver.proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        driver.kill()
