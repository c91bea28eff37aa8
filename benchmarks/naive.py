"""The annotation algorithm written the way a competent first version would be: one text, one request at a
time, exact start probabilities at every position, a KV-cached ``generate`` per position, one tool call at a
time, a full-length forward for every variant of every candidate.

It is the benchmark's baseline (``python -m jobs.bench annotate``, on the transformers engine and on the vLLM
engine) and a readable statement of the method: the fast stages must keep exactly the calls this keeps.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from toolformer.annotate.filtering import filter_call, weighted_loss
from toolformer.annotate.positions import choose
from toolformer.annotate.sampling import char_start, start_token
from toolformer.calls import Call, clean_field, linearize, parse_call
from toolformer.config import RunConfig
from toolformer.corpus import TextChunk
from toolformer.engine.base import Engine, Sample
from toolformer.prompts import load_prompt, render_prompt
from toolformer.seeds import derive_seed
from toolformer.tools import ToolRequest, build_tool, canonical_name, tool_class


def naive_positions(engine: Engine, prompt_ids: list[int], x_ids: list[int], tau_s: float, k: int) -> list[tuple[int, float]]:
    """Exact p_i at every position of one text: one forward over P(x) + x where the engine's probabilities are
    exact (transformers), else one exact request per position (vLLM: the next token's log-probs)."""
    probs = engine.start_probs([prompt_ids + x_ids], [len(prompt_ids)])[0]
    p = probs.lower.copy()
    for j in np.flatnonzero(~probs.exact):
        p[j] = float(np.exp(engine.token_logprobs_after([prompt_ids + x_ids[:j]], engine.start_ids)).sum())
    return choose(p, tau_s, k)


def naive_sample(engine: Engine, prompt: list[int], n: int, max_tokens: int, temperature: float, seed: int) -> list[Sample]:
    """``generate`` for one prompt with ``n`` return sequences."""
    return engine.sample([prompt], n=n, max_tokens=max_tokens, stop="]", temperature=temperature, seeds=[seed])[0]


def naive_score(engine: Engine, cfg: RunConfig, tool: str, x_ids: list[int], candidates: list[dict]) -> list[dict]:
    """L(ε) from one forward over the text, then two full-length forwards (e(c, ε) and e(c, r)) per call."""
    quote = tool_class(tool).quote_input
    sep = cfg.annotate.prefix_separator
    eps = engine.sequence_logprobs([engine.doc_start + x_ids], [len(engine.doc_start)])[0]
    tau_f = cfg.tool_params(tool).tau_f
    out = []
    for cand in candidates:
        call = Call(tool, cand["input"], cand["result"])
        losses = []
        for with_result in (False, True):
            text = linearize(call, with_result=with_result, quote_input=quote, no_result_form=cfg.annotate.no_result_form)
            prefix = engine.doc_start + engine.encode(text + sep)
            lp = engine.sequence_logprobs([prefix + x_ids], [len(prefix)])[0]
            losses.append(weighted_loss(lp, cand["position"]))
        l_none = weighted_loss(eps, cand["position"])
        gain, kept = filter_call(l_none, losses[0], losses[1], tau_f)
        out.append(dict(loss_none=l_none, loss_call_only=losses[0], loss_call_result=losses[1], gain=gain, kept=kept))
    return out


def naive_annotate(engine: Engine, cfg: RunConfig, texts: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """Every text (TEXTS rows) and tool, one at a time: rows with ``positions`` and ``candidates`` (sampled,
    executed, scored), and the seconds spent per stage."""
    seconds: dict[str, float] = defaultdict(float)
    tools = {canonical_name(t): build_tool(t, **cfg.annotate.tool_options.get(canonical_name(t), {}))
             for t in cfg.annotate.tools}
    for tool in tools.values():
        tool.setup()
    rows = []
    for t in texts:
        chunk = TextChunk(**{k: t[k] for k in ("text_id", "doc_id", "chunk", "url", "date", "title", "text")})
        x_ids, offsets = engine.encode_with_offsets(t["text"])
        for name, tool in tools.items():
            t0 = time.perf_counter()
            decision = tool_class(name).select(chunk, cfg.corpus, cfg.seed)
            seconds["select"] += time.perf_counter() - t0
            row = {"text_id": t["text_id"], "tool": name, "positions": [], "candidates": []}
            rows.append(row)
            params = cfg.tool_params(name)
            prompt = engine.encode(render_prompt(load_prompt(name, params.prompt_path), t["text"]))
            if not decision.passed or not x_ids or len(prompt) + len(x_ids) > cfg.engine.max_model_len - params.max_call_tokens - 1:
                continue
            t0 = time.perf_counter()
            picks = naive_positions(engine, prompt, x_ids, params.tau_s, params.top_k)
            row["positions"] = [j for j, _ in picks]
            for j, _ in picks:
                request = prompt + x_ids[:j] + [start_token(engine, t["text"], offsets, j)]
                seen = set()
                for s in naive_sample(engine, request, params.num_samples, params.max_call_tokens, params.temperature,
                                      derive_seed(cfg.seed, t["text_id"], name, j)):
                    call = parse_call("[" + s.text + "]", [name]) if s.closed else None
                    if call is not None and call.input not in seen:
                        seen.add(call.input)
                        row["candidates"].append({"position": j, "input": call.input,
                                                  "char_start": char_start(t["text"], offsets, j)})
            seconds["sample"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for c in row["candidates"]:
                result = tool([ToolRequest(c["input"], decision.context)])[0]
                c["result"] = clean_field(result) if result else None
            seconds["execute"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            executed = [c for c in row["candidates"] if c["result"] is not None]
            for c, scored in zip(executed, naive_score(engine, cfg, name, x_ids, executed)):
                c.update(scored)
                if c["kept"] and name == "MT" and c["input"] not in t["text"][: c["char_start"]]:
                    c["kept"] = False
            seconds["score"] += time.perf_counter() - t0
    return rows, dict(seconds)
