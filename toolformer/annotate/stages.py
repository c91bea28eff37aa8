"""Annotation stages (DESIGN §1.2): select texts → sample calls → execute → score and filter.

Each stage is a small class: construction is cheap, ``setup()`` loads what it needs (a model, the tools)
once, and a call maps a batch (a dict of columns) to a batch. The same classes run in a plain loop
(``pipeline.annotate``) and, unchanged, in Ray Data's ``map_batches`` (the Ray job). LM stages may share an
engine passed in; otherwise each builds its own.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from toolformer.annotate.filtering import filter_call, needed_tokens, weighted_loss
from toolformer.annotate.positions import select_positions
from toolformer.calls import NoResultForm, clean_field, linearize, parse_call, Call
from toolformer.config import RunConfig
from toolformer.corpus import TextChunk, tool_heuristic
from toolformer.engine import Engine, build_engine
from toolformer.prompts import load_prompt, render_prompt
from toolformer.seeds import derive_seed
from toolformer.tools import ToolRequest, build_tool, canonical_name, tool_class

Batch = dict[str, list]

# The lowest τf the run report shows: below it, e(c, ε) need not be scored (see ScoreCalls).
REPORT_TAU_F = (0.5, 1.0, 2.0)


def rows_of(batch: dict[str, Sequence]) -> list[dict[str, Any]]:
    """Column batch → rows (accepts lists or numpy arrays, as Ray Data gives them)."""
    columns = {k: list(v) for k, v in batch.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    return [{k: col[i] for k, col in columns.items()} for i in range(n)]


def batch_of(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Batch:
    columns = list(columns or (rows[0].keys() if rows else []))
    return {c: [r.get(c) for r in rows] for c in columns}


def _counters() -> dict[str, int]:
    return dict(
        n_tokens=0, n_positions=0, n_samples=0, n_closed=0, n_parsed=0, n_candidates=0, n_executed=0, n_kept=0
    )


class SelectTexts:
    """Texts → one row per text and tool, with the tool's heuristic decision (CPU, cheap)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.tools = [canonical_name(t) for t in cfg.annotate.tools]

    def __call__(self, batch: Batch) -> Batch:
        out = []
        for row in rows_of(batch):
            chunk = TextChunk(
                row["text_id"], row["doc_id"], row["chunk"], row["url"], row["date"], row["title"], row["text"]
            )
            for tool in self.tools:
                decision = tool_heuristic(tool, chunk, self.cfg.corpus, self.cfg.seed)
                out.append(
                    dict(
                        shard_id=row.get("shard_id"),
                        text_id=row["text_id"],
                        doc_id=row["doc_id"],
                        chunk=row["chunk"],
                        url=row["url"],
                        date=row["date"],
                        title=row["title"],
                        source=row.get("source"),
                        tool=tool,
                        text=row["text"],
                        status="pending" if decision.passed else "heuristic_rejected",
                        heuristic=decision.reason,
                        context=json.dumps(decision.context),
                        candidates=[],
                        positions=[],
                        x_ids=[],  # filled by SampleCalls: the text's token ids, shared by every later stage
                        x_offsets=[],
                        tool_ms=0.0,
                        **_counters(),
                    )
                )
        return batch_of(out)


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

    def __call__(self, batch: Batch) -> Batch:
        engine = self._ready()
        rows = rows_of(batch)
        by_tool: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            if row["status"] == "pending":
                by_tool[row["tool"]].append(row)
        for tool, group in by_tool.items():
            self._annotate(engine, tool, group)
        return batch_of(rows)

    def _annotate(self, engine: Engine, tool: str, rows: list[dict]) -> None:
        params = self.cfg.tool_params(tool)
        template = load_prompt(tool, params.prompt_path)
        limit = self.cfg.engine.max_model_len - params.max_call_tokens - 1
        live, seqs, starts = [], [], []
        for row in rows:
            x_ids, offsets = engine.encode_with_offsets(row["text"])
            prompt = engine.encode(render_prompt(template, row["text"]))
            row["n_tokens"] = len(x_ids)
            row["x_ids"], row["x_offsets"] = x_ids, offsets
            if len(prompt) + len(x_ids) > limit or not x_ids:
                row["status"] = "too_long" if x_ids else "empty"
                continue
            row["status"] = "annotated"
            live.append(row)
            seqs.append(prompt + x_ids)
            starts.append(len(prompt))
        if not live:
            return
        chosen, _ = select_positions(engine, seqs, starts, params.tau_s, params.top_k, self.cfg.engine.top_logprobs)
        requests, owners = [], []
        for row, seq, start, picks in zip(live, seqs, starts, chosen):
            row["positions"] = [pos for pos, _ in picks]
            row["n_positions"] = len(picks)
            for pos, p in picks:
                requests.append(seq[: start + pos] + [self._start_token(engine, row, pos)])
                owners.append((row, pos, p))
        seeds = [derive_seed(self.cfg.seed, row["text_id"], tool, pos) for row, pos, _ in owners]
        samples = engine.sample(
            requests,
            n=params.num_samples,
            max_tokens=params.max_call_tokens,
            stop="]",
            temperature=params.temperature,
            seeds=seeds,
        )
        quote = tool_class(tool).quote_input
        for (row, pos, p), outs in zip(owners, samples):
            seen = {c["input"] for c in row["candidates"] if c["position"] == pos}
            for sample in outs:
                row["n_samples"] += 1
                if not sample.closed:
                    continue
                row["n_closed"] += 1
                call = parse_call("[" + sample.text + "]", [tool])
                if call is None:
                    continue
                row["n_parsed"] += 1
                if call.input in seen:
                    continue
                seen.add(call.input)
                row["candidates"].append(
                    dict(
                        position=pos,
                        char_start=self._char_start(row, pos),
                        p_start=p,
                        call=linearize(call, with_result=False, quote_input=quote, no_result_form=NoResultForm.BARE),
                        input=call.input,
                        result=None,
                        error=None,
                        loss_none=None,
                        loss_call_only=None,
                        loss_call_result=None,
                        gain=None,
                        kept=False,
                    )
                )
            row["n_candidates"] = len(row["candidates"])

    @staticmethod
    def _start_token(engine: Engine, row: dict, pos: int) -> int:
        """`` [`` where x_i carries its own leading space (byte-level BPE: `` then``), ``[`` otherwise (the
        space, if any, already ends x_<i). The call then reads as C* will print it: "30 [Calendar()] then"."""
        begin, end = row["x_offsets"][pos]
        want = " [" if row["text"][begin:end].startswith(" ") else "["
        return engine.start_variants.get(want, engine.start_ids[0])

    @staticmethod
    def _char_start(row: dict, pos: int) -> int:
        begin, end = row["x_offsets"][pos]
        while begin < end and row["text"][begin].isspace():
            begin += 1  # byte-level BPE offsets may include the token's leading space
        return int(begin)


