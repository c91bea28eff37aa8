"""The finetune job's driver: C* → packed sequences → Ray Train ``TorchTrainer`` with DeepSpeed → HF folders."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

from toolformer.config import RunConfig, to_dict


def _at_least(ds, n: int, want: int):
    """A tiny set repeated so that every worker gets at least one micro-batch (Ray Train splits evenly)."""
    if 0 < n < want:
        ds = ds.union(*[ds] * ((want + n - 1) // n - 1)).limit(want)
    return ds


def training_datasets(cfg: RunConfig, model_path: str, log: Callable[[str], None]):
    """(train, dev, figures): Ray Datasets of packed sequences read from the sharded C*, tokenized on workers."""
    import pyarrow.parquet as pq
    import ray

    from toolformer.cstar.merge import cstar_files
    from toolformer.run.parts import AnnotationRun
    from toolformer.train.data import (Originals, TokenizePack, WithoutCalls, dev_split_ids, dev_texts, fixed_dev,
                                       strip_calls)

    t = cfg.train
    data_dir = t.data_dir or cfg.output_dir
    files = cstar_files(data_dir) + [f for extra in t.extra_data for f in cstar_files(extra)]
    is_run = AnnotationRun(data_dir).store.exists("merge.json")
    cstar = ray.data.read_parquet(files, columns=["text_id", "shard_id", "text", "calls"])

    held: list[str] = []
    if t.dev_split > 0 and is_run:  # fixed problems of the run, the same for every seed, model and control
        held, dev = fixed_dev(data_dir, files, t.dev_split, t.dev_size, t.baseline)
    elif t.dev_split > 0:  # a share of C* itself, each model on its own version (the control: calls removed)
        ids = [i for f in files for i in pq.read_table(f, columns=["text_id"]).column("text_id").to_pylist()]
        held = dev_split_ids(ids, t.dev_split, t.dev_size)
        dev, held_set = [], set(held)
        for f in files:
            tab = pq.read_table(f, columns=["text_id", "text", "calls"])
            for tid, text, calls in zip(*(tab.column(c).to_pylist() for c in ("text_id", "text", "calls"))):
                if tid in held_set:
                    dev.append(strip_calls(text, calls) if t.baseline else text)
    else:
        dev = dev_texts(data_dir, t.dev_size, cfg.seed) if is_run else []
    if not dev and not held:  # every text of the run has a call: hold a tenth of C*'s first part out for dev
        import pyarrow.parquet as pq

        first = pq.read_table(files[0], columns=["text_id", "text"]) if files else None
        if first is not None and first.num_rows > 1:
            rng = random.Random(cfg.seed)
            pick = rng.sample(range(first.num_rows), max(1, first.num_rows // 10))
            held = [first.column("text_id")[i].as_py() for i in pick]
            dev = [first.column("text")[i].as_py() for i in pick]
    if t.baseline and t.dev_split > 0:  # calls taken out of every C* row (accumulated rounds too)
        cstar = cstar.map_batches(WithoutCalls, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1),
                                  num_cpus=0.25)
    elif t.baseline:
        if not is_run:
            raise SystemExit("train.baseline needs the annotation run (train.data_dir = the run directory)")
        cstar = cstar.map_batches(Originals, fn_constructor_args=(data_dir,), batch_format="pyarrow",
                                  compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25)
    if t.shuffle:  # the seed reaches training: the texts' packing order, then every epoch's sequence order
        cstar = cstar.random_shuffle(seed=cfg.seed % (2**31))
    tok = dict(batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25, batch_size=256)
    train = cstar.map_batches(TokenizePack, fn_constructor_args=(model_path, t.seq_len, t.mask_results, held), **tok)
    train = train.materialize()  # in the object store (spilled to disk when large), not in this process
    n_train = train.count()
    if n_train == 0:
        raise SystemExit(f"no training texts in {data_dir} (no call survived filtering?)")
    n_tokens = int(train.sum("n_tokens"))
    per_step = t.micro_batch * t.num_workers
    train = _at_least(train, n_train, per_step).drop_columns(["n_tokens"])
    if dev:
        dev_ds = ray.data.from_items([{"text": d} for d in dev]).map_batches(
            TokenizePack, fn_constructor_args=(model_path, t.seq_len), **tok).materialize()
        n_dev = dev_ds.count()
    else:
        dev_ds, n_dev = train.limit(t.num_workers), 0
    dev_ds = _at_least(dev_ds.drop_columns(["n_tokens"]) if "n_tokens" in dev_ds.columns() else dev_ds,
                       max(n_dev, 1), t.num_workers)
    # Materialized now, while every CPU is free: once the Ray Train workers hold the CPUs, a lazy step left in
    # these datasets would wait for a CPU forever.
    train, dev_ds = train.materialize(), dev_ds.materialize()
    # held texts that C* holds (no longer trained on): read per file, filtered to the held ids
    in_cstar = sum(pq.read_table(f, columns=["text_id"], filters=[("text_id", "in", held)]).num_rows
                   for f in files) if held else 0
    figures = {"train_texts": cstar.count() - in_cstar, "train_sequences": max(n_train, per_step),
               "train_tokens_per_epoch": n_tokens, "dev_texts": len(dev), "dev_from": "cstar" if t.dev_split > 0 else "plain"}
    log(f"{figures['train_texts']} texts → {n_train} sequences of {t.seq_len} ({n_tokens} tokens); dev: {len(dev)} "
        f"plain texts → {n_dev} sequences; {'baseline (no calls)' if t.baseline else 'C*'} from {len(files)} files")
    return train, dev_ds, figures


def epoch_steps(sequences: int, effective_batch: int, epochs: float) -> tuple[int, int]:
    """(optimizer steps for ``epochs`` passes over ``sequences``, steps per epoch): a checkpoint per epoch."""
    import math

    per_epoch = max(1, math.ceil(sequences / max(1, effective_batch)))
    return max(1, math.ceil(epochs * sequences / max(1, effective_batch))), per_epoch


def _export(best, last, target: Path) -> dict[str, str]:
    """best/ and last/ as Hugging Face folders; when the last checkpoint is the best, last/ is hard links to
    best/'s files (no second copy of the weights on disk)."""
    exported: dict[str, str] = {}
    for label, ckpt in (("best", best), ("last", last)):
        if ckpt is None:
            continue
        dest = target / label
        shutil.rmtree(dest, ignore_errors=True)
        if label == "last" and "best" in exported and ckpt.path == best.path:
            shutil.copytree(exported["best"], dest, copy_function=os.link)
        else:
            with ckpt.as_directory() as d:
                shutil.copytree(Path(d) / "model", dest)
        exported[label] = str(dest)
    return exported


