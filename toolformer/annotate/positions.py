"""Where to sample calls: positions with ``p_i > τs``, at most the k best (DESIGN §1.2 step 2).

Engines may give bounds instead of exact values (vLLM's top-20 log-probs). A position is settled without
more work when its upper bound cannot reach the selection; only positions whose bound straddles the bar
are computed exactly, with one one-token request per position that returns every start variant.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from toolformer.engine.base import Engine, StartProbs

_NUMBER_JOINERS = ".,"  # "1,200" and "3.5" are one number: a call between their parts would split it


def is_boundary(text: str, at: int) -> bool:
    """Whether a call inserted before ``text[at]`` sits between words or numbers, never inside one: not
    between two letters or digits (``70|3``, ``app|les``), nor around a decimal point or thousands separator
    that joins digits (``3|.5``, ``3.|5``, ``1,|200``)."""
    if at <= 0 or at >= len(text):
        return True
    before, here = text[at - 1], text[at]
    if before.isalnum() and here.isalnum():
        return False
    if here in _NUMBER_JOINERS and before.isdigit() and text[at + 1 : at + 2].isdigit():
        return False
    if before in _NUMBER_JOINERS and here.isdigit() and text[at - 2 : at - 1].isdigit():
        return False
    return True


def boundary_mask(text: str, char_starts: Sequence[int]) -> np.ndarray:
    """Per text token, whether a call before it would sit at a boundary (``char_starts[j]``: where the
    call would be inserted before token j, its leading space skipped)."""
    return np.array([is_boundary(text, int(c)) for c in char_starts], dtype=bool)


def _bar(lower: np.ndarray, tau_s: float, k: int) -> float:
    """A value every selected position must exceed: τs, or the k-th best certain lower bound."""
    certain = np.sort(lower[lower > tau_s])[::-1]
    return max(tau_s, float(certain[k - 1])) if len(certain) >= k else tau_s


def needs_exact(probs: StartProbs, tau_s: float, k: int) -> np.ndarray:
    """Indices whose exact value could change the selection."""
    bar = _bar(probs.lower, tau_s, k)
    return np.flatnonzero(~probs.exact & (probs.upper > bar) & (probs.upper > tau_s))


def choose(p: np.ndarray, tau_s: float, k: int) -> list[tuple[int, float]]:
    """(index, p) of the at most k best positions with ``p > τs``, best first (ties: earlier first)."""
    idx = np.flatnonzero(p > tau_s)
    order = sorted(idx.tolist(), key=lambda j: (-p[j], j))[:k]
    return [(j, float(p[j])) for j in order]


def select_positions(
    engine: Engine,
    seqs: Sequence[Sequence[int]],
    starts: Sequence[int],
    tau_s: float,
    k: int,
    top_logprobs: int | None = None,
    bounds: bool = True,
    allowed: Sequence[np.ndarray | None] | None = None,
) -> tuple[list[list[tuple[int, float]]], dict]:
    """Selected (text index, p_start) per sequence, and counters of how much exact work was needed.

    ``seqs[b] = P(x) + x`` and ``starts[b] = len(P(x))``; text index j means the call goes before x[j].
    ``top_logprobs`` caps how many log-probs per position an engine may use for its bounds. ``allowed[b]`` (a
    boolean per text position, e.g. ``boundary_mask``) rules positions out before selection: the k best are then
    chosen among the allowed ones.
    """
    probs = engine.start_probs(seqs, starts, top_logprobs)
    n_ruled_out = 0
    if allowed is not None:
        for p, ok in zip(probs, allowed):
            if ok is None:
                continue
            ok = np.asarray(ok, dtype=bool)[: len(p.lower)]
            off = np.flatnonzero(~ok)
            n_ruled_out += len(off)
            p.lower, p.upper = np.array(p.lower, dtype=float), np.array(p.upper, dtype=float)
            p.lower[off] = -1.0  # below any τs (τs >= 0), and exact: never computed, never chosen
            p.upper[off] = -1.0
    # Without bounds (the benchmark's ablation), every position not already exact is computed exactly.
    todo = [needs_exact(p, tau_s, k) if bounds else np.flatnonzero(~p.exact) for p in probs]
    prefixes = [list(seq[: start + j]) for seq, start, idx in zip(seqs, starts, todo) for j in idx]
    per_pos = np.exp(engine.token_logprobs_after(prefixes, engine.start_ids)).sum(1) if prefixes else np.zeros(0)
    out, cursor = [], 0
    for p, idx in zip(probs, todo):
        values = p.lower.copy()
        values[idx] = per_pos[cursor : cursor + len(idx)]
        cursor += len(idx)
        out.append(choose(values, tau_s, k))
    stats = {
        "positions_scanned": int(sum(len(p.lower) for p in probs)),
        "positions_exact_from_topk": int(sum(p.exact.sum() for p in probs)),
        "positions_refined": int(sum(len(i) for i in todo)),
        "positions_ruled_out": int(n_ruled_out),
    }
    return out, stats
