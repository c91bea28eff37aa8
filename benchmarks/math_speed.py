"""``python -m benchmarks.math_speed``: the math experiment's speed settings, measured once alone on this machine
and stored (benchmarks/results/math/speed_settings.json); jobs/configs/math.yaml takes the fastest.

1. The engine: the experiment's annotate step (vLLM, the embedded model, Calculator, operands syntax) on the same
   ``--problems`` ASDiv training problems in bf16 and fp32, with 2 and 1 OpenMP threads: texts per second,
   engine start included (every unit starts its engines). Same kept calls in every setting is not expected
   across dtypes (the log-probs differ); each run is checked to have annotated every problem.
2. Finetuning: Ray Train + DeepSpeed ZeRO-2 on the same ``--train-texts`` problem texts (one epoch, the
   experiment's sequence length and effective batch) with 1 worker (micro-batch 8, no accumulation) and with 2
   workers (micro-batch 4 each): seconds and tokens per second of the trainer, same number of sequences.

Exit 1 when a run fails or a check is false.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs" / "configs" / "math.yaml"


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - t0, proc


def engine_settings(problems: int, out: Path) -> list[dict]:
    rows = []
    for dtype, threads in (("bfloat16", 2), ("float32", 2), ("bfloat16", 1), ("float32", 1)):
        run_dir = out / f"annotate-{dtype}-{threads}"
        cmd = [sys.executable, "-m", "jobs.annotate", "--config", str(CONFIG), f"output_dir={run_dir}",
               f"corpus.limit={problems}", f"model.dtype={dtype}"]
        seconds, proc = _run(cmd, {"VLLM_CPU_OMP_THREADS_BIND": "0-1" if threads == 2 else "0"})
        stats = json.loads((run_dir / "stats.json").read_text()) if (run_dir / "stats.json").exists() else {}
        funnel = (stats.get("funnel") or {}).get("Calculator") or {}
        rows.append({"dtype": dtype, "omp_threads": threads, "rc": proc.returncode, "seconds": round(seconds, 1),
                     "texts": problems, "texts_per_s": round(problems / seconds, 3),
                     "kept": funnel.get("kept_at_tool_tau_f"), "samples": funnel.get("samples"),
                     "error": proc.stderr[-1500:] if proc.returncode else None})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def finetune_settings(texts: int, out: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from toolformer.config import load_config
    from toolformer.corpus.readers import corpus_documents
    from toolformer.corpus.records import SkipLog

    cfg = load_config(str(CONFIG), [f"corpus.limit={texts}"])
    docs = list(corpus_documents(cfg.corpus, SkipLog()))
    cdir = out / "cstar_plain" / "cstar"
    cdir.mkdir(parents=True, exist_ok=True)
    empty = pa.list_(pa.struct([("char_start", pa.int64()), ("char_end", pa.int64())]))
    pq.write_table(pa.table({"text_id": [d.doc_id for d in docs], "shard_id": ["s0"] * len(docs),
                             "text": [d.text for d in docs], "calls": pa.array([[] for _ in docs], empty)}),
                   cdir / "part-0.parquet")
    rows = []
    for workers, micro in ((1, 8), (2, 4)):
        ft = out / f"finetune-{workers}"
        cmd = [sys.executable, "-m", "jobs.finetune", "--config", str(CONFIG), f"output_dir={ft}",
               f"train.data_dir={cdir}", f"train.out_dir={ft}", "train.epochs=1", f"train.num_workers={workers}",
               f"train.micro_batch={micro}", "train.save_optimizer_state=false"]
        seconds, proc = _run(cmd)
        summary = next(iter(ft.glob("*/finetune.json")), None)
        info = json.loads(summary.read_text()) if summary else {}
        rows.append({"workers": workers, "micro_batch": micro, "torch_threads_per_worker": max(1, 2 // workers), "rc": proc.returncode, "seconds_total": round(seconds, 1),
                     "seconds_trainer": info.get("seconds"), "sequences": info.get("train_sequences"),
                     "tokens": info.get("train_tokens_per_epoch"),
                     "tokens_per_s": round(info["train_tokens_per_epoch"] / info["seconds"], 1) if info.get("seconds") else None,
                     "error": proc.stderr[-1500:] if proc.returncode else None})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=int, default=24)
    p.add_argument("--train-texts", type=int, default=240)
    p.add_argument("--results", default=str(REPO / "benchmarks/results/math/speed_settings.json"))
    p.add_argument("--only", choices=["engine", "finetune"])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="math_speed_") as tmp:
        out: dict = {"load_at_start": list(os.getloadavg()), "cores": os.cpu_count()}
        if args.only != "finetune":
            out["engine"] = engine_settings(args.problems, Path(tmp))
        if args.only != "engine":
            out["finetune"] = finetune_settings(args.train_texts, Path(tmp))
    checks = {"every_run_ok": all(r["rc"] == 0 for k in ("engine", "finetune") for r in out.get(k, [])),
              "same_sequences_per_worker_count": len({r["sequences"] for r in out.get("finetune", [])}) <= 1}
    out["checks"] = checks
    if out.get("engine"):
        out["fastest_engine"] = max(out["engine"], key=lambda r: r["texts_per_s"] if r["rc"] == 0 else -1)
    if out.get("finetune"):
        out["fastest_finetune"] = min(out["finetune"], key=lambda r: r["seconds_total"] if r["rc"] == 0 else 1e9)
    path = Path(args.results)
    old = json.loads(path.read_text()) if path.exists() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**old, **out, "measured": time.strftime("%Y-%m-%d %H:%M")}, indent=1))
    print(json.dumps({k: out.get(k) for k in ("checks", "fastest_engine", "fastest_finetune")}, indent=1))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
