"""Tool-using decoding on the real embedded model through the vLLM engine, checked against the engine's own
top-k and an independent transformers forward."""

from __future__ import annotations

import pytest
import torch

from toolformer.inference import DecodeConfig, ToolDecoder
from toolformer.prompts import load_prompt, render_prompt
from toolformer.tools import ToolRequest, build_tool

TEXTS = [
    "The shop had 36 boxes of 5 apples each, 180 apples in all.",
    "Of the 250 students, 125 passed, which is half of the class.",
    "We drove 120 km on Monday and 80 km on Tuesday, 200 km in total.",
    "The hall seats 1,200 people; 300 seats were empty, so 900 came.",
]


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    template = load_prompt("Calculator")
    return [render_prompt(template, t) + "\n" for t in TEXTS]


@pytest.fixture(scope="module")
def tools():
    calc = build_tool("Calculator")
    calc.setup()
    return {"Calculator": calc}


def _decode(engine, tools, prompts, **kw):
    cfg = DecodeConfig(**{"max_new_tokens": 24, "stop": ["\n"], **kw})
    return ToolDecoder(engine, tools, cfg)(prompts)


def test_a_real_result_is_inserted_and_decoding_goes_on(vllm_engine, tools, prompts):
    out = _decode(vllm_engine, tools, prompts, top_k=10)
    called = [d for d in out if d.calls and d.calls[0]["ok"]]
    assert called, [d.text for d in out]
    for d in called:
        c = d.calls[0]
        assert c["result"] == tools["Calculator"]([ToolRequest(c["input"])])[0]  # the tool's real answer
        assert f"-> {c['result']}]" in d.text
        assert d.text.split("]", 1)[1].strip(), "decoding stopped at the call instead of going on"


def test_trigger_fires_exactly_when_start_is_in_the_top_k(vllm_engine, reference_model, tools, prompts):
    k = 10
    starts = set(vllm_engine.start_ids)
    out = _decode(vllm_engine, tools, prompts, top_k=k)
    greedy = vllm_engine.greedy([vllm_engine.encode(p) for p in prompts], max_tokens=24, top_k=k, stop=["\n"])
    for p, d, g in zip(prompts, out, greedy):
        first = next((j for j, top in enumerate(g.top_ids) if starts & set(top[:k])), None)
        if first is None:
            assert not d.calls
            continue
        assert d.calls, f"[ was in the top {k} at step {first} but no call started"
        prefix = vllm_engine.encode(p) + g.token_ids[:first]
        assert d.text.startswith(vllm_engine.tokenizer.decode(g.token_ids[:first]))  # the call begins at step `first`
        # independently: the transformers model ranks a start token within the top k there, and at no step before
        with torch.no_grad():
            logits = reference_model(input_ids=torch.tensor([prefix])).logits[0]
        n = len(vllm_engine.encode(p))
        for j in range(first + 1):
            top = set(torch.topk(logits[n - 1 + j], k).indices.tolist())
            assert bool(starts & top) == (j == first), (j, first)


def test_k_1_is_plain_greedy_unless_the_start_is_the_argmax(vllm_engine, tools, prompts):
    out = _decode(vllm_engine, tools, prompts, top_k=1)
    greedy = vllm_engine.greedy([vllm_engine.encode(p) for p in prompts], max_tokens=24, top_k=1, stop=["\n"])
    for d, g in zip(out, greedy):
        if not (set(vllm_engine.start_ids) & set(g.token_ids)):
            assert not d.calls and d.text == g.text


def test_disabled_mode_never_calls(vllm_engine, tools, prompts):
    for d in _decode(vllm_engine, tools, prompts, top_k=10, disabled=True):
        assert not d.calls and "[" not in d.text


def test_one_call_cap_holds(vllm_engine, tools, prompts):
    many = prompts * 2
    for d in _decode(vllm_engine, tools, many, top_k=10, max_calls=1, max_new_tokens=40):
        assert len(d.calls) <= 1
    # tools not allowed for an input are never called
    out = ToolDecoder(vllm_engine, tools, DecodeConfig(max_new_tokens=24, stop=["\n"]))(prompts, allowed=[()] * len(prompts))
    assert all(not d.calls for d in out)


def test_transformers_reference_decodes_the_same(model_path, tools, prompts, vllm_engine):
    from toolformer.engine.hf import HFEngine

    hf = HFEngine(model_path, "float32")
    a = _decode(hf, tools, prompts[:2], top_k=10)
    b = _decode(vllm_engine, tools, prompts[:2], top_k=10)
    assert [d.text for d in a] == [d.text for d in b]
    assert [[c["input"] for c in d.calls] for d in a] == [[c["input"] for c in d.calls] for d in b]
