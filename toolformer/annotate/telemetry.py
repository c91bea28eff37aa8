"""What each stage actor of a run did: when it was ready, how long its set-up (the engine start) took, and where
its time went. Actors report to one small named Ray actor; the driver reads it for progress lines and at the end.

Each actor's time from its first batch to the end of its last (its *active span*) splits into:

- ``engine_s``: inside engine calls (sampling, scoring: ``StageClock.engine``, the calls the LM watchdog times);
- ``tool_s``: running tool calls (``StageClock.tools``; in the fused ``lm`` layout, between sampling and scoring);
- ``other_s``: the rest of its batches (tokenizing, Arrow, selection rules);
- ``idle_s``: between batches, waiting for work (the pool upstream, or the driver).

``busy_share`` is the share of the active span that the actor's scarce resource worked: for LM actors the engine
alone (a fused actor waiting on its tools is not busy), for CPU actors (select, execute) their whole batches.
``summarize`` gives these per actor and per pool, with rows per second; docs/operations.md ("Telemetry: where the time goes") reads them.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from typing import Any, Iterator

LM_STAGES = ("sample", "score", "lm")
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


class StageClock:
    """Engine time and tool time of one stage (shared by the stages one actor runs). Watchers (the LM watchdog)
    are told when each engine call begins and ends, so they time engine calls, never tools or the rest."""

    def __init__(self):
        self.engine_s = 0.0
        self.tool_s = 0.0
        self.engine_calls = 0
        self.watchers: list = []
        self._depth = 0

    def watch(self, watcher) -> None:
        """``watcher.begin(what)`` / ``watcher.end()`` around every (outermost) engine call."""
        self.watchers.append(watcher)

    @contextmanager
    def engine(self, what: str = "engine") -> Iterator[None]:
        outer = self._depth == 0
        self._depth += 1
        t0 = time.perf_counter()
        if outer:
            for w in self.watchers:
                w.begin(what)
        try:
            yield
        finally:
            self._depth -= 1
            if outer:
                for w in self.watchers:
                    w.end()
                self.engine_s += time.perf_counter() - t0
                self.engine_calls += 1

    @contextmanager
    def tools(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.tool_s += time.perf_counter() - t0


class ActorTelemetry:
    """Kept by a stage actor; reports after set-up and after every batch (fire and forget)."""

    def __init__(self, stage: str, sink_name: str | None, started: float):
        self.key = f"{stage}-{socket.gethostname()}-{os.getpid()}-{started:.3f}"
        self.record: dict[str, Any] = {"stage": stage, "pid": os.getpid(), "node": socket.gethostname(),
                                       "started": started, "setup_s": None, "batches": 0, "rows": 0,
                                       "busy_s": 0.0, "engine_s": 0.0, "tool_s": 0.0, "engine_calls": 0,
                                       "first_batch": None, "last_batch_end": None, "tool_workers": None,
                                       "progress": 0}
        self.sink = None
        if sink_name:
            try:
                import ray

                self.sink = ray.get_actor(sink_name, namespace=SINK_NAMESPACE)
            except Exception:  # noqa: BLE001 - telemetry must never stop a stage
                self.sink = None

    def setting_up(self, every_s: float = 5.0) -> None:
        """Report every ``every_s`` while the actor sets up (an engine start can take minutes): the driver's stall
        detection tells an actor that is loading its model from one that never got placed. ``ready`` stops it."""
        import threading

        self._setup_done = threading.Event()

        def beat() -> None:
            while not self._setup_done.wait(every_s):
                self.record["setup_beats"] = self.record.get("setup_beats", 0) + 1
                self._send()

        threading.Thread(target=beat, name="telemetry-setup-beat", daemon=True).start()

    def ready(self) -> None:
        done = getattr(self, "_setup_done", None)
        if done is not None:
            done.set()
        self.record["setup_s"] = round(time.time() - self.record["started"], 3)
        self._send()

    def batch(self, t0: float, t1: float, rows: int, clock: StageClock | None = None,
              tool_workers: dict | None = None) -> None:
        """A batch ran from ``t0`` to ``t1`` (wall clock); ``clock`` holds the actor's running totals."""
        r = self.record
        r["batches"] += 1
        r["rows"] += rows
        r["busy_s"] += t1 - t0
        if clock is not None:
            r["engine_s"], r["tool_s"], r["engine_calls"] = clock.engine_s, clock.tool_s, clock.engine_calls
        if tool_workers is not None:
            r["tool_workers"] = tool_workers
        r["first_batch"] = r["first_batch"] or t0
        r["last_batch_end"] = t1
        self._send()

    def progress(self, clock: StageClock | None = None) -> None:
        """A chunk of the current batch is done (``progress`` counts them): the driver's stall detection sees a
        long batch move before it ends."""
        r = self.record
        r["progress"] = r.get("progress", 0) + 1
        if clock is not None:
            r["engine_s"], r["tool_s"], r["engine_calls"] = clock.engine_s, clock.tool_s, clock.engine_calls
        self._send()

    def _send(self) -> None:
        if self.sink is not None:
            try:
                self.sink.report.remote(self.key, dict(self.record))
            except Exception:  # noqa: BLE001
                pass


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 3) if whole > 0 else None


