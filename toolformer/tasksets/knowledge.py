"""The knowledge, QA, multilingual and temporal sets of the paper's evaluation (DESIGN §1.6), from the files in
``shared/data`` (formats in each dataset's SOURCE.txt)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
from pathlib import Path

from toolformer.tasksets.files import ALL_TOOLS, MLQA_LANGS, Example, _without, read_jsonl


# -- LAMA ---------------------------------------------------------------------------------------------------
def _mask_last(sentence: str) -> str | None:
    """The text before ``[MASK]`` when the mask is the last token (only a final period may follow)."""
    before, sep, after = sentence.partition("[MASK]")
    if not sep or after.strip() not in ("", ".") or "[MASK]" in after:
        return None
    return before.rstrip()


def lama_squad(data: Path) -> list[Example]:
    out = []
    for r in read_jsonl(data / "lama" / "squad" / "test.jsonl"):
        prompt = _mask_last(r["masked_sentences"][0])
        if prompt:
            out.append(Example("lama_squad", r["id"], prompt, [r["obj_label"]], "lama", _without("WikiSearch")))
    return out


def lama_google_re(data: Path) -> list[Example]:
    from toolformer.tasksets.lama import google_re_facts

    return [Example("lama_google_re", f.uid, f.cloze, [f.obj, *f.aliases], "lama", _without("WikiSearch"))
            for f in google_re_facts(data) if _mask_last(f.template.replace("[Y]", "[MASK]"))]


def lama_trex(data: Path) -> list[Example]:
    from toolformer.tasksets.lama import trex_facts

    return [Example("lama_trex", f.uid, f.cloze, [f.obj], "lama", _without("WikiSearch"))
            for f in trex_facts(data) if _mask_last(f.template.replace("[Y]", "[MASK]"))]


# -- open-domain QA ---------------------------------------------------------------------------------------------
def webquestions(data: Path) -> list[Example]:
    return [Example("webquestions", r["qId"], r["qText"], r["answers"], "qa", _without("QA"))
            for r in json.loads((data / "webquestions" / "test.json").read_text())]


def nq(data: Path) -> list[Example]:
    return [Example("nq", str(i), r["question"], r["answer"], "qa", _without("QA"))
            for i, r in enumerate(read_jsonl(data / "nq_open" / "NQ-open.dev.jsonl"))]


def triviaqa(data: Path) -> list[Example]:
    out = []
    for i, r in enumerate(read_jsonl(data / "triviaqa" / "triviaqa_sm_sub.jsonl")):
        q = r["context"].removeprefix("Question:").removesuffix("Answer:").strip()
        out.append(Example("triviaqa", str(i), q, [r["answer"], *r.get("aliases", [])], "qa", _without("QA")))
    return out


# -- multilingual QA --------------------------------------------------------------------------------------------
def mlqa(data: Path, langs: tuple[str, ...] = MLQA_LANGS) -> list[Example]:
    """MLQA-style items from XQuAD: the English context with the question in another language."""
    contexts = {}
    for art in json.loads((data / "xquad" / "xquad.en.json").read_text())["data"]:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                contexts[qa["id"]] = para["context"]
    out = []
    for r in read_jsonl(data / "xquad" / "xquad_parallel_questions.jsonl"):
        for lang in langs:
            if r.get(f"question_{lang}") and r["id"] in contexts:
                out.append(Example(f"mlqa_{lang}", f"{r['id']}-{lang}", f"{contexts[r['id']]}\n{r[f'question_{lang}']}",
                                   [r["answer_en"]], "mlqa", ALL_TOOLS, {"lang": lang}))
    return out


def mlqa_de(data: Path) -> list[Example]:
    """The real MLQA de/de sample (German context and question): a check of the loader, not the paper's setup."""
    return [Example("mlqa_de_de", r["id"], f"{r['context']}\n{r['question']}", r["answers"]["text"], "mlqa",
                    ALL_TOOLS, {"lang": "de"}) for r in read_jsonl(data / "mlqa_de" / "mlqa_dev_context-de_question-de.jsonl")]


# -- temporal ---------------------------------------------------------------------------------------------------
_DATESET_TEMPLATES = (
    ("What day of the week is it today?", lambda d: [d.strftime("%A")]),
    ("What month is it?", lambda d: [d.strftime("%B")]),
    ("What year is it?", lambda d: [str(d.year)]),
    ("What day of the month is it today?", lambda d: [str(d.day)]),
    ("How many days ago was {past}?", None),
    ("What year was it {n} years ago?", None),
)


