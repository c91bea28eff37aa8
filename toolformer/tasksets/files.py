"""What every evaluation set shares: the ``Example`` it is read into, the tool subsets, and a reader of the local
JSONL files the sets ship as (``.gz`` too; a bad line is an error naming it)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

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


def read_jsonl(path: str | Path) -> Iterator[Any]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i}: not a JSON line ({exc})") from exc
