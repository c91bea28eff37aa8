"""Annotation stages (DESIGN §1.2): select texts → sample calls → execute → score and filter.

Each stage is a small class: construction is cheap, ``setup()`` loads what it needs (a model, the tools)
once, and a call maps a ``pyarrow.Table`` of the WORK schema to the next. The same classes run in a plain
loop (``pipeline.annotate_texts``) and, unchanged, in Ray Data's ``map_batches`` (the Ray job). Only the
values the method needs as Python objects leave Arrow: texts to tokenize, tool inputs, sampled strings.
LM stages may share an engine passed in; otherwise each builds its own.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from toolformer.annotate.filtering import filter_call, needed_tokens, weighted_loss
from toolformer.annotate.positions import select_positions
from toolformer.arrow import empty_lists, on_subset, parent_rows, replace_struct_fields, set_columns, struct_fields
from toolformer.calls import Call, NoResultForm, clean_field, linearize, parse_call
from toolformer.config import RunConfig
from toolformer.corpus import TextChunk
from toolformer.engine import Engine, build_engine
from toolformer.prompts import load_prompt, render_prompt
from toolformer.report import REPORT_TAU_F
from toolformer.schemas import WORK
from toolformer.seeds import derive_seed
from toolformer.tools import ToolRequest, build_tool, canonical_name, tool_class
from toolformer.tools.base import NO_RESULT

_CHUNK_FIELDS = ("text_id", "doc_id", "chunk", "url", "date", "title", "text")
_COUNTERS = ("n_tokens", "n_positions", "n_samples", "n_closed", "n_parsed", "n_candidates", "n_executed", "n_kept")


def _status_is(table: pa.Table, *values: str) -> np.ndarray:
    return pc.is_in(table.column("status"), pa.array(values)).to_numpy(zero_copy_only=False)


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


class SelectTexts:
    """Texts (TEXTS or SHARD rows) → one WORK row per text and tool, with the tool's heuristic decision (CPU)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.tools = [canonical_name(t) for t in cfg.annotate.tools]
        self.rules = [tool_class(t).select for t in self.tools]  # each tool's own selection rule

    def __call__(self, texts: pa.Table) -> pa.Table:
        n, tools = texts.num_rows, self.tools
        status, heuristic, context = [], [], []
        for row in texts.select(list(_CHUNK_FIELDS)).to_pylist():
            chunk = TextChunk(**row)
            for select in self.rules:
                d = select(chunk, self.cfg.corpus, self.cfg.seed)
                status.append("pending" if d.passed else "heuristic_rejected")
                heuristic.append(d.reason)
                context.append(json.dumps(d.context))
        m = n * len(tools)
        rep = pa.array(np.repeat(np.arange(n), len(tools)))
        shard = texts.column("shard_id").take(rep) if "shard_id" in texts.column_names else pa.nulls(m, pa.string())
        zeros = pa.array(np.zeros(m, dtype=np.int32))
        columns = {
            "shard_id": shard, "text_id": texts.column("text_id").take(rep), "doc_id": texts.column("doc_id").take(rep),
            "tool": pa.array(np.tile(np.array(tools, dtype=object), n), pa.string()), "status": status,
            "heuristic": heuristic, **{c: zeros for c in _COUNTERS},
            "positions": empty_lists(m, WORK.field("positions").type),
            "candidates": empty_lists(m, WORK.field("candidates").type),
            "text": texts.column("text").take(rep), "context": context,
            "x_ids": empty_lists(m, WORK.field("x_ids").type), "x_offsets": empty_lists(m, WORK.field("x_offsets").type),
            "tool_ms": pa.array(np.zeros(m)), "error": pa.nulls(m, pa.string()),
        }
        return pa.table({f.name: columns[f.name] for f in WORK}, schema=WORK)


class _LMStage:
    def __init__(self, cfg: RunConfig, engine: Engine | None = None):
        self.cfg = cfg
        self.engine = engine

    def setup(self) -> None:
        if self.engine is None:
            self.engine = build_engine(self.cfg)

    def _ready(self) -> Engine:
        if self.engine is None:
            self.setup()
        assert self.engine is not None
        return self.engine


