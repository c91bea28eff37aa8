"""The pipeline's savings keep the method exact, on the real model and engine: pruning by L(ε) keeps exactly the
calls found without it; constrained call syntax makes every sample a well-formed call on both engines."""

from __future__ import annotations

import pyarrow as pa
import pytest

from toolformer.annotate.pipeline import annotate_texts, load_texts
from toolformer.calls import parse_call
from toolformer.config import load_config
from toolformer.schemas import TEXTS
from toolformer.tools import tool_class


@pytest.fixture(scope="module")
def small(shared_data):
    return [f"corpus.paths=[{shared_data / 'webtext' / 'c4_sample_1000.jsonl.gz'}]", "corpus.limit=2",
            "corpus.max_text_tokens=96", "engine.top_logprobs=20", "annotate.tools=[Calculator,Calendar]",
            "annotate.per_tool.Calculator.top_k=6", "annotate.per_tool.Calculator.num_samples=2",
            "annotate.per_tool.Calendar.tau_s=0.0", "annotate.per_tool.Calendar.top_k=4",
            "annotate.per_tool.Calendar.num_samples=2"]


def _run(vllm_engine, overrides):
    cfg = load_config(None, overrides)
    texts, _ = load_texts(cfg, vllm_engine.tokenizer)
    work, _ = annotate_texts(pa.Table.from_pylist(texts, schema=TEXTS), cfg, vllm_engine)
    return work.to_pylist()


def _kept(rows):
    return {(r["text_id"], r["tool"], c["position"], c["input"]) for r in rows for c in r["candidates"] if c["kept"]}


def test_pruning_keeps_exactly_the_same_calls(vllm_engine, small):
    # τf 2 and a floor of 2 nats: ~20 % of positions fall below it on this model (2 % below the default 0.5)
    strict = [*small, "annotate.score_floor=2.0", "annotate.defaults.tau_f=2.0", "annotate.per_tool.Calculator.tau_f=2.0"]
    pruned = _run(vllm_engine, strict)
    full = _run(vllm_engine, [*strict, "annotate.optimizations.prune=false"])
    assert _kept(pruned) == _kept(full)
    assert sum(r["n_pruned"] for r in pruned) > 0, "nothing was pruned: the test would not show anything"
    assert sum(r["n_sampled_tokens"] for r in pruned) < sum(r["n_sampled_tokens"] for r in full)
    # where both sampled, they sampled the same calls (same seeds), and every gain is the same
    gains = lambda rows: {(r["text_id"], r["tool"], c["position"], c["input"]): c["gain"]  # noqa: E731
                          for r in rows for c in r["candidates"]}
    a, b = gains(pruned), gains(full)
    assert set(a) <= set(b)
    for key, g in a.items():
        assert (g is None) == (b[key] is None) and (g is None or abs(g - b[key]) < 1e-3), key


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
