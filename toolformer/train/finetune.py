"""The finetune job's driver: C* → packed sequences → Ray Train ``TorchTrainer`` with DeepSpeed → HF folders."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from toolformer.config import RunConfig, to_dict
from toolformer.train.data import Example, pack, read_training_texts, tokenize


def _at_least(rows: list[dict], n: int) -> list[dict]:
    """Repeat a tiny set so that every worker gets the same, non-zero number of sequences."""
    if not rows:
        return rows
    out = list(rows)
    while len(out) < n or len(out) % n:
        out.append(rows[len(out) % len(rows)])
    return out


def run_finetune(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from transformers import AutoTokenizer

    from toolformer.annotate.ray_job import init_ray
    from toolformer.engine.models import resolve_model
    from toolformer.train.loop import train_loop_per_worker

    t = cfg.train
    model_path = resolve_model(cfg.model.name_or_path, cfg.model.cache_dir)
    data_dir = t.data_dir or cfg.output_dir
    out_dir = Path(t.out_dir or Path(cfg.output_dir) / "finetune").resolve()
    name = f"{cfg.name}-{'baseline' if t.baseline else 'toolformer'}"
    train_ex, dev_texts = read_training_texts(data_dir, baseline=t.baseline, dev_size=t.dev_size, seed=cfg.seed)
    if not train_ex:
        raise SystemExit(f"no training texts in {data_dir}/cstar.parquet (no call survived filtering?)")
    tok = AutoTokenizer.from_pretrained(model_path)
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    train_rows = pack(tokenize(train_ex, tok, t.mask_results), t.seq_len, eos, pad)
    dev_rows = pack(tokenize([Example(x, []) for x in dev_texts], tok), t.seq_len, eos, pad)
    per_step = t.micro_batch * t.num_workers
    train_rows, dev_rows = _at_least(train_rows, per_step), _at_least(dev_rows or train_rows[:1], t.num_workers)
    n_tokens = sum(sum(r["attention_mask"]) for r in train_rows)
    log(f"{len(train_ex)} texts → {len(train_rows)} sequences of {t.seq_len} ({n_tokens} tokens); "
        f"dev: {len(dev_texts)} plain texts → {len(dev_rows)} sequences; {'baseline (no calls)' if t.baseline else 'C*'}")

    init_ray(cfg)
    config = {
        "model_path": model_path, "seed": cfg.seed, "use_gpu": t.use_gpu,
        "deepspeed_config": str(Path(t.deepspeed_config).resolve()),
        **{k: getattr(t, k) for k in ("effective_batch", "micro_batch", "lr", "warmup_ratio", "max_steps", "eval_every")},
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu),
        datasets={"train": ray.data.from_items(train_rows), "dev": ray.data.from_items(dev_rows)},
        run_config=TrainRunConfig(
            name=name,
            storage_path=str(out_dir / "ray_train"),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints, checkpoint_score_attribute="dev_ppl",
                                               checkpoint_score_order="min"),
        ),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    if result.error:
        raise result.error
    best = min(result.best_checkpoints, key=lambda cm: cm[1].get("dev_ppl", float("inf")), default=(result.checkpoint, result.metrics))
    exported = {}
    for label, ckpt in (("best", best[0]), ("last", result.checkpoint)):
        if ckpt is None:
            continue
        target = out_dir / name / label
        shutil.rmtree(target, ignore_errors=True)
        with ckpt.as_directory() as d:
            shutil.copytree(Path(d) / "model", target)
        exported[label] = str(target)
    summary = {
        "name": name, "baseline": t.baseline, "model": model_path, "train_texts": len(train_ex),
        "train_sequences": len(train_rows), "train_tokens_per_epoch": n_tokens, "dev_texts": len(dev_texts),
        "final": result.metrics, "best_dev_ppl": best[1].get("dev_ppl"), "checkpoints": exported,
        "seconds": round(seconds, 1), "config": to_dict(cfg)["train"],
    }
    (out_dir / name).mkdir(parents=True, exist_ok=True)
    (out_dir / name / "finetune.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
