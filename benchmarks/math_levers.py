"""``python -m jobs.bench math_levers``: what each lever does to the Calculator's kept calls on the math corpus.

``--problems`` problems of ``jobs/configs/math_corpus.yaml``'s corpus from ``--offset`` (decontaminated, as the
experiment reads them; by default problems 601-680, the experiment's round-2 slice, never trained on in round 1), the base model in the experiment's dtype, the same seed, one engine. Levers, one at a time from the
experiment's setting (operands syntax, k = 5 positions, m = 5 samples):
- call syntax: ``free`` (the paper) / ``constrained`` (a well-formed call) / ``operands`` (and the operands are
  numbers the text wrote before the call);
- more positions (k = 10) and more samples (m = 10): more samples where a call can matter.
- the annotator: the same problems, operands syntax, annotated by the experiment's round-1 finetuned model
  (``--round-model``; by default ``runs/math_corpus``'s round-1 checkpoint when that run exists). The experiment's
  round 2 annotates a fresh slice (harder problems), so its own figures mix the model's change with the slice's.

Per setting: sampled tokens, parse rate, kept calls at τf = 0.5 and per 1,000 sampled tokens, and where the chain
breaks at the answer (``Answer: N``): in how many problems the answer position was among the k chosen, a sampled
call there returned N, and a call there was kept. Checks (exit 1 when one fails): the same positions under every
syntax (they do not depend on it), every closed constrained or operands sample parses, every operands call uses
only numbers written before it.
"""

from __future__ import annotations

import json
import os
import re

from benchmarks.annotate import _pipeline, _summary
from benchmarks.harness import REPO, finish

LEVERS = {  # name → overrides on top of the experiment's settings
    "free": ["annotate.call_syntax=free"],
    "constrained": ["annotate.call_syntax=constrained"],
    "operands": [],
    "operands_k10": ["annotate.per_tool.Calculator.top_k=10"],
    "operands_m10": ["annotate.per_tool.Calculator.num_samples=10"],
}


def _answer_view(rows: list[dict], texts: dict[str, str]) -> dict:
    """At the answer position (the first token of N in ``Answer: N``): chosen? a right result sampled? kept?"""
    from toolformer.annotate.sampling import char_start

    out = {"annotated": 0, "answer_position_chosen": 0, "right_result_sampled": 0, "kept_at_answer": 0,
           "kept_elsewhere": 0}
    for r in rows:
        if r["status"] != "annotated" or not r["positions"]:
            continue
        text = texts[r["text_id"]]
        at = text.rindex("Answer: ") + len("Answer: ")
        gold = text[at:].strip()
        out["annotated"] += 1
        here = [c for c in r["candidates"] if c["char_start"] == at]
        out["answer_position_chosen"] += at in [char_start(text, r["x_offsets"], p) for p in r["positions"]]
        out["right_result_sampled"] += any(_same(c.get("result"), gold) for c in here)
        out["kept_at_answer"] += any(c["kept"] for c in here)
        out["kept_elsewhere"] += any(c["kept"] and c["char_start"] != at for c in r["candidates"])
    return out


def _same(result: str | None, gold: str) -> bool:
    try:
        return result is not None and abs(float(result) - float(gold)) < 1e-6
    except ValueError:
        return False


def _operands_ok(rows: list[dict], texts: dict[str, str]) -> bool:
    from toolformer.tools.calculator import text_operands

    for r in rows:
        for c in r["candidates"]:
            allowed = set(text_operands(texts[r["text_id"]][: c["char_start"]]))
            if allowed and not set(re.findall(r"\d+(?:\.\d+)?", c["input"])) <= allowed:
                return False
    return True


def run(args) -> dict:
    from toolformer.annotate.pipeline import load_texts
    from toolformer.config import load_config
    from toolformer.engine import build_engine

    base = [f"corpus.limit={args.problems}", f"corpus.offset={args.offset}", *args.overrides]
    cfg = load_config(args.config, base)
    engine = build_engine(cfg)
    engine.sequence_logprobs([engine.encode("Warm up.")], [1])
    try:
        texts, corpus = load_texts(cfg, engine.tokenizer)
        by_id = {t["text_id"]: t["text"] for t in texts}
        result: dict = {"benchmark": "math_levers", "config": str(args.config), "problems": corpus["docs_read"],
                        "offset": args.offset,
                        "docs_skipped": corpus["docs_skipped"]["by_reason"], "engine": engine.describe(),
                        "threads": len(os.sched_getaffinity(0)), "seed": cfg.seed, "levers": {}}
        checks = {"same_positions_every_syntax": True, "every_closed_constrained_sample_parses": True,
                  "operands_calls_use_the_texts_numbers": True}
        positions = {}
        for name, overrides in LEVERS.items():
            lcfg = load_config(args.config, [*base, *overrides])
            rows, secs, _ = _pipeline(texts, lcfg, engine)
            summary = _summary(rows).get("Calculator", {})
            result["levers"][name] = {"settings": {"call_syntax": lcfg.annotate.call_syntax,
                                                   **{k: v for k, v in vars(lcfg.tool_params("Calculator")).items()
                                                      if k in ("tau_s", "tau_f", "top_k", "num_samples")}},
                                      "seconds": round(secs, 1), **summary, "at_the_answer": _answer_view(rows, by_id)}
            if name in ("free", "constrained", "operands"):
                positions[name] = [r["positions"] for r in rows]
            if name != "free" and summary.get("closed") != summary.get("parsed"):
                checks["every_closed_constrained_sample_parses"] = False
            if name.startswith("operands"):
                checks["operands_calls_use_the_texts_numbers"] &= _operands_ok(rows, by_id)
        checks["same_positions_every_syntax"] = positions["free"] == positions["constrained"] == positions["operands"]
        round_model = args.round_model or _round1_checkpoint()
        if round_model:
            rcfg = load_config(args.config, [*base, f"model.name_or_path={round_model}"])
            engine.close()
            engine = build_engine(rcfg)
            rows, secs, _ = _pipeline(texts, rcfg, engine)
            summary = _summary(rows).get("Calculator", {})
            result["levers"]["operands_round1_model"] = {
                "settings": {"call_syntax": rcfg.annotate.call_syntax, "model": round_model},
                "seconds": round(secs, 1), **summary, "at_the_answer": _answer_view(rows, by_id)}
            checks["operands_calls_use_the_texts_numbers"] &= _operands_ok(rows, by_id)
        free = result["levers"]["free"].get("kept_per_1k_sampled_tokens")
        result["kept_per_1k_over_free"] = {
            n: (round(v["kept_per_1k_sampled_tokens"] / free, 2) if free else None) for n, v in result["levers"].items()}
    finally:
        engine.close()
    return finish(result, checks, args.out)


def _round1_checkpoint() -> str | None:
    marker = REPO / "runs" / "math_corpus" / "rounds" / "r1" / "steps" / "finetune.json"
    return json.loads(marker.read_text())["checkpoints"]["last"] if marker.exists() else None


def add_arguments(a) -> None:
    a.add_argument("--config", default=str(REPO / "jobs" / "configs" / "math_corpus.yaml"))
    a.add_argument("--problems", type=int, default=80, help="problems of the experiment's corpus")
    # 600: the experiment's round-2 slice, which the round-1 model (one of the levers) was not trained on
    a.add_argument("--offset", type=int, default=600, help="problems passed over first")
    a.add_argument("--round-model", default=None,
                   help="a finetuned model annotating the same problems (default: the experiment's round-1 checkpoint)")
    a.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "math_levers.json"),
                   help="where the JSON is written too ('' for nowhere)")
    a.add_argument("overrides", nargs="*")
