"""``python -m jobs.bench eval``: batched tool-using decoding against one input at a time."""

from __future__ import annotations

import time

from benchmarks.harness import REPO, finish
from toolformer.paths import shared_data

RESULTS = REPO / "benchmarks" / "results" / "eval.json"


def check(result: dict) -> dict[str, bool]:
    """The enforced checks: examples were run, and batching changed no output (greedy decoding, same engine)."""
    n = result.get("of") or 0
    return {"examples_run": n > 0 and result.get("examples") == n,
            "batched_outputs_equal_one_at_a_time": n > 0 and result.get("same_outputs") == n}


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
    result = {
        "benchmark": "eval", "examples": len(examples), "tasks": args.tasks, "mode": "base model, tools via prompt, k=10",
        "batched_examples_per_s": round(len(examples) / t_batched, 2),
        "one_at_a_time_examples_per_s": round(len(examples) / t_single, 2),
        "speedup": round(t_single / t_batched, 2), "same_outputs": same, "of": len(examples),
        "examples_with_a_call": sum(bool(d.calls) for d in batched),
    }
    if same < len(examples):
        result["first_difference"] = next({"prompt_tail": p[-200:], "batched": a.text, "one_at_a_time": b.text}
                                          for p, a, b in zip(prompts, batched, single) if a.text != b.text)
    return finish(result, check(result), args.out)


def add_arguments(ev) -> None:
    ev.add_argument("--tasks", nargs="*", default=["svamp", "arithmetic", "dateset", "lama_trex"])
    ev.add_argument("--per-task", type=int, default=16)
    ev.add_argument("--out", default=str(RESULTS), help="where the JSON is written too ('' for nowhere)")
