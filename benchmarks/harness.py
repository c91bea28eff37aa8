"""What every benchmark shares: wall time, peak memory of this process and of Ray's workers, JSON out."""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def peak_rss_mb() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class WorkerRSS:
    """Samples the resident memory of every Ray worker process (``ray::…``) on this machine in a thread;
    ``peak_mb`` is the largest seen. Workers of this machine only: the benchmarks run a local Ray."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s, self.peak_mb = interval_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                try:
                    cmd = p.info["cmdline"] or []
                    if cmd and cmd[0].startswith("ray::") and p.info["memory_info"]:
                        self.peak_mb = max(self.peak_mb, p.info["memory_info"].rss / 2**20)
                except Exception:  # noqa: BLE001 - a process that ended while being read
                    continue
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "WorkerRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def timed() -> Iterator[dict]:
    """``with timed() as t: ...`` then ``t["seconds"]``."""
    out: dict = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = round(time.perf_counter() - t0, 3)


def threads() -> int:
    return len(os.sched_getaffinity(0))


def emit(result: dict) -> None:
    """The benchmark's JSON on stdout (one document), flushed."""
    print(json.dumps(result, indent=2, default=str))
    sys.stdout.flush()


REPO = Path(__file__).resolve().parents[1]


def timed_job(args: list[str], env: dict | None = None) -> tuple[float, str]:
    """``python -m <args>`` in a fresh process from the checkout (a driver as a user starts it): (seconds, stdout)."""
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - t0, proc.stdout


def finish(result: dict, checks: dict[str, bool], out: str | None) -> dict:
    """A benchmark's result with its checks and ``ok`` (all of them true), also written to ``out`` when given."""
    result.update(checks=checks, ok=all(checks.values()))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result
