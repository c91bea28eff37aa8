"""Checks that cite their evidence: each check is a predicate over things read from the run (a failure record, a
log line, a marker, a Ray actor state), and a check whose evidence is missing fails. The report shows both."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable


class Checks:
    def __init__(self):
        self.items: dict[str, dict[str, Any]] = {}

    def add(self, name: str, evidence: dict[str, Any], ok: Callable[[dict], bool]) -> bool:
        """Record ``name``: true only when every piece of evidence is present and ``ok(evidence)`` holds."""
        missing = sorted(k for k, v in evidence.items() if v is None or v == "" or v == [] or v == {})
        try:
            passed = not missing and bool(ok(evidence))
        except Exception as exc:  # noqa: BLE001 - a check that cannot be evaluated is a failed check
            passed, evidence = False, {**evidence, "error": f"{type(exc).__name__}: {exc}"}
        self.items[name] = {"ok": passed, "evidence": evidence, **({"missing": missing} if missing else {})}
        return passed

    def ok(self) -> bool:
        return bool(self.items) and all(c["ok"] for c in self.items.values())

    def as_dict(self) -> dict:
        return self.items


def line(text: str, pattern: str) -> str | None:
    """The first line of ``text`` matching ``pattern`` (the evidence a check quotes), or None."""
    for ln in text.splitlines():
        if re.search(pattern, ln):
            return ln.strip()[:400]
    return None


def record(path: Path) -> dict | None:
    """A JSON record of the run (failure, quarantine, marker) with its path, or None when it does not exist."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        for k in ("traceback",):
            if isinstance(data.get(k), str):
                data[k] = data[k][-600:]
        if isinstance(data.get("attempts"), list):
            data["attempts"] = [{k: (v[:300] if isinstance(v, str) else v) for k, v in a.items() if k != "traceback"}
                                for a in data["attempts"]]
    return {"path": str(path), **data}
