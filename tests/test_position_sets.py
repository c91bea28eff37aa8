"""Several position settings from one annotation (issue 33, item 2b): ``annotate.position_sets`` scans the start
probabilities once, chooses each set's k best with its own mask and samples at the union; ``merge.position_set``
takes one set's candidates. Each setting must get exactly what annotating it alone gives: the selection logic on a
fake engine (fast), then a real annotation on the embedded model, union against each setting alone (fp32)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from toolformer.annotate.positions import select_positions
from toolformer.annotate.sampling import union_positions
from toolformer.config import config_hash, load_config
from toolformer.engine.base import StartProbs
from toolformer.cstar.augment import kept_candidates
from toolformer.schemas import ANNOTATIONS
from test_positions_merge import BoundsEngine as _BoundsEngine


class BoundsEngine(_BoundsEngine):
    """The position tests' fake engine (top-k style bounds, exact values on request), counting position scans."""

    def __init__(self, exact, known):
        super().__init__(exact, known)
        self.scans = 0

    def start_probs(self, seqs, starts, top_k=None):
        self.scans += 1
        return super().start_probs(seqs, starts, top_k)


EXACT = [np.array([0.30, 0.01, 0.035, 0.02, 0.12, 0.001, 0.25, 0.033]),
         np.array([0.02, 0.50, 0.031, 0.20, 0.039, 0.11])]
KNOWN = [np.array([True, False, False, False, True, False, True, False]),
         np.array([False, True, False, True, False, True])]
SEQS = [[0] + [9] * 8, [1] + [9] * 6]  # seq[0] = text index; start 1 -> position j = len(prefix) - 1
MASKS = [np.array([False, True, True, True, True, True, False, True]),  # "boundary": rules out 0 and 6
         np.array([True, False, True, True, False, True])]


@pytest.mark.parametrize("bounds", [True, False])
def test_each_set_selects_what_it_selects_alone_from_one_scan(bounds):
    alone = {}
    for name, mask in (("boundary", MASKS), ("free", None)):
        eng = BoundsEngine(EXACT, KNOWN)
        alone[name] = select_positions(eng, SEQS, [1, 1], tau_s=0.03, k=2, bounds=bounds, allowed=mask)[0]
        alone[name + "_asked"] = set(eng.asked)
    eng = BoundsEngine(EXACT, KNOWN)
    per_set, stats = select_positions(eng, SEQS, [1, 1], tau_s=0.03, k=2, bounds=bounds, allowed_sets=[MASKS, None])
    assert per_set == [alone["boundary"], alone["free"]]
    assert eng.scans == 1  # one scan of the start probabilities for both sets
    # the exact values each set needs, computed once for the union
    assert sorted(eng.asked) == sorted(alone["boundary_asked"] | alone["free_asked"])
    assert stats["positions_refined"] == len(eng.asked)
    assert stats["positions_ruled_out"] == 0  # "free" allows every position
    # without bounds no ruled-out position is computed (it could never be chosen)
    if not bounds:
        assert not {(0, 0), (0, 6), (1, 1), (1, 4)} & alone["boundary_asked"]
    # the sets differ here: the check is not vacuous
    assert alone["boundary"] != alone["free"]


def test_a_single_mask_keeps_the_old_answer():
    eng = BoundsEngine(EXACT, KNOWN)
    got, stats = select_positions(eng, SEQS, [1, 1], tau_s=0.03, k=2, allowed=MASKS)
    assert got == [[(4, 0.12), (2, pytest.approx(0.035))], [(3, 0.2), (5, 0.11)]]
    assert stats["positions_ruled_out"] == 4


def test_union_of_the_sets_picks():
    per_set = [[[(4, 0.12), (2, 0.035)], []], [[(0, 0.30), (4, 0.12)], [(1, 0.5)]]]
    union, by = union_positions(per_set, ["boundary", "free"])
    assert union == [[(0, 0.30), (4, 0.12), (2, 0.035)], [(1, 0.5)]]
    assert by == [{4: ["boundary", "free"], 2: ["boundary"], 0: ["free"]}, {1: ["free"]}]


def _cand(pos, inp, sets, kept=True):
    return dict(position=pos, char_start=pos, input=inp, result="1", gain=1.0, kept=kept, position_sets=sets)


def test_the_merge_takes_one_sets_candidates():
    rows = [dict(text_id="a", doc_id="d", tool="Calculator", status="annotated", n_kept=3,
                 candidates=[_cand(1, "1 + 0", ["boundary", "free"]), _cand(2, "2 + 0", ["free"]),
                             _cand(3, "3 + 0", ["boundary"]), _cand(4, "4 + 0", ["boundary"], kept=False)])]
    table = pa.Table.from_pylist(rows, schema=ANNOTATIONS)
    inputs = lambda name: kept_candidates(table, position_set=name).column("input").to_pylist()  # noqa: E731
    assert inputs("boundary") == ["1 + 0", "3 + 0"]
    assert inputs("free") == ["1 + 0", "2 + 0"]
    assert inputs(None) == ["1 + 0", "2 + 0", "3 + 0"]
    plain = pa.Table.from_pylist([{**rows[0], "candidates": [_cand(1, "1 + 0", None)]}], schema=ANNOTATIONS)
    assert kept_candidates(plain, position_set="free").num_rows == 0  # annotated without sets: none chosen


