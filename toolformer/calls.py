"""API-call syntax: ``[Tool(input) -> result]`` (DESIGN §1.1).

The paper writes ``<API>``, ``</API>`` and ``→`` but trains on the plain strings ``[``, ``]`` and ``->`` so
that no token is added to the vocabulary; so do we. The call without a result, ``e(c, ε)``, is
``[Tool(input) -> ]`` in the paper's notation (``NoResultForm.ARROW``) or ``[Tool(input)]``
(``NoResultForm.BARE``, what most re-implementations use); a run records which one it used.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

CALL_START = "["
CALL_END = "]"
RESULT_ARROW = "->"
# Model output sometimes uses the paper's typeset arrow or a fat arrow.
_ARROWS = ("->", "→", "=>")
_QUOTES = {'"': '"', "'": "'", "“": "”", "«": "»", "„": "“"}
_TOOL_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_WS = re.compile(r"\s+")
# A whole call with its result inside a text (what decoding strips from an answer).
CALL_WITH_RESULT_PATTERN = re.compile(r"\s?\[[A-Za-z]+\(.*?\)\s*(?:->|→)[^\]]*\]")
# The result part of a call: group 1 is the result (what finetuning may mask).
RESULT_PATTERN = re.compile(r"->\s?([^\]]*)\]")


class NoResultForm(str, enum.Enum):
    ARROW = "arrow"  # [Tool(input) -> ]   the paper's e(c, ε)
    BARE = "bare"  # [Tool(input)]


@dataclass(frozen=True)
class Call:
    tool: str
    input: str
    result: str | None = None


def clean_field(text: str) -> str:
    """Make a string safe inside a call: one line, no brackets, no arrow.

    Results come from tools (Wikipedia snippets may hold ``[1]``); without this a ``]`` inside a result would
    end the call early for every reader of the augmented corpus.
    """
    text = text.replace("[", "(").replace("]", ")")
    for arrow in _ARROWS:
        text = text.replace(arrow, " ")
    return _WS.sub(" ", text).strip()


def format_input(value: str, quote: bool) -> str:
    value = clean_field(value)
    if quote:
        return '"' + value.replace('"', "'") + '"'
    return value


def linearize(
    call: Call,
    *,
    with_result: bool = True,
    quote_input: bool = False,
    no_result_form: NoResultForm | str = NoResultForm.ARROW,
) -> str:
    """``e(c, r)`` when ``with_result`` (result ``None`` counts as empty), else ``e(c, ε)``."""
    head = f"{CALL_START}{call.tool}({format_input(call.input, quote_input)})"
    if with_result:
        return f"{head} {RESULT_ARROW} {clean_field(call.result or '')}{CALL_END}"
    if NoResultForm(no_result_form) is NoResultForm.ARROW:
        return f"{head} {RESULT_ARROW} {CALL_END}"
    return f"{head}{CALL_END}"


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
        return text[1:-1].strip()
    return text


def _find_arrow(text: str, start: int) -> tuple[int, int]:
    """First ``)`` followed (after spaces) by an arrow: (index of ``)``, index after the arrow), or (-1, -1)."""
    for m in re.finditer(r"\)\s*(->|→|=>)", text[start:]):
        return start + m.start(), start + m.end()
    return -1, -1


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


def parse_call(text: str, tools: Iterable[str] | None = None) -> Call | None:
    """Parse one call, tolerant of what a sampling LM writes.

    Accepts the text with or without the surrounding brackets, with or without a result, spaces around
    names and arrows, quoted or bare inputs, the typeset arrow, and a missing closing parenthesis before
    the end. Returns None when it is not a call (or names a tool outside ``tools``).
    """
    if text is None:
        return None
    s = text.strip()
    if s.startswith(CALL_START):
        s = s[1:]
    if s.endswith(CALL_END):
        s = s[:-1]
    if CALL_START in s or CALL_END in s or "\n" in s:
        return None
    m = _TOOL_NAME.match(s)
    if not m:
        return None
    name = m.group(1)
    if tools is not None:
        canon = {t.lower(): t for t in tools}
        if name.lower() not in canon:
            return None
        name = canon[name.lower()]
    body_start = m.end()
    close, after = _find_arrow(s, body_start)
    if close >= 0:
        raw_input, result = s[body_start:close], s[after:].strip()
    else:
        tail = s[body_start:].rstrip()
        if not tail.endswith(")"):
            return None  # e.g. a sample cut mid-input
        raw_input, result = tail[:-1], None
    value = _unquote(raw_input)
    quoted = value != raw_input.strip()
    if not quoted and not _balanced(raw_input):
        return None
    return Call(name, value, result if result else None)


@dataclass(frozen=True)
class CallSpan:
    call: Call
    start: int  # char offset of "["
    end: int  # char offset after "]"


def find_calls(text: str, tools: Sequence[str]) -> Iterator[CallSpan]:
    """Calls of the given tools inside an augmented text, in order."""
    names = "|".join(re.escape(t) for t in sorted(tools, key=len, reverse=True))
    for m in re.finditer(r"\[(?:%s)\(" % names, text):
        end = text.find(CALL_END, m.end())
        if end < 0:
            return
        call = parse_call(text[m.start() : end + 1], tools)
        if call is not None:
            yield CallSpan(call, m.start(), end + 1)


def start_token_ids(tokenizer) -> list[int]:
    """Ids of every vocabulary token whose text is ``[`` or `` [`` (BPE vocabularies have both)."""
    ids = []
    for tok_id in range(len(tokenizer)):
        text = tokenizer.decode([tok_id], clean_up_tokenization_spaces=False)
        if text in (CALL_START, " " + CALL_START):
            ids.append(tok_id)
    if not ids:
        raise ValueError("tokenizer has no token for '[' or ' [': calls cannot be started")
    return ids