class SampleCalls(_LMStage):
    """Positions with ``p_i > τs`` (k best), then m sampled calls at each, parsed and deduplicated (LM)."""

    def __call__(self, table: pa.Table) -> pa.Table:
        engine = self._ready()
        return on_subset(table, _status_is(table, "pending"), lambda t: self._annotate(engine, t))

    def _annotate(self, engine: Engine, table: pa.Table) -> pa.Table:
        texts, text_ids = table.column("text").to_pylist(), table.column("text_id").to_pylist()
        tools = table.column("tool").to_pylist()
        n = len(texts)
        out = {k: [0] * n for k in _COUNTERS if k not in ("n_executed", "n_kept")}
        out.update(status=[None] * n, positions=[[] for _ in range(n)], candidates=[[] for _ in range(n)],
                   x_ids=[None] * n, x_offsets=[None] * n)
        by_tool: dict[str, list[int]] = defaultdict(list)
        for r, tool in enumerate(tools):
            by_tool[tool].append(r)
        for tool, rows in by_tool.items():
            self._annotate_tool(engine, tool, rows, texts, text_ids, out)
        return set_columns(table, WORK, **out)

    def _annotate_tool(self, engine: Engine, tool: str, rows: list[int], texts: list[str], text_ids: list[str],
                       out: dict) -> None:
        params = self.cfg.tool_params(tool)
        template = load_prompt(tool, params.prompt_path)
        limit = self.cfg.engine.max_model_len - params.max_call_tokens - 1
        live, seqs, starts = [], [], []
        for r in rows:
            x_ids, offsets = engine.encode_with_offsets(texts[r])
            prompt = engine.encode(render_prompt(template, texts[r]))
            out["n_tokens"][r], out["x_ids"][r], out["x_offsets"][r] = len(x_ids), x_ids, offsets
            if len(prompt) + len(x_ids) > limit or not x_ids:
                out["status"][r] = "too_long" if x_ids else "empty"
                continue
            out["status"][r] = "annotated"
            live.append(r)
            seqs.append(prompt + x_ids)
            starts.append(len(prompt))
        if not live:
            return
        chosen, _ = select_positions(engine, seqs, starts, params.tau_s, params.top_k, self.cfg.engine.top_logprobs)
        requests, owners = [], []
        for r, seq, start, picks in zip(live, seqs, starts, chosen):
            out["positions"][r] = [pos for pos, _ in picks]
            out["n_positions"][r] = len(picks)
            for pos, p in picks:
                requests.append(seq[: start + pos] + [start_token(engine, texts[r], out["x_offsets"][r], pos)])
                owners.append((r, pos, p))
        seeds = [derive_seed(self.cfg.seed, text_ids[r], tool, pos) for r, pos, _ in owners]
        samples = engine.sample(requests, n=params.num_samples, max_tokens=params.max_call_tokens, stop="]",
                                temperature=params.temperature, seeds=seeds)
        quote = tool_class(tool).quote_input
        for (r, pos, p), outs in zip(owners, samples):
            cands = out["candidates"][r]
            seen = {c["input"] for c in cands if c["position"] == pos}
            for sample in outs:
                out["n_samples"][r] += 1
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
                    loss_call_result=None, gain=None, kept=False,
                ))
            out["n_candidates"][r] = len(cands)


