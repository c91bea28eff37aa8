"""Benchmarks that print JSON (speed goals live here, never in timed tests); one module each in ``benchmarks/``.

    python -m jobs.bench annotate      # annotation stages: pipeline vs naive, same documents
    python -m jobs.bench tools         # retrieval recall@1/5, QA, MT chrF, queries/s, index build cost
    python -m jobs.bench ray           # the Ray job on 12 shards vs one process; engine starts, LM busy share; resume
    python -m jobs.bench scale         # commit, merge and status at 10k / 100k / 1M texts: seconds and peak memory
    python -m jobs.bench train         # finetuning tokens/s and memory per worker, ZeRO 1/2/3 on CPU
    python -m jobs.bench eval          # tool-using decoding: batched vs one input at a time
    python -m jobs.bench soak          # chaos soak: faults on a 3-node loopback Ray cluster; nothing lost, output unchanged
    python -m jobs.bench first_try     # unseen web pages, one tool at a time, 2-document shards: finishes on its first try
    python -m jobs.bench math_levers   # the math corpus: kept Calculator calls per 1k sampled tokens, lever by lever
    python -m jobs.bench qa_ceiling    # the QA tool alone on held-out LAMA facts, cloze and question forms
    python -m jobs.bench pass_start    # an annotate pass start on S3 (moto) at 10k and 100k shards
    python cluster/gpu_bench_train.py  # (GPU machine) 1B Llama-shaped model, ZeRO-2: tokens/s, MFU

A benchmark whose checks fail exits with status 1 after printing its JSON.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from jobs.cli import offline_by_default

BENCHMARKS = ("annotate", "tools", "ray", "scale", "train", "eval", "soak", "first_try", "math_levers", "qa_ceiling",
              "pass_start")


def main(argv: Sequence[str] | None = None) -> None:
    # stdout carries the JSON alone: libraries that log to stdout (vLLM does) are pointed at stderr.
    out, sys.stdout = sys.stdout, sys.stderr
    offline_by_default()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    modules = {name: importlib.import_module(f"benchmarks.{name}") for name in BENCHMARKS}
    for name, module in modules.items():
        module.add_arguments(sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0]))
    args = parser.parse_args(argv)
    result = modules[args.which].run(args)
    sys.stdout = out
    from benchmarks.harness import emit

    emit(result)
    if result.get("ok") is False:
        sys.exit(1)


if __name__ == "__main__":
    main()
