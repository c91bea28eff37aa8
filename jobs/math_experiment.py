"""The math experiment (issue 28, docs/math.md): ``jobs.experiment`` with ``jobs/configs/math.yaml`` as its default
config (the command the stored math result names).

    .venv/bin/python -m jobs.math_experiment --plan          # = python -m jobs.experiment --config jobs/configs/math.yaml --plan
"""

from __future__ import annotations

import sys

from jobs.experiment import DEFAULT_CONFIG, main

if __name__ == "__main__":
    rc = main(default_config=DEFAULT_CONFIG)
    sys.exit(rc if isinstance(rc, int) else 0)
