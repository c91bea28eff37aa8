"""Control flow of position selection (with a fake engine whose numbers are given) and of the merge."""

import numpy as np
import pytest

from toolformer.annotate.positions import choose, needs_exact, select_positions
from toolformer.calls import find_calls
from toolformer.engine.base import StartProbs
from merge_reference import cap_per_tool, kept_calls, merge
from toolformer.cstar.augment import insert_calls


class BoundsEngine:
    """Gives top-k style bounds for known exact values; exact values on request, counting requests."""

    start_ids = [1, 2]

    def __init__(self, exact, known):
        self.exact, self.known, self.asked = exact, known, []

    def start_probs(self, seqs, starts, top_k=None):
        out = []
        for p, k in zip(self.exact, self.known):
            lower = np.where(k, p, 0.0)
            out.append(StartProbs(lower, np.where(k, p, 0.04)))  # unknown: bounded by 2 x 0.02
        return out

    def token_logprobs_after(self, prefixes, token_ids):
        rows = []
        for prefix in prefixes:
            b, j = prefix[0], len(prefix) - 1  # the fake sequences encode (text index, position)
            self.asked.append((b, j))
            rows.append(np.log([self.exact[b][j] / 2, self.exact[b][j] / 2]))
        return np.array(rows)


def test_choose():
    p = np.array([0.1, 0.5, 0.05, 0.5, 0.2])
    assert choose(p, 0.05, 3) == [(1, 0.5), (3, 0.5), (4, 0.2)]  # strict > τs; ties keep text order
    assert choose(p, 0.6, 3) == []


def test_bounds_decide_most_positions_and_exact_values_settle_the_rest():
    exact = [np.array([0.30, 0.01, 0.035, 0.02, 0.12, 0.001])]
    known = [np.array([True, False, False, False, True, False])]
    eng = BoundsEngine(exact, known)
    seqs = [[0, 9, 9, 9, 9, 9, 9]]  # seq[0] = text index; start 1 -> position j = len(prefix) - 1
    got, stats = select_positions(eng, seqs, [1], tau_s=0.03, k=5)
    assert got == [[(0, 0.30), (4, 0.12), (2, pytest.approx(0.035))]]
    # positions 1, 2, 3, 5 have bounds 0.04 > 0.03 -> refined; nothing else
    assert sorted(j for _, j in eng.asked) == [1, 2, 3, 5]
    assert stats["positions_refined"] == 4 and stats["positions_scanned"] == 6


def test_k_best_need_not_refine_what_cannot_reach_them():
    exact = [np.array([0.30, 0.01, 0.035, 0.20, 0.12])]
    known = [np.array([True, False, False, True, True])]
    eng = BoundsEngine(exact, known)
    got, _ = select_positions(eng, [[0, 9, 9, 9, 9, 9]], [1], tau_s=0.0, k=3)
    assert got == [[(0, 0.30), (3, 0.20), (4, 0.12)]]
    assert eng.asked == []  # every unknown is bounded by 0.04 < the 3rd best known 0.12


def test_needs_exact():
    p = StartProbs(np.array([0.2, 0.0, 0.0]), np.array([0.2, 0.06, 0.01]))
    assert needs_exact(p, 0.05, 5).tolist() == [1]


def _cand(tool, pos, char, gain, inp, res, kept=True):
    return dict(tool=tool, position=pos, char_start=char, gain=gain, input=inp, result=res, kept=kept)


def test_insert_calls_one_per_position_larger_gain_wins():
    text = "Out of 1400 participants, 400 (or 29%) passed."
    at = text.index("29%")
    cands = [
        _cand("Calculator", 9, at, 1.5, "400 / 1400", "0.29"),
        _cand("Calculator", 9, at, 0.7, "400 / 100", "4"),
        _cand("Calendar", 0, 0, 0.9, "", "Today is Monday, January 30, 2023."),
    ]
    out, calls = insert_calls(text, cands)
    assert out == ("[Calendar() -> Today is Monday, January 30, 2023.] Out of 1400 participants, 400 "
                   "(or [Calculator(400 / 1400) -> 0.29] 29%) passed.")
    assert [c["input"] for c in calls] == ["", "400 / 1400"]
    for c in calls:
        assert out[c["char_start"]] == "[" and out[c["char_end"] - 1] == "]"
    assert [s.call.input for s in find_calls(out, ["Calculator", "Calendar"])] == ["", "400 / 1400"]


def test_merge_drops_texts_without_calls_and_caps_per_tool():
    rows = [
        dict(text_id="a", tool="Calculator", candidates=[dict(_cand("Calculator", 1, 3, 2.0, "1 + 1", "2"))]),
        dict(text_id="b", tool="Calculator", candidates=[dict(_cand("Calculator", 1, 3, 1.0, "2 + 2", "4"))]),
        dict(text_id="c", tool="Calculator", candidates=[dict(_cand("Calculator", 1, 3, 3.0, "3 + 3", "6", kept=False))]),
        dict(text_id="b", tool="Calendar", candidates=[dict(_cand("Calendar", 0, 0, 1.2, "", "Today is Friday, March 3, 2017."))]),
    ]
    texts = {t: dict(doc_id=t.upper(), text="abc def ghi") for t in "abc"}
    assert set(kept_calls(rows)) == {"a", "b"}
    capped = cap_per_tool(kept_calls(rows), 1)
    assert {t: [c["tool"] for c in v] for t, v in capped.items()} == {"a": ["Calculator"], "b": ["Calendar"]}
    out = merge(rows, texts, max_per_tool=1)
    assert [r["text_id"] for r in out] == ["a", "b"]
    assert out[0]["text"] == "abc[Calculator(1 + 1) -> 2] def ghi"  # glued to "abc": no space before it
    assert all(r["n_calls"] == 1 for r in out)


def test_variant_bounds_never_treat_a_missing_variant_as_zero():
    import math

    from toolformer.engine.vllm_engine import variant_bounds

    lp = math.log
    full = {7: (lp(0.5), 1), 8: (lp(0.2), 2), 9: (lp(0.1), 3), 3: (lp(0.01), None)}  # top 3 + the actual token
    assert variant_bounds(full, [8], k=3) == (0.2, 0.2)  # found: exact
    lower, upper = variant_bounds(full, [8, 4], k=3)  # 4 missing from a full top 3: at most the 3rd, 0.1
    assert lower == pytest.approx(0.2) and upper == pytest.approx(0.3)
    short = {7: (lp(0.5), 1), 8: (lp(0.2), 2)}  # fewer entries than the 20 asked for
    lower, upper = variant_bounds(short, [4], k=20)
    assert lower == 0.0 and upper == pytest.approx(0.3)  # the uncovered mass, not zero


def test_table_two_leaves_out_mt_calls_removed_by_the_post_filter():
    import pyarrow as pa

    from toolformer.report import funnel
    from toolformer.schemas import ANNOTATIONS

    cands = [dict(position=3, gain=1.5, kept=False, error="mt_input_after_call"),
             dict(position=5, gain=1.2, kept=True, error=None)]
    row = dict(text_id="t", doc_id="d", tool="MT", status="annotated", positions=[3, 5], n_kept=1, candidates=cands)
    f = funnel(pa.Table.from_pylist([row], schema=ANNOTATIONS))["MT"]
    assert f["kept_calls_tau_0.5"] == f["kept_calls_tau_1.0"] == 1 and f["kept_calls_tau_2.0"] == 0
