"""Calculator: + − × ÷ with parentheses and decimals, rounded to 2 decimals (the paper's tool).

A recursive-descent parser over a whitelist of tokens, never ``eval``. Work is bounded before parsing
starts (input length, digits per number, nesting depth), so hostile input such as ``9**9**9``,
``__import__('os')`` or 10,000 nested parentheses returns None in microseconds.

Departure from the paper (option ``skip_noops``, on by default): an input that calculates nothing, a number
alone (``2``, ``(2)``) or an identity (``x*1``, ``1*x``, ``x+0``, ``0+x``, ``x-0``, ``x/1``), gets no result.
``annotate.tool_options.Calculator.skip_noops=false`` gives the paper's tool, which answers those too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from toolformer.tools.base import Selection, Tool, ToolRequest, register
from toolformer.tools.heuristics import calculator_rule

MAX_CHARS = 256
MAX_DIGITS = 24
MAX_DEPTH = 32
MAX_ABS = 1e15  # beyond this the float's 2-decimal rendering is meaningless

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"|(?P<op>[-+*/()×÷−–xX])"
    r")"
)
_OPS = {"×": "*", "x": "*", "X": "*", "÷": "/", "−": "-", "–": "-"}

# What constrained sampling lets the model write: two to four operands (a number, or one level of parentheses)
# joined by the four operations. A no-op (a number alone) cannot be written, and parentheses always balance.
_NUM = r"-?[0-9]{1,8}(?:\.[0-9]{1,4})?"
_OP = r" ?[+\-*/] ?"
_TERM = rf"(?:{_NUM}|\({_NUM}(?:{_OP}{_NUM}){{0,2}}\))"
CONSTRAINED_INPUT = rf"{_TERM}(?:{_OP}{_TERM}){{1,3}}"

# ``call_syntax=operands``: the operands are numbers the text has written before the call (a per-text grammar).
# A word problem's calculation combines its own numbers; a sampled expression over invented numbers is what
# made free and constrained samples miss (issue 21: `33 - 21` before 22). Two or three operands, one level of
# parentheses: one- and two-step problems.
_TEXT_NUMBER = re.compile(r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")
MAX_OPERANDS = 16


def text_operands(before: str, limit: int = MAX_OPERANDS) -> list[str]:
    """The distinct numbers written in ``before``, in order, thousands separators dropped (the last ``limit``)."""
    seen = dict.fromkeys(m.group(0).replace(",", "") for m in _TEXT_NUMBER.finditer(before))
    return list(seen)[-limit:]


def operands_input_regex(operands: list[str]) -> str:
    alt = "|".join(re.escape(n) for n in sorted(operands, key=lambda n: (-len(n), n)))
    num = f"(?:{alt})"
    term = rf"(?:{num}|\({num}(?:{_OP}{num}){{1,2}}\))"
    return rf"{term}(?:{_OP}{term}){{1,2}}"


class _Invalid(Exception):
    pass


def _tokenize(text: str) -> list[str | float]:
    tokens: list[str | float] = []
    pos, end = 0, len(text.rstrip())
    while pos < end:
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _Invalid
        if m.group("num") is not None:
            digits = m.group("num").replace(",", "")
            if len(digits) > MAX_DIGITS:
                raise _Invalid
            tokens.append(float(digits))
        else:
            op = m.group("op")
            tokens.append(_OPS.get(op, op))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[str | float]):
        self.tokens, self.i = tokens, 0
        self.operations = 0  # binary operations applied
        # ... of which not identities (x*1, 1*x, x+0, 0+x, x-0, x/1): none means the input calculates nothing
        self.effective = 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def expr(self, depth: int) -> float:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            self.count(rhs == 0 or (op == "+" and value == 0))
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> float:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            self.count(rhs == 1 or (op == "*" and value == 1))
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise _Invalid
            else:
                value /= rhs
            if not math.isfinite(value) or abs(value) > MAX_ABS * 1e6:
                raise _Invalid
        return value

    def count(self, identity: bool) -> None:
        self.operations += 1
        self.effective += not identity

    def factor(self, depth: int) -> float:
        if depth > MAX_DEPTH:
            raise _Invalid
        tok = self.take()
        if isinstance(tok, float):
            return tok
        if tok in ("+", "-"):
            value = self.factor(depth + 1)
            return value if tok == "+" else -value
        if tok == "(":
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise _Invalid
            return value
        raise _Invalid


def format_number(value: float) -> str:
    text = f"{round(value, 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def is_no_op(expression: str) -> bool:
    """Whether the input is a valid expression that calculates nothing: a number alone (``2``, ``(2)``, ``-2``)
    or identities only (``7 * 1``, ``0 + 7``, ``7 - 0``, ``7 / 1``): what ``calculate`` refuses with
    ``skip_noops``."""
    try:
        tokens = _tokenize(expression)
        parser = _Parser(tokens)
        parser.expr(0)
    except (_Invalid, RecursionError, OverflowError, ValueError, TypeError):
        return False
    return parser.i == len(tokens) and parser.effective == 0 and bool(tokens)


def calculate(expression: str, skip_noops: bool = True) -> str | None:
    """Evaluate an arithmetic expression; None for anything invalid, unsupported or too large, and, with
    ``skip_noops`` (our departure from the paper), for a no-op: an input without an operation between two operands
    (``2``, ``(2)``, ``-2``, ``3.0``) or with identities only (``x*1``, ``1*x``, ``x+0``, ``0+x``, ``x-0``,
    ``x/1``) calculates nothing, and a call that merely echoes a number would teach the model to copy, not to
    compute."""
    if not isinstance(expression, str) or not expression.strip() or len(expression) > MAX_CHARS:
        return None
    try:
        tokens = _tokenize(expression)
        parser = _Parser(tokens)
        value = parser.expr(0)
        if parser.i != len(tokens) or (skip_noops and parser.effective == 0):
            return None
    except (_Invalid, RecursionError, OverflowError, ValueError):
        return None
    if not math.isfinite(value) or abs(value) > MAX_ABS:
        return None
    return format_number(value)


@dataclass
class CalculatorOptions:
    # Our departure from the paper, on by default: a no-op input (a number alone, identities only) gets no result.
    skip_noops: bool = True


@register
class Calculator(Tool):
    name = "Calculator"
    quote_input = False
    input_regex = CONSTRAINED_INPUT
    Options = CalculatorOptions

    @classmethod
    def select(cls, text, corpus_cfg, seed: int = 0) -> Selection:
        """Three numbers where one is +, −, ×, ÷ of the other two, "=" and kin before a number, or 1 % of the
        texts with three numbers (deterministic per text)."""
        rule = calculator_rule(text.text, text.text_id, corpus_cfg.calculator_random_keep, seed)
        return Selection(rule is not None, rule or "no_arithmetic")

    @classmethod
    def call_regex_in(cls, before: str) -> str:
        """A call over the numbers written before it; the general pattern where the text has none."""
        operands = text_operands(before)
        if not operands:
            return cls.call_regex()
        return re.escape(cls.name) + r"\(" + operands_input_regex(operands) + r"\)\]"

    def run(self, request: ToolRequest) -> str | None:
        return calculate(request.input, skip_noops=self.options.skip_noops)
