"""``python -m jobs.bench first_try``: the annotate job on unseen web pages, one tool at a time, must finish on
its first try. This is the run that crashed twice before issue 20: web documents the tests never read, small
shards (2 documents each, so shards with no eligible text are certain), one tool, the fused LM layout with 2 LM
actors. Each tool gets a fresh output folder and one driver run; the check is that the run exits 0 with every
shard committed, no shard failed and nothing quarantined.

    python -m jobs.bench first_try                                  # the five tools, 24 documents each
    python -m jobs.bench first_try --tools Calculator --docs 24
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import REPO

TOOLS = ("Calculator", "Calendar", "WikiSearch", "QA", "MT")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tools", nargs="+", default=list(TOOLS))
    p.add_argument("--docs", type=int, default=24)
    # Documents 600.. of the C4 sample: no test or other benchmark reads them.
    p.add_argument("--offset", type=int, default=600)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "webtext" / "c4_sample_1000.jsonl.gz"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "first_try.json"))


def _run(args: list[str], timeout: float = 1800) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    import os

    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **env})
    return proc.returncode, round(time.perf_counter() - t0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]


def run(args: argparse.Namespace) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="first-try-"))
    results = {}
    try:
        for tool in args.tools:
            out = scratch / tool
            common = [f"output_dir={out}", f"corpus.paths=[{args.data}]", f"corpus.limit={args.docs}",
                      f"corpus.offset={args.offset}", f"annotate.tools=[{tool}]", "shards.docs_per_shard=2",
                      "ray.fuse_lm=true", "ray.lm.actors=2", "ray.lm.num_cpus=0.5", "ray.num_cpus=2"]
            if tool in ("WikiSearch", "QA"):  # the embedded index, BM25 only: no embedding pass to build
                common.append(f"annotate.tool_options.{tool}.mode=bm25")
            rc_prep, s_prep, log_prep = _run(["jobs.prepare", *common])
            rc, seconds, log = _run(["jobs.annotate", *common]) if rc_prep == 0 else (rc_prep, 0.0, log_prep)
            stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").exists() else {}
            shards = stats.get("shards", {})
            results[tool] = {
                "exit_code": rc, "prepare_seconds": s_prep, "annotate_seconds": seconds,
                "shards": shards, "passes": stats.get("passes"), "docs": stats.get("docs"),
                "candidates": (stats.get("funnel", {}).get(tool) or {}).get("candidates", 0),
                "kept_at_tool_tau_f": (stats.get("funnel", {}).get(tool) or {}).get("kept_at_tool_tau_f", 0),
                "observability_failures": stats.get("observability_failures"),
                "finished_first_try": rc == 0 and bool(shards) and shards.get("done") == shards.get("total")
                and not shards.get("quarantined") and stats.get("passes") == 1,
                **({"log_tail": log[-2000:]} if rc else {}),
            }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    checks = {f"{tool}_finished_first_try": r["finished_first_try"] for tool, r in results.items()}
    result = {"benchmark": "first_try", "docs_per_tool": args.docs, "docs_per_shard": 2,
              "source": f"{Path(args.data).name} documents {args.offset}..{args.offset + args.docs - 1}",
              "tools": results, "checks": checks, "ok": all(checks.values())}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result
