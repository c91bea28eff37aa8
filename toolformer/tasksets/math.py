"""The paper's math sets (ASDiv, SVAMP, MAWPS), any math file of your own, the templated arithmetic set, and a
dataset's own n-fold split (e.g. ASDiv's ``nfolds/``): read by the evaluation and by the math corpus alike."""

from __future__ import annotations

import json
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from toolformer.tasksets.files import Example, read_jsonl


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
        meta = {"grade": p.get("Grade"), "operation": (p.findtext("Solution-Type") or "").strip() or None}
        out.append(Example(task, p.get("ID"), text, [answer.replace(",", "")], "math", meta=meta))
    return out


def stratified_order(examples: list[Example], keys: tuple[str, ...] = ("grade", "operation"),
                     seed: int = 0) -> list[Example]:
    """The examples in a seeded order whose every prefix is a sample stratified on ``keys`` (their ``meta``):
    each stratum's first example comes before any stratum's second (a prefix as long as the strata covers every
    one), then each stratum's k-th example sits at (k + u) / n_stratum of the way (u: a seeded offset per
    stratum), so a prefix of any length holds each stratum in proportion. Within a stratum the order is a hash of
    (seed, id): the same examples for the same seed whatever the file order, never the file's order itself."""
    import hashlib

    def h(*parts) -> int:
        return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:12], 16)

    strata: dict[tuple, list[Example]] = {}
    for e in examples:
        strata.setdefault(tuple(e.meta.get(k) for k in keys), []).append(e)
    placed = []
    for key, items in strata.items():
        items = sorted(items, key=lambda e: h(seed, e.uid))
        u = h(seed, "stratum", *key) / 16**12
        placed += [((k > 0, (k + u) / len(items), h(seed, e.uid)), e) for k, e in enumerate(items)]
    return [e for _, e in sorted(placed, key=lambda pe: pe[0])]


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
