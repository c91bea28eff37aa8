"""Run a job again when it ends with a code a rerun heals, and never otherwise (docs/operations.md, exit codes):
75 (another driver holds the run), 76 (a transient error), 130 (interrupted) and 143 (SIGTERM: a spot node
reclaimed, a pod evicted). 0, 1, 2 and 3 end it at once: done, or a human is needed. Bounded: ``--tries`` runs
in all, ``--wait-s`` before the second, doubling up to ``--max-wait-s``.

    python -m jobs.retry -- python -m jobs.annotate --config jobs/configs/cluster.yaml ...

What the RayJob runs (cluster/rayjob.yaml): the job's own resubmission, on the codes that ask for it only.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from typing import Sequence

RERUN_HEALS = (75, 76, 130, 143)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tries", type=int, default=5, help="runs in all, the first included")
    parser.add_argument("--wait-s", type=float, default=30.0, help="seconds before the second run (then doubled)")
    parser.add_argument("--max-wait-s", type=float, default=300.0)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    stopping = {"signal": None}

    def forward(signum, frame):  # a SIGTERM for this wrapper is one for the job: it unwinds, then we stop
        stopping["signal"] = signum
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    child = None
    wait, rc = args.wait_s, 1
    for attempt in range(1, max(1, args.tries) + 1):
        child = subprocess.Popen(command)
        rc = child.wait()
        rc = 128 - rc if rc < 0 else rc  # killed by signal n: the shell's 128 + n
        if rc not in RERUN_HEALS or stopping["signal"] is not None or attempt == args.tries:
            break
        print(f"jobs.retry: exit {rc} (a rerun heals it); run {attempt + 1} of {args.tries} in {wait:.0f} s",
              file=sys.stderr, flush=True)
        time.sleep(wait)
        wait = min(args.max_wait_s, wait * 2)
    if rc in RERUN_HEALS and stopping["signal"] is None:
        print(f"jobs.retry: still exit {rc} after {args.tries} runs: giving up", file=sys.stderr, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