def run_finetune(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from toolformer.cluster import init_ray
    from toolformer.models import resolve_model
    from toolformer.train.loop import train_loop_per_worker

    t = cfg.train
    model_path = resolve_model(cfg.model.name_or_path, cfg.model.cache_dir)
    out_dir = Path(t.out_dir or Path(cfg.output_dir) / "finetune").resolve()
    name = f"{cfg.name}-{'baseline' if t.baseline else 'toolformer'}"
    init_ray(cfg)
    train_ds, dev_ds, figures = training_datasets(cfg, model_path, log)
    config = {
        "model_path": model_path, "seed": cfg.seed, "use_gpu": t.use_gpu,
        "deepspeed_config": str(Path(t.deepspeed_config).resolve()),
        **{k: getattr(t, k) for k in ("effective_batch", "micro_batch", "lr", "warmup_ratio", "max_steps", "eval_every",
                                      "epochs", "save_optimizer_state")},
        # on CPU, each worker's share of the node's cores (Ray would leave every worker one thread)
        "torch_threads": t.torch_threads or (None if t.use_gpu else max(1, int(cfg.ray.num_cpus or os.cpu_count() or 1)
                                                                       // max(1, t.num_workers))),
        # the whole (small) training set in the local shuffle buffer: a full reshuffle every epoch
        "shuffle_buffer": min(figures["train_sequences"], 100_000) if t.shuffle else 0,
    }
    if t.epochs:  # steps from epochs: a model and its control see their own texts equally often
        config["max_steps"], config["eval_every"] = epoch_steps(figures["train_sequences"], t.effective_batch, t.epochs)
        figures.update(epochs=t.epochs, steps=config["max_steps"], steps_per_epoch=config["eval_every"])
        log(f"{t.epochs} epochs of {figures['train_sequences']} sequences: {config['max_steps']} steps, a checkpoint "
            f"every {config['eval_every']}")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu),
        datasets={"train": train_ds, "dev": dev_ds},
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
    exported = _export(best[0], result.checkpoint, out_dir / name)
    storage = out_dir / "ray_train" / name
    summary = {
        "name": name, "baseline": t.baseline, "model": model_path, **figures,
        "final": result.metrics, "best_dev_ppl": best[1].get("dev_ppl"), "checkpoints": exported,
        "train_state": str(storage) if t.keep_train_state else None,
        "seconds": round(seconds, 1), "config": to_dict(cfg)["train"],
    }
    (out_dir / name).mkdir(parents=True, exist_ok=True)
    (out_dir / name / "finetune.json").write_text(json.dumps(summary, indent=2, default=str))
    if not t.keep_train_state:  # after the summary: a run stopped in between has its exports and says so
        shutil.rmtree(storage, ignore_errors=True)
        with contextlib.suppress(OSError):
            storage.parent.rmdir()  # only when no other run's state is there
    return summary
