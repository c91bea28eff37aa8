"""The paper's lenient scorers (DESIGN §1.6): is the answer among the first words of what the model wrote?

- LAMA and the temporal sets: the answer (or an alias) within the first 5 generated words.
- Math (ASDiv, SVAMP, MAWPS): the first number generated, or the first after ``=`` when there is one, equals
  the gold answer (commas and units tolerated).
- QA (WebQuestions, NQ, TriviaQA): an answer within the first 20 words.
- MLQA: an answer within the first 10 words.

Matching is on normalized text (lower case, punctuation and English articles dropped, whitespace collapsed,
SQuAD-style), and a multi-word answer must appear as a contiguous run of words.
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Iterable

WORD_CAPS = {"lama": 5, "temporal": 5, "qa": 20, "mlqa": 10}

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {"“", "”", "‘", "’", "«", "»", "—", "–", "…", "¿", "¡", "。", "，", "、"}
# A number: optional sign, digits with optional thousands separators, optional decimals; or a bare decimal.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|(?<![\w\d])-?\.\d+")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def first_words(text: str, n: int) -> str:
    """The first ``n`` words of a generation, normalized."""
    return " ".join(normalize(text).split()[:n])


def contains_answer(generation: str, answers: Iterable[str], max_words: int) -> bool:
    """Whether any answer, as whole words, is within the first ``max_words`` words of the generation."""
    head = f" {first_words(generation, max_words)} "
    for answer in answers:
        a = normalize(answer)
        if a and f" {a} " in head:
            return True
    return False


def first_number(text: str) -> float | None:
    """The answer a math generation gives: the first number after ``=`` if there is one, else the first number."""
    text = text or ""
    eq = text.find("=")
    for part in ((text[eq + 1 :], text) if eq >= 0 else (text,)):
        m = _NUMBER.search(part)
        if m:
            try:
                return float(m.group(0).replace(",", ""))
            except ValueError:
                continue
    return None


def math_correct(generation: str, gold: float | str) -> bool:
    """Exact for whole answers; for fractional ones, equal after rounding to the gold's precision (datasets
    store quotients to a few decimals, a model may write more or fewer)."""
    value = first_number(generation)
    try:
        target = float(str(gold).replace(",", ""))
    except ValueError:
        return False
    if value is None:
        return False
    if target == int(target):
        return abs(value - target) < 1e-6
    decimals = len(str(gold).split(".")[-1]) if "." in str(gold) else 2
    return round(value, min(decimals, 2)) == round(target, min(decimals, 2))


def score(task_kind: str, generation: str, answers: list[str]) -> bool:
    """Correct under the paper's lenient rule for a task kind: lama | temporal | qa | mlqa | math."""
    if task_kind == "math":
        return math_correct(generation, answers[0])
    if task_kind not in WORD_CAPS:
        raise ValueError(f"unknown task kind {task_kind!r}")
    return contains_answer(generation, answers, WORD_CAPS[task_kind])
