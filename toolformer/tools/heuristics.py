"""The paper's text heuristics for the tools that do not see every text (DESIGN §1.3): arithmetic for the
Calculator, a foreign chunk with English around it for MT. Each tool's ``select`` calls its rule here."""

from __future__ import annotations

import bisect
import random
import re

_NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![.,]?\d)(\s?%| percent\b)?")
_WORD = re.compile(r"\w+|[^\w\s]")
_EQUALS = re.compile(r"(?:=|\bequals?\b|\bequal to\b|\btotal of\b|\baverage of\b)\s*[$€£]?\s*\d", re.I)
_MAX_NUMBERS = 400  # numbers examined per text: bounds the work on tables of figures
_WINDOW = 100  # tokens, the paper's window


def _numbers(text: str) -> list[tuple[int, float, int, bool]]:
    """(word-token index, value, decimals, is a percentage) of each number in the text."""
    word_starts = [m.start() for m in _WORD.finditer(text)]
    out = []
    for m in _NUMBER.finditer(text):
        digits = m.group(1).replace(",", "")
        if len(digits) > 15:
            continue
        decimals = len(m.group(2)) - 1 if m.group(2) else 0
        value = float(digits + (m.group(2) or ""))
        out.append((bisect.bisect_left(word_starts, m.start()), value, decimals, m.group(3) is not None))
        if len(out) >= _MAX_NUMBERS:
            break
    return out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _quotient_as_written(value: float, dec: int, pct: bool, p: float, q: float) -> bool:
    """Whether ``value`` (with ``dec`` decimals as written; a percentage when ``pct``) is p / q or q / p."""
    if value == 0 or p == 0 or q == 0:
        return False
    scale = 100 if pct else 1
    if not pct and dec < 1:  # a plain integer quotient is caught by the product check the other way round
        return False
    return any(round(scale * r, dec) == value for r in (p / q, q / p))


def _arithmetic_triple(numbers: list[tuple[int, float, int, bool]]) -> bool:
    """Three numbers within a 100-token window where one is a +, −, ×, ÷ of the other two; a quotient may be
    written as a percentage (the paper's own example: "400 (or 29%) passed out of 1400")."""
    for i, (pos_a, a, dec_a, pct_a) in enumerate(numbers):
        window = [(v, d, pct) for pos, v, d, pct in numbers[i + 1 :] if pos - pos_a <= _WINDOW][:30]
        if len(window) < 2:
            continue
        for j, (b, dec_b, pct_b) in enumerate(window):
            others = window[:j] + window[j + 1 :]
            cands = [a + b, abs(a - b)]
            if b != 1 and a != 1:
                cands.append(a * b)
            for c, dec, pct in others:
                if c == 0 or b == 0:
                    continue
                if any(_close(c, r) for r in cands):
                    return True
                # one of the three is the quotient of the other two, as written (decimals, percent)
                if (_quotient_as_written(c, dec, pct, a, b) or _quotient_as_written(a, dec_a, pct_a, b, c)
                        or _quotient_as_written(b, dec_b, pct_b, a, c)):
                    return True
                # a is the result of b and c
                if _close(a, b + c) or _close(a, abs(b - c)) or (b != 1 and c != 1 and _close(a, b * c)):
                    return True
    return False


def calculator_rule(text: str, key: str, random_keep: float = 0.01, seed: int = 0) -> str | None:
    """Which rule lets a text into Calculator annotation, or None (DESIGN §1.3)."""
    numbers = _numbers(text)
    if len(numbers) >= 3 and _arithmetic_triple(numbers):
        return "arithmetic"
    if _EQUALS.search(text):
        return "equals"
    if len(numbers) >= 3:
        rnd = random.Random(f"{seed}:{key}:calculator")
        if rnd.random() < random_keep:
            return "random"
    return None


_MT_WINDOW, _MT_STEP = 10, 5  # words: the paper's ~10-token chunk


def foreign_chunk(text: str, min_confidence: float = 0.8) -> str | None:
    """A non-English chunk (~10 words, language id > 0.8, letters not just digits or symbols) with English
    before and after it (DESIGN §1.3); returns the chunk's language, or None."""
    from toolformer.tools.langid import identify  # the language-id model loads on first use

    words = text.split()
    if len(words) < 3 * _MT_STEP:
        return None
    langs = []
    for start in range(0, max(1, len(words) - _MT_STEP), _MT_STEP):
        chunk = " ".join(words[start : start + _MT_WINDOW])
        lang, prob = identify(chunk)
        letters = sum(ch.isalpha() for ch in chunk)
        langs.append(lang if prob > min_confidence and letters >= len(chunk) / 2 else "?")
    for i, lang in enumerate(langs):
        if lang in ("en", "?"):
            continue
        # windows overlap by half: English must lie in windows that do not touch this one
        if "en" in langs[: max(0, i - 1)] and "en" in langs[i + 2 :]:
            return lang
    return None