def dateset(n: int = 500, seed: int = 0) -> list[Example]:
    """Dateset-style questions generated around a random "current date" (the Calendar tool's answer)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        today = dt.date(2000, 1, 1) + dt.timedelta(days=rng.randrange(0, 365 * 30))
        q, fn = _DATESET_TEMPLATES[i % len(_DATESET_TEMPLATES)]
        if "{past}" in q:
            days = rng.randrange(2, 40)
            past = today - dt.timedelta(days=days)
            q, answers = q.format(past=past.strftime("%B %d, %Y").replace(" 0", " ")), [str(days)]
        elif "{n}" in q:
            k = rng.randrange(2, 30)
            q, answers = q.format(n=k), [str(today.year - k)]
        else:
            answers = fn(today)
        out.append(Example("dateset", str(i), q, answers, "temporal", ALL_TOOLS, {"today": today.isoformat()}))
    return out


def dateset_file(path: Path) -> list[Example]:
    """A date set from a JSONL file (``eval.task_paths.dateset``), one question a line: ``question``, ``answers``
    (a list, or one string), ``today`` (ISO date: what the Calendar returns for it) and an optional ``id`` (else
    the line number). Any set of date questions can then be evaluated as Dateset is."""
    out = []
    for i, r in enumerate(read_jsonl(path)):
        missing = [k for k in ("question", "answers", "today") if k not in r]
        if missing:
            raise ValueError(f"{path}: line {i + 1} has no {', '.join(missing)} (a date question needs question, "
                             "answers and today)")
        dt.date.fromisoformat(r["today"])  # a clear error on a date that is not one
        answers = [r["answers"]] if isinstance(r["answers"], str) else [str(a) for a in r["answers"]]
        out.append(Example("dateset", str(r.get("id", i)), r["question"], answers, "temporal", ALL_TOOLS,
                           {"today": r["today"]}))
    return out


def trex_temporal_templates(data: Path) -> list[Example]:
    """TempLAMA's relation templates filled with the T-REx facts of the same relations (P39, P108, P127 are
    shipped). NOT TempLAMA: the gold is the T-REx object, with no time stamp, and the item is asked "as of"
    nothing; a temporal-flavoured cloze set scored like LAMA, never to be compared with the paper's TempLAMA."""
    from toolformer.tasksets.lama import trex_facts

    templates = {}
    with open(data / "templama" / "templates.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            t = row["Template"]
            if t.rstrip(".").endswith("<object>") and t.startswith("<subject>"):
                templates[row["Wikidata ID"]] = t.split("<object>")[0].rstrip()
    return [Example("trex_temporal_templates", f.uid, templates[f.relation].replace("<subject>", f.subject), [f.obj],
                    "temporal", _without("WikiSearch"), {"relation": f.relation})
            for f in trex_facts(data) if f.relation in templates]


def templama(path: Path) -> list[Example]:
    """The real TempLAMA (Dhingra et al. 2022), given by path: JSONL with ``query`` (the subject and a ``_X_``
    blank), ``date`` (the year the answer holds for), ``answer`` (a list of ``{"name": …}`` or strings) and
    optional ``id``/``relation``. Each item is asked as of its year ("In 2012, …"), with that year's 1 July as
    the date the Calendar returns; scored like LAMA (an answer within the first 5 words)."""
    path = Path(path)
    if path.is_dir():
        path = path / "templama.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"TempLAMA not found at {path}: set eval.templama_path to its JSONL (the shipped "
                                "data has only its templates; see trex_temporal_templates)")
    out = []
    for i, r in enumerate(read_jsonl(path)):
        query, year = str(r["query"]), str(r["date"])[:4]
        if "_X_" not in query:
            raise ValueError(f"{path}:{i + 1}: a TempLAMA query needs the _X_ blank")
        cloze = query.split("_X_")[0].rstrip()
        answers = [a["name"] if isinstance(a, dict) else str(a) for a in r.get("answer") or []]
        out.append(Example("templama", str(r.get("id", i)), f"In {year}, {cloze}", answers,
                           "temporal", _without("WikiSearch"), {"today": f"{year}-07-01", "year": year,
                                                                "relation": r.get("relation")}))
    return out
