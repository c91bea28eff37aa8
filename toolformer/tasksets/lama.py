"""LAMA facts (Petroni et al. 2019) as retrieval queries and cloze items, from the files in ``shared/data``.

Google-RE: ``lama/google_re/<relation>.jsonl`` (facts with evidence URLs) and its templates; the evidence
snippets are passages in ``wiki_passages/lama_google_re_snippets.jsonl`` (matched by URL).
T-REx: ``lama/trex/facts.jsonl`` with ``lama/relations.jsonl`` templates; one evidence sentence per fact in
``wiki_passages/lama_trex_evidence_sentences.jsonl.gz`` (matched by ``fact_uuid``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolformer.tasksets.files import read_jsonl

GOOGLE_RE = ("place_of_birth", "date_of_birth", "place_of_death")


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
