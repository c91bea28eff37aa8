"""The cluster's nodes as the driver sees them (``blame.py`` decides with them): the GCS node table, how long Ray
may take to mark a lost node dead (the grace before a shard is charged), the node this driver runs on, and the
per-node ledger as ``stats.json`` and ``jobs.status`` show it."""

from __future__ import annotations

import logging

from toolformer.run.store import Store

NODES = ("failures", "_nodes")
log = logging.getLogger(__name__)
# The GCS marks a node dead some seconds after it is gone (its health checks must fail first): before a death is
# charged to a shard because its node looked alive, the driver waits for the node table to say otherwise, as long as
# Ray's health checks may take (``node_grace_s``), never less than this.
MIN_NODE_GRACE_S = 70.0


def node_death_bound_s() -> float:
    """How long the GCS may take to mark a lost node dead, from Ray's health-check settings as this driver's Ray
    read them (the cluster's ``_system_config`` and ``RAY_health_check_*``): threshold x (period + timeout)."""
    try:
        from ray._raylet import Config as c

        return c.health_check_failure_threshold() * (c.health_check_period_ms() + c.health_check_timeout_ms()) / 1000
    except Exception:  # noqa: BLE001 - an older or newer Ray: its defaults, 5 x (3 + 10) s
        return 65.0


def node_grace_s(ray_cfg) -> float:
    """``ray.node_grace_s``, or Ray's own bound plus 5 s, at least ``MIN_NODE_GRACE_S``."""
    given = getattr(ray_cfg, "node_grace_s", None)
    return float(given) if given is not None else max(MIN_NODE_GRACE_S, node_death_bound_s() + 5.0)


def driver_node() -> str | None:
    """The node this driver runs on: it cannot be lost while the driver runs (no grace to wait for it)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001
        return None


def node_table() -> dict[str, dict]:
    """Every node the cluster has known: id → alive, address, death reason, resources (GCS; no dashboard)."""
    from ray._private.state import state

    out = {}
    for n in state.node_table():
        out[n["NodeID"]] = {"alive": bool(n.get("Alive")), "ip": n.get("NodeManagerAddress"),
                            "reason": int(n.get("DeathReason") or 0), "message": n.get("DeathReasonMessage") or "",
                            "resources": dict(n.get("Resources") or {}), "end_t": None}
    try:  # when the GCS marked each dead node dead (not in the table above): see NodeLedger.refresh
        from ray._private.worker import global_worker

        for nid, info in global_worker.gcs_client.get_all_node_info(timeout=5).items():
            if nid.hex() in out and info.end_time_ms:
                out[nid.hex()]["end_t"] = info.end_time_ms / 1000
    except Exception:  # noqa: BLE001 - an older Ray or a GCS hiccup: deaths keep the cause they were noted with
        log.debug("could not read the nodes' end times", exc_info=True)
    return out


def summarize_nodes(records) -> dict:
    out = {}
    for rec in records:
        causes: dict[str, int] = {}
        paid: dict[str, int] = {}
        for e in rec["events"]:
            causes[e["cause"]] = causes.get(e["cause"], 0) + 1
            paid[e["charged_to"]] = paid.get(e["charged_to"], 0) + 1
        out[rec["node_id"]] = {"ip": rec.get("ip"), "deaths": len(rec["events"]), "by_cause": causes,
                               "charged_to": paid, "excluded_at": rec.get("excluded_at")}
    return out


def read_nodes(store: Store) -> dict:
    """The node ledger of a run as ``summarize_nodes`` gives it (for jobs.status; no Ray needed)."""
    from toolformer.run.epochs import Epochs, read_clean

    recs, epochs = [], Epochs.load(store)
    for name in store.names(*NODES, suffix=".json"):
        try:  # as the driver reads it: a stale driver's last save left out
            recs.append(read_clean(store, "events", *NODES, name, flags=("excluded_at",), epochs=epochs))
        except Exception:  # noqa: BLE001
            continue
    return summarize_nodes(recs)
