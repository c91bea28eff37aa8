"""The main soak run: the annotate job over every prepared shard while faults fire on a fixed schedule, one at a
time. Faults that ride on shards (corrupt, poison, stall, hang, gil, no_eligible, malformed) sit in the first part
of the manifest and are armed from the start; the faults this process fires (second_driver, actor_kill,
node_remove, node_add, driver_kill) wait until those shards have settled and then fire in order, each only once the
previous one's evidence is in (a refusal, a restarted actor, a commit after a node change, a takeover). Nothing
races: each check reads what one fault, and only it, caused."""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.soak.outputs import failures, ledger_events, markers


@dataclass
class Step:
    name: str
    ready: Callable[[], bool]
    fire: Callable[[], dict]
    settled: Callable[[], bool]
    fired_at: float | None = None
    settled_at: float | None = None
    info: dict = field(default_factory=dict)
    misses: int = 0  # times it was ready but found nothing to fire at


class Chaos:
    def __init__(self, soak):
        self.s = soak  # the Soak: cluster, jobs, notes, actor polling
        self.a = soak.args
        self.run = soak.work / "chaos"
        self.drivers: list = []
        self.second = None
        self.removed = None

    # -- targets and armed faults ------------------------------------------------------------------------------
    def targets(self) -> dict:
        """Which shards the shard-borne faults hit: distinct shards early in the manifest."""
        s, faults = self.s, self.s.faults
        ids = s.shard_ids
        plain = {x["shard_id"] for x in s.manifest["shards"] if any("no_eligible" in i for i in x["inputs"])}
        taken = set(plain)

        def near(frac: float, ok=lambda sid: True) -> str | None:
            for i in sorted(range(len(ids)), key=lambda i: abs(i - frac * len(ids))):
                if ids[i] not in taken and ok(ids[i]):
                    taken.add(ids[i])
                    return ids[i]
            return None

        t: dict = {"no_eligible": sorted(plain)}
        calls = {}
        for sid in ids:  # texts whose Calculator calls the uninterrupted run executed
            for r in s.reference.annotations(sid):
                if r["tool"] == "Calculator" and r["n_candidates"]:
                    calls.setdefault(sid, (r["text_id"], r["n_candidates"]))
        for fault, frac in (("hang", 0.04), ("gil", 0.08)):
            if fault in faults:
                sid = near(frac, lambda x: x in calls)
                t[fault] = {"shard": sid, "text_id": calls[sid][0], "calls": calls[sid][1]} if sid else None
        for fault, frac in (("corrupt", 0.02), ("stall", 0.06), ("poison", 0.1)):
            if fault in faults:
                t[fault] = near(frac)
        return t

    def arm(self, t: dict) -> tuple[dict, list[str]]:
        s, a = self.s, self.a
        env = dict(s.env)
        extra = [f"shards.max_failures={a.max_failures}", f"ray.batch_attempts={a.batch_attempts}",
                 "shards.lease_ttl_s=30", "shards.lease_heartbeat_s=2", "shards.lease_wait_s=0", "annotate.tool_timeout_s=2",
                 f"ray.lm_batch_timeout_s={a.lm_batch_timeout_s}"]
        if t.get("poison"):
            env["TOOLFORMER_FAULT_POISON_SHARD"] = t["poison"]
            s.note("poison", f"{t['poison']}: every LM actor that gets a batch holding it exits 137")
        if t.get("hang"):
            env.update(TOOLFORMER_FAULT_HANG_TOOL="Calculator", TOOLFORMER_FAULT_HANG_TEXT=t["hang"]["text_id"])
            s.note("hang", f"the Calculator calls of {t['hang']['text_id']} ({t['hang']['shard']}) sleep forever")
        if t.get("gil"):
            env.update(TOOLFORMER_FAULT_GIL_TOOL="Calculator", TOOLFORMER_FAULT_GIL_TEXT=t["gil"]["text_id"])
            s.note("gil", f"the Calculator calls of {t['gil']['text_id']} ({t['gil']['shard']}) compute a huge "
                          "power in C, holding the GIL")
        if t.get("stall"):
            self.stall_flag = s.work / "stalled.flag"
            env.update(TOOLFORMER_FAULT_STALL_SHARD=t["stall"], TOOLFORMER_FAULT_STALL_ONCE_FILE=str(self.stall_flag))
            s.note("stall", f"the first LM batch holding {t['stall']} hangs; ray.lm_batch_timeout_s="
                            f"{a.lm_batch_timeout_s}")
        if t.get("corrupt"):
            path = self.run / "shards" / f"{t['corrupt']}.parquet"
            data = bytearray(path.read_bytes())
            data[len(data) // 3: len(data) // 3 + 64] = b"\xde\xad\xbe\xef" * 16
            path.write_bytes(bytes(data))
            s.note("corrupt", f"64 bytes of shards/{t['corrupt']}.parquet overwritten after prepare")
        if t.get("no_eligible"):
            s.note("no_eligible", f"{len(t['no_eligible'])} shards with no number and no date: {t['no_eligible']}")
        if "malformed" in s.faults:
            s.note("malformed", "an input file of malformed JSON lines (skipped at prepare)")
        return env, extra

    # -- the schedule --------------------------------------------------------------------------------------------
    def done(self) -> int:
        return len(markers(self.run))

    def frac(self, f: float) -> bool:
        return self.done() >= f * self.expected

    def shard_faults_settled(self) -> bool:
        """Every shard-borne fault has played out: a step that fired now cannot be what ended them."""
        t, done, q = self.t, markers(self.run), set(p.stem for p in (self.run / "quarantine" / "annotate").glob("*"))
        ok = [t[k]["shard"] in done for k in ("hang", "gil") if t.get(k)]
        ok += [t["stall"] in done] if t.get("stall") else []
        ok += [t["corrupt"] in q] if t.get("corrupt") else []
        # the poison shard's deaths: charged to it, or (one node only, another could run it) on its node's ledger
        ok += [bool(failures(self.run, t["poison"]) or ledger_events(self.run, t["poison"]))] if t.get("poison") else []
        return all(ok)

    def steps(self) -> list[Step]:
        s, out = self.s, []
        faults = s.faults
        if "second_driver" in faults:
            out.append(Step("second_driver", lambda: (self.run / "_lease.json").exists() and self.done() >= 1,
                            self.fire_second, lambda: self.second is not None and self.second.proc.poll() is not None))
        if "actor_kill" in faults:
            out.append(Step("actor_kill", lambda: self.shard_faults_settled() and self.frac(self.a.at_actor_kill),
                            self.fire_actor_kill, self.actor_restarted))
        if "node_remove" in faults:
            out.append(Step("node_remove", lambda: self.shard_faults_settled() and self.frac(self.a.at_node_remove),
                            self.fire_node_remove, self.committed_since_last))
        if "node_add" in faults and "node_remove" in faults:
            out.append(Step("node_add", lambda: time.perf_counter() - self.last_fired >= 30, self.fire_node_add,
                            self.committed_since_last))
        if "driver_kill" in faults:
            out.append(Step("driver_kill", lambda: self.shard_faults_settled() and self.frac(self.a.at_driver_kill),
                            self.fire_driver_kill, self.took_over))
        return out

    def committed_since_last(self) -> bool:
        return self.done() > self.done_at_fire

    # -- the faults this process fires ----------------------------------------------------------------------------
    def fire_second(self) -> dict:
        self.second = self.s.job("jobs.annotate", self.run, self.extra, self.env, role="second-driver")
        return {"second_pid": self.second.proc.pid, "holder_pid": self.driver.proc.pid}

    def fire_actor_kill(self) -> dict:
        s = self.s
        s.poll_actors()
        live = [x for x in s.actors.values() if x["state"] == "ALIVE" and s.is_lm(x) and x["pid"]
                and x["job_id"] not in s.clean_jobs]
        if not live:
            return {"fired": False, "why": "no live LM actor"}
        victim = live[0]
        os.kill(victim["pid"], signal.SIGKILL)
        self.victim = victim
        return {"actor_id": victim["actor_id"], "pid": victim["pid"], "restarts_before": victim["num_restarts"]}

    def actor_restarted(self) -> bool:
        self.s.poll_actors()
        now = self.s.actors.get(self.victim["actor_id"]) if getattr(self, "victim", None) else None
        return bool(now) and (now["num_restarts"] or 0) > (self.victim["num_restarts"] or 0) and now["state"] == "ALIVE"

    def fire_node_remove(self) -> dict:
        s = self.s
        s.poll_actors()
        lm_nodes = {x["node_id"] for x in s.actors.values() if x["state"] == "ALIVE" and s.is_lm(x)}
        node = next((w for w in s.cluster.workers() if w.node_id in lm_nodes), None)
        if node is None:
            return {"fired": False, "why": "no worker node holds an LM actor"}
        on_it = [x for x in s.actors.values() if x["state"] == "ALIVE" and x["node_id"] == node.node_id and s.is_lm(x)]
        s.cluster.cluster.remove_node(node, allow_graceful=False)
        self.removed = node
        return {"node_id": node.node_id, "lm_actors_on_node": [x["actor_id"] for x in on_it]}

    def fire_node_add(self) -> dict:
        node = self.s.cluster.add()
        return {"node_id": node.node_id}

    def fire_driver_kill(self) -> dict:
        old = self.driver
        old.kill()
        self.s.drivers.append(old.record())
        self.driver = self.s.job("jobs.annotate", self.run, self.extra, self.env, role="chaos-2-resubmitted")
        self.drivers.append(self.driver)
        return {"killed_pid": old.proc.pid, "committed_at_kill": self.done(), "new_pid": self.driver.proc.pid}

    def took_over(self) -> bool:
        return "taking over the run's lease" in self.driver.text()

    # -- the run ----------------------------------------------------------------------------------------------------
    def __call__(self) -> dict:
        s, a = self.s, self.a
        shutil.copytree(s.prepared, self.run)
        self.t = s.targets = self.targets()
        self.env, self.extra = self.arm(self.t)
        self.expected = len(s.shard_ids) - sum(bool(self.t.get(k)) for k in ("poison", "corrupt"))
        steps = self.steps()
        started, cpu0 = time.perf_counter(), s.cpu.total()
        deadline = started + a.timeout
        self.driver = s.job("jobs.annotate", self.run, self.extra, self.env, role="chaos-1")
        self.drivers.append(self.driver)
        self.last_fired, self.done_at_fire, last_poll = started, 0, 0.0
        i = 0
        while self.driver.proc.poll() is None and time.perf_counter() < deadline:
            if time.perf_counter() - last_poll > 10:
                s.poll_actors()
                last_poll = time.perf_counter()
            if i < len(steps):
                step = steps[i]
                if step.fired_at is None and step.ready():
                    self.done_at_fire = self.done()
                    info = step.fire()
                    if info.get("fired", True):
                        step.info = info
                        step.fired_at = self.last_fired = time.perf_counter()
                        s.note(step.name, f"fired with {self.done_at_fire} shards committed", **step.info)
                    else:  # nothing to fire at now (e.g. the LM actor is restarting): try again, not skip
                        step.misses += 1
                        step.info = {**info, "misses": step.misses}
                        if step.misses == 1:
                            s.note(step.name, f"not fired yet: {info.get('why')}; trying again")
                elif step.fired_at is not None and step.settled():
                    step.settled_at = time.perf_counter()
                    s.note(step.name, f"settled after {step.settled_at - step.fired_at:.1f} s")
                    i += 1
            time.sleep(0.5)
        if self.driver.proc.poll() is None:
            self.driver.kill()
            s.note("timeout", f"the chaos run passed --timeout {a.timeout}s: driver killed")
        self.driver.proc.wait()
        time.sleep(0.1)
        if self.second is not None:
            from benchmarks.soak.harness import wait

            wait(self.second, 120)
        s.poll_actors()
        return {"seconds": (self.driver.ended or time.perf_counter()) - started, "cpu_s": s.cpu.total() - cpu0,
                "steps": [{"fault": st.name, "fired": st.fired_at is not None and st.info.get("fired", True),
                           "settled": st.settled_at is not None, **st.info,
                           "fired_at_s": round(st.fired_at - started, 1) if st.fired_at else None,
                           "settled_after_s": round(st.settled_at - st.fired_at, 1) if st.settled_at else None}
                          for st in steps]}


def shard_path(run: Path, sid: str) -> Path:
    return run / "shards" / f"{sid}.parquet"
