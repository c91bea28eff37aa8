"""An experiment: seeds x settings x rounds of annotate -> merge -> finetune -> evaluate, a matched control per
seed, the base model plain and prompted; one command, a rerun resumes. Its config says which:

- ``jobs/configs/math.yaml`` (issue 28, docs/math.md): the Calculator on ASDiv's training folds; ASDiv's held-out
  fold, SVAMP and MAWPS;
- ``jobs/configs/multitool.yaml`` (issue 42, docs/multitool.md): one C* from math, fact, dated and plain text,
  annotated with the Calculator, QA and the Calendar; LAMA, the math sets, Dateset and plain-text prompts.

    nohup nice -n 19 .venv/bin/python -m jobs.experiment --config jobs/configs/multitool.yaml > runs/multitool.log 2>&1 &
    .venv/bin/python -m jobs.experiment --config jobs/configs/multitool.yaml --plan          # units and estimated times
    .venv/bin/python -m jobs.experiment --config jobs/configs/multitool.yaml --report-only   # the report, from what is stored

Writes runs/<name>/ (every unit: seed<s>/<setting>/rounds/r<k>/ and base/), and after every unit the report:
benchmarks/results/<name>/results.json and docs/<name>.md (``--results``, ``--docs`` to move them), and each
finished unit's state, small enough to commit (``<results>/state/``): a run on a fresh clone restores it first
and skips what it holds (toolformer/experiments/state.py).
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


def write_report(cfg, results: str, docs: str) -> dict:
    """The report the config names (``bootstrap.report``), from what the run stored."""
    if cfg.bootstrap.report == "multitool":
        from toolformer.experiments.multitool.report import write_report as write
    elif cfg.bootstrap.report == "math":
        from toolformer.experiments.math.report import write_report as write
    else:
        raise ValueError(f"bootstrap.report must be math or multitool, got {cfg.bootstrap.report!r}")
    return write(cfg, results, docs)


def main(argv: Sequence[str] | None = None, default_config: str = DEFAULT_CONFIG):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config)
    parser.add_argument("--unit", help="run one unit here (seed<s>/<setting>/r<k> or base)")
    parser.add_argument("--report-only", action="store_true", help="write the report from the stored results")
    parser.add_argument("--plan", action="store_true", help="print the units with estimated times, run nothing")
    parser.add_argument("--results", default=None, help="where the report's JSON and PNG go (benchmarks/results/<name>)")
    parser.add_argument("--docs", default=None, help="the results page (docs/<name>.md)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. bootstrap.seeds=[0]")
    args = parser.parse_intermixed_args(argv)
    offline_by_default()
    from toolformer.config import load_config
    from toolformer.experiments.experiment import Unit, run_experiment, run_unit

    cfg = load_config(args.config, args.overrides)
    results = args.results or f"benchmarks/results/{cfg.name}"
    docs = args.docs or f"docs/{cfg.name}.md"

    def report() -> dict:
        from toolformer.experiments.state import save_state

        out = write_report(cfg, results, docs)
        save_state(cfg, results, log)  # what a fresh clone's run skips (<results>/state/)
        return out

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if args.plan:
        from toolformer.experiments.experiment import plan
        from toolformer.experiments.plan import RATES_FILE, load_rates, print_plan

        own = Path(results) / "rates.json"  # this experiment's measured rates once it ran, else the math run's
        from toolformer.experiments.state import stored_done

        print_plan(cfg, plan(cfg), load_rates(own if own.exists() else RATES_FILE), stored_done(cfg, results))
        return 0
    if args.report_only:
        out = report()
        print(f"report: {out['json']}, {out['plot']}, {out['docs']}")
        return out
    if args.unit:
        from toolformer.console import job_console

        with job_console(cfg.output_dir, "experiment_" + args.unit.replace("/", "_")):
            return run_unit(cfg, Unit.parse(args.unit), log)
    from toolformer.experiments.state import restore_state

    restore_state(cfg, results, log)  # the units an earlier run finished and stored: not run again
    status = run_experiment(cfg, args.config, list(args.overrides), log, report)
    return 0 if all(v == "done" for v in status.values()) else 1


if __name__ == "__main__":
    rc = main()
    sys.exit(rc if isinstance(rc, int) else 0)
