"""Training throughput and MFU of a randomly initialized 1B-parameter Llama-shaped model under DeepSpeed
ZeRO-2 (bf16) on one GPU: the device check of `python -m jobs.bench train` (JSON on stdout).

    python cluster/gpu_bench_train.py --steps 30 --micro-batch 8 --seq-len 2048

Needs torch + transformers (+ deepspeed; without it the same loop runs on plain torch AdamW and says so).
MFU = achieved model FLOPs / the GPU's dense bf16 peak, with model FLOPs per token = 6 N + 12 L d T (the
PaLM appendix formula: weights forward+backward, plus attention).
"""

from __future__ import annotations

import argparse
import json
import os
import time

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    args = p.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=args.seq_len)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).cuda()
    model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    try:
        import deepspeed

        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}.items():
            os.environ.setdefault(k, v)
        ds_cfg = {"train_micro_batch_size_per_gpu": args.micro_batch, "gradient_accumulation_steps": 1,
                  "bf16": {"enabled": True}, "zero_optimization": {"stage": 2, "overlap_comm": True},
                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-5}}, "steps_per_print": 10**9}
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_cfg)
        step = lambda loss: (engine.backward(loss), engine.step())
        forward, mode = engine, "deepspeed ZeRO-2 bf16"
    except ImportError:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        step = lambda loss: (loss.backward(), opt.step(), opt.zero_grad(set_to_none=True))
        forward, mode = model, "plain torch AdamW bf16 (deepspeed not installed)"
    ids = torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq_len), device="cuda")
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        step(forward(input_ids=ids, labels=ids).loss)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens_per_s = args.steps * args.micro_batch * args.seq_len / seconds
    flops_per_token = 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq_len
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    print(json.dumps({
        "benchmark": "train_gpu", "device": name, "mode": mode, "params": n_params, "seq_len": args.seq_len,
        "micro_batch": args.micro_batch, "steps": args.steps, "tokens_per_s": round(tokens_per_s, 1),
        "model_tflops": round(tokens_per_s * flops_per_token / 1e12, 1),
        "mfu": round(tokens_per_s * flops_per_token / (peak * 1e12), 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "note": "gradient checkpointing on: its recomputed forward is not counted in MFU",
    }, indent=2))


if __name__ == "__main__":
    main()
