"""A driver for the lease tests: the real ``Lease`` and fenced ``RunState`` commits, no Ray. It commits shards
``shard-00000``.. one after another (a marker stamped with its epoch), checking its lease before each, and exits 3
with the ``LeaseLost`` message when it must stop writing.

    python tests/lease_driver.py RUN_DIR N_SHARDS SECONDS_PER_SHARD TTL_S HEARTBEAT_S
"""

from __future__ import annotations

import sys
import time

import pyarrow as pa

from toolformer.lease import Lease, LeaseLost
from toolformer.shards import AlreadyCommitted, RunState, Store


def main(run: str, n: int, per_shard: float, ttl: float, heartbeat: float) -> int:
    store = Store(run)
    with Lease(store, ttl_s=ttl, heartbeat_s=heartbeat, log=lambda m: print(m, flush=True)) as lease:
        state = RunState(store, "annotate", fence=lease.writing)
        print(f"holding epoch {lease.epoch}", flush=True)
        for i in range(n):
            sid = f"shard-{i:05d}"
            if sid in state.done():
                continue
            time.sleep(per_shard)  # the work of a shard
            try:
                state.commit(sid, {"texts": pa.table({"i": [i]})}, {"i": i}, stamp={"lease_epoch": lease.epoch})
                print(f"committed {sid}", flush=True)
            except AlreadyCommitted:
                print(f"skipped {sid}: committed already", flush=True)
            except LeaseLost as exc:
                print(f"stopped: {exc}", flush=True)
                return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])))
