"""The pipeline's savings keep the method exact, on the real model and engine: pruning by L(ε) removes positions
and keeps exactly the calls found without it (on texts where both happen); constrained call syntax makes every
sample a well-formed call on both engines."""

from __future__ import annotations

import pyarrow as pa
import pytest

from toolformer.annotate.pipeline import annotate_texts
from toolformer.calls import parse_call
from toolformer.config import load_config
from toolformer.schemas import TEXTS
from toolformer.tools import tool_class


# A text where pruning has something to remove and the filter something to keep (benchmarks/texts.py): an ASDiv
# word problem with a worked four-digit answer, "...with 283 people waiting... 5 entrances...\nAnswer: 283 * 5 =
# 1415". Measured on SmolLM2-135M fp32 (default floor 0.5 nats = the Calculator's τf): of the 9 likeliest
# positions, the space before the restated "283" has L(ε) = 0.41 (pruned), and [Calculator(1415 / 5) -> 283]
# before the question's "283" gains 0.81 (kept). Constrained syntax: every sample is a call, so 2 samples per
# position find it (pruning does not depend on the syntax). The benchmark's pruning ablation runs 12 such problems.
PROBLEMS = ["nluds-0452"]
SETTINGS = ["engine.top_logprobs=20", "annotate.tools=[Calculator]", "annotate.call_syntax=constrained",
            "annotate.per_tool.Calculator.top_k=9", "annotate.per_tool.Calculator.num_samples=2"]


@pytest.fixture(scope="module")
def evidence_texts(shared_data):
    from benchmarks.texts import worked_problems

    texts = worked_problems(len(PROBLEMS), shared_data, ids=PROBLEMS)
    assert len(texts) == len(PROBLEMS)
    return texts


def _run(vllm_engine, texts, overrides):
    cfg = load_config(None, overrides)
    work, _ = annotate_texts(pa.Table.from_pylist(texts, schema=TEXTS), cfg, vllm_engine)
    return work.to_pylist()


def _kept(rows):
    return {(r["text_id"], r["tool"], c["position"], c["input"]) for r in rows for c in r["candidates"] if c["kept"]}


def _gains(rows):
    return {(r["text_id"], r["tool"], c["position"], c["input"]): c["gain"] for r in rows for c in r["candidates"]}


def test_pruning_keeps_exactly_the_same_calls(vllm_engine, evidence_texts):
    pruned = _run(vllm_engine, evidence_texts, SETTINGS)
    full = _run(vllm_engine, evidence_texts, [*SETTINGS, "annotate.optimizations.prune=false"])
    assert all(r["status"] == "annotated" for r in pruned + full)
    # the evidence is real: positions were pruned and calls were kept
    assert sum(r["n_pruned"] for r in pruned) > 0, "nothing was pruned: the test would not show anything"
    assert sum(r["n_pruned"] for r in full) == 0
    kept = _kept(pruned)
    assert kept, "no call was kept: the test would not show anything"
    # the same positions were selected; pruning only skipped sampling at some of them
    assert [r["positions"] for r in pruned] == [r["positions"] for r in full]
    assert sum(r["n_sampled_tokens"] for r in pruned) < sum(r["n_sampled_tokens"] for r in full)
    # exactly the same kept calls (text, tool, position, call), with the same gains
    assert kept == _kept(full)
    a, b = _gains(pruned), _gains(full)
    assert set(a) <= set(b)
    for key, g in a.items():
        assert (g is None) == (b[key] is None) and (g is None or abs(g - b[key]) < 1e-3), key
    # what the run without pruning sampled at the pruned positions gains less than the floor (0.5 nats)
    sampled = {key[:3] for key in a}
    extra = {key: g for key, g in b.items() if key[:3] not in sampled}
    assert extra and all(g is None or g < 0.5 for g in extra.values()), extra


def test_constrained_samples_are_well_formed_calls_on_both_engines(vllm_engine, model_path):
    from toolformer.engine.hf import HFEngine

    text = "The shop sold 120 shirts on Monday and 80 on Tuesday, 200 shirts in two days."
    prompt = vllm_engine.encode(f"Add a calculator call: {text}\nOutput: The shop sold 120 shirts on Monday and 80 "
                                "on Tuesday,") + [vllm_engine.start_variants.get(" [", vllm_engine.start_ids[0])]
    hf = HFEngine(model_path, "float32")
    for tool in ("Calculator", "Calendar", "QA"):
        regex = tool_class(tool).call_regex()
        for engine, n in ((vllm_engine, 6), (hf, 2)):
            samples = engine.sample([prompt], n=n, max_tokens=40, stop="]", temperature=1.0, seeds=[3], regex=regex)[0]
            assert all(s.closed for s in samples), (engine.backend, tool, samples)
            assert all(parse_call("[" + s.text + "]", [tool]) is not None for s in samples), (engine.backend, tool, samples)
