"""``python -m jobs.bench soak``: the chaos soak. The annotate job on a real multi-node Ray cluster on loopback
(``ray.cluster_utils.Cluster`` in a private temp dir: a head of 1 CPU for the drivers, the select pool and the read /
write / commit tasks, and two worker nodes of 1 CPU and one ``lm_slot`` each, so each holds one fused LM actor),
the real vLLM engine on a tiny random model of the embedded architecture (``model.py``: the machinery, not the LM,
is what costs), at least 200 shards of C4 web text, and faults:

- shard-borne, armed from the start, early in the manifest (``chaos.py``): ``corrupt`` (bytes of a shard file
  overwritten after prepare), ``stall`` (an LM batch hangs once: the watchdog), ``hang`` (one text's Calculator
  calls sleep forever: the tool timeout), ``gil`` (one text's Calculator calls compute in C holding the GIL: the
  tool worker is killed), ``poison`` (every LM actor taking a shard exits 137), ``no_eligible`` (shards no tool
  may annotate), ``malformed`` (an input of malformed JSON);
- fired by this process one at a time, in this order, each once the previous one's evidence is in:
  ``second_driver`` (refused, naming the holder), ``actor_kill`` (an LM actor SIGKILLed, restarted),
  ``node_remove`` / ``node_add`` (a worker node with an LM actor removed, a fresh one joining 30 s later),
  ``driver_kill`` (SIGKILLed; the same command takes the lease over);
- short scenarios on runs of their own (``scenarios.py``): ``pool_dead`` (the pool dies for good; healed in one
  submission), ``pause`` (a driver paused past its TTL while another host takes over, resumed while that one holds
  the run), ``charges_pending`` (a driver killed mid-pass), ``node_kill`` (one node's LM actors killed again and
  again: the node excluded, no shard charged).

The same prepared shards are first annotated without faults (the uninterrupted run). Every check cites the
evidence it rests on (``evidence.py``; ``report.py``) and fails when it is missing: committed output equal to the
uninterrupted run's row for row, every input record committed, skipped at prepare with a reason or in a
quarantined shard, only the poison and corrupt shards quarantined, each fault's own trace. A false check exits 1
(through ``jobs.bench``). ``--faults`` picks a subset (``tests/test_soak.py`` runs a small one).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import REPO
from benchmarks.soak.harness import CONFIG, LM_CPUS, CpuMeter, Driver, SoakCluster, is_lm, ray_actors, wait, \
    write_inputs
from benchmarks.soak.model import tiny_model
from benchmarks.soak.outputs import Reference, manifest

SHARD_FAULTS = ("corrupt", "stall", "hang", "gil", "poison", "no_eligible", "malformed")
FIRED = ("second_driver", "actor_kill", "node_remove", "node_add", "driver_kill")
SCENARIO_FAULTS = ("pool_dead", "pause", "charges_pending", "node_kill")
FAULTS = SHARD_FAULTS + FIRED + SCENARIO_FAULTS

__all__ = ["FAULTS", "Soak", "add_arguments", "run", "tiny_model"]


class Soak:
    def __init__(self, args):
        self.args = args
        self.faults = set(FAULTS if args.faults == "all" else args.faults.split(","))
        unknown = self.faults - set(FAULTS)
        if unknown:
            raise SystemExit(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        self.work = Path(args.work_dir or tempfile.mkdtemp(prefix="toolformer-soak-"))
        if self.work.exists() and any(self.work.iterdir()) and not (self.work / ".soak").exists():
            raise SystemExit(f"--work-dir {self.work} is not empty and not a soak's work dir: give a new one")
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        (self.work / ".soak").touch()  # what makes the folder safe to clear by the next soak
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="tfsoak-", dir="/tmp"))  # Ray's sockets want a short path
        (self.ray_tmp / "ray").mkdir()
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    "RAY_TMPDIR": str(self.ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        self.env.pop("RAY_ADDRESS", None)
        os.environ.update({k: self.env[k] for k in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                                                       "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED")})
        os.environ.pop("RAY_ADDRESS", None)
        self.t0 = time.perf_counter()
        self.load_start = round(os.getloadavg()[0], 1)
        self.cpu = CpuMeter()
        self.events: list[dict] = []
        self.drivers: list[dict] = []
        self.actors: dict[str, dict] = {}  # actor id → latest state seen (Ray's state API)
        self.clean_jobs: set[str] = set()
        self.cluster: SoakCluster | None = None
        self.is_lm = is_lm

    def note(self, fault: str, what: str, **extra) -> dict:
        e = {"fault": fault, "at_s": round(time.perf_counter() - self.t0, 1), "what": what, **extra}
        self.events.append(e)
        print(f"[soak {e['at_s']:7.1f}s] {fault}: {what}", file=sys.stderr, flush=True)
        return e

    def job(self, module: str, run: Path, extra: list[str] = (), env: dict | None = None, role: str = "",
            prefix: list[str] = ()) -> Driver:
        cmd = [*prefix, sys.executable, "-m", module, "--config", str(self.config), f"output_dir={run}",
               f"ray.address={self.cluster.address}", *self.overrides, *extra]
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{len(list(logs.glob('*.log'))):02d}-{role or module}.log"
        return Driver(cmd, env or self.env, log, role or module, self.t0)

    def poll_actors(self) -> None:
        for a in ray_actors(self.cluster.address):
            if "MapWorker" in (a.get("class_name") or "") or "MapWorker" in (a.get("repr_name") or ""):
                pids = self.actors.get(a["actor_id"], {}).get("pids", []) + [a.get("pid")]
                self.actors[a["actor_id"]] = {k: a.get(k) for k in ("actor_id", "job_id", "state", "pid", "node_id",
                                                                    "num_restarts", "required_resources")} | {
                    "death_cause": str(a.get("death_cause") or "")[:300], "pids": sorted({p for p in pids if p})}

    # -- steps --
    def setup(self) -> None:
        import ray

        self.model = tiny_model()
        self.inputs = write_inputs(self.work / "inputs", self.args.shards, self.faults)
        self.config = self.work / "soak.yaml"
        self.config.write_text(CONFIG.format(model=self.model["path"], paths=json.dumps(list(self.inputs)),
                                             lm_actors=self.args.lm_actors, lm_cpus=LM_CPUS))
        # node removal makes the cluster smaller for a while; a driver that starts then must not be refused. The
        # faults here are one at a time, each waiting for its own evidence (an actor kill: its restart), so no node
        # is excluded in these runs; the node_kill scenario (its own run, the default limit) shows the exclusion.
        self.overrides = ["ray.plan_check=warn", "ray.node_max_failures=100", *self.args.overrides]
        self.cluster = SoakCluster(self.ray_tmp / "ray", workers=2)
        ray.init(address=self.cluster.address, log_to_driver=False)
        self.note("cluster", f"head + {len(self.cluster.workers())} workers (1 CPU each, 1 lm_slot per worker) "
                             f"on 127.0.0.1 ({self.cluster.address})")
        self.prepared = self.work / "prepared"
        d = self.job("jobs.prepare", self.prepared, [f"prepare.runner={self.args.prepare_runner}"], role="prepare")
        wait(d, 600)
        self.prepare_record = d.record()
        if self.prepare_record["rc"] != 0:
            raise RuntimeError(f"prepare failed: {self.prepare_record}")
        self.manifest = manifest(self.prepared)
        self.shard_ids = [s["shard_id"] for s in self.manifest["shards"]]

    def clean_run(self) -> None:
        self.clean = self.work / "clean"
        cpu0 = self.cpu.total()
        if self.args.reference == "ray":
            shutil.copytree(self.prepared, self.clean)
            d = self.job("jobs.annotate", self.clean, role="uninterrupted")
        else:  # the single-process pipeline over the same inputs: no Ray, no shards, one engine
            d = self.job("jobs.annotate", self.clean, ["annotate.runner=local"], role="uninterrupted-local")
        wait(d, self.args.timeout)
        self.clean_cpu = self.cpu.total() - cpu0
        self.poll_actors()
        self.clean_jobs = {x["job_id"] for x in self.actors.values()}
        self.clean_record = d.record()
        if self.clean_record["rc"] != 0:
            raise RuntimeError(f"the uninterrupted run failed: {self.clean_record}")
        self.clean_stats = json.loads((self.clean / "stats.json").read_text())
        self.reference = Reference(self.clean, self.prepared, self.args.reference)

    def run(self) -> dict:
        from benchmarks.soak.chaos import Chaos
        from benchmarks.soak.report import report
        from benchmarks.soak.scenarios import SCENARIOS

        try:
            self.setup()
            self.clean_run()
            self.chaos = Chaos(self)
            self.chaos_result = self.chaos()
            self.scenarios = {}
            for name, fn in SCENARIOS.items():
                if name in self.faults:
                    self.scenarios[name] = fn(self)
            return report(self)
        finally:
            self.cpu.stop()
            if self.cluster is not None:
                self.cluster.shutdown()
            for _ in range(3):  # a process shutting down may still write a file there
                shutil.rmtree(self.ray_tmp, ignore_errors=True)
                time.sleep(1)
            if not self.args.keep and not self.args.work_dir:
                shutil.rmtree(self.work, ignore_errors=True)


def run(args) -> dict:
    result = Soak(args).run()
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def add_arguments(p) -> None:
    p.add_argument("--shards", type=int, default=200, help="documents of C4 web text, one shard each")
    p.add_argument("--lm-actors", type=int, default=2)
    p.add_argument("--faults", default="all", help=f"all, or a comma list of: {', '.join(FAULTS)}")
    p.add_argument("--max-failures", type=int, default=2, help="shards.max_failures of the soak runs")
    p.add_argument("--batch-attempts", type=int, default=2, help="ray.batch_attempts of the main run")
    p.add_argument("--lm-batch-timeout-s", type=float, default=45.0)
    p.add_argument("--at-actor-kill", type=float, default=0.15, help="fraction of shards committed when it fires "
                   "(and not before the shard-borne faults have played out)")
    p.add_argument("--at-node-remove", type=float, default=0.3)
    p.add_argument("--at-driver-kill", type=float, default=0.55)
    p.add_argument("--reference", choices=("ray", "local"), default="ray",
                   help="the uninterrupted run: the Ray job on the same prepared shards and cluster (its wall time is "
                        "the slowdown's base), or the single-process pipeline on the same inputs (cheaper)")
    p.add_argument("--prepare-runner", choices=("ray", "local"), default="ray",
                   help="jobs.prepare as a Ray job on the soak's cluster, or in one loop (tiny corpora; same shards)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run before its driver is killed")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the work dir (a temp dir otherwise removed)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "soak.json"),
                   help="where the JSON is written too ('' for nowhere)")
    p.add_argument("overrides", nargs="*", help="config overrides for every job of the soak")
