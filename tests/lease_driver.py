"""A driver for the lease tests: the real ``Lease`` and fenced ``RunState`` commits, no Ray. It commits shards
``shard-00000``.. one after another (a marker stamped with its epoch), checking its lease before each, and exits 3
with the ``LeaseLost`` / ``StaleLease`` message when it must stop writing.

    python tests/lease_driver.py RUN_DIR N_SHARDS SECONDS_PER_SHARD TTL_S HEARTBEAT_S [FENCE [PAUSE_AT]]

RUN_DIR may be a local path or an object-store URI (``s3://bucket/run``). FENCE: ``driver`` (the default: the
driver's own fenced writes, ``lease.writing``) or ``task`` (each commit fenced as a commit task's is: a fresh
``lease.fence()``, whose ``hold`` checks the epoch and the deadline itself). PAUSE_AT: a shard id; inside its
commit, after the fence check that precedes the outputs and before writing them, the driver stops itself
(SIGSTOP), as a commit frozen at the worst moment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import pyarrow as pa

from toolformer.run.lease import Lease, LeaseLost, StaleLease
from toolformer.run.shards import AlreadyCommitted, RunState
from toolformer.run.store import Store


def _pausing(fence, sid: str):
    """``fence``, which stops this process once it has let the first write of ``sid``'s commit through."""
    let_through: list[bool] = []

    @contextlib.contextmanager
    def paused():
        with fence():
            yield
        if not let_through:
            let_through.append(True)
            print(f"pausing in {sid}", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)  # the heartbeat thread stops with it

    return paused


def main(run: str, n: int, per_shard: float, ttl: float, heartbeat: float, mode: str = "driver",
         pause_at: str = "") -> int:
    store = Store(run)
    with Lease(store, ttl_s=ttl, heartbeat_s=heartbeat, log=lambda m: print(m, flush=True)) as lease:
        state = RunState(store, "annotate", fence=lease.writing)
        print(f"holding epoch {lease.epoch}", flush=True)
        for i in range(n):
            sid = f"shard-{i:05d}"
            if sid in state.done():
                continue
            time.sleep(per_shard)  # the work of a shard
            fence = lease.writing if mode == "driver" else lease.fence().hold
            state.fence = _pausing(fence, sid) if sid == pause_at else fence
            try:
                state.commit(sid, {"texts": pa.table({"i": [i]})}, {"i": i}, stamp={"lease_epoch": lease.epoch})
                print(f"committed {sid}", flush=True)
            except AlreadyCommitted:
                print(f"skipped {sid}: committed already", flush=True)
            except (LeaseLost, StaleLease) as exc:
                print(f"stopped: {exc}", flush=True)
                return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]),
                  *sys.argv[6:8]))