def _split(busy: float, engine: float, tool: float, span: float, lm: bool) -> dict:
    other = max(0.0, busy - engine - tool)
    idle = max(0.0, span - busy)
    return {"busy_s": round(busy, 2), "engine_s": round(engine, 2), "tool_s": round(tool, 2),
            "other_s": round(other, 2), "idle_s": round(idle, 2), "active_span_s": round(span, 2),
            "engine_share": _share(engine, span), "tool_share": _share(tool, span), "idle_share": _share(idle, span),
            "busy_share": _share(engine if lm else busy, span)}


def summarize(records: dict[str, dict], lm_stages: tuple[str, ...] = LM_STAGES) -> dict:
    """Per actor and per pool: set-up seconds, batches, rows, where the time went (engine, tools, other, idle),
    ``busy_share`` (engine only for LM actors) and rows per second; and how many engines were started."""
    actors = []
    for rec in sorted(records.values(), key=lambda r: (r["stage"], r["started"])):
        span = (rec["last_batch_end"] or 0) - (rec["first_batch"] or 0)
        lm = rec["stage"] in lm_stages
        a = {"stage": rec["stage"], "pid": rec["pid"], "node": rec["node"], "setup_s": rec["setup_s"],
             "batches": rec["batches"], "rows": rec["rows"],
             **_split(rec["busy_s"], rec.get("engine_s") or 0.0, rec.get("tool_s") or 0.0, span, lm),
             "engine_calls": rec.get("engine_calls", 0),
             "rows_per_s": round(rec["rows"] / span, 3) if span > 0 else None}
        if rec.get("tool_workers"):
            a["tool_workers"] = rec["tool_workers"]
        actors.append(a)
    lm = [a for a in actors if a["stage"] in lm_stages]
    return {"engine_starts": len(lm), "lm_actors": lm, "other_actors": [a for a in actors if a["stage"] not in lm_stages],
            "pools": pools(records, lm_stages)}


def pools(records: dict[str, dict], lm_stages: tuple[str, ...] = LM_STAGES) -> dict[str, dict]:
    """Per pool (stage): its actors' times added up, the shares of their summed active spans, and rows per second
    over the pool's wall time (its first batch's start to its last batch's end, across its actors)."""
    by: dict[str, list[dict]] = {}
    for rec in records.values():
        by.setdefault(rec["stage"], []).append(rec)
    out = {}
    for stage, recs in sorted(by.items()):
        worked = [r for r in recs if r["first_batch"] is not None]
        spans = sum((r["last_batch_end"] or 0) - (r["first_batch"] or 0) for r in worked)
        wall = (max(r["last_batch_end"] for r in worked) - min(r["first_batch"] for r in worked)) if worked else 0.0
        rows = sum(r["rows"] for r in recs)
        out[stage] = {
            "actors": len(recs), "batches": sum(r["batches"] for r in recs), "rows": rows,
            **_split(sum(r["busy_s"] for r in recs), sum(r.get("engine_s") or 0.0 for r in recs),
                     sum(r.get("tool_s") or 0.0 for r in recs), spans, stage in lm_stages),
            "wall_s": round(wall, 2), "rows_per_s": round(rows / wall, 3) if wall > 0 else None,
            "setup_s_max": max((r["setup_s"] or 0.0 for r in recs), default=None),
        }
    return out


def pools_now(sink_name: str | None, timeout_s: float = 10.0) -> dict[str, dict] | None:
    """The pools' figures so far, read from the run's telemetry sink (for the driver's progress lines; bounded)."""
    if not sink_name:
        return None
    import ray

    sink = ray.get_actor(sink_name, namespace=SINK_NAMESPACE)
    return pools(ray.get(sink.snapshot.remote(), timeout=timeout_s))
