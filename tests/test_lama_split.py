"""LAMA facts split by fact for a model that learns from fact text (issue 42): the held-out facts are the same for
a seed whatever the input order, every relation is held out, no held-out fact is a training fact, and no training
text states a held-out fact; every relation has its natural question."""

from __future__ import annotations

import random

from toolformer.tasksets.lama import (QUESTIONS, Fact, _words, google_re_facts, leak_free, split_facts, states,
                                      trex_facts)


def test_the_split_is_by_fact_per_relation_and_the_same_for_a_seed(shared_data):
    facts = trex_facts(shared_data)
    train, held = split_facts(facts, held_out_per_relation=20, seed=0)
    relations = {f.relation for f in facts}
    assert len(relations) == 28 and len(held) == 20 * 28  # 560: at least 500, over every relation
    assert {f.relation for f in held} == relations
    assert not {f.uid for f in train} & {f.uid for f in held}
    assert not {(f.subject.lower(), f.relation) for f in train} & {(f.subject.lower(), f.relation) for f in held}
    shuffled = facts[:]
    random.Random(1).shuffle(shuffled)
    assert [f.uid for f in split_facts(shuffled, 20, seed=0)[1]] == [f.uid for f in held]  # order does not matter
    assert {f.uid for f in split_facts(facts, 20, seed=1)[1]} != {f.uid for f in held}  # the seed does
    gre_train, gre_held = split_facts(google_re_facts(shared_data), held_out_per_relation=100, seed=0)
    assert len(gre_held) == 300 and {f.relation for f in gre_held} == {"place_of_birth", "date_of_birth",
                                                                       "place_of_death"}


def test_no_training_text_states_a_held_out_fact(shared_data):
    from toolformer.tasksets.files import read_jsonl

    facts = trex_facts(shared_data)
    train, held = split_facts(facts, held_out_per_relation=20, seed=0)
    evidence = {p["fact_uuid"]: p["text"] for p in
                read_jsonl(shared_data / "wiki_passages" / "lama_trex_evidence_sentences.jsonl.gz")}
    texts = [(f.uid, evidence[f.uid]) for f in train if f.uid in evidence]
    kept, dropped = leak_free(texts, held)
    assert dropped > 0 and len(kept) + dropped == len(texts)  # some training evidence does name a held-out fact
    words = [_words(text) for _, text in kept]  # the property itself, fact by fact on every kept text
    for f in held:
        subject, objects = _words(f.subject), [_words(a) for a in f.answers]
        assert not any(subject in w and any(o in w for o in objects) for w in words), f
    assert any(states(evidence[f.uid], f) for f in held if f.uid in evidence)  # the check can see a fact


def test_states_needs_the_subject_and_the_object_as_words():
    f = Fact("u", "P20", "Hans Scharoun", "Berlin", "[X] died in [Y] .", aliases=["West Berlin"])
    assert states("Hans Scharoun died in 1972 in Berlin.", f)
    assert not states("Hans Scharoun was an architect.", f)
    assert not states("Berliner Hans Scharounski", f)  # words, not substrings
    assert f.question == "Where did Hans Scharoun die?" and f.cloze == "Hans Scharoun died in"


def test_every_relation_has_a_question(shared_data):
    relations = {f.relation for f in trex_facts(shared_data)} | {f.relation for f in google_re_facts(shared_data)}
    assert relations <= set(QUESTIONS)
    assert all(q.count("[X]") == 1 and q.endswith("?") for q in QUESTIONS.values())
