"""Node chaos on a loopback cluster: what a week of spot GPUs brings, small enough for this machine.

A head (1 CPU: the driver's tasks and the select pool) and two worker nodes of 1 CPU and one ``lm_slot`` each (one
fused LM actor per node), the real vLLM engine on the soak's tiny random model, one shard per document of C4 text;
the annotate job runs as one submission while this process breaks nodes, never the shards:

- ``flaky_node``: every ``--every-s`` a worker node holding an LM actor is removed hard (its raylet killed, no
  drain) and a fresh one joins in its place. Checks: the run ends in one submission with every shard committed,
  **no charge on any shard**, the deaths on the removed nodes' ledgers (``jobs.status`` names them), and the
  shards a node's loss left behind retried in one pass;
- ``node_kill``: the LM actors on one worker node are SIGKILLed again and again (the node itself stays up).
  Checks: one submission, every shard committed, no shard charged or quarantined, the node excluded (its deaths
  charged to it) and no LM actor placed on it after its exclusion.

    python -m benchmarks.soak.nodes --scenario flaky_node --shards 12 --every-s 40
    python -m benchmarks.soak.nodes --scenario node_kill --shards 12 --every-s 20

Prints the result as JSON (``--results`` writes it too); a false check exits 1. ``tests/test_node_blame.py`` runs
small versions of both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import REPO
from benchmarks.soak.harness import CONFIG, LM_CPUS, Driver, SoakCluster, wait, write_inputs
from benchmarks.soak.model import tiny_model

SCENARIOS = ("flaky_node", "node_kill")


def _env(ray_tmp: Path) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    env.pop("RAY_ADDRESS", None)
    return env


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class NodeChaos:
    def __init__(self, scenario: str, shards: int, every_s: float, max_events: int, timeout: float,
                 work: Path | None = None, overrides: list[str] = (), cluster: SoakCluster | None = None,
                 config: Path | None = None, env: dict | None = None, health_check_s: float | None = None):
        """``cluster``, ``config``, ``env``: run on the chaos soak's cluster with its config (its inputs: the run is
        their first ``shards`` documents), instead of a cluster of its own."""
        if scenario not in SCENARIOS:
            raise SystemExit(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        self.scenario, self.shards, self.every_s, self.max_events = scenario, shards, every_s, max_events
        self.timeout, self.overrides, self.health_check_s = timeout, list(overrides), health_check_s
        self.work = Path(work or tempfile.mkdtemp(prefix=f"toolformer-{scenario}-"))
        if self.work.exists() and any(self.work.iterdir()):
            if not (self.work / ".nodes").exists():
                raise SystemExit(f"--work-dir {self.work} is not empty and not a node chaos work dir: give a new one")
            shutil.rmtree(self.work)  # a run of the same name from before would be resumed, not redone
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / ".nodes").touch()
        self.own = cluster is None
        self.cluster, self.config = cluster, config
        self.ray_tmp: Path | None = None
        if self.own:
            self.ray_tmp = Path(tempfile.mkdtemp(prefix="tfnodes-", dir="/tmp"))  # Ray's sockets want a short path
            (self.ray_tmp / "ray").mkdir()
            self.env = _env(self.ray_tmp)
            os.environ.update({k: self.env[k] for k in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                                                           "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED")})
            os.environ.pop("RAY_ADDRESS", None)
        else:
            self.env = env or dict(os.environ)
        self.t0 = time.perf_counter()
        self.events: list[dict] = []

    def note(self, what: str, **extra) -> None:
        e = {"at_s": round(time.perf_counter() - self.t0, 1), "what": what, **extra}
        self.events.append(e)
        print(f"[{self.scenario} {e['at_s']:7.1f}s] {what}", file=sys.stderr, flush=True)

    # -- set-up ------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        import ray

        if self.own:
            model = tiny_model()
            inputs = write_inputs(self.work / "inputs", self.shards, set())
            self.config = self.work / "nodes.yaml"
            self.config.write_text(CONFIG.format(model=model["path"], paths=json.dumps(list(inputs)), lm_actors=2,
                                                 lm_cpus=LM_CPUS))
            self.cluster = SoakCluster(self.ray_tmp / "ray", workers=2, health_check_s=self.health_check_s)
            ray.init(address=self.cluster.address, log_to_driver=False, _node_ip_address="127.0.0.1")
            self.note(f"cluster: head + 2 workers on 127.0.0.1 ({self.cluster.address})")
        self.run_dir = self.work / "run"
        prep = subprocess.run([sys.executable, "-m", "jobs.prepare", "--config", str(self.config),
                               f"output_dir={self.run_dir}", "prepare.runner=local", f"corpus.limit={self.shards}"],
                              cwd=REPO, env=self.env, capture_output=True, text=True, timeout=600)
        if prep.returncode != 0:
            raise RuntimeError(f"prepare failed: {prep.stderr[-3000:]}")
        self.total = len(json.loads((self.run_dir / "manifest.json").read_text())["shards"])

    def start(self) -> Driver:
        cmd = [sys.executable, "-m", "jobs.annotate", "--config", str(self.config), f"output_dir={self.run_dir}",
               f"ray.address={self.cluster.address}", "ray.plan_check=warn", "shards.max_failures=2",
               "ray.progress_timeout_s=180", *self.overrides]
        (self.work / "logs").mkdir(exist_ok=True)
        return Driver(cmd, self.env, self.work / "logs" / "annotate.log", "annotate", self.t0)

    # -- chaos -------------------------------------------------------------------------------------------------
    def _done(self) -> int:
        return len(list((self.run_dir / "markers" / "annotate").glob("*.json")))

    def _busy(self) -> list[dict]:
        """In-flight records of LM actors computing a shard now (``failures.InflightRecord``): what a fault must
        hit to cost a shard anything (an idle actor that dies holds none)."""
        out = []
        for path in self.run_dir.glob("_staging/*/_inflight/*.json"):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("stage") in ("lm", "sample", "score") and rec.get("shards"):
                out.append(rec)
        return out

    def remove_one(self) -> None:
        on = {r.get("node_id") for r in self._busy()}
        node = next((w for w in self.cluster.workers() if w.node_id in on), None)
        if node is None:
            return
        self.cluster.cluster.remove_node(node, allow_graceful=False)
        self.removed.append(node.node_id)
        fresh = self.cluster.add()
        self.note(f"removed worker node {node.node_id[:8]} (hard), added {fresh.node_id[:8]}",
                  removed=node.node_id, added=fresh.node_id, committed=self._done())

    def kill_on_bad(self) -> None:
        # a dead actor's record stays behind (it is how its death is seen): only live processes are targets
        # and a shard already hit is left to its retry (Ray retries a batch on the restarted actor, on this node):
        # the node kills what it is given, one shard after another
        busy = [r for r in self._busy() if r.get("node_id") == self.bad and r.get("pid") and _running(r["pid"])
                and not set(r["shards"]) <= self.hit]
        pids = sorted({r["pid"] for r in busy})
        self.hit.update(s for r in busy for s in r["shards"])
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append(pid)
        if pids:
            self.note(f"SIGKILLed the LM actor(s) {pids} on node {self.bad[:8]}", pids=pids, committed=self._done(),
                      wall=time.time())

    def chaos(self, driver: Driver) -> None:
        self.removed: list[str] = []
        self.kills: list[int] = []
        self.hit: set[str] = set()
        self.bad = self.cluster.workers()[0].node_id
        deadline = time.perf_counter() + self.timeout
        last = time.perf_counter()
        fired = 0
        while driver.proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.5)
            if time.perf_counter() - last < self.every_s or fired >= self.max_events:
                continue
            if self._done() >= self.total:
                continue
            # a fault fires when an LM actor holds a shard (an idle actor's death costs no shard anything)
            if self.scenario == "flaky_node":
                before = len(self.removed)
                self.remove_one()
                hit = len(self.removed) > before
            else:
                before = len(self.kills)
                self.kill_on_bad()
                hit = len(self.kills) > before
            if hit:
                fired += 1
                last = time.perf_counter()
        wait(driver, max(1.0, deadline - time.perf_counter()))

    # -- the result --------------------------------------------------------------------------------------------
    def result(self, driver: Driver) -> dict:
        rec = driver.record()
        log = driver.text() if not driver.out.closed else Path(rec["log"]).read_text(errors="replace")
        run = self.run_dir
        stats = json.loads((run / "stats.json").read_text()) if (run / "stats.json").exists() else {}
        charged = sorted(p.stem for p in (run / "failures" / "annotate").glob("*.json"))
        quarantined = sorted(p.stem for p in (run / "quarantine" / "annotate").glob("*.json"))
        status = subprocess.run([sys.executable, "-m", "jobs.status", str(run)], cwd=REPO, env=self.env,
                                capture_output=True, text=True, timeout=120).stdout
        nodes = stats.get("nodes") or {}
        retry_lines = [m for m in re.findall(r"pass \d+: retrying (\d+) shards together", log)]
        committed = self._done()
        base = {"one_submission": {"ok": rec["rc"] == 0 and not rec["killed"], "evidence": {"rc": rec["rc"],
                                                                                           "last": rec["last_lines"]}},
                "every_shard_committed": {"ok": committed == self.total,
                                          "evidence": {"committed": committed, "total": self.total}},
                "no_shard_charged": {"ok": not charged and not quarantined,
                                     "evidence": {"charged": charged, "quarantined": quarantined,
                                                  "charges_by_cause": stats.get("charges_by_cause")}}}
        if self.scenario == "flaky_node":
            paid = sum(n["charged_to"].get("node", 0) for n in nodes.values())
            named = [r for r in self.removed if r[:8] in status]
            checks = {**base,
                      "nodes_removed": {"ok": len(self.removed) >= 2, "evidence": {"removed": self.removed}},
                      "deaths_charged_to_the_removed_nodes": {
                          "ok": paid >= 1 and all(nid in self.removed for nid, n in nodes.items()
                                                  if n["charged_to"].get("node")),
                          "evidence": {"nodes": nodes}},
                      "status_names_the_nodes": {"ok": bool(named), "evidence": {"named": named,
                                                                                 "status": status[-2000:]}},
                      "retries_in_one_pass": {"ok": len(retry_lines) <= 1 + max(0, len(self.removed) - 1),
                                              "evidence": {"retry_passes": retry_lines,
                                                           "passes": stats.get("passes")}}}
        else:
            bad = nodes.get(self.bad, {})
            import datetime as dt

            at = bad.get("excluded_at")
            excluded_wall = dt.datetime.fromisoformat(at).timestamp() if at else None
            # the cut pass's actors die with it; a pass started after the exclusion places none on the node
            late = [e for e in self.events if "pids" in e and excluded_wall and e["wall"] > excluded_wall + 30]
            checks = {**base,
                      "actors_killed_repeatedly": {"ok": len(self.kills) >= 2, "evidence": {"kills": self.kills}},
                      "node_excluded": {"ok": bool(bad.get("excluded_at")) and bad["charged_to"].get("node", 0) >= 2,
                                        "evidence": {"node": self.bad, "ledger": bad}},
                      "no_lm_actor_on_it_after_exclusion": {"ok": bool(at) and not late,
                                                            "evidence": {"excluded_at": at, "kills_after": late}},
                      "status_names_the_node": {"ok": self.bad[:8] in status and "EXCLUDED" in status,
                                                "evidence": {"status": status[-2000:]}}}
        return {"scenario": self.scenario, "shards": self.total, "every_s": self.every_s,
                "seconds": round(time.perf_counter() - self.t0, 1), "driver": rec,
                "stats": {k: stats.get(k) for k in ("shards", "passes", "pass_cuts", "charges_by_cause", "nodes",
                                                    "seconds")},
                "events": self.events, "checks": checks, "ok": all(c["ok"] for c in checks.values())}

    def __call__(self) -> dict:
        try:
            self.setup()
            driver = self.start()
            self.chaos(driver)
            return self.result(driver)
        finally:
            if self.own and self.cluster is not None:
                self.cluster.shutdown()
            for _ in range(3 if self.ray_tmp else 0):
                shutil.rmtree(self.ray_tmp, ignore_errors=True)
                time.sleep(1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=SCENARIOS, required=True)
    p.add_argument("--shards", type=int, default=12)
    p.add_argument("--every-s", type=float, default=40.0)
    p.add_argument("--max-events", type=int, default=1000, help="stop breaking things after this many")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--results", default="")
    p.add_argument("--health-check-s", type=float, default=None,
                   help="the GCS marks a lost node dead after about this long (a real cluster's 50-65 s)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    out = NodeChaos(a.scenario, a.shards, a.every_s, a.max_events, a.timeout,
                    Path(a.work_dir) if a.work_dir else None, a.overrides, health_check_s=a.health_check_s)()
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if a.results:
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)
        Path(a.results).write_text(text + "\n")
    if not out["ok"]:
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()