def test_config_checks_the_sets():
    cfg = load_config(None, ["annotate.position_sets=[boundary,free]", "merge.position_set=free"])
    assert cfg.annotate.position_sets == ["boundary", "free"]
    with pytest.raises(ValueError, match="position_sets"):
        load_config(None, ["annotate.position_sets=[boundary,words]"])
    with pytest.raises(ValueError, match="merge.position_set"):
        load_config(None, ["annotate.position_sets=[boundary]", "merge.position_set=free"])


def test_the_experiment_annotates_round_one_once_for_both_position_settings():
    from toolformer.experiments.experiment import DEFAULT, Unit, needs, reuses_default, setting_config

    cfg = load_config("jobs/configs/math.yaml")
    assert cfg.annotate.boundary_positions and "boundary_positions" in cfg.bootstrap.ablations
    default = setting_config(cfg, 0, DEFAULT, 1)
    free = setting_config(cfg, 0, "no_boundary_positions", 1)
    unchecked = setting_config(cfg, 0, "no_result_check", 1)
    assert default.annotate.position_sets == free.annotate.position_sets == ["boundary", "free"]
    assert (default.merge.position_set, free.merge.position_set, unchecked.merge.position_set) == \
        ("boundary", "free", "boundary")
    assert reuses_default(cfg, "no_boundary_positions", 1) and not reuses_default(cfg, "no_boundary_positions", 2)
    assert needs(Unit.parse("seed0/no_boundary_positions/r1"), cfg) == ["seed0/default/r1"]
    # round 2 annotates alone with its configured positions
    later = setting_config(cfg, 0, DEFAULT, 2)
    assert later.annotate.position_sets == [] and later.merge.position_set is None
    # the sets are in the config hash: a rerun over an output made without them refuses (bootstrap.Round)
    assert config_hash(default) != config_hash(setting_config(cfg, 0, DEFAULT))
    assert config_hash(default) != config_hash(free)
    # without boundary positions on (or not measured) nothing changes: the ablation re-annotates
    off = load_config("jobs/configs/math.yaml", ["annotate.boundary_positions=false"])
    assert setting_config(off, 0, DEFAULT, 1).annotate.position_sets == []
    assert not reuses_default(off, "no_boundary_positions", 1)
    assert needs(Unit.parse("seed0/no_boundary_positions/r1"), off) == []


# -- the real engine ---------------------------------------------------------------------------------------------
TEXTS = [
    "The shop sold 120 shirts on Monday and 80 on Tuesday, 200 shirts in two days. Each shirt cost 15 dollars, "
    "so Monday alone brought in 1,800 dollars.",
    "Of the 640 members who voted, 512 said yes. That is 80 percent of the votes cast, up from 70.5 last year.",
    "Tom has 23 marbles and finds 19 more in the garden, so Tom has 42 marbles now.",
]


def _annotate(tmp, corpus, vllm_engine, extra: list[str]) -> dict:
    from toolformer.annotate.pipeline import run_annotate
    from toolformer.schemas import read_rows

    cfg = load_config("jobs/configs/default.yaml", [
        f"output_dir={tmp}", f"corpus.paths=[{corpus}]", "annotate.tools=[Calculator]", "annotate.runner=local",
        "model.dtype=float32", "engine.top_logprobs=20",
        # small and permissive so that calls survive on a 135M model: this checks mechanics, not quality
        # top 12: enough positions that some fall inside a number ("1,|800"), which only "free" may choose
        "annotate.per_tool.Calculator.top_k=12", "annotate.per_tool.Calculator.num_samples=2",
        "annotate.per_tool.Calculator.tau_f=0.0", *extra])
    run_annotate(cfg, engine=vllm_engine, log=lambda *_: None)
    return {r["text_id"]: r for r in read_rows(tmp / "annotations.parquet")}


def _calls(row: dict, name: str | None = None) -> tuple[set, set]:
    """(position, input) of the candidates, and of the kept ones; of one set when ``name`` is given."""
    cands = [c for c in row["candidates"] if name is None or name in (c["position_sets"] or [])]
    return ({(c["position"], c["input"]) for c in cands},
            {(c["position"], c["input"], c["result"]) for c in cands if c["kept"]})


def test_one_annotation_over_both_sets_equals_each_alone(tmp_path, vllm_engine):
    import json

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "url": f"https://example.com/{i}"}) + "\n"
                              for i, t in enumerate(TEXTS)))
    alone = {"boundary": _annotate(tmp_path / "b", corpus, vllm_engine, ["annotate.boundary_positions=true"]),
             "free": _annotate(tmp_path / "f", corpus, vllm_engine, ["annotate.boundary_positions=false"])}
    both = _annotate(tmp_path / "u", corpus, vllm_engine, ["annotate.position_sets=[boundary,free]"])
    assert both.keys() == alone["free"].keys() == alone["boundary"].keys()
    differ = False
    for tid, row in both.items():
        if row["status"] != "annotated":
            continue
        union = set(row["positions"])
        for name, rows in alone.items():
            mine = rows[tid]
            assert {c["position_sets"] is None for c in mine["candidates"]} <= {True}  # off: no sets recorded
            assert _calls(row, name) == _calls(mine), (tid, name)
            assert set(mine["positions"]) <= union
            differ |= set(mine["positions"]) != union
        assert row["n_positions"] == len(union)  # the counts are the union's
    # the two settings chose different positions somewhere: the check is not vacuous
    assert differ, {t: (r["status"], r["positions"]) for t, r in both.items()}
    assert any(_calls(row)[1] for row in both.values())  # and kept calls were compared
