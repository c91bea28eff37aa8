"""Finetune the model on the augmented corpus C* with DeepSpeed, as a Ray Train job.

    python -m jobs.finetune --config jobs/configs/default.yaml name=ccnet10            # after jobs.merge
    python -m jobs.finetune --config jobs/configs/default.yaml name=ccnet10 train.baseline=true   # "GPT-J + CC"
    python -m jobs.finetune name=demo output_dir=runs/demo train.max_steps=4 \\
        train.deepspeed_config=jobs/configs/ds_zero2.yaml            # a few steps on CPU

Reads ``<train.data_dir or output_dir>/cstar.parquet``, packs it to ``train.seq_len``, trains on
``train.num_workers`` Ray Train workers (``train.use_gpu=true`` on a GPU cluster; gloo + DeepSpeed on CPU
here), evaluates dev perplexity every ``train.eval_every`` steps and writes the best and the last checkpoint
as Hugging Face folders under ``<out_dir>/<name>-toolformer/`` (``best/``, ``last/``, ``finetune.json``).
Re-running the same command after a crash resumes from the last checkpoint; once a run has finished, its
DeepSpeed state (``<out_dir>/ray_train``) is removed unless ``train.keep_train_state=true``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from jobs.cli import run_job
from toolformer.config import RunConfig

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "default.yaml")


def main(argv: Sequence[str] | None = None) -> dict:
    return run_job(__doc__, argv, DEFAULT_CONFIG, "finetune", _run)


def _run(cfg: RunConfig):
    from toolformer.train.finetune import run_finetune

    summary = run_finetune(cfg)
    print(json.dumps({k: summary[k] for k in ("name", "final", "best_dev_ppl", "checkpoints", "seconds")}, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
