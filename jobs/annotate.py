"""Annotate a corpus with API calls and keep the calls that help: a Ray job over shards, resumable.

    python -m jobs.annotate --config jobs/configs/default.yaml name=ccnet \\
        'corpus.paths=[../shared/data/webtext/ccnet_output_10docs_exact.jsonl]' shards.docs_per_shard=4

On a cluster:  ray job submit --working-dir . -- python -m jobs.annotate --config jobs/configs/cluster.yaml ...

Shards the corpus first (the Ray preparer of jobs.prepare, under the same lease) if ``<output_dir>/manifest.json``
is missing, then streams every pending
shard through one Ray Data execution (actor pools and engines start once), committing each shard as soon as it
is whole; re-running the same command resumes where it stopped. Per shard: ``texts/`` and ``annotations/`` (files
of the attempt that committed it), ``markers/annotate/`` (names them, carries its counts); ``progress/`` summaries
and ``stats.json`` for the run.
``annotate.runner=local`` runs everything in this process instead (no Ray, no shards; the reference).

Exit codes: 0 every shard committed; 3 the run ended with quarantined shards (its last line says how many and
where to look); 1 the run stopped (its message says why and what to do; a rerun of the same command resumes).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from jobs.cli import run_job
from toolformer.config import RunConfig

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "default.yaml")


def main(argv: Sequence[str] | None = None) -> dict:
    return run_job(__doc__, argv, DEFAULT_CONFIG, "annotate", _run)


def _run(cfg: RunConfig):
    from toolformer.report import format_funnel, format_yields

    if cfg.annotate.runner == "local":
        from toolformer.annotate.pipeline import run_annotate

        stats = run_annotate(cfg)
    elif cfg.annotate.runner == "ray":
        from toolformer.annotate.ray_job import annotate_on_ray

        stats = annotate_on_ray(cfg)  # prepares with Ray tasks first when the run has no manifest
        print(f"shards: {stats['shards']}")
    else:
        raise SystemExit(f"annotate.runner must be ray or local, got {cfg.annotate.runner!r}")
    print(format_funnel(stats["funnel"], stats.get("docs_skipped")))
    print(format_yields(stats["funnel"]))
    print(f"annotations: {cfg.output_dir}")
    if cfg.annotate.runner == "ray":
        from toolformer.annotate.ray_job import EXIT_QUARANTINED, quarantine_line

        line = quarantine_line(stats)
        if line:  # the run is over, but not every shard made it: its own exit code, said last
            print(line, file=sys.stderr, flush=True)  # the log has it; the terminal gets it last, below
            end = SystemExit(EXIT_QUARANTINED)
            end.last_line = line  # type: ignore[attr-defined]  # said again after the log's place
            raise end
    return stats


if __name__ == "__main__":
    main()
