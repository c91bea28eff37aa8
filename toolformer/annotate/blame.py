"""Who pays for an actor that died: the node it ran on, or the shard it was computing.

On spot GPUs most deaths are the machine's: a node preempted, scaled down or lost takes every actor on it, and a
node that keeps killing its workers (a bad GPU, a full disk, a noisy neighbour) kills whichever shard it holds.
Charging those to the shards in flight quarantines healthy shards in time. So, like Spark's ``excludeOnFailure``:

- **a node that is gone** (its raylet dead, drained, preempted: the GCS node table says so) is never a shard's
  fault; the death is the node's. Only a shard whose node losses follow it onto more than twice
  ``shards.max_failures`` distinct nodes is charged (a shard that really brings whole machines down still ends
  quarantined; on a flaky cluster a shard is lost with two or three nodes by chance, never with that many);
- **a worker that died on a node that stays up** (a crash, the OOM killer, the LM watchdog, a kill) is the node's
  while the shard has died on that node alone and another node could run it; it is the shard's own once its
  deaths follow it onto a second node, when no other live node could run its pool (one machine), or when it kills
  its actor again in a later pass (a fresh actor, after the node had its chance to be excluded);
- every death, whoever pays, is one event of its node's ledger (``failures/_nodes/<node>.json``: when, cause,
  shard, who was charged), which ``jobs.status`` and ``stats.json`` show per node and per cause;
- a node with deaths of ``ray.node_max_failures`` distinct shards (not counting shards charged since for deaths
  of their own) within ``ray.node_failure_window_s`` is **excluded**: the next pools of the run get a label
  selector ``ray.io/node-id: !in(...)`` (Ray >= 2.49), so no actor of this run is placed on it again.

A shard left uncharged by a node's death is retried in the run's retry pass (each shard in a block of its own),
not with the fresh shards.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from typing import Callable

from toolformer.annotate.nodes import (MIN_NODE_GRACE_S, NODES, driver_node, node_death_bound_s, node_grace_s,  # noqa: F401
                                      node_table, read_nodes, summarize_nodes)
from toolformer.annotate.node_faults import SETUP_EVENT
from toolformer.run.conditional import conditional
from toolformer.run.epochs import LAST_WRITE, Epochs, read_clean, stamped_update
from toolformer.run.store import Store

MAX_EVENTS = 200  # per node: enough to see a pattern, bounded however long the run
LEDGER_FLAGS = ("excluded_at",)  # what one save may set: a stale save's exclusion is dropped with its events
# How late the GCS may mark a node dead after its raylet is gone: its health checks (every 3 s, 10 s timeout) must
# fail 5 times in a row, 15 s when refused at once, up to 5 x (3 + 10) = 65 s when they time out (56 s measured in
# the soak). Worker deaths on the node noted within this much before its time of death are relabelled the node's
# loss. Not wider: a shard's own death a minute before its node went must keep its cause (seen in the soak at 120 s).
NODE_DEATH_LAG_S = 70.0
log = logging.getLogger(__name__)

# GCS NodeDeathInfo.Reason → our cause of an actor lost with its node
_NODE_REASONS = {0: "node_lost", 1: "node_removed", 2: "node_lost", 3: "node_preempted", 4: "node_removed"}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def classify(record: dict, nodes: dict[str, dict], exits: dict[int, str]) -> tuple[str, str]:
    """(cause, detail) of one death (an in-flight record its actor left): a node cause when the node is gone."""
    node = nodes.get(record.get("node_id") or "")
    if node is not None and not node["alive"]:
        cause = _NODE_REASONS.get(node["reason"], "node_lost")
        return cause, f"node {node['ip']} {cause.removeprefix('node_')}" + (
            f": {node['message'][:200]}" if node["message"] else "")
    note = record.get("note") or ""
    exit_ = exits.get(record.get("pid"), "")
    if note.startswith("watchdog"):
        return "watchdog", note
    if note.startswith("engine dead"):
        return "engine_dead", note
    if "NODE_OUT_OF_MEMORY" in exit_:  # Ray's memory monitor (the kernel's OOM killer reads as a plain death)
        return "oom", exit_
    return "worker_died", exit_ or "the worker process died (no exit detail recorded)"


def is_node_loss(cause: str) -> bool:
    return cause.startswith("node_")


class NodeLedger:
    """The run's per-node failure records, and the blame and exclusion rules above."""

    def __init__(self, store: Store, ray_cfg, max_failures: int,
                 fence: Callable[[], AbstractContextManager] | None = None, log_fn: Callable[[str], None] = print):
        self.store, self.r, self.max_failures = store, ray_cfg, max(1, max_failures)
        self.fence = fence or nullcontext
        self.log = log_fn
        self.nodes: dict[str, dict] = {}  # node table, refreshed by ``refresh``
        self.noted: set[str] = set()  # in-flight records already on the ledger (a node loss, noted when seen)
        self.grace_s = node_grace_s(ray_cfg)
        # called with (shard, attempt) when a death charged to the shard is relabelled its node's loss (the driver
        # retracts the charge); set by the annotator
        self.on_relabel: Callable[[str, str], None] | None = None
        self.taken_back: set[tuple[str, str]] = set()
        self.records: dict[str, dict] = {}
        epochs = Epochs.load(store)
        for name in store.names(*NODES, suffix=".json"):
            try:  # a stale driver's last write (after a takeover) left out: its events and its exclusion
                rec = read_clean(store, "events", *NODES, name, flags=LEDGER_FLAGS, epochs=epochs)
                self.records[rec["node_id"]] = rec
            except Exception:  # noqa: BLE001 - a half-written record (object store): start that node afresh
                continue

    # -- the cluster -------------------------------------------------------------------------------------------
    def refresh(self) -> dict[str, dict]:
        try:
            self.nodes = node_table()
        except Exception:  # noqa: BLE001 - GCS unreachable for a moment: keep the last view
            log.debug("could not read the node table", exc_info=True)
        self._relabel_losses()
        return self.nodes

    def _relabel_losses(self) -> None:
        """A node removed hard takes its workers at once, but the GCS marks it dead only after its health checks
        fail: a death noted in between reads as a plain worker death. Once the node is known dead, its worker
        deaths noted from ``NODE_DEATH_LAG_S`` before that moment on become the node's loss (who paid is unchanged: a
        death on a gone node already counts as a loss when blaming). A watchdog's or the OOM monitor's death keeps
        its own cause."""
        for nid, rec in self.records.items():
            info = self.nodes.get(nid) or {}
            end = info.get("end_t")
            if info.get("alive", True) or not end:
                continue
            cause = _NODE_REASONS.get(info.get("reason", 0), "node_lost")
            changed = False
            for e in rec["events"]:
                if e["cause"] == "worker_died" and e.get("t", 0) >= end - NODE_DEATH_LAG_S:
                    e["cause"], e["detail"] = cause, (f"node {info.get('ip')} {cause.removeprefix('node_')}, "
                                                      f"marked dead by the GCS {max(0.0, end - e['t']):.0f} s after "
                                                      f"this death was seen: {e['detail']}")[:400]
                    changed = True
                    if e["charged_to"] == "shard":  # the node's loss after all: the shard's charge is taken back
                        e["charged_to"] = "node"
                        self._take_back(e)
            if changed:
                self._save(nid)

    def _take_back(self, event: dict) -> None:
        """Retract the charge this death made (``note_charge``), once, through ``on_relabel(shard, attempt)``."""
        attempt = event.get("charge")
        if not attempt or (event["shard"], attempt) in self.taken_back or self.on_relabel is None:
            return
        self.taken_back.add((event["shard"], attempt))
        try:
            self.on_relabel(event["shard"], attempt)
            event["charge_taken_back"] = True
            self.log(f"  {event['shard']}: its charge was taken back: the death was its node's loss")
        except Exception:  # noqa: BLE001 - a retraction that fails leaves the charge (as before), never the run
            log.warning("could not take back the charge of %s", event["shard"], exc_info=True)

    def note_charge(self, shard: str, records: list[str | None], attempt: str | None) -> None:
        """The charge ``blame`` led to (its attempt id) on the deaths that caused it, so a relabel can retract it."""
        if not attempt:
            return
        names = {r for r in records if r}
        for nid, rec in self.records.items():
            hit = False
            for e in rec["events"]:
                if e["shard"] == shard and e.get("record") in names and e["charged_to"] == "shard":
                    e["charge"] = attempt
                    hit = True
            if hit:
                self._save(nid)

    def alive(self) -> set[str]:
        return {n for n, info in self.nodes.items() if info["alive"]}

    def elsewhere(self, node_id: str | None, stage: str) -> bool:
        """Another live, not excluded node could run this pool's actors (its GPUs and custom resources)."""
        res = getattr(self.r, stage, None)
        need = {k for k, v in ((res.resources or {}).items() if res is not None else []) if v}
        if res is not None and res.num_gpus:
            need.add("GPU")
        excluded = self.excluded()
        for nid, info in self.nodes.items():
            if nid == node_id or not info["alive"] or nid in excluded:
                continue
            if all(info["resources"].get(k, 0) > 0 for k in need) and info["resources"].get("CPU", 0) > 0:
                return True
        return False

    # -- the ledger --------------------------------------------------------------------------------------------
    def _record(self, node_id: str) -> dict:
        info = self.nodes.get(node_id, {})
        return self.records.setdefault(node_id, {"node_id": node_id, "ip": info.get("ip"), "events": [],
                                                 "excluded_at": None, "excluded_for": None})

    def _save(self, node_id: str) -> None:
        rec = self.records[node_id]
        rec["events"] = rec["events"][-MAX_EVENTS:]

        def merged(old: dict | None) -> dict:
            # conditional on the version read: a stale driver's save never replaces a newer one; events another
            # writer added are kept, this driver's own as it has them now
            mine = {e.get("id") for e in rec["events"]}
            theirs = [e for e in (old or {}).get("events", []) if e.get("id") and e.get("id") not in mine]
            out = {**rec, "events": sorted(theirs + rec["events"], key=lambda e: e.get("t", 0))[-MAX_EVENTS:]}
            if not out.get("excluded_at") and (old or {}).get("excluded_at"):
                out["excluded_at"], out["excluded_for"] = old["excluded_at"], old.get("excluded_for")
            return {k: v for k, v in out.items() if k != LAST_WRITE}

        with self.fence() as epoch:
            stamped_update(conditional(self.store), self.store, "/".join((*NODES, f"{node_id}.json")), merged, epoch,
                           "events", flags=LEDGER_FLAGS)

    def add(self, node_id: str | None, shard: str, cause: str, detail: str, charged_to: str,
            pass_id: str | None = None, record: str | None = None) -> None:
        node_id = node_id or "unknown"
        self._record(node_id)["events"].append({"id": uuid.uuid4().hex[:12], "at": _now(), "t": time.time(),
                                                "shard": shard, "cause": cause,
                                                "detail": detail[:400], "charged_to": charged_to, "pass": pass_id,
                                                "record": record})
        self._save(node_id)

    def _gone(self, node_id: str) -> bool:
        info = self.nodes.get(node_id)
        return info is not None and not info["alive"]

    def shard_nodes(self, shard: str, losses: bool) -> set[str]:
        """Nodes where this shard's actors died (node losses or worker deaths), as the ledger has them; a death
        on a node that is gone now counts as a loss (it may have been noted before the GCS knew). Events inferred
        for a shard with no death of its own (which node it ran on is unknown) do not count."""
        return {nid for nid, rec in self.records.items() for e in rec["events"]
                if e["shard"] == shard and not e.get("inferred")
                and (is_node_loss(e["cause"]) or self._gone(nid)) == losses}

    def suspects(self) -> set[str]:
        """Shards a node's death left uncharged: retried in the retry pass, each alone in its block."""
        return {e["shard"] for rec in self.records.values() for e in rec["events"]
                if e["charged_to"] == "node" and not e["shard"].startswith(SETUP_EVENT)}

    # -- blame -------------------------------------------------------------------------------------------------
    def _again_in_a_later_pass(self, shard: str, pass_id: str | None) -> bool:
        """This shard's actor died (a worker death on a node that stayed up) in an earlier pass too: the deaths
        follow it from one pass's actors to the next's."""
        return any(e["shard"] == shard and e.get("pass") != pass_id and not e.get("inferred")
                   and not is_node_loss(e["cause"]) and not self._gone(nid)
                   for nid, rec in self.records.items() for e in rec["events"])

    def blame(self, shard: str, deaths: list[dict], exits: dict[int, str], committed: bool = False,
              pass_id: str | None = None) -> tuple[str, str]:
        """Record each death of ``shard``'s actors on its node and say who pays: ("shard" | "node" | "none",
        a one-line reason). ``committed``: its batch's retry committed it (nobody pays; the node is noted).
        ``pass_id``: the pass these deaths happened in (a death again in a later pass follows the shard)."""
        self.refresh()
        causes, who, why = self._decide(shard, deaths, exits, committed, pass_id)
        # on every branch (one machine left included): the nodes may be gone without the GCS knowing yet, and a lost
        # node is never the shard's fault; the driver's own node cannot be lost while it runs
        alive = {d.get("node_id") for d, c, _ in causes if not is_node_loss(c)} - {driver_node()}
        if who == "shard" and alive and self.grace_s > 0:
            deadline = time.monotonic() + self.grace_s
            while time.monotonic() < deadline and not any(self._gone(n) for n in alive):
                time.sleep(min(2.0, self.grace_s))
                self.refresh()
            if any(self._gone(n) for n in alive):
                causes, who, why = self._decide(shard, deaths, exits, committed, pass_id)
        for d, cause, detail in causes:
            if d.get("_name") in self.noted:  # on the ledger since it was seen: now its verdict
                if not committed:
                    self._settle_event(d["_name"], who, cause)
                continue
            # a death its retry recovered from: the node's where another node could have run it
            paid = who if not committed else ("node" if self.elsewhere(d.get("node_id"), d["stage"]) else "none")
            self.add(d.get("node_id"), shard, cause, detail, paid, pass_id, d.get("_name"))
            if d.get("_name"):
                self.noted.add(d["_name"])
        return who, why

    def _decide(self, shard: str, deaths: list[dict], exits: dict[int, str], committed: bool,
                pass_id: str | None) -> tuple[list, str, str]:
        causes = [(d, *classify(d, self.nodes, exits)) for d in deaths]
        lost = {d.get("node_id") for d, c, _ in causes if is_node_loss(c)}
        died = {d.get("node_id") for d, c, _ in causes if not is_node_loss(c)}
        lost_all = lost | self.shard_nodes(shard, losses=True)
        died_all = died | (self.shard_nodes(shard, losses=False) - lost_all)
        if committed:
            return causes, "none", "its retry committed"
        if died and (len(died_all) >= 2 or not any(self.elsewhere(d.get("node_id"), d["stage"]) for d, _, _ in causes)):
            why = (f"its actors died on {len(died_all)} nodes" if len(died_all) >= 2
                   else "no other live node could run its pool")
            return causes, "shard", why
        if died and self._again_in_a_later_pass(shard, pass_id):
            return causes, "shard", "it killed its actor again in a later pass"
        if lost and len(lost_all) > 2 * self.max_failures:
            return causes, "shard", f"{len(lost_all)} nodes were lost while it ran on them"
        return causes, "node", ", ".join(sorted({f"{c} on {self.describe(d.get('node_id'))}" for d, c, _ in causes}))

    def wait_for_lost(self, since: set[str]) -> set[str]:
        """Nodes of ``since`` (alive when a pass began) that are gone, waiting up to the grace for the GCS to tell
        (a shard left incomplete with no death of its own: only a lost node explains it)."""
        deadline = time.monotonic() + self.grace_s
        while True:
            self.refresh()
            lost = {n for n in since if self._gone(n) or n not in self.nodes}
            if lost or time.monotonic() >= deadline:
                return lost
            time.sleep(min(2.0, self.grace_s))

    def note_deaths(self, dead: dict[str, list[dict]], pass_id: str | None = None) -> bool:
        """Put each death on the ledger as soon as it is seen, so that a node that keeps killing workers is
        excluded mid-pass and a driver killed before its pass ends loses none: a node loss, or a worker death where
        another node could run the pool, is the node's for now; the shard's verdict (``blame``) may change that
        when Ray gives up on its block. Returns whether anything new was noted."""
        from toolformer.annotate.failures import worker_exits

        from toolformer.annotate.node_faults import note_setups

        setups = note_setups(self, pass_id)  # failed engine set-ups: the node's, as deaths are
        new = [(sid, d) for sid, recs in dead.items() for d in recs if d.get("_name") and d["_name"] not in self.noted]
        if not new:
            return setups
        self.refresh()
        exits = worker_exits({d["pid"] for _, d in new if isinstance(d.get("pid"), int)})
        for sid, d in new:
            cause, detail = classify(d, self.nodes, exits)
            paid = "node" if is_node_loss(cause) or self.elsewhere(d.get("node_id"), d["stage"]) else "none"
            self.add(d.get("node_id"), sid, cause, detail, paid, pass_id, d["_name"])
            self.noted.add(d["_name"])
        return True

    def _settle_event(self, name: str, who: str, cause: str | None = None) -> None:
        for nid, rec in self.records.items():
            for e in rec["events"]:
                if e.get("record") == name and (e["charged_to"], e["cause"]) != (who, cause or e["cause"]):
                    e["charged_to"], e["cause"] = who, cause or e["cause"]
                    self._save(nid)
                    return

    def lost_nodes_event(self, shard: str, lost: set[str], detail: str, pass_id: str | None = None) -> None:
        """A shard that ended incomplete with no death of its own while nodes were lost: the nodes pay."""
        for nid in sorted(lost) or ["unknown"]:
            cause = _NODE_REASONS.get(self.nodes.get(nid, {}).get("reason", 0), "node_lost")
            self.add(nid, shard, cause, detail, "node", pass_id)
            self.records[nid]["events"][-1]["inferred"] = True
            self._save(nid)  # every node's record, each with its flag (a later driver reads them back)

    def describe(self, node_id: str | None) -> str:
        """A node as the log names it: its IP and the start of its id."""
        info = self.nodes.get(node_id or "") or self.records.get(node_id or "", {})
        return f"{info.get('ip') or '?'} ({(node_id or 'unknown')[:8]})"

    # -- exclusion ---------------------------------------------------------------------------------------------
    def excluded(self) -> set[str]:
        return {nid for nid, rec in self.records.items() if rec.get("excluded_at")}

    def maybe_exclude(self, charged_shards: set[str]) -> list[str]:
        """Exclude every node with node-charged deaths of ``ray.node_max_failures`` distinct shards within the
        window (shards charged since for deaths of their own do not count: they were the cause). Returns the
        nodes newly excluded that are still alive (their pools must be rebuilt without them)."""
        limit, window = max(1, self.r.node_max_failures), float(self.r.node_failure_window_s)
        now, out = time.time(), []
        for nid, rec in self.records.items():
            if rec.get("excluded_at") or nid == "unknown":
                continue
            shards = {e["shard"] for e in rec["events"]
                      if e["charged_to"] == "node" and now - e.get("t", 0) <= window and e["shard"] not in charged_shards}
            if len(shards) >= limit:
                rec["excluded_at"], rec["excluded_for"] = _now(), sorted(shards)
                self._save(nid)
                alive = self.nodes.get(nid, {}).get("alive", False)
                setups = sum(1 for x in shards if x.startswith(SETUP_EVENT))
                self.log(f"node {self.describe(nid)} excluded from this run's pools: its workers died holding "
                         f"{len(shards) - setups} different shards and {setups} engine set-ups failed there within "
                         f"{window:g} s (ray.node_max_failures={limit})"
                         + ("" if alive else "; it is gone already"))
                if alive:
                    out.append(nid)
        return out

    def selector(self) -> dict[str, str] | None:
        """The label selector that keeps a pool off the excluded nodes still alive (None: nothing to avoid)."""
        avoid = sorted(self.excluded() & self.alive())
        return {"ray.io/node-id": f"!in({','.join(avoid)})"} if avoid else None

    # -- reporting ---------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Per node: deaths by cause, who paid, excluded or not (for stats.json and jobs.status), as the node
        table now explains them (a node the GCS marked dead since the last look relabels its deaths)."""
        self.refresh()
        return summarize_nodes(self.records.values())
