"""Who pays for a stall (issue 43 item 3): a pass that stopped progressing is cut, and the shards its actors were
computing are not settled. A hung engine is the node's trouble far more often than the shard's (a GPU in a bad
state, a wedged driver, a full disk), so the stall goes on the ledger of the node(s) whose actors held the shard,
charged to the node: the shard is retried in the retry pass, and a node that keeps stalling is excluded like one
whose workers die. The shard pays only when the evidence points at it: it stalled on another node before (the
stall followed it), no other node could run its pool (one machine), or no node is known for it."""

from __future__ import annotations

STALLED = "stalled"


def stall_blame(ledger, shard: str, records: list[dict], detail: str, pass_id: str | None) -> tuple[str, str]:
    """Note the stall of ``shard`` (``records``: the in-flight records of the actors that held it) on their nodes
    and say who pays: ("node" | "shard", why)."""
    here = {r.get("node_id") for r in records if r.get("node_id")}
    before = {nid for nid, rec in ledger.records.items() for e in rec["events"]
              if e["shard"] == shard and e["cause"] == STALLED}
    if not here:
        return "shard", "no node is known for it"
    ledger.refresh()
    who, why = "node", f"the pass stalled while node(s) {', '.join(sorted(n[:8] for n in here))} computed it"
    if before - here:
        who, why = "shard", f"it stalled on {len(before | here)} nodes"
    elif not any(ledger.elsewhere(r.get("node_id"), r.get("stage")) for r in records):
        who, why = "shard", "no other node could run its pool"
    for r in records:
        if r.get("node_id"):
            ledger.add(r["node_id"], shard, STALLED, detail, who, pass_id, r.get("_name"))
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
