"""Scoring throughput of the transformers engine on a GPU: ``HFEngine.sequence_logprobs`` (the path ScoreCalls
uses) over the sequences annotation scores, on a randomly initialized 1B-parameter Llama-shaped model in bf16.
JSON on stdout. The device check of the scoring stage (no vLLM in the GPU image; vLLM is the production path).

    python cluster/gpu_bench_score.py --tokenizer .gpu_carry/tokenizer --texts 256

The workload mirrors scoring: per text of ``--text-tokens`` tokens, ``L(ε)`` over the whole text and, per
candidate, a call prefix (~14 tokens) followed by the text up to the candidate's position + 5 (``--candidates``
per text at random positions). MFU counts forward FLOPs only: 2 N + 4 L d T per token (T the sequence length:
an upper estimate for causal attention), against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the checkout's toolformer

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True, help="a tokenizer folder (the embedded model's)")
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--text-tokens", type=int, default=256)
    p.add_argument("--candidates", type=int, default=6)
    p.add_argument("--max-batch-tokens", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--smoke", action="store_true", help="a tiny model on CPU: checks the script, measures nothing")
    args = p.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from toolformer.engine.base import Engine
    from toolformer.engine.hf import HFEngine

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4) if args.smoke else \
        dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32)
    cfg = LlamaConfig(vocab_size=len(tok), num_key_value_heads=4, max_position_embeddings=4096, **size)
    device = "cpu" if args.smoke else "cuda"
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).to(device).eval()
    n_params = sum(q.numel() for q in model.parameters())
    engine = HFEngine.__new__(HFEngine)  # the engine's own code, with this model in place of a checkpoint
    Engine.__init__(engine, tok)
    engine.model, engine.device, engine.model_path, engine.dtype = model, device, "random-llama-1b", "bfloat16"
    engine.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    rng = random.Random(0)
    seqs, starts = [], []
    for _ in range(args.texts):
        x = [rng.randrange(len(tok)) for _ in range(args.text_tokens)]
        seqs.append(engine.doc_start + x)
        starts.append(len(engine.doc_start))
        for _ in range(args.candidates):
            prefix = engine.doc_start + [rng.randrange(len(tok)) for _ in range(14)]
            need = min(len(x), rng.randrange(1, len(x)) + 5)
            seqs.append(prefix + x[:need])
            starts.append(len(prefix))
    tokens = sum(map(len, seqs))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    results = []
    for budget in args.max_batch_tokens:
        engine.max_batch_tokens = budget
        engine.sequence_logprobs(seqs[:64], starts[:64])  # warm-up
        sync()
        t0 = time.perf_counter()
        out = engine.sequence_logprobs(seqs, starts)
        sync()
        seconds = time.perf_counter() - t0
        assert len(out) == len(seqs) and all(len(o) == len(s) - st for o, s, st in zip(out, seqs, starts))
        mean_len = tokens / len(seqs)
        flops_per_token = 2 * n_params + 4 * cfg.num_hidden_layers * cfg.hidden_size * mean_len
        tps = tokens / seconds
        results.append({"max_batch_tokens": budget, "seconds": round(seconds, 2), "tokens_per_s": round(tps, 1),
                        "model_tflops": round(tps * flops_per_token / 1e12, 1),
                        "mfu": round(tps * flops_per_token / (peak * 1e12), 4) if peak else None})
    print(json.dumps({
        "benchmark": "score_gpu", "device": name, "engine": "transformers (HFEngine.sequence_logprobs), bf16",
        "params": n_params, "vocab": len(tok), "sequences": len(seqs), "tokens": tokens,
        "mean_sequence_tokens": round(tokens / len(seqs), 1), "runs": results,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "note": "padded batches, no KV sharing between sequences with a common prefix (vLLM's prefix cache does that)",
    }, indent=2))


if __name__ == "__main__":
    main()
