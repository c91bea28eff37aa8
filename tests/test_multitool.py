"""The multi-tool experiment's pieces (issue 42): its corpus from several sources (no evaluation fact, no
evaluated text in it), C* keeping the texts without a call as they are, and the experiment's plan."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs" / "configs" / "multitool.yaml"


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    from toolformer.experiments.multitool.sources import build_corpus

    out = tmp_path_factory.mktemp("sources")
    info = build_corpus({"math": 60, "facts": 80, "dated": 10, "plain": 10}, out, shared_data)
    rows = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    return info, rows, out


def test_every_source_gives_what_was_asked_and_says_where_each_text_is_from(corpus):
    info, rows, _ = corpus
    assert info["texts"] == {"asdiv": 60, "lama_trex": 64, "lama_google_re": 16, "c4_dated": 10, "c4_plain": 10}
    assert len({r["id"] for r in rows}) == len(rows) == 160
    # interleaved, not one source after another
    assert {r["source_dataset"] for r in rows[:40]} >= {"asdiv", "lama_trex"}


def test_no_evaluation_fact_is_in_the_training_text(corpus, shared_data):
    from toolformer.experiments.multitool.sources import held_out_facts
    from toolformer.tasksets.lama import states

    _, rows, _ = corpus
    _, trex_held, _, gre_held = held_out_facts(shared_data)
    for r in rows:
        assert not any(states(r["text"], f) for f in trex_held + gre_held), r
    # and the evaluation reads exactly the held-out facts: the id files are the split's
    ids = {p.stem: p.read_text().split() for p in (REPO / "jobs" / "configs" / "multitool").glob("lama_*.txt")}
    assert ids["lama_trex_held_out"] == [f.uid for f in trex_held]
    assert ids["lama_google_re_held_out"] == [f.uid for f in gre_held]


def test_no_evaluated_text_or_held_out_problem_is_trained_on(corpus, shared_data):
    from toolformer.evaluation.language import false_call_examples, perplexity_texts
    from toolformer.tasksets.math import fold_ids

    _, rows, _ = corpus
    texts = {r["text"] for r in rows}
    web = [r["text"] for r in rows if r["source_dataset"].startswith("c4")]
    for prompt in (e.prompt for e in false_call_examples(shared_data, "webtext", 500)):
        assert not any(prompt[:200] in t or t[:200] in prompt for t in web)
    for t in perplexity_texts(shared_data, 100):
        assert not any(w[:200] in t for w in web)
    _, held = fold_ids(shared_data / "asdiv" / "nfolds" / "asdiv-w", 0)
    assert not any(r["id"].removeprefix("asdiv-") in held for r in rows if r["source_dataset"] == "asdiv")
    assert len(texts) == len(rows)


def test_the_corpus_is_the_same_on_a_rebuild(corpus, shared_data, tmp_path):
    from toolformer.experiments.multitool.sources import build_corpus

    _, rows, _ = corpus
    build_corpus({"math": 60, "facts": 80, "dated": 10, "plain": 10}, tmp_path, shared_data)
    assert [json.loads(x) for x in (tmp_path / "corpus.jsonl").read_text().splitlines()] == rows


def test_a_source_that_cannot_give_enough_is_a_clear_error(shared_data, tmp_path):
    from toolformer.experiments.multitool.sources import build_corpus

    with pytest.raises(ValueError, match="could not give"):
        build_corpus({"plain": 10_000}, tmp_path, shared_data)
    with pytest.raises(ValueError, match="unknown source"):
        build_corpus({"poems": 3}, tmp_path, shared_data)


def _part(texts: dict[str, str], calls: list[dict]):
    from toolformer.cstar.augment import KEPT

    t = pa.table({"text_id": list(texts), "doc_id": [k.split("#")[0] for k in texts], "text": list(texts.values())})
    kept = pa.Table.from_pylist(calls, schema=KEPT)
    allowed = kept.select(["tool", "text_id"])
    return t, kept, allowed


def test_a_cstar_text_without_a_kept_call_equals_its_input():
    from toolformer.cstar.augment import augment

    texts = {"a#0": "Question: 3 pens and 4 pens. How many?\nAnswer: 7", "b#0": "A plain sentence about rivers.",
             "c#0": "Odelay was released by DGC Records."}
    call = dict(text_id="a#0", tool="Calculator", position=9, char_start=texts["a#0"].index("7"), input="3 + 4",
                result="7", gain=1.2)
    t, kept, allowed = _part(texts, [call])
    rows = augment(t, kept, allowed, "shard-0", keep_uncalled=True).to_pylist()
    assert [r["text_id"] for r in rows] == ["a#0", "b#0", "c#0"]  # every text, in its order
    assert rows[0]["n_calls"] == 1 and "[Calculator(3 + 4) -> 7]" in rows[0]["text"]
    for r in rows[1:]:
        assert r["text"] == texts[r["text_id"]] and r["n_calls"] == 0 and r["calls"] == []
    # without the option: only the text with a call (the stored math runs' C*)
    assert [r["text_id"] for r in augment(t, kept, allowed, "shard-0").to_pylist()] == ["a#0"]
    # a part where nothing was kept still gives its texts
    empty = augment(t, kept.slice(0, 0), allowed.slice(0, 0), "shard-0", keep_uncalled=True).to_pylist()
    assert [r["text"] for r in empty] == list(texts.values())


def test_the_new_merge_option_keeps_stored_runs_hashes():
    from toolformer.config import RunConfig, config_hash

    cfg = RunConfig()
    before = config_hash(cfg)
    cfg.merge.keep_uncalled = True
    assert config_hash(cfg) != before
    cfg.merge.keep_uncalled = False
    assert config_hash(cfg) == before


def test_the_experiment_plans_its_units_and_shares_one_annotation():
    from toolformer.config import load_config
    from toolformer.experiments.experiment import Unit, annotation_source, needs, plan, setting_config

    cfg = load_config(str(CONFIG))
    names = [u.name for u in plan(cfg)]
    assert names == ["seed0/default/r1", "base", "seed1/default/r1", "seed2/default/r1", "seed0/no_keep_uncalled/r1"]
    assert annotation_source(cfg, Unit(1, "default", 1)) == Unit(0, "default", 1)
    assert annotation_source(cfg, Unit(0, "default", 1)) is None
    assert annotation_source(cfg, Unit(0, "no_keep_uncalled", 1)) == Unit(0, "default", 1)
    assert needs(Unit(2, "default", 1), cfg) == ["seed0/default/r1"]
    assert setting_config(cfg, 0, "no_keep_uncalled", 1).merge.keep_uncalled is False
    assert cfg.merge.keep_uncalled is True
