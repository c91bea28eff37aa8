"""The downstream tasks of the paper (DESIGN §1.6) as lists of ``Example``, from the files in ``shared/data``.

Every loader reads a local file (formats in each dataset's SOURCE.txt); ``limit`` and ``seed`` take a
reproducible random sample. Tool subsets per task follow the paper: WikiSearch off for LAMA, the QA tool
off for the QA sets; the evaluate job's config can change them.
"""

from __future__ import annotations

import csv
import functools
import datetime as dt
import json
import random
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from toolformer.corpus import read_jsonl

ALL_TOOLS = ("Calculator", "Calendar", "WikiSearch", "QA", "MT")
MLQA_LANGS = ("es", "de", "hi", "vi", "zh", "ar")


@dataclass
class Example:
    task: str
    uid: str
    prompt: str  # what the model continues
    answers: list[str]
    kind: str  # lama | temporal | math | qa | mlqa (which lenient scorer)
    tools: tuple[str, ...] = ALL_TOOLS  # the tools it may call
    meta: dict = field(default_factory=dict)  # e.g. the "current date" a Calendar call should return




def _without(*tools: str) -> tuple[str, ...]:
    return tuple(t for t in ALL_TOOLS if t not in tools)


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
    from toolformer.evaluation.lama import google_re_facts

    return [Example("lama_google_re", f.uid, f.cloze, [f.obj, *f.aliases], "lama", _without("WikiSearch"))
            for f in google_re_facts(data) if _mask_last(f.template.replace("[Y]", "[MASK]"))]


def lama_trex(data: Path) -> list[Example]:
    from toolformer.evaluation.lama import trex_facts

    return [Example("lama_trex", f.uid, f.cloze, [f.obj], "lama", _without("WikiSearch"))
            for f in trex_facts(data) if _mask_last(f.template.replace("[Y]", "[MASK]"))]


# -- math -----------------------------------------------------------------------------------------------------
# Each math set from one file (``eval.task_paths.<task>`` points a task at another copy, e.g. the full MAWPS).
def asdiv_file(path: Path, task: str = "asdiv") -> list[Example]:
    """ASDiv problems with a numeric answer (units in parentheses dropped; ratios, names and yes/no skipped)."""
    out = []
    for p in ET.parse(path).getroot().iter("Problem"):
        answer = re.sub(r"\s*\(.*?\)\s*", " ", p.findtext("Answer") or "").strip()
        if not re.fullmatch(r"-?[\d,]*\.?\d+", answer):
            continue
        text = f"{(p.findtext('Body') or '').strip()} {(p.findtext('Question') or '').strip()}"
        out.append(Example(task, p.get("ID"), text, [answer.replace(",", "")], "math"))
    return out


def svamp_file(path: Path, task: str = "svamp") -> list[Example]:
    return [Example(task, str(r["ID"]), f"{r['Body'].strip()} {r['Question'].strip()}", [_num(r["Answer"])], "math")
            for r in json.loads(Path(path).read_text())]


def mawps_file(path: Path, task: str = "mawps") -> list[Example]:
    return [Example(task, str(r["iIndex"]), " ".join(r["sQuestion"].split()), [_num(r["lSolutions"][0])], "math")
            for r in json.loads(Path(path).read_text())]


def qa_jsonl_file(path: Path, task: str) -> list[Example]:
    """Math problems of your own: JSONL with ``question`` and ``answer`` (a number), optional ``id``."""
    out = []
    for i, r in enumerate(read_jsonl(path)):
        if not isinstance(r, dict) or "question" not in r or "answer" not in r:
            raise ValueError(f"{path}:{i + 1}: a math problem needs `question` and `answer`")
        out.append(Example(task, str(r.get("id", i)), " ".join(str(r["question"]).split()), [_num(r["answer"])],
                           "math"))
    return out


def math_file(path: str | Path, task: str | None = None) -> list[Example]:
    """The problems of a math file, its format told by its content: ASDiv's XML, SVAMP's JSON (``Body``,
    ``Question``, ``Answer``), MAWPS's JSON (``sQuestion``, ``lSolutions``), or JSONL with ``question``/``answer``."""
    path = Path(path)
    name = task or path.stem.lower()
    if path.suffix == ".xml":
        return asdiv_file(path, task or "asdiv")
    if path.suffix == ".json":
        rows = json.loads(path.read_text())
        first = rows[0] if isinstance(rows, list) and rows else {}
        if isinstance(first, dict) and {"Body", "Question", "Answer"} <= first.keys():
            return svamp_file(path, task or "svamp")
        if isinstance(first, dict) and {"sQuestion", "lSolutions"} <= first.keys():
            return mawps_file(path, task or "mawps")
        raise ValueError(f"{path}: not a math set this reader knows (SVAMP or MAWPS JSON)")
    return qa_jsonl_file(path, name)


