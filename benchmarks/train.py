"""``python -m jobs.bench train``: finetuning tokens/s and peak memory per worker, ZeRO 1/2/3 on CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmarks.harness import REPO, finish, timed_job

RESULTS = REPO / "benchmarks" / "results" / "train.json"
LOSS_TOLERANCE = 1e-3  # nats: ZeRO partitions optimizer state, gradients and parameters, not the arithmetic


def check(result: dict) -> dict[str, bool]:
    """The enforced checks: every stage asked for ran and trained (a finite loss, tokens/s > 0), and the final
    training loss is the same under every ZeRO stage (same data, same seed; the stages only partition state)."""
    import math

    stages = result.get("zero") or {}
    losses = [s.get("final_train_loss") for s in stages.values()]
    finite = [x for x in losses if isinstance(x, (int, float)) and math.isfinite(x)]
    return {
        "every_stage_ran": bool(stages) and len(stages) == len(set(result.get("zero_stages") or stages)),
        "every_stage_trained": bool(stages) and len(finite) == len(losses)
        and all((s.get("tokens_per_s_per_worker") or 0) > 0 for s in stages.values()),
        "same_final_loss_across_zero_stages": bool(finite) and len(finite) == len(losses)
        and max(finite) - min(finite) <= LOSS_TOLERANCE,
    }


def run(args) -> dict:
    """Finetuning the embedded model on CPU with 2 Ray Train workers, one run per ZeRO stage, same data."""
    import shutil
    import tempfile

    import yaml

    from toolformer.corpus import read_documents
    from toolformer.schemas import ANNOTATIONS, CSTAR, TEXTS, to_table
    from toolformer.run.store import Store

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="toolformer-bench-train-"))
    run = work / "data"
    # Throughput does not depend on where the calls are: plain embedded Wikipedia summaries stand in for C*.
    docs = list(read_documents([], limit=args.texts))
    rows = [dict(text_id=f"{d.doc_id}#0", doc_id=d.doc_id, chunk=0, url=d.url, date=d.date, title=d.title,
                 source=d.source, text=d.text) for d in docs]
    store = Store(run)
    store.write_table(to_table(rows, TEXTS), "texts.parquet")
    store.write_table(ANNOTATIONS.empty_table(), "annotations.parquet")
    cut = len(rows) * 9 // 10
    store.write_table(to_table([dict(text_id=r["text_id"], doc_id=r["doc_id"], shard_id="local", text=r["text"],
                                     n_calls=0, calls=[]) for r in rows[:cut]], CSTAR), "cstar", "part-00000.parquet")
    (run / "merge.json").write_text(json.dumps({"parts": ["cstar/part-00000.parquet"]}))
    result: dict = {"benchmark": "train", "model": "SmolLM2-135M-Instruct (embedded), fp32, CPU",
                    "workers": 2, "seq_len": args.seq_len, "steps": args.steps, "effective_batch": 4,
                    "cpus": len(os.sched_getaffinity(0)), "zero_stages": list(args.zero_stages),
                    "loss_tolerance": LOSS_TOLERANCE, "zero": {}}
    for stage in args.zero_stages:
        ds = work / f"ds_zero{stage}.yaml"
        base = yaml.safe_load((REPO / "jobs" / "configs" / f"ds_zero{3 if stage == 3 else 2}.yaml").read_text())
        base["zero_optimization"]["stage"] = stage
        ds.write_text(yaml.safe_dump(base))
        out = work / f"out-{stage}"
        shutil.rmtree(out, ignore_errors=True)
        t, _ = timed_job(["jobs.finetune", "name=bench", f"output_dir={run}", f"train.out_dir={out}",
                           f"train.seq_len={args.seq_len}", "train.effective_batch=4", "train.micro_batch=1",
                           f"train.max_steps={args.steps}", f"train.eval_every={args.steps}", "train.dev_size=8",
                           f"train.deepspeed_config={ds}", "train.num_workers=2", "ray.num_cpus=2"],
                          env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        summary = json.loads((out / "bench-toolformer" / "finetune.json").read_text())
        final = summary["final"]
        result["zero"][f"stage_{stage}"] = {
            "tokens_per_s_per_worker": round(final["tokens_per_s_worker"], 1),
            "tokens_per_s_total": round(final["tokens_per_s_worker"] * 2, 1),
            "peak_rss_mb_per_worker": round(final["peak_rss_mb_worker"]),
            "fit_seconds": summary["seconds"], "job_seconds": round(t, 1), "final_train_loss": round(final["train_loss"], 4),
        }
    return finish(result, check(result), args.out)


def add_arguments(tr) -> None:
    tr.add_argument("--texts", type=int, default=400)
    tr.add_argument("--seq-len", type=int, default=512)
    tr.add_argument("--steps", type=int, default=6)
    tr.add_argument("--zero-stages", type=int, nargs="*", default=[1, 2, 3])
    tr.add_argument("--work-dir", default=None)
    tr.add_argument("--out", default=str(RESULTS), help="where the JSON is written too ('' for nowhere)")
