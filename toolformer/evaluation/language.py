"""When not to call, and language kept (issue 28): the false-call rate on held-out text with no arithmetic, and
the perplexity of a model on held-out plain web text (the paper's §4.4: finetuning on C* must not hurt it).

- False calls: prompts a model continues freely (32 tokens, tools allowed, the same top-k trigger as the tasks):
  ``webtext`` = the first ~60 words of C4 documents that the Calculator's own selection heuristic rejects (no
  three numbers where one is the sum, difference, product or quotient of two others, no ``=``/"equals"/"total
  of"...), ``lama`` = T-REx cloze prompts. The rate is the share of generations that write a Calculator call.
- Perplexity: C4 documents none of which is a false-call prompt, their first ``max_tokens`` tokens after the
  document start, exp(mean negative log-likelihood per token), on the engine the evaluation loaded.

The C4 sample is split once, by a seeded shuffle, into a false-call half and a perplexity half; nothing from it is
in any corpus the math experiment trains on.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path
from typing import Sequence

from toolformer.evaluation.tasks import Example

C4 = ("webtext", "c4_sample_1000.jsonl.gz")
FALSE_CALL_SETS = ("webtext", "lama")
PROMPT_WORDS = 60


def _c4_docs(data: Path) -> list[dict]:
    with gzip.open(Path(data).joinpath(*C4), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _halves(data: Path) -> tuple[list[dict], list[dict]]:
    """The C4 sample in a fixed seeded order, split in two: (false-call half, perplexity half)."""
    docs = _c4_docs(data)
    order = list(range(len(docs)))
    random.Random("c4-halves").shuffle(order)
    half = len(order) // 2
    return [docs[i] for i in order[:half]], [docs[i] for i in order[half:]]


def no_arithmetic(text: str) -> bool:
    """The Calculator's selection heuristic (DESIGN §1.3) would not pick this text: no arithmetic in it."""
    from toolformer.tools.heuristics import calculator_rule

    return calculator_rule(text, "false-call", random_keep=0.0) is None


def false_call_examples(data: Path, which: str, n: int, seed: int = 0,
                        tools: tuple[str, ...] = ("Calculator",)) -> list[Example]:
    """``n`` prompts of one false-call set (``webtext`` or ``lama``), kind ``text`` (no answer to score), that may
    call ``tools`` (the evaluation's tools: a model with several may call any of them where none helps)."""
    if which == "webtext":
        out = []
        for i, d in enumerate(_halves(data)[0]):
            prompt = " ".join(d["text"].split()[:PROMPT_WORDS])
            if len(prompt.split()) >= 20 and no_arithmetic(prompt):
                out.append(Example("false_call_webtext", str(i), prompt, [], "text", tuple(tools)))
        rng = random.Random(seed)
        return rng.sample(out, min(n, len(out)))
    if which == "lama":
        from toolformer.evaluation.tasks import lama_trex

        items = [e for e in lama_trex(Path(data)) if no_arithmetic(e.prompt)]
        picked = random.Random(seed).sample(items, min(n, len(items)))
        return [Example("false_call_lama", e.uid, e.prompt, [], "text", tuple(tools)) for e in picked]
    raise ValueError(f"unknown false-call set {which!r}; known: {', '.join(FALSE_CALL_SETS)}")


def false_call_rate(rows: Sequence[dict]) -> dict:
    """From generation rows (``calls`` as the decoder records them): prompts, the share (%) whose generation
    wrote a Calculator call (parsed as one, whether or not it returned a result), the share that wrote a call of
    any tool (``any_call_share``, per tool in ``calls_per_tool``), and the share where decoding started any call
    (``[`` among the top k, even if what followed was no call)."""
    n = len(rows)
    wrote = sum(any(c.get("tool") == "Calculator" for c in r.get("calls") or []) for r in rows)
    any_tool = sum(any(c.get("tool") for c in r.get("calls") or []) for r in rows)
    per_tool: dict[str, int] = {}
    for r in rows:
        for tool in {c.get("tool") for c in r.get("calls") or [] if c.get("tool")}:
            per_tool[tool] = per_tool.get(tool, 0) + 1
    started = sum(bool(r.get("calls")) for r in rows)
    pct = (lambda k: round(100 * k / n, 1) if n else None)
    return {"n": n, "calculator_call_share": pct(wrote), "any_call_share": pct(any_tool),
            "call_started_share": pct(started), "calculator_calls": wrote, "calls_per_tool": per_tool}


def perplexity_texts(data: Path, n: int) -> list[str]:
    """``n`` documents of the perplexity half of the C4 sample (never a false-call prompt), in a fixed order."""
    return [d["text"] for d in _halves(data)[1][:n]]


def perplexity(engine, texts: Sequence[str], max_tokens: int = 256) -> dict:
    """exp(mean NLL per token) of ``texts`` (each its first ``max_tokens`` tokens after the document start)."""
    seqs = []
    for t in texts:
        ids = engine.encode(t)[:max_tokens]
        if ids:
            seqs.append(engine.doc_start + ids)
    start = len(engine.doc_start)
    if not seqs:
        return {"texts": 0, "tokens": 0, "perplexity": None}
    lps = engine.sequence_logprobs(seqs, [start] * len(seqs))
    total = sum(float(-lp.sum()) for lp in lps)
    tokens = sum(len(lp) for lp in lps)
    return {"texts": len(seqs), "tokens": tokens, "perplexity": round(math.exp(total / tokens), 4)}
