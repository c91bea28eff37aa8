"""The annotation algorithm written the way a competent first version would be: transformers, one
sequence at a time, a KV-cached ``generate`` per position, a full-length forward per candidate.

It is the benchmark's baseline (``python -m jobs.bench annotate``) and a readable statement of the method:
the fast stages must keep exactly the calls this keeps.
"""

from __future__ import annotations

from toolformer.annotate.filtering import filter_call, weighted_loss
from toolformer.annotate.positions import choose
from toolformer.calls import Call, linearize
from toolformer.config import RunConfig
from toolformer.engine.base import Engine, Sample
from toolformer.tools import tool_class


def naive_positions(engine: Engine, prompt_ids: list[int], x_ids: list[int], tau_s: float, k: int) -> list[tuple[int, float]]:
    """One full forward over P(x) + x; exact p_i from the whole vocabulary."""
    probs = engine.start_probs([prompt_ids + x_ids], [len(prompt_ids)])[0]
    return choose(probs.lower, tau_s, k)


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
