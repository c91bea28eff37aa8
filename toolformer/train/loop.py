"""The finetuning loop: Ray Train ``TorchTrainer`` workers running a DeepSpeed engine over packed C*.

Each worker builds the model, wraps it in DeepSpeed (ZeRO-2/3 from a YAML file; batch sizes, schedule and
precision filled in here), streams its share of the packed sequences from a Ray Dataset, and every
``eval_every`` steps measures dev perplexity and reports a checkpoint: the DeepSpeed state (every rank's
shard, for resuming) plus a Hugging Face folder (safetensors + tokenizer) that vLLM loads as it is. A worker
group that fails restarts from the last reported checkpoint (``FailureConfig``); a resubmitted run with the
same name and storage path resumes the same way.
"""

from __future__ import annotations

import json
import math
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from toolformer.run.faults import fault_point


def deepspeed_config(path: str, *, micro_batch: int, accumulation: int, lr: float, warmup_steps: int,
                     bf16: bool, cpu: bool) -> dict[str, Any]:
    cfg = yaml.safe_load(Path(path).read_text())
    cfg.update(
        train_micro_batch_size_per_gpu=micro_batch,
        gradient_accumulation_steps=accumulation,
        # torch's AdamW: DeepSpeed's fused CPU Adam would JIT-build a C++ op on first use.
        optimizer={"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                                                "torch_adam": True}},
        scheduler={"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr,
                                                  "warmup_num_steps": max(1, warmup_steps), "warmup_type": "linear"}},
        bf16={"enabled": bool(bf16)},
    )
    if cpu:
        cfg.get("zero_optimization", {}).pop("overlap_comm", None)  # no CUDA streams to overlap with
    return cfg


