"""The math experiment (issue 28, docs/math.md): three seeds, a matched control per round, the C* options on and
off, round 1 against round 2, on ASDiv's held-out fold, SVAMP and MAWPS. One command; a rerun resumes.

    nohup nice -n 19 .venv/bin/python -m jobs.math_experiment --config jobs/configs/math.yaml > runs/math.log 2>&1 &
    .venv/bin/python -m jobs.math_experiment --config jobs/configs/math.yaml --plan          # units and estimated times
    .venv/bin/python -m jobs.math_experiment --config jobs/configs/math.yaml --report-only   # the report, from what is stored

Writes runs/<name>/ (every unit: seed<s>/<setting>/rounds/r<k>/ and base/), and after every unit the report:
benchmarks/results/math/results.json + math.png and docs/math.md (``--results``, ``--docs`` to move them).
``--unit seed0/default/r1`` runs one unit in this process (what the experiment does in a child process).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from jobs.cli import offline_by_default

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "math.yaml")


def main(argv: Sequence[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--unit", help="run one unit here (seed<s>/<setting>/r<k> or base)")
    parser.add_argument("--report-only", action="store_true", help="write the report from the stored results")
    parser.add_argument("--plan", action="store_true", help="print the units with estimated times, run nothing")
    parser.add_argument("--results", default="benchmarks/results/math", help="where the report's JSON and PNG go")
    parser.add_argument("--docs", default="docs/math.md", help="the results page")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. bootstrap.seeds=[0]")
    args = parser.parse_intermixed_args(argv)
    offline_by_default()
    from toolformer.config import load_config
    from toolformer.experiments.experiment import Unit, run_experiment, run_unit
    from toolformer.experiments.math.report import write_report

    cfg = load_config(args.config, args.overrides)

    def report() -> dict:
        return write_report(cfg, args.results, args.docs)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if args.plan:
        from toolformer.experiments.experiment import plan
        from toolformer.experiments.plan import print_plan

        print_plan(cfg, plan(cfg))
        return 0
    if args.report_only:
        out = report()
        print(f"report: {out['json']}, {out['plot']}, {out['docs']}")
        return out
    if args.unit:
        from toolformer.console import job_console

        with job_console(cfg.output_dir, "math_experiment_" + args.unit.replace("/", "_")):
            return run_unit(cfg, Unit.parse(args.unit), log)
    status = run_experiment(cfg, args.config, list(args.overrides), log, report)
    return 0 if all(v == "done" for v in status.values()) else 1


if __name__ == "__main__":
    rc = main()
    sys.exit(rc if isinstance(rc, int) else 0)
