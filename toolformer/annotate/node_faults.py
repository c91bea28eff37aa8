"""What a sick node causes, charged to the node (issue 43 item 3), beside its workers' deaths (``blame``):

- **a stall**: a pass that stopped progressing is cut, and the shards its actors were computing are not settled. A
  hung engine is the node's trouble far more often than the shard's (a GPU in a bad state, a wedged driver);
- **a failed engine set-up** (it raised, or its watchdog ended it): no shard was in it yet. The node pays when
  another node could run the pool and no other node's set-up of that stage failed too (then it is the execution's:
  a bad model path fails everywhere, and no node is excluded for it);
- **a node's error in a shard's rows**: a stage that raised on a full or read-only disk (``No space left on
  device``) or a CUDA error is not the shard's fault; the error row says where it happened (``WHERE``).

Either goes on the ledger of the node, charged to the node: the shard is retried in the retry pass, and a node that
keeps failing is excluded like one whose workers die. The shard pays only when the evidence points at it: the same
failure followed it onto another node, no other node could run its pool (one machine), or no node is known.
"""

from __future__ import annotations

import re

STALLED = "stalled"
SETUP_EVENT = "set-up:"  # the "shard" of a failed engine set-up's ledger event: none was in it (one per set-up)
# a stage's error row names where it was raised (``distributed.describe_error``)
WHERE = re.compile(r"^\[on node (?P<node>\S+) host (?P<host>\S+) stage (?P<stage>\S+)\]$", re.M)
NODE_ERRORS = {  # cause: what the error says (the node's disk or GPU, not the shard's data)
    "disk_full": ("No space left on device", "[Errno 28]", "Read-only file system", "[Errno 30]"),
    "gpu_error": ("CUDA error", "cudaErrorLaunchFailure", "NCCL error", "uncorrectable ECC error"),
}


def stall_blame(ledger, shard: str, records: list[dict], detail: str, pass_id: str | None,
                cause: str = STALLED) -> tuple[str, str]:
    """Note ``cause`` (a stall) of ``shard`` on the nodes of ``records`` (the in-flight records of the actors that
    held it: node_id, stage) and say who pays: ("node" | "shard", why)."""
    here = {r.get("node_id") for r in records if r.get("node_id")}
    before = {nid for nid, rec in ledger.records.items() for e in rec["events"]
              if e["shard"] == shard and e["cause"] == cause}
    if not here:
        return "shard", "no node is known for it"
    ledger.refresh()
    who, why = "node", f"the pass stalled while node(s) {', '.join(sorted(n[:8] for n in here))} computed it"
    if before - here:
        who, why = "shard", f"{'it stalled' if cause == STALLED else cause} on {len(before | here)} nodes"
    elif not any(ledger.elsewhere(r.get("node_id"), r.get("stage")) for r in records):
        who, why = "shard", "no other node could run its pool"
    for r in records:
        if r.get("node_id"):
            ledger.add(r["node_id"], shard, cause, detail, who, pass_id, r.get("_name"))
    return who, why


def settle_stalled(p, shard: str, verdict) -> None:
    """A shard of the cut pass ``p`` that was being computed when it stalled: charged to the node(s) or to it."""
    detail = f"Stalled: {shard} was being computed when the run stopped progressing: {verdict.message}"
    who, why = stall_blame(p.a.ledger, shard, verdict.live_shards.get(shard) or [], detail, p.staging)
    if who == "shard":
        p.charge(shard, f"{detail} [charged to the shard: {why}]")
        return
    p.out.node_paid.append(shard)
    p.a.log(f"  {shard}: stalled ({why}): charged to the node; the shard is retried in the retry pass")


def node_error(p, shard: str, error: str) -> bool:
    """A shard's error row raised by its node's trouble (``NODE_ERRORS``, ``WHERE`` naming the node): noted on the
    node's ledger, and the node pays (the shard is retried apart) or the shard with the reason. False: not a node's
    error, the caller charges the shard as any error of its own."""
    cause = next((c for c, marks in NODE_ERRORS.items() if any(m in error for m in marks)), None)
    where = WHERE.search(error)
    if cause is None or where is None or where["node"] == "?":
        return False
    first = error.partition("\n")[0]
    who, why = stall_blame(p.a.ledger, shard, [{"node_id": where["node"], "stage": where["stage"]}], first[:400],
                           p.staging, cause)
    if who == "shard":
        p.charge(shard, f"{first} [charged to the shard: {why}]", error.partition("\n")[2])
        return True
    p.out.node_paid.append(shard)
    p.a.log(f"  {shard}: {first[:200]} ({cause} on node {where['node'][:8]}): charged to the node; the shard is "
            f"retried in the retry pass")
    return True


def note_setups(ledger, pass_id: str | None) -> bool:
    """Put each failed engine set-up of this pass (the actors' notes in ``<staging>/_setup``) on its node's ledger;
    each the node pays counts towards its exclusion like a death holding a shard. Returns whether any was new."""
    from toolformer.annotate.failures import SETUP

    if not pass_id:
        return False
    new = [n for n in ledger.store.names(pass_id, SETUP, suffix=".json") if f"{pass_id}/{n}" not in ledger.noted]
    if new:
        ledger.refresh()  # where the pool could run, and whether an excluded node must cut the pass
    for name in new:
        ledger.noted.add(f"{pass_id}/{name}")
        try:
            note = ledger.store.read_json(pass_id, SETUP, name)
        except Exception:  # noqa: BLE001 - half-written as the actor died: its log still says it
            continue
        node, stage = note.get("node_id") or "unknown", note.get("stage") or "lm"
        shard = f"{SETUP_EVENT}{stage}:{note.get('pid')}:{name[-11:-5]}"
        elsewhere = {nid for nid, rec in ledger.records.items() if nid != node for e in rec["events"]
                     if e["shard"].startswith(f"{SETUP_EVENT}{stage}:")}
        paid = "node" if not elsewhere and ledger.elsewhere(node, stage) else "none"
        ledger.add(node, shard, note.get("cause") or "setup_failed", note.get("message") or "", paid, pass_id, name)
        if elsewhere:  # the same stage failed to start on other nodes too: the execution's, not theirs
            for nid in elsewhere:
                hit = [e for e in ledger.records[nid]["events"]
                       if e["shard"].startswith(f"{SETUP_EVENT}{stage}:") and e["charged_to"] == "node"]
                for e in hit:
                    e["charged_to"] = "none"
                if hit:
                    ledger._save(nid)
    return bool(new)
