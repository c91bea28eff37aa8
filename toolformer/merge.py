"""The augmented corpus C* (DESIGN §1.4).

Surviving calls of all tools are inserted into their text at their positions, one call per position
(the larger gain wins), several per text when several survive. Texts without a surviving call are
dropped. At most ``max_per_tool`` texts per tool carry that tool's calls (the ones with the largest gains).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from toolformer.calls import Call, linearize
from toolformer.tools import tool_class


def kept_calls(annotation_rows: Iterable[dict]) -> dict[str, list[dict]]:
    """text_id → kept candidates (with their tool), from annotation rows."""
    out: dict[str, list[dict]] = defaultdict(list)
    for row in annotation_rows:
        for cand in row.get("candidates") or []:
            if cand.get("kept") and cand.get("result") is not None:
                out[row["text_id"]].append({**cand, "tool": row["tool"]})
    return out


def cap_per_tool(calls: dict[str, list[dict]], max_per_tool: int) -> dict[str, list[dict]]:
    """Keep a tool's calls in at most ``max_per_tool`` texts: those where its best gain is largest."""
    best: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for text_id, cands in calls.items():
        per_tool: dict[str, float] = {}
        for c in cands:
            per_tool[c["tool"]] = max(per_tool.get(c["tool"], float("-inf")), c["gain"])
        for tool, gain in per_tool.items():
            best[tool].append((gain, text_id))
    allowed = {
        tool: {tid for _, tid in sorted(pairs, key=lambda p: (-p[0], p[1]))[:max_per_tool]}
        for tool, pairs in best.items()
    }
    return {
        tid: kept for tid, cands in calls.items() if (kept := [c for c in cands if tid in allowed[c["tool"]]])
    }


def insert_calls(text: str, cands: list[dict]) -> tuple[str, list[dict]]:
    """Insert calls (one per position, larger gain first) at their char offsets; returns (text, calls)."""
    by_pos: dict[int, dict] = {}
    for c in sorted(cands, key=lambda c: (-c["gain"], c["tool"], c["input"])):
        by_pos.setdefault(c["position"], c)
    chosen = sorted(by_pos.values(), key=lambda c: c["position"])
    pieces, calls, cursor, out_len = [], [], 0, 0
    for c in chosen:
        at = c["char_start"]
        pieces.append(text[cursor:at])
        out_len += at - cursor
        call = linearize(Call(c["tool"], c["input"], c["result"]), with_result=True,
                         quote_input=tool_class(c["tool"]).quote_input)
        # A call before a word that follows a space reads "... [Tool(x) -> r] word"; glued tokens stay glued.
        sep = " " if at > 0 and text[at - 1].isspace() else ""
        pieces.append(call + sep)
        calls.append(
            dict(tool=c["tool"], input=c["input"], result=c["result"], position=c["position"],
                 char_start=out_len, char_end=out_len + len(call), gain=c["gain"])
        )
        out_len += len(call) + len(sep)
        cursor = at
    pieces.append(text[cursor:])
    return "".join(pieces), calls


def merge(annotation_rows: Iterable[dict], texts: dict[str, dict], max_per_tool: int = 25_000) -> list[dict]:
    """C* rows (``text_id, doc_id, text, n_calls, calls``), in text_id order."""
    calls = cap_per_tool(kept_calls(annotation_rows), max_per_tool)
    out = []
    for text_id in sorted(calls):
        source = texts[text_id]
        text, inserted = insert_calls(source["text"], calls[text_id])
        out.append(dict(text_id=text_id, doc_id=source["doc_id"], text=text, n_calls=len(inserted), calls=inserted))
    return out
