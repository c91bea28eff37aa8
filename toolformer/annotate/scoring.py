"""ScoreCalls: the weighted losses with the call as a prefix, and the filter ``L- - L+ >= τf`` (DESIGN §1.2 step 5).

``L(ε)`` at every position comes with the rows from sampling (``x_logprobs``, one pass per text) or, when
pruning is off, from one pass per text here. Then ``L(e(c, r))`` for every executed candidate, and ``L(e(c, ε))``
only where ``L(ε) - L+`` reaches the scoring floor: since ``L- <= L(ε)``, a candidate below it cannot reach any
τf at or above the floor, and its gain is left null. The floor is the smaller of the tool's τf and the lowest τf
the report shows (0.5), so every figure reported stays exact. Sequences that share a prefix (the same call at
several positions; ``[Calendar() -> …]`` everywhere) are scored once, each only up to the furthest token a
candidate needs (``x_{i+4}``).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from toolformer.annotate.filtering import filter_call, needed_tokens, weighted_loss
from toolformer.annotate.lm import LMStage, score_floor, status_is
from toolformer.arrow import on_subset, parent_rows, replace_struct_fields, set_columns, struct_fields
from toolformer.calls import Call, linearize
from toolformer.config import RunConfig
from toolformer.engine import Engine
from toolformer.schemas import WORK
from toolformer.tools import tool_class


@dataclass
class _Cand:
    row: int
    position: int
    input: str
    result: str | None
    char_start: int


class ScoreCalls(LMStage):
    """Weighted losses with the call as a prefix, then the filter (LM). ``score_floor`` overrides the floor
    (``-inf`` scores every variant of every candidate, as the exactness tests do)."""

    def __init__(self, cfg: RunConfig, engine: Engine | None = None, score_floor: float | None = None):
        super().__init__(cfg, engine)
        self.floor_override = score_floor

    def __call__(self, table: pa.Table) -> pa.Table:
        engine = self._ready()
        live = status_is(table, "annotated") & (table.column("n_executed").to_numpy(zero_copy_only=False) > 0)
        return on_subset(table, live, lambda t: self._score(engine, t))

    def _floor(self, tool: str) -> float:
        return score_floor(self.cfg, tool) if self.floor_override is None else self.floor_override

    def _prefix_ids(self, engine: Engine, call: Call, with_result: bool) -> tuple[int, ...]:
        text = linearize(call, with_result=with_result, quote_input=tool_class(call.tool).quote_input,
                         no_result_form=self.cfg.annotate.no_result_form)
        return tuple(engine.doc_start + engine.encode(text + self.cfg.annotate.prefix_separator))

    def _losses(self, engine: Engine, jobs: dict[tuple, list[int]], x_of: dict[str, list[int]]) -> dict[tuple, np.ndarray]:
        """Score each (text_id, prefix[, candidate]) up to its furthest needed token; logprobs over x per key."""
        keys = list(jobs)
        truncate = self.cfg.annotate.optimizations.truncated_scoring
        seqs, starts = [], []
        for key in keys:
            text_id, prefix = key[0], key[1]
            x = x_of[text_id]
            need = min(len(x), max(needed_tokens(p) for p in jobs[key])) if truncate else len(x)
            seqs.append(list(prefix) + x[:need])
            starts.append(len(prefix))
        return dict(zip(keys, engine.sequence_logprobs(seqs, starts)))

    def _score(self, engine: Engine, table: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        cands_col = table.column("candidates")
        f = struct_fields(cands_col, "position", "input", "result", "char_start", "error")
        parents = parent_rows(cands_col)
        text_ids, tools = table.column("text_id").to_pylist(), table.column("tool").to_pylist()
        texts, x_rows = table.column("text").to_pylist(), table.column("x_ids").to_pylist()
        carried = table.column("x_logprobs").to_pylist()
        x_of = dict(zip(text_ids, x_rows))
        eps_of = {t: np.asarray(lp) for t, lp in zip(text_ids, carried) if lp}  # L(ε) from sampling's pass
        cands = [_Cand(int(r), p, i, res, cs) for r, p, i, res, cs in
                 zip(parents, f["position"], f["input"], f["result"], f["char_start"])]
        n = len(cands)
        loss_none, loss_only, loss_res = [None] * n, [None] * n, [None] * n
        gain, kept, error = [None] * n, [False] * n, f["error"]
        share = self.cfg.annotate.optimizations.shared_prefixes
        eps = tuple(engine.doc_start)
        first: dict[tuple, list[int]] = defaultdict(list)
        with_key: dict[int, tuple] = {}
        for j, c in enumerate(cands):
            if c.result is None:
                continue
            tid = text_ids[c.row]
            prefix = self._prefix_ids(engine, Call(tools[c.row], c.input, c.result), True)
            with_key[j] = (tid, prefix) if share else (tid, prefix, j)
            if tid not in eps_of:
                first[(tid, eps) if share else (tid, eps, j)].append(c.position)
            first[with_key[j]].append(c.position)
        lp = self._losses(engine, first, x_of)
        second: dict[tuple, list[int]] = defaultdict(list)
        without_key: dict[int, tuple] = {}
        for j, key in with_key.items():
            c, tid = cands[j], text_ids[cands[j].row]
            none_lp = eps_of.get(tid)
            if none_lp is None:
                none_lp = lp[(tid, eps) if share else (tid, eps, j)]
            loss_none[j] = weighted_loss(none_lp, c.position)
            loss_res[j] = weighted_loss(lp[key], c.position)
            if loss_none[j] - loss_res[j] >= self._floor(tools[c.row]):
                prefix = self._prefix_ids(engine, Call(tools[c.row], c.input), False)
                without_key[j] = (tid, prefix) if share else (tid, prefix, j)
                second[without_key[j]].append(c.position)
        lp2 = self._losses(engine, second, x_of) if second else {}
        n_kept = [0] * table.num_rows
        for j, key in without_key.items():
            c, tool = cands[j], tools[cands[j].row]
            loss_only[j] = weighted_loss(lp2[key], c.position)
            g, k = filter_call(loss_none[j], loss_only[j], loss_res[j], self.cfg.tool_params(tool).tau_f)
            if math.isnan(g):
                g, k = None, False
            if k and tool == "MT" and c.input not in texts[c.row][: c.char_start]:
                # the paper drops MT calls whose input only appears after the call (nothing to translate yet)
                k, error[j] = False, "mt_input_after_call"
            gain[j], kept[j] = g, k
            n_kept[c.row] += bool(k)
        new = replace_struct_fields(cands_col, loss_none=loss_none, loss_call_only=loss_only,
                                    loss_call_result=loss_res, gain=gain, kept=kept, error=error)
        ms = 1000 * (time.perf_counter() - t0) / max(1, table.num_rows)
        lm_ms = [(m or 0.0) + ms for m in table.column("lm_ms").to_pylist()]
        return set_columns(table, WORK, candidates=new, n_kept=n_kept, lm_ms=lm_ms)