def train_loop_per_worker(config: dict) -> None:
    if not config["use_gpu"]:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"])
    if config.get("torch_threads"):  # Ray sets OMP_NUM_THREADS=1 in workers: give each its share of the cores
        torch.set_num_threads(int(config["torch_threads"]))
    cpu = not (config["use_gpu"] and torch.cuda.is_available())
    bf16 = not cpu  # the paper trains in bf16; on CPU fp32 keeps the checkpoint exact for the engine tests
    tokenizer = AutoTokenizer.from_pretrained(config["model_path"])
    model = AutoModelForCausalLM.from_pretrained(config["model_path"], dtype=torch.bfloat16 if bf16 else torch.float32)
    accumulation = max(1, config["effective_batch"] // (config["micro_batch"] * world))
    ds_cfg = deepspeed_config(
        config["deepspeed_config"], micro_batch=config["micro_batch"], accumulation=accumulation, lr=config["lr"],
        warmup_steps=int(config["warmup_ratio"] * config["max_steps"]), bf16=bf16, cpu=cpu,
    )
    if cpu:
        without_shm_jit()
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                           config=ds_cfg, dist_init_required=False)
    device = engine.device
    state = {"step": 0, "best_dev_ppl": None, "history": [], "resumed_from": None}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            if os.path.isdir(os.path.join(d, "deepspeed")):
                engine.load_checkpoint(os.path.join(d, "deepspeed"))
            else:  # saved without optimizer state (train.save_optimizer_state false): weights only, fresh Adam
                from safetensors.torch import load_file

                weights = {}
                for f in Path(d, "model").glob("*.safetensors"):
                    weights.update(load_file(str(f)))
                engine.module.load_state_dict(weights, strict=False)
            state = json.loads(Path(d, "trainer_state.json").read_text())
            state["resumed_from"] = state["step"]
    zero3 = ds_cfg.get("zero_optimization", {}).get("stage") == 3

    def batches(name: str, epoch: int | None = None):
        shard = ray.train.get_dataset_shard(name)
        shuffle = epoch_order(config["seed"], epoch, config.get("shuffle_buffer", 0)) if epoch is not None else {}
        return shard.iter_torch_batches(batch_size=config["micro_batch"], dtypes=torch.long, device=str(device),
                                        **shuffle)

    def dev_perplexity() -> float:
        engine.eval()
        total = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for b in batches("dev"):
                out = engine(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
                n = int((b["labels"][:, 1:] != -100).sum())
                total += torch.tensor([float(out.loss) * n, n], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(total)
        engine.train()
        return math.exp(total[0] / total[1]) if total[1] else float("nan")

    def save(metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            if config.get("save_optimizer_state", True):  # ~5x the weights; only a resumed run reads it
                engine.save_checkpoint(os.path.join(tmp, "deepspeed"), tag=f"step-{state['step']}")
            weights = engine._zero3_consolidated_16bit_state_dict() if zero3 else engine.module.state_dict()
            if rank == 0:
                engine.module.save_pretrained(os.path.join(tmp, "model"), state_dict=weights, safe_serialization=True)
                tokenizer.save_pretrained(os.path.join(tmp, "model"))
                Path(tmp, "trainer_state.json").write_text(json.dumps(state))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    engine.train()
    t0, tokens, losses = time.perf_counter(), 0, []
    start = state["step"]
    # Epoch mode (train.epochs, a whole number): a checkpoint at each true epoch end, after the epoch's last
    # micro-batch; otherwise a checkpoint every eval_every optimizer steps.
    epochs = config.get("epochs")
    by_epoch = bool(epochs) and float(epochs).is_integer()
    epoch = int(state.get("epoch", 0))

    def checkpoint(metrics: dict) -> None:
        metrics["dev_ppl"] = dev_perplexity()
        if state["best_dev_ppl"] is None or metrics["dev_ppl"] < state["best_dev_ppl"]:
            state["best_dev_ppl"] = metrics["dev_ppl"]
        save(metrics)

    metrics: dict = {}
    while (epoch < int(epochs)) if by_epoch else (state["step"] < config["max_steps"]):
        seen = 0
        for b in batches("train", epoch):
            seen += 1
            before = engine.global_steps
            out = engine(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
            engine.backward(out.loss)
            engine.step()
            losses.append(float(out.loss))
            tokens += int(b["attention_mask"].sum())
            if engine.global_steps == before:
                continue  # still accumulating
            state["step"] = int(engine.global_steps)
            step = state["step"]
            metrics = {"step": step, "epoch": epoch + 1, "train_loss": sum(losses) / len(losses),
                       "lr": engine.get_lr()[0], "tokens_per_s_worker": tokens / (time.perf_counter() - t0),
                       "world_size": world, "resumed_from": state["resumed_from"], "steps_this_attempt": step - start,
                       "peak_rss_mb_worker": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            losses.clear()
            state["history"].append({"step": step, "epoch": epoch + 1, "train_loss": metrics["train_loss"]})
            if not by_epoch and (step % config["eval_every"] == 0 or step >= config["max_steps"]):
                checkpoint(metrics)
            else:
                ray.train.report(metrics)
            fault_point("train_step", step=step, rank=rank)
            if not by_epoch and step >= config["max_steps"]:
                break
        if not seen:  # an empty shard would loop here forever
            raise RuntimeError(f"rank {rank}: no training batch in an epoch (too few sequences for the workers)")
        epoch += 1
        state["epoch"] = epoch
        if by_epoch:
            checkpoint(dict(metrics, epoch=epoch, step=state["step"]))


def without_shm_jit() -> None:
    """DeepSpeed on CPU JIT-compiles a shared-memory all-reduce op at its first initialize, behind a lock file that
    a killed build leaves behind: every later finetune on that machine then waits on it forever (seen here). Our
    workers all-reduce through gloo, which needs no build: the op is marked unavailable, so nothing compiles and
    nothing waits."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def epoch_order(seed: int, epoch: int, buffer: int) -> dict:
    """What an epoch's batch iterator gets: a local shuffle over ``buffer`` sequences (the whole set when it fits:
    a full reshuffle) seeded by the run's seed and the epoch, so seeds differ and a rerun repeats itself."""
    if not buffer:
        return {}
    return {"local_shuffle_buffer_size": buffer, "local_shuffle_seed": epoch_seed(seed, epoch)}


def epoch_seed(seed: int, epoch: int) -> int:
    """The data order's seed for one epoch: different for every seed and every epoch, the same on a rerun."""
    from toolformer.seeds import derive_seed

    return derive_seed(seed, "train-order", str(epoch)) % (2**31)
