"""The tool interface and registry.

A tool is a stage a CPU worker can hold: ``setup()`` loads what it needs once (an index, a model), and a
call maps a batch of requests to results. A result is a string, or ``None`` when the input is invalid (the
paper drops such calls).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence


@dataclass(frozen=True)
class ToolRequest:
    input: str
    # What the tool may know about the text being annotated, e.g. the document date for the Calendar.
    context: dict[str, Any] = field(default_factory=dict)


class Tool(abc.ABC):
    name: ClassVar[str]
    # Whether the input is written in quotes inside a call: [QA("Who ...?")] but [Calculator(1 + 2)].
    quote_input: ClassVar[bool] = False

    def setup(self) -> None:
        """Load heavy state. Called once per worker before the first batch."""

    @abc.abstractmethod
    def run(self, request: ToolRequest) -> str | None:
        """One call. Must not raise on bad input: return None."""

    def __call__(self, requests: Sequence[ToolRequest]) -> list[str | None]:
        out: list[str | None] = []
        for request in requests:
            try:
                out.append(self.run(request))
            except Exception:  # a tool bug must cost one call, not the shard; the caller counts the None
                out.append(None)
        return out


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
