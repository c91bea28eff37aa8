"""Annotation stages (DESIGN §1.2): select texts → sample calls → execute → score and filter.

Each stage is a small class: construction is cheap, ``setup()`` loads what it needs (a model, the tools)
once, and a call maps a ``pyarrow.Table`` of the WORK schema to the next. The same classes run in a plain
loop (``pipeline.annotate_texts``) and, unchanged, in Ray Data's ``map_batches`` (the Ray job). Only the
values the method needs as Python objects leave Arrow: texts to tokenize, tool inputs, sampled strings.
LM stages may share an engine passed in; otherwise each builds its own.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from toolformer.annotate.lm import LMStage, status_is
from toolformer.annotate.sampling import SampleCalls, char_start, start_token
from toolformer.annotate.scoring import ScoreCalls
from toolformer.annotate.telemetry import StageClock
from toolformer.arrow import empty_lists, on_subset, parent_rows, replace_struct_fields, set_columns, struct_fields
from toolformer.calls import clean_field
from toolformer.config import RunConfig
from toolformer.corpus import TextChunk
from toolformer.engine import Engine
from toolformer.schemas import WORK
from toolformer.tools import ToolRequest, canonical_name, tool_class
from toolformer.tools.base import NO_RESULT, Tool
from toolformer.tools.deadline import CallGroup, InProcessTool
from toolformer.tools.runners import start_runners

_CHUNK_FIELDS = ("text_id", "doc_id", "chunk", "url", "date", "title", "text")
_COUNTERS = ("n_tokens", "n_positions", "n_pruned", "n_samples", "n_sampled_tokens", "n_closed", "n_parsed",
             "n_candidates", "n_executed", "n_kept")


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
            "position_probs": empty_lists(m, WORK.field("position_probs").type),
            "candidates": empty_lists(m, WORK.field("candidates").type),
            "text": texts.column("text").take(rep), "context": context,
            "x_ids": empty_lists(m, WORK.field("x_ids").type), "x_offsets": empty_lists(m, WORK.field("x_offsets").type),
            "x_logprobs": empty_lists(m, WORK.field("x_logprobs").type),
            "tool_ms": pa.array(np.zeros(m)), "lm_ms": pa.array(np.zeros(m)), "error": pa.nulls(m, pa.string()),
        }
        return pa.table({f.name: columns[f.name] for f in WORK}, schema=WORK)


class ExecuteCalls:
    """Run each candidate's call on its tool (CPU). A tool answers a string, or nothing for bad input.

    Tools run in worker processes that a timeout really ends (``annotate.tool_workers`` per tool; cheap pure tools
    listed in ``annotate.tool_in_process`` stay in this process): see ``toolformer.tools.worker``. The time spent
    running tools is kept on ``clock`` (``tool_s``), apart from the engine's."""

    def __init__(self, cfg: RunConfig, clock: StageClock | None = None):
        self.cfg = cfg
        self.tools: dict = {}  # tool name -> its runner (ToolWorkers or InProcessTool)
        self.clock = clock or StageClock()

    def timeout(self, tool: str) -> float:
        per_tool = {canonical_name(k): v for k, v in (self.cfg.annotate.tool_timeout_s_per_tool or {}).items()}
        return float(per_tool.get(tool, self.cfg.annotate.tool_timeout_s))

    def setup(self) -> None:
        a = self.cfg.annotate
        self.tools = start_runners(a.tools, a.tool_options, workers=a.tool_workers, in_process=a.tool_in_process or [],
                                   setup_timeout_s=a.tool_setup_timeout_s, max_restarts=a.tool_max_restarts)

    def close(self) -> None:
        """End the tool workers (an actor's or a local run's end; interpreter exit does it too)."""
        for runner in self.tools.values():
            runner.close()
        self.tools = {}

    def describe(self) -> dict:
        return {name: runner.describe() for name, runner in self.tools.items()}

    def __call__(self, table: pa.Table) -> pa.Table:
        if not self.tools:
            self.setup()
        live = status_is(table, "annotated") & (table.column("n_candidates").to_numpy(zero_copy_only=False) > 0)
        return on_subset(table, live, self._execute)

    def _execute(self, table: pa.Table) -> pa.Table:
        cands = table.column("candidates")
        inputs = struct_fields(cands, "input")["input"]
        parents = parent_rows(cands)
        tools, contexts = table.column("tool").to_pylist(), table.column("context").to_pylist()
        text_ids = table.column("text_id").to_pylist()
        results: list[str | None] = [None] * len(inputs)
        errors: list[str | None] = [NO_RESULT] * len(inputs)
        tool_ms, executed = [0.0] * table.num_rows, [0] * table.num_rows
        bounds = np.searchsorted(parents, np.arange(table.num_rows + 1))
        groups: dict[str, list[tuple[int, CallGroup]]] = {}
        for r in range(table.num_rows):
            lo, hi = int(bounds[r]), int(bounds[r + 1])
            context = json.loads(contexts[r] or "{}")
            group = CallGroup(text_ids[r], [ToolRequest(inputs[j], context) for j in range(lo, hi)],
                              self.timeout(tools[r]))
            groups.setdefault(tools[r], []).append((r, group))
        with self.clock.tools():
            for tool, items in groups.items():  # one text's calls are one group; a tool's texts share its workers
                runner = self.tools[tool]
                if isinstance(runner, Tool):  # a set-up tool handed in (tests): it runs in this process
                    runner = self.tools[tool] = InProcessTool(runner)
                runner.run([g for _, g in items])
        for items in groups.values():
            for r, g in items:
                lo = int(bounds[r])
                tool_ms[r] = 1000 * g.spent_s
                for j, out in zip(range(lo, lo + len(g.requests)), g.results):
                    text = clean_field(out.text) if out is not None and out.text else None
                    results[j], errors[j] = (text, None) if text else (None, (out.error if out else None) or NO_RESULT)
                executed[r] = sum(results[j] is not None for j in range(lo, lo + len(g.requests)))
        return set_columns(table, WORK, candidates=replace_struct_fields(cands, result=results, error=errors),
                           tool_ms=tool_ms, n_executed=executed)


class SampleExecuteScore(LMStage):
    """sample → execute → score in one actor on one engine: the Ray job's ``ray.fuse_lm`` layout, for tools
    cheap enough to run beside the LM (Calculator, Calendar); heavy tools keep their own CPU pool otherwise."""

    def __init__(self, cfg: RunConfig, engine: Engine | None = None):
        super().__init__(cfg, engine)
        self.execute = ExecuteCalls(cfg, self.clock)  # one clock: engine time and tool time of this actor

    def setup(self) -> None:
        super().setup()
        self.execute.setup()

    def close(self) -> None:
        self.execute.close()

    def __call__(self, table: pa.Table) -> pa.Table:
        engine = self._ready()  # timed on this stage's clock: the watchdog sees engine calls, never tool calls
        if not self.execute.tools:
            self.execute.setup()
        sampled = SampleCalls(self.cfg, engine)(table)
        return ScoreCalls(self.cfg, engine)(self.execute(sampled))


__all__ = ["ExecuteCalls", "SampleCalls", "SampleExecuteScore", "ScoreCalls", "SelectTexts", "char_start",
           "start_token"]
