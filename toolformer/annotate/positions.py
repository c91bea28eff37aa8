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


def _masked(probs: Sequence[StartProbs], allowed: Sequence[np.ndarray | None] | None) -> list[StartProbs]:
    """Copies of ``probs`` with the positions ``allowed`` rules out at -1: below any τs (τs >= 0), and exact, so
    they are never computed and never chosen. The engine's own arrays stay untouched: several masks read them."""
    if allowed is None:
        return list(probs)
    out = []
    for p, ok in zip(probs, allowed):
        if ok is None:
            out.append(p)
            continue
        off = np.flatnonzero(~np.asarray(ok, dtype=bool)[: len(p.lower)])
        lower, upper = np.array(p.lower, dtype=float), np.array(p.upper, dtype=float)
        lower[off] = upper[off] = -1.0
        out.append(StartProbs(lower, upper))
    return out


def select_positions(
    engine: Engine,
    seqs: Sequence[Sequence[int]],
    starts: Sequence[int],
    tau_s: float,
    k: int,
    top_logprobs: int | None = None,
    bounds: bool = True,
    allowed: Sequence[np.ndarray | None] | None = None,
    allowed_sets: Sequence[Sequence[np.ndarray | None] | None] | None = None,
) -> tuple[list, dict]:
    """Selected (text index, p_start) per sequence, and counters of how much exact work was needed.

    ``seqs[b] = P(x) + x`` and ``starts[b] = len(P(x))``; text index j means the call goes before x[j].
    ``top_logprobs`` caps how many log-probs per position an engine may use for its bounds. ``allowed[b]`` (a
    boolean per text position, e.g. ``boundary_mask``) rules positions out before selection: the k best are then
    chosen among the allowed ones.

    ``allowed_sets`` (instead of ``allowed``): several such masks, each a position set (None: every position),
    read off ONE scan of the start probabilities; the result is then one selection per set, ``out[s][b]``, each
    exactly what ``allowed=allowed_sets[s]`` alone selects (the exact values a set needs are computed once for the
    union of what the sets need, and each set reads only the values it would have computed itself).
    """
    probs = engine.start_probs(seqs, starts, top_logprobs)
    several = allowed_sets is not None
    views = [_masked(probs, m) for m in (allowed_sets if several else [allowed])]
    # Without bounds (the benchmark's ablation), every allowed position not already exact is computed exactly.
    todo = [[needs_exact(p, tau_s, k) if bounds else np.flatnonzero(~p.exact & (p.upper >= 0)) for p in view]
            for view in views]
    union = [np.unique(np.concatenate([t[b] for t in todo])).astype(int) for b in range(len(probs))]
    prefixes = [list(seq[: start + j]) for seq, start, idx in zip(seqs, starts, union) for j in idx]
    per_pos = np.exp(engine.token_logprobs_after(prefixes, engine.start_ids)).sum(1) if prefixes else np.zeros(0)
    exact_at: list[dict[int, float]] = []
    cursor = 0
    for idx in union:
        exact_at.append(dict(zip(idx.tolist(), per_pos[cursor : cursor + len(idx)].tolist())))
        cursor += len(idx)
    chosen = []
    for view, t in zip(views, todo):
        mine = []
        for b, p in enumerate(view):
            values = np.array(p.lower)  # a copy, in the engine's own dtype (as a single selection always read it)
            values[t[b]] = [exact_at[b][j] for j in t[b].tolist()]
            mine.append(choose(values, tau_s, k))
        chosen.append(mine)
    # ruled out: positions no set allows (one set: the positions its mask rules out)
    ruled_out = sum(int(np.all([v[b].upper < 0 for v in views], axis=0).sum()) for b in range(len(probs)))
    stats = {
        "positions_scanned": int(sum(len(p.lower) for p in probs)),
        "positions_exact_from_topk": int(sum(p.exact.sum() for p in probs)),
        "positions_refined": int(sum(len(i) for i in union)),
        "positions_ruled_out": ruled_out,
    }
    return (chosen if several else chosen[0]), stats
