"""Evaluate models on the paper's downstream tasks, with and without tools; a table like Tables 3-7.

    python -m jobs.evaluate --config jobs/configs/default.yaml name=ccnet10 eval.limit=100 \\
        eval.finetuned=runs/ccnet10/finetune/ccnet10-toolformer/best
    python -m jobs.evaluate eval.tasks=[svamp,asdiv,mawps] eval.limit=50     # the base model only

Settings compared: the base model (no calls), the base model with tools via a few-shot prompt, and with
``eval.finetuned``: the finetuned model with calls disabled and with tools. Writes ``results.md``,
``results.json`` (accuracy and the share of examples calling each tool), ``generations.jsonl`` and
``accuracy.png`` to ``<output_dir>/eval``. Task files come from ``eval.data_dir`` (default: ../shared/data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jobs.cli import run_job
from toolformer.config import RunConfig

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "default.yaml")


def main(argv: Sequence[str] | None = None) -> dict:
    return run_job(__doc__, argv, DEFAULT_CONFIG, "evaluate", _run)


def _run(cfg: RunConfig):
    from toolformer.evaluation.evaluate import run_evaluate

    out = run_evaluate(cfg)
    print(out["table"])
    print(f"results: {out['markdown']}, {out['json']}, plot {out['plot']}")
    return out


if __name__ == "__main__":
    main()
