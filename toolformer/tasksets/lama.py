"""LAMA facts (Petroni et al. 2019) as retrieval queries and cloze items, from the files in ``shared/data``.

Google-RE: ``lama/google_re/<relation>.jsonl`` (facts with evidence URLs) and its templates; the evidence
snippets are passages in ``wiki_passages/lama_google_re_snippets.jsonl`` (matched by URL).
T-REx: ``lama/trex/facts.jsonl`` with ``lama/relations.jsonl`` templates; one evidence sentence per fact in
``wiki_passages/lama_trex_evidence_sentences.jsonl.gz`` (matched by ``fact_uuid``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from toolformer.tasksets.files import read_jsonl

GOOGLE_RE = ("place_of_birth", "date_of_birth", "place_of_death")
# The natural question a reader is asked for each relation ([X]: the subject): what a model would write to the QA
# tool. Ours, one per relation of shared/data's LAMA (28 T-REx relations, 3 Google-RE ones).
QUESTIONS = {
    "place_of_birth": "Where was [X] born?", "date_of_birth": "When was [X] born?",
    "place_of_death": "Where did [X] die?",
    "P19": "Where was [X] born?", "P20": "Where did [X] die?", "P27": "Which country is [X] a citizen of?",
    "P31": "What is [X]?", "P39": "What position did [X] hold?", "P101": "What field does [X] work in?",
    "P103": "What is the native language of [X]?", "P106": "What is the occupation of [X]?",
    "P108": "Who does [X] work for?", "P127": "Who owns [X]?", "P136": "What genre of music does [X] play?",
    "P138": "What is [X] named after?", "P140": "What religion is [X] affiliated with?",
    "P159": "Where is the headquarters of [X]?", "P176": "Which company produces [X]?",
    "P178": "Who developed [X]?", "P264": "Which record label represents [X]?",
    "P364": "What is the original language of [X]?", "P407": "Which language was [X] written in?",
    "P413": "What position does [X] play?", "P449": "Which network originally aired [X]?",
    "P463": "What is [X] a member of?", "P495": "Which country was [X] created in?",
    "P527": "What does [X] consist of?", "P740": "Where was [X] founded?",
    "P937": "Where did [X] work?", "P1303": "What instrument does [X] play?",
    "P1412": "What language does [X] speak?",
}


@dataclass
class Fact:
    uid: str
    relation: str
    subject: str
    obj: str
    template: str  # "[X] was born in [Y] ."
    gold_passages: list[str] = field(default_factory=list)  # passage ids in wiki_passages
    aliases: list[str] = field(default_factory=list)

    @property
    def query(self) -> str:
        """The template with the subject filled in and the object left out: what a model would search."""
        return " ".join(self.template.replace("[X]", self.subject).replace("[Y]", "").split()).rstrip(" .")

    @property
    def cloze(self) -> str:
        return self.template.replace("[X]", self.subject).split("[Y]")[0].rstrip()

    @property
    def question(self) -> str:
        """The relation's natural question about the subject (``QUESTIONS``): "Where did Hans Scharoun die?"."""
        return QUESTIONS[self.relation].replace("[X]", self.subject)

    @property
    def answers(self) -> list[str]:
        return [self.obj, *self.aliases]


def _rank(seed: int, uid: str) -> str:
    return hashlib.sha256(f"{seed}:{uid}".encode()).hexdigest()


def split_facts(facts: Sequence[Fact], held_out_per_relation: int, seed: int = 0) -> tuple[list[Fact], list[Fact]]:
    """(training facts, held-out facts), split BY FACT and per relation: each relation's facts ordered by a hash
    of (seed, fact id), the first ``held_out_per_relation`` held out (all of them count, every relation is
    represented); the same facts for the same seed whatever the order they came in. A (subject, relation) pair
    the held-out side has is never a training fact too (LAMA has a few subjects with two objects)."""
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    held: list[Fact] = []
    for rel in sorted(by_rel):
        held += sorted(by_rel[rel], key=lambda f: _rank(seed, f.uid))[:held_out_per_relation]
    held_ids = {f.uid for f in held}
    held_keys = {(f.subject.lower(), f.relation) for f in held}
    train = [f for f in facts if f.uid not in held_ids and (f.subject.lower(), f.relation) not in held_keys]
    return train, sorted(held, key=lambda f: (f.relation, _rank(seed, f.uid)))


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"\w+", text.lower())) + " "


def states(text: str, fact: Fact) -> bool:
    """Whether ``text`` states ``fact``: it names the subject and the object (or an alias), as whole words."""
    words = _words(text)
    return _words(fact.subject) in words and any(_words(a) in words for a in fact.answers if a.strip())


def leak_free(texts: Iterable[tuple[str, str]], held_out: Sequence[Fact]) -> tuple[list[tuple[str, str]], int]:
    """The (id, text) pairs that state no held-out fact, and how many were dropped (a training text must not teach
    an evaluation fact, whatever fact it was evidence for)."""
    by_subject: dict[str, list[Fact]] = {}
    for f in held_out:
        by_subject.setdefault(_words(f.subject), []).append(f)
    kept, dropped = [], 0
    for tid, text in texts:
        words = _words(text)
        if any(s in words and any(states(text, f) for f in fs) for s, fs in by_subject.items()):
            dropped += 1
        else:
            kept.append((tid, text))
    return kept, dropped




def google_re_facts(data: Path, relations=GOOGLE_RE, per_relation: int | None = None) -> list[Fact]:
    templates = {r["relation"]: r["template"] for r in read_jsonl(data / "lama" / "google_re" / "templates.jsonl")}
    by_url: dict[str, str] = {}
    for p in read_jsonl(data / "wiki_passages" / "lama_google_re_snippets.jsonl"):
        by_url.setdefault(p["url"], p["id"])
    facts = []
    for rel in relations:
        n = 0
        for r in read_jsonl(data / "lama" / "google_re" / f"{rel}.jsonl"):
            gold = [by_url[e["url"]] for e in r.get("evidences", []) if e.get("url") in by_url]
            facts.append(Fact(r["uuid"], rel, r["sub_label"], r["obj_label"], templates[rel], gold, r.get("obj_aliases", [])))
            n += 1
            if per_relation and n >= per_relation:
                break
    return facts


def trex_facts(data: Path, per_relation: int | None = None) -> list[Fact]:
    templates = {r["relation"]: r["template"] for r in read_jsonl(data / "lama" / "relations.jsonl")}
    by_fact: dict[str, str] = {}
    for p in read_jsonl(data / "wiki_passages" / "lama_trex_evidence_sentences.jsonl.gz"):
        by_fact.setdefault(p["fact_uuid"], p["id"])
    facts, counts = [], {}
    for r in read_jsonl(data / "lama" / "trex" / "facts.jsonl"):
        rel = r["predicate_id"]
        if rel not in templates or (per_relation and counts.get(rel, 0) >= per_relation):
            continue
        counts[rel] = counts.get(rel, 0) + 1
        gold = [by_fact[r["uuid"]]] if r["uuid"] in by_fact else []
        facts.append(Fact(r["uuid"], rel, r["sub_label"], r["obj_label"], templates[rel], gold))
    return facts
