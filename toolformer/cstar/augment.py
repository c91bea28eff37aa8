"""The augmented corpus C* (DESIGN §1.4), as Arrow steps on one part of a run at a time.

Surviving calls of all tools are inserted into their text at their positions, one call per position (the
larger gain wins), several per text when several survive. Texts without a surviving call are dropped, or kept
as they are (``keep_uncalled``: the paper's C*, "the exact same texts as C" apart from the calls). At most
``max_per_tool`` texts per tool carry that tool's calls: those where its best gain is largest (ties: the
smaller text id). ``cstar.py`` runs these steps over a whole run with Ray tasks.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from toolformer.calls import Call, linearize
from toolformer.schemas import CSTAR
from toolformer.tools import tool_class

KEPT = pa.schema([("text_id", pa.string()), ("tool", pa.string()), ("position", pa.int32()),
                  ("char_start", pa.int32()), ("input", pa.string()), ("result", pa.string()), ("gain", pa.float64())])
BEST = pa.schema([("tool", pa.string()), ("text_id", pa.string()), ("gain", pa.float64())])


def in_position_set(flat: pa.StructArray, name: str | None) -> pa.BooleanArray:
    """Per candidate, whether the position set ``name`` chose its position (``annotate.position_sets``); every
    candidate when ``name`` is None."""
    if name is None:
        return pa.array([True] * len(flat), pa.bool_())
    if flat.type.get_field_index("position_sets") < 0:
        raise ValueError(f"merge.position_set={name!r}, but these annotations record no position sets "
                         "(annotated without annotate.position_sets)")
    sets = flat.field("position_sets")
    hits = pc.list_parent_indices(sets).filter(pc.fill_null(pc.equal(sets.flatten(), name), False))
    return pc.is_in(pa.array(range(len(flat)), pa.int64()), value_set=pc.cast(hits, pa.int64()))


def kept_candidates(annotations: pa.Table, losses: bool = False, position_set: str | None = None) -> pa.Table:
    """One row per kept candidate that has a result (KEPT schema, plus the three losses when asked); with
    ``position_set``, only the candidates at positions that set chose."""
    cands = annotations.column("candidates").combine_chunks()
    parents = pc.list_parent_indices(cands)
    flat = cands.flatten()
    mask = pc.and_(pc.fill_null(flat.field("kept"), False), pc.is_valid(flat.field("result")))
    if position_set is not None:
        mask = pc.and_(mask, in_position_set(flat, position_set))
    rows = parents.filter(mask)
    cols = {"text_id": annotations.column("text_id").take(rows), "tool": annotations.column("tool").take(rows)}
    for name in ("position", "char_start", "input", "result", "gain"):
        cols[name] = flat.field(name).filter(mask)
    table = pa.table(cols, schema=KEPT)
    if losses:
        for name in ("loss_none", "loss_call_only", "loss_call_result"):
            table = table.append_column(name, flat.field(name).filter(mask))
    return table


# A number as a text writes it: digits with optional thousands separators and decimals (not part of a word).
_TEXT_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])|(?<![\w\d])-?\.\d+")


def next_number(text: str, at: int) -> float | None:
    """The first number the text gives from ``text[at]`` on (None when there is none)."""
    m = _TEXT_NUMBER.search(text[at:])  # the text as it reads from there: "70|3" gives 3
    if m is None:
        return None
    try:
        return float(m.group(0).replace(",", ""))
    except ValueError:
        return None


def numbers_agree(result: float, written: float) -> bool:
    """Equal at the Calculator's precision (it rounds to 2 decimals): 0.625 written agrees with 0.62 or 0.63."""
    return abs(result - written) <= 0.005 + 1e-9 * max(1.0, abs(written))


def result_agrees(text: str, at: int, result: str | None) -> bool | None:
    """Whether a Calculator result inserted before ``text[at]`` agrees with the next number the text gives:
    True / False, or None when there is nothing to compare (no number follows, or the result is not a number).
    "Answer: 70[Calculator(19 * 37) -> 703] 3" disagrees (the text then gives 3)."""
    try:
        value = float(str(result).replace(",", ""))
    except (TypeError, ValueError):
        return None
    written = next_number(text, at)
    return None if written is None else numbers_agree(value, written)


