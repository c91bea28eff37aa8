"""The paper's weighted loss and filter (DESIGN §1.2 step 5), as pure functions over log-prob arrays.

``L_i(z) = -Σ_t w_t · log p(x_{i+t} | z, x_1..x_{i+t-1})`` with ``w_t = max(0, 1 - 0.2 t) / 3``;
``L+ = L_i(e(c, r))``, ``L- = min(L_i(ε), L_i(e(c, ε)))``; keep the call when ``L- - L+ >= τf``.
Positions are 0-based here: a call at ``i`` is inserted before ``x[i]``.
"""

from __future__ import annotations

import numpy as np

HORIZON = 5  # w_t is zero from t = 5 on
DECAY = 0.2


def loss_weights(horizon: int = HORIZON, decay: float = DECAY) -> np.ndarray:
    """``w_t`` for t = 0..horizon-1, normalized to sum to 1 (1/3, 0.8/3, ... 0.2/3 for the paper)."""
    raw = np.maximum(0.0, 1.0 - decay * np.arange(horizon))
    return raw / raw.sum()


WEIGHTS = loss_weights()


def weighted_loss(logprobs: np.ndarray, i: int, weights: np.ndarray = WEIGHTS) -> float:
    """``L_i`` from ``logprobs[j] = log p(x[j] | z, x[:j])``; terms past the end of the text are absent."""
    span = np.asarray(logprobs[i : i + len(weights)], dtype=np.float64)
    return float(-(weights[: len(span)] * span).sum())


def needed_tokens(i: int, horizon: int = HORIZON) -> int:
    """How many text tokens a candidate at ``i`` needs scored: x[0..i+horizon-1]."""
    return i + horizon


def filter_call(loss_none: float, loss_call_only: float, loss_call_result: float, tau_f: float) -> tuple[float, bool]:
    """(gain, kept): ``gain = min(L(ε), L(e(c,ε))) - L(e(c,r))``, kept when ``gain >= τf``."""
    gain = min(loss_none, loss_call_only) - loss_call_result
    return gain, bool(gain >= tau_f)
