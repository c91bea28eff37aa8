"""What a sick node causes, charged to the node (issue 43 item 3), beside its workers' deaths (``blame``):

- **a stall**: a pass that stopped progressing is cut, and the shards its actors were computing are not settled. A
  hung engine is the node's trouble far more often than the shard's (a GPU in a bad state, a wedged driver);
- **a node's error in a shard's rows**: a stage that raised on a full or read-only disk (``No space left on
  device``) or a CUDA error is not the shard's fault; the error row says where it happened (``WHERE``).

Either goes on the ledger of the node, charged to the node: the shard is retried in the retry pass, and a node that
keeps failing is excluded like one whose workers die. The shard pays only when the evidence points at it: the same
failure followed it onto another node, no other node could run its pool (one machine), or no node is known.
"""

from __future__ import annotations

import re

STALLED = "stalled"
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
