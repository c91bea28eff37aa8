"""The tool interface and registry.

A tool is a stage a CPU worker can hold: ``setup()`` loads what it needs once (an index, a model), and the one
batch entry point, ``call(requests)``, maps a batch of requests to ``ToolResult``s. Tools implement ``run`` (one
request) or ``run_batch`` (many at once); either returns a string, or ``None`` for input the tool rejects (the
paper drops such calls). ``call`` catches what a tool raises, per request, logs each error type once, and
reports it as ``tool_exception: <Type>: <message>``, counted apart from rejected inputs.

Each tool declares its options as a dataclass (``Options``): a misspelt or unknown key is an error naming the
valid ones. Each tool also owns its selection rule (``select``): which texts it annotates (DESIGN §1.3).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

log = logging.getLogger("toolformer.tools")

NO_RESULT = "no_result"
TOOL_EXCEPTION = "tool_exception"


@dataclass(frozen=True)
class ToolRequest:
    input: str
    # What the tool may know about the text being annotated, e.g. the document date for the Calendar.
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolResult:
    text: str | None
    error: str | None = None  # None with a text; NO_RESULT (input rejected) or "tool_exception: Type: message"


@dataclass
class Selection:
    """A tool's decision on one text: whether it annotates it, which rule decided, what the tool is told."""

    passed: bool
    reason: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class NoOptions:
    pass


class Tool(abc.ABC):
    name: ClassVar[str]
    # Whether the input is written in quotes inside a call: [QA("Who ...?")] but [Calculator(1 + 2)].
    quote_input: ClassVar[bool] = False
    # What a well-formed input looks like, for constrained sampling (``annotate.call_syntax=constrained``);
    # it never admits "]", so the call cannot close early. Quoted tools take one line of text without what the call
    # parser reads as structure ("[", "]", an arrow "->" or "→", a quote), so every closed sample parses.
    input_regex: ClassVar[str] = '[^"\\[\\]\\n>→]{1,80}'
    Options: ClassVar[type] = NoOptions

    def __init__(self, **options: Any):
        self.options = make_options(self.Options, options, self.name)
        self._logged: set[str] = set()

    def setup(self) -> None:
        """Load heavy state. Called once per worker before the first batch."""

    @classmethod
    def select(cls, text, corpus_cfg, seed: int = 0) -> Selection:
        """Whether this tool annotates ``text`` (a ``TextChunk``); by default every text."""
        return Selection(True, "all_texts")

    @classmethod
    def call_regex(cls) -> str:
        """What a sample must be after the opening ``[``: ``Name(input)]`` (the closing bracket included)."""
        arg = f'"{cls.input_regex}"' if cls.quote_input else cls.input_regex
        return re.escape(cls.name) + r"\(" + arg + r"\)\]"

    @classmethod
    def call_regex_in(cls, before: str) -> str:
        """The pattern of a call placed after ``before`` (``annotate.call_syntax=operands``): tools whose inputs
        are drawn from the text narrow it there (the Calculator's operands); by default ``call_regex()``."""
        return cls.call_regex()

    def run(self, request: ToolRequest) -> str | None:
        """One call: a string, or None for input the tool rejects."""
        raise NotImplementedError

    def run_batch(self, requests: Sequence[ToolRequest]) -> list[str | None]:
        """Many calls at once (tools that batch a model or an index override this)."""
        return [self.run(r) for r in requests]

    def call(self, requests: Sequence[ToolRequest]) -> list[ToolResult]:
        """The one batch entry point: results, rejected inputs and exceptions, request by request."""
        if not requests:
            return []
        try:
            outs = self.run_batch(requests)
        except Exception as exc:  # noqa: BLE001 - a tool bug costs the calls it breaks, never the shard
            if len(requests) == 1:
                return [self._failed(exc)]
            return [r for i in range(len(requests)) for r in self.call(requests[i : i + 1])]
        return [ToolResult(o, None) if isinstance(o, str) and o else ToolResult(None, NO_RESULT) for o in outs]

    def __call__(self, requests: Sequence[ToolRequest]) -> list[str | None]:
        """The results' texts (None for a rejected input or a failure)."""
        return [r.text for r in self.call(requests)]

    def _failed(self, exc: BaseException) -> ToolResult:
        kind = type(exc).__name__
        if kind not in self._logged:  # once per error type and tool instance: a bug shows, a storm does not
            self._logged.add(kind)
            log.warning("%s raised %s: %s (later %s errors of this tool are counted, not logged)",
                        self.name, kind, exc, kind)
        return ToolResult(None, f"{TOOL_EXCEPTION}: {kind}: {str(exc)[:200]}")


def make_options(cls: type, given: dict[str, Any], tool: str = "") -> Any:
    """``cls(**given)``, refusing keys the dataclass does not declare with a message naming the valid ones."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for tool {tool or cls.__name__}; "
                         f"valid: {', '.join(valid) or '(none)'}")
    return cls(**given)


_REGISTRY: dict[str, Callable[..., Tool]] = {}


def register(cls: type[Tool]) -> type[Tool]:
    _REGISTRY[cls.name.lower()] = cls
    return cls


def tool_names() -> list[str]:
    return sorted(cls.name for cls in _REGISTRY.values())


def canonical_name(name: str) -> str:
    try:
        return _REGISTRY[name.lower()].name
    except KeyError:
        raise KeyError(f"unknown tool {name!r}; known: {', '.join(tool_names())}") from None


def build_tool(name: str, **options: Any) -> Tool:
    """Instantiate a registered tool by (case-insensitive) name with its config options."""
    canonical_name(name)
    return _REGISTRY[name.lower()](**options)


def tool_class(name: str) -> type[Tool]:
    canonical_name(name)
    return _REGISTRY[name.lower()]
