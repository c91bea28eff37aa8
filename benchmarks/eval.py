"""``python -m jobs.bench eval``: batched tool-using decoding against one input at a time."""

from __future__ import annotations

import time

from benchmarks.harness import REPO
from toolformer.paths import shared_data


def run(args) -> dict:
    """Batched tool-using decoding against one input at a time: same engine, same inputs, same outputs."""
    from toolformer.config import load_config
    from toolformer.engine import build_engine
    from toolformer.evaluation.evaluate import build_tools
    from toolformer.evaluation.runner import format_prompt, tool_use_prompt
    from toolformer.evaluation.tasks import load_task
    from toolformer.inference import DecodeConfig, ToolDecoder

    cfg = load_config(REPO / "jobs" / "configs" / "default.yaml", ["engine.top_logprobs=20"])
    examples = []
    for task in args.tasks:
        examples += load_task(task, shared_data(), limit=args.per_task, seed=0)
    prompts = [tool_use_prompt() + format_prompt(e) for e in examples]
    engine = build_engine(cfg)
    decoder = ToolDecoder(engine, build_tools(cfg), DecodeConfig(max_new_tokens=32, top_k=10, stop=["\n"]))
    allowed = [e.tools for e in examples]
    ctx = [{"date": e.meta.get("today"), "allow_today": True} for e in examples]
    decoder(prompts[:2], allowed[:2], ctx[:2])  # warm-up
    t0 = time.perf_counter()
    batched = decoder(prompts, allowed, ctx)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [decoder([p], [a], [c])[0] for p, a, c in zip(prompts, allowed, ctx)]
    t_single = time.perf_counter() - t0
    engine.close()
    same = sum(a.text == b.text for a, b in zip(batched, single))
    return {
        "benchmark": "eval", "examples": len(examples), "tasks": args.tasks, "mode": "base model, tools via prompt, k=10",
        "batched_examples_per_s": round(len(examples) / t_batched, 2),
        "one_at_a_time_examples_per_s": round(len(examples) / t_single, 2),
        "speedup": round(t_single / t_batched, 2), "same_outputs": same, "of": len(examples),
        "examples_with_a_call": sum(bool(d.calls) for d in batched),
    }


def add_arguments(ev) -> None:
    ev.add_argument("--tasks", nargs="*", default=["svamp", "arithmetic", "dateset", "lama_trex"])
    ev.add_argument("--per-task", type=int, default=16)