class ExecuteCalls:
    """Run each candidate's call on its tool (CPU). A tool answers a string, or nothing for bad input."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.tools: dict[str, Any] = {}

    def setup(self) -> None:
        for name in self.cfg.annotate.tools:
            tool = canonical_name(name)
            self.tools[tool] = build_tool(tool, **self.cfg.annotate.tool_options.get(tool, {}))
            self.tools[tool].setup()

    def __call__(self, batch: Batch) -> Batch:
        if not self.tools:
            self.setup()
        rows = rows_of(batch)
        for row in rows:
            cands = row["candidates"]
            if row["status"] != "annotated" or not cands:
                continue
            context = json.loads(row["context"] or "{}")
            t0 = time.perf_counter()
            results = self.tools[row["tool"]]([ToolRequest(c["input"], context) for c in cands])
            row["tool_ms"] = 1000 * (time.perf_counter() - t0)
            for cand, result in zip(cands, results):
                result = clean_field(result) if isinstance(result, str) else None
                cand["result"] = result or None
                cand["error"] = None if result else "no_result"
            row["n_executed"] = sum(c["result"] is not None for c in cands)
        return batch_of(rows)


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

    def __call__(self, batch: Batch) -> Batch:
        engine = self._ready()
        rows = rows_of(batch)
        live = [r for r in rows if r["status"] == "annotated" and r["n_executed"]]
        if live:
            self._score(engine, live)
        for row in rows:
            row["n_kept"] = sum(bool(c["kept"]) for c in row["candidates"])
        return batch_of(rows)

    def _prefix_ids(self, engine: Engine, call: Call, tool: str, with_result: bool) -> list[int]:
        text = linearize(
            call,
            with_result=with_result,
            quote_input=tool_class(tool).quote_input,
            no_result_form=self.cfg.annotate.no_result_form,
        )
        return engine.doc_start + engine.encode(text + self.cfg.annotate.prefix_separator)

    def _losses(self, engine: Engine, jobs: dict[tuple, list[int]], rows: dict[str, dict]) -> dict[tuple, np.ndarray]:
        """Score each (text_id, prefix) up to its furthest needed token; logprobs over x per key."""
        keys = list(jobs)
        seqs, starts = [], []
        for key in keys:
            text_id, prefix = key[0], list(key[1])
            x = rows[text_id]["x_ids"]
            need = min(len(x), max(needed_tokens(p) for p in jobs[key]))
            seqs.append(prefix + x[:need])
            starts.append(len(prefix))
        return dict(zip(keys, engine.sequence_logprobs(seqs, starts)))

    def _score(self, engine: Engine, rows: list[dict]) -> None:
        by_id = {r["text_id"]: r for r in rows}
        eps = tuple(engine.doc_start)
        first: dict[tuple, list[int]] = defaultdict(list)
        for row in rows:
            for cand in row["candidates"]:
                if cand["result"] is None:
                    continue
                call = Call(row["tool"], cand["input"], cand["result"])
                cand["_with"] = (row["text_id"], tuple(self._prefix_ids(engine, call, row["tool"], True)))
                first[(row["text_id"], eps)].append(cand["position"])
                first[cand["_with"]].append(cand["position"])
        lp = self._losses(engine, first, by_id)
        second: dict[tuple, list[int]] = defaultdict(list)
        for row in rows:
            floor = min(self.score_floor, self.cfg.tool_params(row["tool"]).tau_f)
            for cand in row["candidates"]:
                if cand["result"] is None:
                    continue
                i = cand["position"]
                cand["loss_none"] = weighted_loss(lp[(row["text_id"], eps)], i)
                cand["loss_call_result"] = weighted_loss(lp[cand.pop("_with")], i)
                if cand["loss_none"] - cand["loss_call_result"] >= floor:
                    call = Call(row["tool"], cand["input"])
                    cand["_without"] = (row["text_id"], tuple(self._prefix_ids(engine, call, row["tool"], False)))
                    second[cand["_without"]].append(i)
        lp2 = self._losses(engine, second, by_id) if second else {}
        for row in rows:
            tau_f = self.cfg.tool_params(row["tool"]).tau_f
            for cand in row["candidates"]:
                key = cand.pop("_without", None)
                if key is None:
                    continue
                cand["loss_call_only"] = weighted_loss(lp2[key], cand["position"])
                cand["gain"], cand["kept"] = filter_call(
                    cand["loss_none"], cand["loss_call_only"], cand["loss_call_result"], tau_f
                )
                if math.isnan(cand["gain"]):
                    cand["gain"], cand["kept"] = None, False
                if cand["kept"] and row["tool"] == "MT" and cand["input"] not in row["text"][: cand["char_start"]]:
                    # the paper drops MT calls whose input only appears after the call (nothing to translate yet)
                    cand["kept"], cand["error"] = False, "mt_input_after_call"
