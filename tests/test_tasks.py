"""Every shipped evaluation set loads, with the documented number of examples (SOURCE.txt of each)."""

from __future__ import annotations

import pytest

from toolformer.evaluation.scoring import score
from toolformer.evaluation.tasks import dateset, load_task

# Documented sizes; LAMA counts are after the paper's filter (the mask must be the last token).
EXPECTED = {
    "svamp": 1000, "mawps": 50, "webquestions": 2032, "nq": 3610, "triviaqa": 3000, "mlqa_de_de": 512,
    "mlqa": 1190 * 6,  # every XQuAD question in es, de, hi, vi, zh, ar with its English context
    "lama_squad": 210,  # of 305
    "lama_google_re": 2937 + 766,  # place of birth/death; "[X] (born [Y])." does not end in the mask
    "lama_trex": 18601,  # of 22,881 facts (28 relations shipped) whose template ends in [Y]
    "asdiv": 2084,  # of 2,305: numeric answers only
    "dateset": 500,
    "trex_temporal_templates": 1962,  # TempLAMA templates x the T-REx facts of P39, P108, P127 (not TempLAMA)
}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_loader_counts(task, shared_data):
    examples = load_task(task, shared_data)
    assert len(examples) == EXPECTED[task]
    assert len({e.uid for e in examples}) == len(examples)
    assert all(e.prompt.strip() and e.answers for e in examples)


def test_tool_subsets_follow_the_paper(shared_data):
    assert "WikiSearch" not in load_task("lama_trex", shared_data, limit=1)[0].tools
    assert "QA" not in load_task("nq", shared_data, limit=1)[0].tools
    assert "Calculator" in load_task("svamp", shared_data, limit=1)[0].tools


def test_sampling_is_reproducible(shared_data):
    a = [e.uid for e in load_task("nq", shared_data, limit=20, seed=3)]
    assert a == [e.uid for e in load_task("nq", shared_data, limit=20, seed=3)]
    assert a != [e.uid for e in load_task("nq", shared_data, limit=20, seed=4)]


def test_gold_answers_score_as_correct(shared_data):
    for task in ("svamp", "asdiv", "mawps", "lama_trex", "triviaqa", "mlqa"):
        for e in load_task(task, shared_data, limit=25, seed=0):
            if len(e.answers[0].split()) > 8:
                continue  # longer than the word cap allows: no generation can score it (a property of the rule)
            assert score(e.kind, f"{e.answers[0]} is the answer", e.answers), (task, e.answers)


def test_dateset_and_templama(shared_data):
    items = dateset(n=60, seed=1)
    assert all(e.meta["today"] for e in items)
    assert {e.prompt.split()[0] for e in items} >= {"What", "How"}
    tl = load_task("trex_temporal_templates", shared_data)
    assert {e.meta["relation"] for e in tl} == {"P39", "P108", "P127"}
    assert all("<subject>" not in e.prompt and e.answers for e in tl)
    assert load_task("trex_temporal_templates", shared_data, limit=3, tools=["Calendar"])[0].tools == ("Calendar",)


def test_real_templama_from_a_path(tmp_path, shared_data):
    import json

    rows = [{"query": "Cristiano Ronaldo plays for _X_.", "answer": [{"wikidata_id": "Q18656", "name": "Manchester United F.C."}],
             "date": "2008", "id": "Q11571_P54_2008", "relation": "P54"},
            {"query": "Barack Obama holds the position of _X_.", "answer": [{"name": "President of the United States"}],
             "date": "2012", "id": "Q76_P39_2012", "relation": "P39"}]
    path = tmp_path / "templama.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_task("templama", shared_data, templama_path=path)
    assert [e.prompt for e in items] == ["In 2008, Cristiano Ronaldo plays for", "In 2012, Barack Obama holds the position of"]
    assert items[0].answers == ["Manchester United F.C."] and items[0].meta["today"] == "2008-07-01"
    assert items[0].kind == "temporal" and items[0].task == "templama"
    assert score("temporal", "Manchester United F.C. in the Premier League", items[0].answers)
    with pytest.raises(FileNotFoundError, match="eval.templama_path"):
        load_task("templama", shared_data)  # not shipped: a clear error, never the template stand-in


def test_unknown_task_is_an_error(shared_data):
    with pytest.raises(ValueError):
        load_task("squad2", shared_data)


def test_hub_loading_fails_clearly_offline(monkeypatch):
    from toolformer.evaluation.tasks import load_hub_task

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="could not load nq from the hub"):
        load_hub_task("nq", limit=3)
    with pytest.raises(ValueError, match="no hub source"):
        load_hub_task("svamp")


def test_hub_rows_convert_like_the_files():
    from toolformer.evaluation.tasks import _hub_examples

    nq = _hub_examples("nq", [{"question": "who wrote hamlet", "answer": ["Shakespeare"]}])[0]
    tq = _hub_examples("triviaqa", [{"question": "Q?", "question_id": "t1", "answer": {"value": "Onion", "aliases": ["Onions"]}}])[0]
    ml = _hub_examples("mlqa_de", [{"id": "x", "context": "Ctx.", "question": "Wer?", "answers": {"text": ["Ann"], "answer_start": [0]}}])[0]
    assert (nq.kind, nq.answers, "QA" in nq.tools) == ("qa", ["Shakespeare"], False)
    assert tq.answers == ["Onion", "Onions"] and tq.uid == "t1"
    assert ml.prompt == "Ctx.\nWer?" and ml.kind == "mlqa" and ml.meta["lang"] == "de"
