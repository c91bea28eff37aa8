"""Iterative bootstrapping: rounds of annotate → merge → finetune, each round with the previous round's model.

    python -m jobs.bootstrap --config jobs/configs/bootstrap.yaml            # the experiment of the README
    python -m jobs.bootstrap --config jobs/configs/bootstrap.yaml bootstrap.rounds=3 bootstrap.slices=same

Writes ``<output_dir>/rounds/r1/``, ``r2/``, ... (each a normal run: annotations, C*, finetune, eval) and the
round report ``rounds.md``, ``rounds.json``, ``rounds.png``. Re-running the same command skips finished rounds
and steps and continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jobs.cli import run_job
from toolformer.config import RunConfig

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "bootstrap.yaml")


def main(argv: Sequence[str] | None = None) -> dict:
    return run_job(__doc__, argv, DEFAULT_CONFIG, "bootstrap", _run)


def _run(cfg: RunConfig) -> dict:
    from toolformer.experiments.bootstrap import run_bootstrap

    if not cfg.corpus.paths:  # the embedded Wikipedia, mixed as the demo mixes it: enough arithmetic for every round
        from jobs.demo import write_demo_corpus

        n = (cfg.corpus.limit or 100) * (cfg.bootstrap.rounds if cfg.bootstrap.slices == "fresh" else 1)
        path = write_demo_corpus(Path(cfg.output_dir) / "corpus.jsonl", n, cfg.corpus.embedded_lang,
                                 cfg.corpus.embedded_date, cfg.seed, shuffle=True)
        cfg.corpus.paths = [str(path)]
    report = run_bootstrap(cfg)
    print(report["table"])
    print(f"round report: {Path(cfg.output_dir) / 'rounds.md'}, rounds.json, rounds.png")
    return report


if __name__ == "__main__":
    main()