def result_check(kept: pa.Table, texts: dict[str, str], tools: tuple[str, ...] = ("Calculator",)) -> pa.Table:
    """Kept candidates of ``tools`` whose result the text contradicts (``result_agrees`` is False) removed;
    ``texts`` maps text_id to the original text the candidates' ``char_start`` points into."""
    if kept.num_rows == 0:
        return kept
    ok = [not (tool in tools and result_agrees(texts.get(tid, ""), cs, res) is False)
          for tid, tool, cs, res in zip(*(kept.column(c).to_pylist() for c in ("text_id", "tool", "char_start", "result")))]
    return kept.filter(pa.array(ok, pa.bool_()))


def copy_errors(text: str, calls: list[dict], tools: tuple[str, ...] = ("Calculator",)) -> tuple[int, int]:
    """(calls compared, calls whose result disagrees with the next number after the call) in a C* text: the
    copy-error rate's counts (a call with no number after it is not compared)."""
    compared = wrong = 0
    for c in calls or []:
        if c.get("tool") not in tools or c.get("char_end") is None:
            continue
        agrees = result_agrees(text, int(c["char_end"]), c.get("result"))
        if agrees is None:
            continue
        compared += 1
        wrong += not agrees
    return compared, wrong


def best_gains(kept: pa.Table) -> pa.Table:
    """(tool, text_id, gain): each text's best kept gain per tool."""
    best = kept.group_by(["tool", "text_id"], use_threads=False).aggregate([("gain", "max")])
    return pa.table({"tool": best.column("tool"), "text_id": best.column("text_id"), "gain": best.column("gain_max")},
                    schema=BEST)


def top_per_tool(best: pa.Table, k: int) -> pa.Table:
    """The k largest gains per tool (ties: smaller text id first); memory bounded by the input and k."""
    out = [BEST.empty_table()]
    for tool in pc.unique(best.column("tool")).to_pylist():
        mine = best.filter(pc.equal(best.column("tool"), tool))
        out.append(mine.sort_by([("gain", "descending"), ("text_id", "ascending")]).slice(0, k))
    return pa.concat_tables(out)


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
        # A call before a word that follows a space (or opens the text) reads "... [Tool(x) -> r] word"; glued
        # tokens stay glued.
        sep = " " if at == 0 or text[at - 1].isspace() else ""
        pieces.append(call + sep)
        calls.append(
            dict(tool=c["tool"], input=c["input"], result=c["result"], position=c["position"],
                 char_start=out_len, char_end=out_len + len(call), gain=c["gain"])
        )
        out_len += len(call) + len(sep)
        cursor = at
    pieces.append(text[cursor:])
    return "".join(pieces), calls


def augment(texts: pa.Table, kept: pa.Table, allowed: pa.Table, shard_id: str,
            keep_uncalled: bool = False) -> pa.Table:
    """C* rows of one part: its texts (in their order) with the kept calls of the allowed (tool, text) pairs;
    with ``keep_uncalled`` every text of ``texts``, those without an allowed call exactly as they are."""
    by_text: dict[str, list[dict]] = {}
    if kept.num_rows and allowed.num_rows:
        calls = kept.join(allowed.select(["tool", "text_id"]), keys=["tool", "text_id"], join_type="inner")
        for c in calls.to_pylist():
            by_text.setdefault(c["text_id"], []).append(c)
    if not by_text and not keep_uncalled:
        return CSTAR.empty_table()
    mine = texts if keep_uncalled else texts.filter(
        pc.is_in(texts.column("text_id"), value_set=pa.array(list(by_text), pa.string())))
    rows = []
    for tid, doc_id, text in zip(*(mine.column(c).to_pylist() for c in ("text_id", "doc_id", "text"))):
        new, inserted = insert_calls(text, by_text[tid]) if tid in by_text else (text, [])
        rows.append(dict(text_id=tid, doc_id=doc_id, shard_id=shard_id, text=new, n_calls=len(inserted), calls=inserted))
    return pa.Table.from_pylist(rows, schema=CSTAR)
