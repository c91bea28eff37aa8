"""What each stage actor of a run did: when it was ready, how long its set-up (the engine start) took, and how
much of its time it spent computing. Actors report to one small named Ray actor; the driver reads it at the end.

``busy_share`` is the time inside ``__call__`` over the time from the actor's first batch to the end of its last:
the share of wall time it computed once it had work, the figure the scale benchmark reports per LM actor.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

SINK_NAMESPACE = "toolformer"


class TelemetrySink:
    """Holds one record per actor (a restarted actor is a new record); tiny, bounded by the number of actors."""

    def __init__(self):
        self.records: dict[str, dict] = {}

    def report(self, key: str, record: dict) -> None:
        self.records[key] = record

    def snapshot(self) -> dict[str, dict]:
        return dict(self.records)


def start_sink(name: str):
    import ray

    return ray.remote(num_cpus=0)(TelemetrySink).options(name=name, namespace=SINK_NAMESPACE).remote()


class ActorTelemetry:
    """Kept by a stage actor; reports after set-up and after every batch (fire and forget)."""

    def __init__(self, stage: str, sink_name: str | None, started: float):
        self.key = f"{stage}-{socket.gethostname()}-{os.getpid()}-{started:.3f}"
        self.record: dict[str, Any] = {"stage": stage, "pid": os.getpid(), "node": socket.gethostname(),
                                       "started": started, "setup_s": None, "batches": 0, "rows": 0,
                                       "busy_s": 0.0, "first_batch": None, "last_batch_end": None}
        self.sink = None
        if sink_name:
            try:
                import ray

                self.sink = ray.get_actor(sink_name, namespace=SINK_NAMESPACE)
            except Exception:  # noqa: BLE001 - telemetry must never stop a stage
                self.sink = None

    def ready(self) -> None:
        self.record["setup_s"] = round(time.time() - self.record["started"], 3)
        self._send()

    def batch(self, t0: float, t1: float, rows: int) -> None:
        r = self.record
        r["batches"] += 1
        r["rows"] += rows
        r["busy_s"] += t1 - t0
        r["first_batch"] = r["first_batch"] or t0
        r["last_batch_end"] = t1
        self._send()

    def _send(self) -> None:
        if self.sink is not None:
            try:
                self.sink.report.remote(self.key, dict(self.record))
            except Exception:  # noqa: BLE001
                pass


def summarize(records: dict[str, dict], lm_stages: tuple[str, ...] = ("sample", "score", "lm")) -> dict:
    """Per actor: set-up seconds, batches, busy share; and how many engines were started."""
    actors = []
    for rec in sorted(records.values(), key=lambda r: (r["stage"], r["started"])):
        span = (rec["last_batch_end"] or 0) - (rec["first_batch"] or 0)
        actors.append({
            "stage": rec["stage"], "pid": rec["pid"], "node": rec["node"], "setup_s": rec["setup_s"],
            "batches": rec["batches"], "rows": rec["rows"], "busy_s": round(rec["busy_s"], 2),
            "active_span_s": round(span, 2), "busy_share": round(rec["busy_s"] / span, 3) if span > 0 else None,
        })
    lm = [a for a in actors if a["stage"] in lm_stages]
    return {"engine_starts": len(lm), "lm_actors": lm, "other_actors": [a for a in actors if a["stage"] not in lm_stages]}