class ExecuteCalls:
    """Run each candidate's call on its tool (CPU). A tool answers a string, or nothing for bad input."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.tools: dict = {}

    def setup(self) -> None:
        for name in self.cfg.annotate.tools:
            tool = canonical_name(name)
            self.tools[tool] = build_tool(tool, **self.cfg.annotate.tool_options.get(tool, {}))
            self.tools[tool].setup()

    def __call__(self, table: pa.Table) -> pa.Table:
        if not self.tools:
            self.setup()
        live = _status_is(table, "annotated") & (table.column("n_candidates").to_numpy(zero_copy_only=False) > 0)
        return on_subset(table, live, self._execute)

    def _execute(self, table: pa.Table) -> pa.Table:
        cands = table.column("candidates")
        inputs = struct_fields(cands, "input")["input"]
        parents = parent_rows(cands)
        tools, contexts = table.column("tool").to_pylist(), table.column("context").to_pylist()
        results: list[str | None] = [None] * len(inputs)
        errors: list[str | None] = [NO_RESULT] * len(inputs)
        tool_ms, executed = [0.0] * table.num_rows, [0] * table.num_rows
        bounds = np.searchsorted(parents, np.arange(table.num_rows + 1))
        for r in range(table.num_rows):
            lo, hi = int(bounds[r]), int(bounds[r + 1])
            context = json.loads(contexts[r] or "{}")
            t0 = time.perf_counter()
            got = self.tools[tools[r]].call([ToolRequest(inputs[j], context) for j in range(lo, hi)])
            tool_ms[r] = 1000 * (time.perf_counter() - t0)
            for j, out in zip(range(lo, hi), got):
                text = clean_field(out.text) if out.text else None
                results[j], errors[j] = (text, None) if text else (None, out.error or NO_RESULT)
            executed[r] = sum(results[j] is not None for j in range(lo, hi))
        return set_columns(table, WORK, candidates=replace_struct_fields(cands, result=results, error=errors),
                           tool_ms=tool_ms, n_executed=executed)


@dataclass
class _Cand:
    row: int
    position: int
    input: str
    result: str | None
    char_start: int


class ScoreCalls(_LMStage):
    """Weighted losses with the call as a prefix, then the filter ``L- - L+ >= τf`` (LM).

    Two passes: ``L(ε)`` (one sequence per text) and ``L(e(c, r))`` for every executed candidate, then
    ``L(e(c, ε))`` only where ``L(ε) - L+`` reaches the scoring floor: since ``L- <= L(ε)``, a candidate
    below it cannot reach any τf at or above the floor, and its gain is left null. The floor defaults to
    the smallest τf the report shows (0.5), so every figure reported stays exact. Sequences that share a
    prefix (the same call at several positions; ``[Calendar()]`` everywhere) are scored once, up to the
    furthest position that needs them.
    """

    def __init__(self, cfg: RunConfig, engine: Engine | None = None, score_floor: float | None = None):
        super().__init__(cfg, engine)
        self.score_floor = min(REPORT_TAU_F) if score_floor is None else score_floor

    def __call__(self, table: pa.Table) -> pa.Table:
        engine = self._ready()
        live = _status_is(table, "annotated") & (table.column("n_executed").to_numpy(zero_copy_only=False) > 0)
        return on_subset(table, live, lambda t: self._score(engine, t))

    def _prefix_ids(self, engine: Engine, call: Call, with_result: bool) -> tuple[int, ...]:
        text = linearize(call, with_result=with_result, quote_input=tool_class(call.tool).quote_input,
                         no_result_form=self.cfg.annotate.no_result_form)
        return tuple(engine.doc_start + engine.encode(text + self.cfg.annotate.prefix_separator))

    @staticmethod
    def _losses(engine: Engine, jobs: dict[tuple, list[int]], x_of: dict[str, list[int]]) -> dict[tuple, np.ndarray]:
        """Score each (text_id, prefix) up to its furthest needed token; logprobs over x per key."""
        keys = list(jobs)
        seqs, starts = [], []
        for text_id, prefix in keys:
            x = x_of[text_id]
            need = min(len(x), max(needed_tokens(p) for p in jobs[(text_id, prefix)]))
            seqs.append(list(prefix) + x[:need])
            starts.append(len(prefix))
        return dict(zip(keys, engine.sequence_logprobs(seqs, starts)))

    def _score(self, engine: Engine, table: pa.Table) -> pa.Table:
        cands_col = table.column("candidates")
        f = struct_fields(cands_col, "position", "input", "result", "char_start")
        parents = parent_rows(cands_col)
        text_ids, tools = table.column("text_id").to_pylist(), table.column("tool").to_pylist()
        texts, x_rows = table.column("text").to_pylist(), table.column("x_ids").to_pylist()
        x_of = dict(zip(text_ids, x_rows))
        cands = [_Cand(int(r), p, i, res, cs) for r, p, i, res, cs in
                 zip(parents, f["position"], f["input"], f["result"], f["char_start"])]
        n = len(cands)
        loss_none, loss_only, loss_res = [None] * n, [None] * n, [None] * n
        gain, kept, error = [None] * n, [False] * n, struct_fields(cands_col, "error")["error"]
        eps = tuple(engine.doc_start)
        first: dict[tuple, list[int]] = defaultdict(list)
        with_key: dict[int, tuple] = {}
        for j, c in enumerate(cands):
            if c.result is None:
                continue
            tid = text_ids[c.row]
            with_key[j] = (tid, self._prefix_ids(engine, Call(tools[c.row], c.input, c.result), True))
            first[(tid, eps)].append(c.position)
            first[with_key[j]].append(c.position)
        lp = self._losses(engine, first, x_of)
        second: dict[tuple, list[int]] = defaultdict(list)
        without_key: dict[int, tuple] = {}
        for j, key in with_key.items():
            c, tid = cands[j], text_ids[cands[j].row]
            loss_none[j] = weighted_loss(lp[(tid, eps)], c.position)
            loss_res[j] = weighted_loss(lp[key], c.position)
            floor = min(self.score_floor, self.cfg.tool_params(tools[c.row]).tau_f)
            if loss_none[j] - loss_res[j] >= floor:
                without_key[j] = (tid, self._prefix_ids(engine, Call(tools[c.row], c.input), False))
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
        return set_columns(table, WORK, candidates=new, n_kept=n_kept)



class SampleExecuteScore(_LMStage):
    """sample → execute → score in one actor on one engine: the Ray job's ``ray.fuse_lm`` layout, for tools
    cheap enough to run beside the LM (Calculator, Calendar); heavy tools keep their own CPU pool otherwise."""

    def __init__(self, cfg: RunConfig, engine: Engine | None = None):
        super().__init__(cfg, engine)
        self.execute = ExecuteCalls(cfg)

    def setup(self) -> None:
        super().setup()
        self.execute.setup()

    def __call__(self, table: pa.Table) -> pa.Table:
        engine = self._ready()
        if not self.execute.tools:
            self.execute.setup()
        sampled = SampleCalls(self.cfg, engine)(table)
        return ScoreCalls(self.cfg, engine)(self.execute(sampled))
