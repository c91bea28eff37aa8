"""SampleCalls: where to call (positions), exact pruning, and the sampled calls themselves (DESIGN §1.2 steps 2-3).

Per batch and tool: the few-shot prompt and the text's own ids give ``p_i`` (``positions.py``) and the k best
positions above τs. Pruning is exact: since ``L+ >= 0``, a call at i gains at most ``L_i(ε)``; where ``L_i(ε)`` is
below the scoring floor (the smaller of the tool's τf and the lowest reported τf) no call there can be kept or
counted, so those positions are not sampled (``n_pruned``). ``L(ε)`` comes from one pass per text over
``doc_start + x``, which scoring needs anyway: it is carried to ``ScoreCalls`` in ``x_logprobs``.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import pyarrow as pa

from toolformer.annotate.filtering import weighted_loss
from toolformer.annotate.lm import LMStage, score_floor, status_is
from toolformer.annotate.positions import boundary_mask, select_positions
from toolformer.arrow import on_subset, set_columns
from toolformer.calls import NoResultForm, linearize, parse_call
from toolformer.engine import Engine
from toolformer.prompts import load_prompt, render_prompt
from toolformer.schemas import WORK
from toolformer.seeds import derive_seed
from toolformer.tools import tool_class

_OUT = ("n_tokens", "n_positions", "n_pruned", "n_samples", "n_sampled_tokens", "n_closed", "n_parsed", "n_candidates")


def start_token(engine: Engine, text: str, offsets: list, pos: int) -> int:
    """`` [`` where x_i carries its own leading space (byte-level BPE: `` then``), ``[`` otherwise (the
    space, if any, already ends x_<i). The call then reads as C* will print it: "30 [Calendar()] then"."""
    begin, end = offsets[pos]
    want = " [" if text[begin:end].startswith(" ") else "["
    return engine.start_variants.get(want, engine.start_ids[0])


def char_start(text: str, offsets: list, pos: int) -> int:
    begin, end = offsets[pos]
    while begin < end and text[begin].isspace():
        begin += 1  # byte-level BPE offsets may include the token's leading space
    return int(begin)


def union_positions(per_set: list[list[list[tuple[int, float]]]], names: list[str]
                    ) -> tuple[list[list[tuple[int, float]]], list[dict[int, list[str]]]]:
    """Per sequence, the union of the sets' picks (best p first, ties: earlier first) and, per position, the sets
    that chose it (in ``names`` order). A position two sets chose has one p: the larger of the two readings (a
    set that did not need the exact value reads its lower bound)."""
    union, by = [], []
    for b in range(len(per_set[0]) if per_set else 0):
        p_at: dict[int, float] = {}
        names_at: dict[int, list[str]] = {}
        for name, picks in zip(names, per_set):
            for pos, p in picks[b]:
                p_at[pos] = max(p, p_at.get(pos, p))
                names_at.setdefault(pos, []).append(name)
        union.append(sorted(p_at.items(), key=lambda item: (-item[1], item[0])))
        by.append(names_at)
    return union, by


def text_logprobs(engine: Engine, x_of: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """log p(x_j | doc_start, x_<j) for every text: one pass each (``L(ε)`` at every position)."""
    ids = [t for t in x_of if x_of[t]]
    seqs = [engine.doc_start + x_of[t] for t in ids]
    return dict(zip(ids, engine.sequence_logprobs(seqs, [len(engine.doc_start)] * len(seqs)))) if seqs else {}


class SampleCalls(LMStage):
    """Positions with ``p_i > τs`` (k best), pruned where no call can be kept, then m sampled calls at each,
    parsed and deduplicated (LM)."""

    def __call__(self, table: pa.Table) -> pa.Table:
        engine = self._ready()
        return on_subset(table, status_is(table, "pending"), lambda t: self._annotate(engine, t))

    def _annotate(self, engine: Engine, table: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        texts, text_ids = table.column("text").to_pylist(), table.column("text_id").to_pylist()
        tools = table.column("tool").to_pylist()
        n = len(texts)
        out = {k: [0] * n for k in _OUT}
        out.update(status=[None] * n, positions=[[] for _ in range(n)], position_probs=[[] for _ in range(n)],
                   candidates=[[] for _ in range(n)],
                   x_ids=[None] * n, x_offsets=[None] * n, x_logprobs=[[] for _ in range(n)])
        encoded = {}
        for r, text in enumerate(texts):
            if text_ids[r] not in encoded:
                encoded[text_ids[r]] = engine.encode_with_offsets(text)
            out["x_ids"][r], out["x_offsets"][r] = encoded[text_ids[r]]
            out["n_tokens"][r] = len(out["x_ids"][r])
        eps = text_logprobs(engine, {t: x for t, (x, _) in encoded.items()}) if self.cfg.annotate.optimizations.prune else {}
        by_tool: dict[str, list[int]] = defaultdict(list)
        for r, tool in enumerate(tools):
            by_tool[tool].append(r)
            if text_ids[r] in eps:
                out["x_logprobs"][r] = eps[text_ids[r]].tolist()
        for tool, rows in by_tool.items():
            self._annotate_tool(engine, tool, rows, texts, text_ids, eps, out)
        ms = 1000 * (time.perf_counter() - t0) / max(1, n)  # the stage's engine time, over its rows
        return set_columns(table, WORK, **out, lm_ms=[ms] * n)

    def _annotate_tool(self, engine: Engine, tool: str, rows: list[int], texts: list[str], text_ids: list[str],
                       eps: dict[str, np.ndarray], out: dict) -> None:
        params = self.cfg.tool_params(tool)
        template = load_prompt(tool, params.prompt_path)
        limit = self.cfg.engine.max_model_len - params.max_call_tokens - 1
        live, seqs, starts = [], [], []
        for r in rows:
            x_ids = out["x_ids"][r]
            prompt = engine.encode(render_prompt(template, texts[r]))
            if len(prompt) + len(x_ids) > limit or not x_ids:
                out["status"][r] = "too_long" if x_ids else "empty"
                continue
            out["status"][r] = "annotated"
            live.append(r)
            seqs.append(prompt + x_ids)
            starts.append(len(prompt))
        if not live:
            return
        bounds = self.cfg.annotate.optimizations.position_bounds
        sets = list(getattr(self.cfg.annotate, "position_sets", None) or [])
        boundary = None
        if "boundary" in sets or (not sets and getattr(self.cfg.annotate, "boundary_positions", False)):
            boundary = [boundary_mask(texts[r], [char_start(texts[r], out["x_offsets"][r], j)
                                                 for j in range(len(out["x_ids"][r]))]) for r in live]
        top = self.cfg.engine.top_logprobs if bounds else None
        if sets:  # one scan, each set's own k best; calls are sampled once at the union of their positions
            per_set = select_positions(engine, seqs, starts, params.tau_s, params.top_k, top, bounds=bounds,
                                       allowed_sets=[boundary if s == "boundary" else None for s in sets])[0]
            chosen, chosen_by = union_positions(per_set, sets)
        else:  # boundary_positions: a call never splits a word or a number
            chosen = select_positions(engine, seqs, starts, params.tau_s, params.top_k, top, bounds=bounds,
                                      allowed=boundary)[0]
            chosen_by = [{} for _ in live]
        floor = score_floor(self.cfg, tool)
        requests, owners = [], []
        sets_at: dict[tuple[int, int], list[str]] = {}
        for r, seq, start, picks, by in zip(live, seqs, starts, chosen, chosen_by):
            sets_at.update({(r, pos): names for pos, names in by.items()})
            out["positions"][r] = [pos for pos, _ in picks]
            out["position_probs"][r] = [float(p) for _, p in picks]
            out["n_positions"][r] = len(picks)
            lp = eps.get(text_ids[r])
            for pos, p in picks:
                if lp is not None and weighted_loss(lp, pos) < floor:
                    out["n_pruned"][r] += 1  # L_i(ε) bounds the gain: no call here reaches the floor
                    continue
                requests.append(seq[: start + pos] + [start_token(engine, texts[r], out["x_offsets"][r], pos)])
                owners.append((r, pos, p))
        seeds = [derive_seed(self.cfg.seed, text_ids[r], tool, pos) for r, pos, _ in owners]
        samples = engine.sample(requests, n=params.num_samples, max_tokens=params.max_call_tokens, stop="]",
                                temperature=params.temperature, seeds=seeds,
                                regex=self._regex(tool, owners, texts, out)) if requests else []
        quote = tool_class(tool).quote_input
        for (r, pos, p), outs in zip(owners, samples):
            cands = out["candidates"][r]
            seen = {c["input"] for c in cands if c["position"] == pos}
            for sample in outs:
                out["n_samples"][r] += 1
                out["n_sampled_tokens"][r] += sample.num_tokens
                if not sample.closed:
                    continue
                out["n_closed"][r] += 1
                call = parse_call("[" + sample.text + "]", [tool])
                if call is None:
                    continue
                out["n_parsed"][r] += 1
                if call.input in seen:
                    continue
                seen.add(call.input)
                cands.append(dict(
                    position=pos, char_start=char_start(texts[r], out["x_offsets"][r], pos), p_start=p,
                    call=linearize(call, with_result=False, quote_input=quote, no_result_form=NoResultForm.BARE),
                    input=call.input, result=None, error=None, loss_none=None, loss_call_only=None,
                    loss_call_result=None, gain=None, kept=False, position_sets=sets_at.get((r, pos)),
                ))
            out["n_candidates"][r] = len(cands)

    def _regex(self, tool: str, owners: list[tuple], texts: list[str], out: dict) -> str | list[str] | None:
        """What samples must match: nothing (free, the paper), the tool's call pattern (constrained), or per
        request the pattern of a call at that place in that text (operands)."""
        syntax, cls = self.cfg.annotate.call_syntax, tool_class(tool)
        if syntax == "constrained":
            return cls.call_regex()
        if syntax == "operands":
            return [cls.call_regex_in(texts[r][: char_start(texts[r], out["x_offsets"][r], pos)])
                    for r, pos, _ in owners]
        return None