def asdiv(data: Path) -> list[Example]:
    return asdiv_file(data / "asdiv" / "ASDiv.xml")


def svamp(data: Path) -> list[Example]:
    return svamp_file(data / "svamp" / "SVAMP.json")


def mawps(data: Path) -> list[Example]:
    return mawps_file(data / "mawps" / "mawps_dev50.json")


def _num(x) -> str:
    v = float(x)
    return str(int(v)) if v == int(v) else str(round(v, 4))


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


def arithmetic(n: int = 200, seed: int = 0) -> list[Example]:
    """Templated one-step word problems (a self-contained math set for the demo; not one of the paper's)."""
    rng = random.Random(seed)
    forms = (
        ("{a} boxes hold {b} pencils each. How many pencils are there?", lambda a, b: a * b),
        ("A farmer had {a} sheep and bought {b} more. How many sheep does he have now?", lambda a, b: a + b),
        ("A tank held {a} liters and {b} liters leaked out. How many liters are left?", lambda a, b: a - b),
        ("{a} cookies are shared equally among {b} children. How many cookies does each child get?", lambda a, b: a // b),
    )
    out = []
    for i in range(n):
        q, f = forms[i % len(forms)]
        b = rng.randrange(3, 40)
        a = b * rng.randrange(3, 40) if "shared" in q else rng.randrange(b + 10, b + 900)
        out.append(Example("arithmetic", str(i), q.format(a=a, b=b), [str(f(a, b))], "math"))
    return out


def trex_temporal_templates(data: Path) -> list[Example]:
    """TempLAMA's relation templates filled with the T-REx facts of the same relations (P39, P108, P127 are
    shipped). NOT TempLAMA: the gold is the T-REx object, with no time stamp, and the item is asked "as of"
    nothing; a temporal-flavoured cloze set scored like LAMA, never to be compared with the paper's TempLAMA."""
    from toolformer.evaluation.lama import trex_facts

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


LOADERS: dict[str, Callable[[Path], list[Example]]] = {
    "lama_squad": lama_squad, "lama_google_re": lama_google_re, "lama_trex": lama_trex,
    "asdiv": asdiv, "svamp": svamp, "mawps": mawps,
    "webquestions": webquestions, "nq": nq, "triviaqa": triviaqa,
    "mlqa": mlqa, "mlqa_de_de": mlqa_de,
    "dateset": lambda data: dateset(),
    "trex_temporal_templates": trex_temporal_templates,
    "templama": lambda data: templama(Path(data) / "templama"),  # or load_task(..., templama_path=...)
    "arithmetic": lambda data: arithmetic(),
}
# Tasks that need no files (the demo uses them; it must run without shared/data).
BUILTIN = ("dateset", "arithmetic")


# Tasks read from one file, which ``eval.task_paths.<task>`` can replace: a math task any math file (its format
# told by its content), TempLAMA its JSONL.
FILE_LOADERS: dict[str, Callable[[Path], list[Example]]] = {
    **{task: functools.partial(math_file, task=task) for task in ("asdiv", "svamp", "mawps")},
    "templama": templama,
}


def read_ids(path: str | Path) -> list[str]:
    """Item ids listed one per line (a fold file such as ASDiv's ``nfolds/asdiv-w/fold0.txt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ids file not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fold_ids(folds: str | Path, holdout: int) -> tuple[set[str], set[str]]:
    """(training ids, held-out ids) of a dataset's own n-fold split: every ``fold<k>.txt`` in ``folds``; fold
    ``holdout`` is held out, the others train."""
    files = sorted(Path(folds).glob("fold*.txt"), key=lambda f: int(re.sub(r"\D", "", f.stem) or 0))
    if not files:
        raise FileNotFoundError(f"no fold<k>.txt files in {folds}")
    names = [f.stem for f in files]
    if f"fold{holdout}" not in names:
        raise ValueError(f"corpus.holdout_fold={holdout}: {folds} has {', '.join(names)}")
    train: set[str] = set()
    held: set[str] = set()
    for f in files:
        (held if f.stem == f"fold{holdout}" else train).update(read_ids(f))
    if train & held:
        raise ValueError(f"{folds}: {len(train & held)} ids are in the held-out fold and in another fold")
    return train, held


def load_task(name: str, data: Path, limit: int | None = None, seed: int = 0,
              tools: Sequence[str] | None = None, templama_path: str | Path | None = None,
              path: str | Path | None = None, ids: str | Path | None = None) -> list[Example]:
    """A task's examples (a seeded sample of ``limit``); ``tools`` replaces the paper's tool subset; ``path``
    reads the task from that file instead of the shipped one (tasks in ``FILE_LOADERS``); ``ids`` (a file, one
    id per line) keeps only those items (e.g. a held-out fold), an id the task lacks being an error."""
    if name not in LOADERS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(LOADERS)}")
    if name == "templama" and templama_path and not path:
        path = templama_path
    if path:
        if name not in FILE_LOADERS:
            raise ValueError(f"task {name!r} takes no path (tasks read from a file: {', '.join(FILE_LOADERS)})")
        if name != "templama" and not Path(path).exists():  # templama names the setting in its own error
            raise FileNotFoundError(f"the file given for task {name!r} does not exist: {path}")
        examples = FILE_LOADERS[name](Path(path))
    else:
        examples = LOADERS[name](Path(data))
    if ids:
        wanted = read_ids(ids)
        have = {e.uid for e in examples}
        missing = [i for i in wanted if i not in have]
        if len(missing) == len(wanted):
            raise ValueError(f"task {name!r}: none of the {len(wanted)} ids in {ids} is an item of the task")
        keep = set(wanted)
        # ids the task skips (e.g. ASDiv problems without a numeric answer) are not evaluated
        examples = [e for e in examples if e.uid in keep]
    if tools is not None:
        for e in examples:
            e.tools = tuple(tools)
    if limit is not None and limit < len(examples):
        examples = random.Random(seed).sample(examples, limit)
    return examples


# -- the same sets from the Hugging Face hub (for users with network; not exercised here: no network) ----------
HUB = {
    "nq": ("google-research-datasets/nq_open", None, "validation"),
    "webquestions": ("stanfordnlp/web_questions", None, "test"),
    "triviaqa": ("mandarjoshi/trivia_qa", "rc.nocontext", "validation"),
    **{f"mlqa_{lang}": ("facebook/mlqa", f"mlqa.en.{lang}", "test") for lang in MLQA_LANGS},
}


def _hub_examples(task: str, rows) -> list[Example]:
    out = []
    for i, r in enumerate(rows):
        if task == "nq":
            out.append(Example(task, str(i), r["question"], list(r["answer"]), "qa", _without("QA")))
        elif task == "webquestions":
            out.append(Example(task, str(i), r["question"], list(r["answers"]), "qa", _without("QA")))
        elif task == "triviaqa":
            a = r["answer"]
            out.append(Example(task, r.get("question_id", str(i)), r["question"], [a["value"], *a.get("aliases", [])],
                               "qa", _without("QA")))
        else:  # mlqa_<lang>: English context, question in <lang>
            out.append(Example(task, r["id"], f"{r['context']}\n{r['question']}", list(r["answers"]["text"]), "mlqa",
                               ALL_TOOLS, {"lang": task.split("_")[1]}))
    return out


def load_hub_task(name: str, limit: int | None = None, seed: int = 0) -> list[Example]:
    """A task by its hub name (needs network, or a populated HF cache)."""
    if name not in HUB:
        raise ValueError(f"no hub source for {name!r}; hub tasks: {', '.join(HUB)} (the others load from files)")
    try:
        from datasets import load_dataset

        repo, config, split = HUB[name]
        rows = load_dataset(repo, config, split=split)
    except Exception as exc:  # offline, unknown repo, schema change: say what and where
        raise RuntimeError(f"could not load {name} from the hub ({HUB[name][0]}): {type(exc).__name__}: {exc}. "
                           "Without network, point eval.data_dir at local files instead.") from exc
    examples = _hub_examples(name, rows)
    if limit is not None and limit < len(examples):
        examples = random.Random(seed).sample(examples, limit)
    return examples
