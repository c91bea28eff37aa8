"""What the LM stages share: the engine (built once, or passed in, and timed per call), the row filter, the
scoring floor."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from toolformer.annotate.telemetry import StageClock
from toolformer.config import RunConfig
from toolformer.engine import Engine, build_engine
from toolformer.report import REPORT_TAU_F


def status_is(table: pa.Table, *values: str) -> np.ndarray:
    return pc.is_in(table.column("status"), pa.array(values)).to_numpy(zero_copy_only=False)


def score_floor(cfg: RunConfig, tool: str) -> float:
    """Below this gain a call is neither kept (the tool's τf) nor counted (the lowest τf the report shows):
    ``L(e(c, ε))`` is not scored there, and positions whose ``L(ε)`` is below it are not sampled."""
    if not cfg.annotate.optimizations.skip_call_only:
        return float("-inf")
    floor = min(REPORT_TAU_F) if cfg.annotate.score_floor is None else cfg.annotate.score_floor
    return min(floor, cfg.tool_params(tool).tau_f)


class TimedEngine:
    """An engine whose model calls run inside ``clock.engine(...)``: timed, and watched by the actor's LM watchdog
    (which so times engine calls only; tools keep their own timeouts). Everything else is the engine's own."""

    TIMED = ("start_probs", "token_logprobs_after", "sequence_logprobs", "sample", "greedy")

    def __init__(self, engine: Engine, clock: StageClock):
        self._engine, self._clock = engine, clock

    def __getattr__(self, name: str):
        value = getattr(self._engine, name)
        if name not in self.TIMED:
            return value

        def timed(*args, **kwargs):
            with self._clock.engine(name):
                return value(*args, **kwargs)

        return timed


class LMStage:
    def __init__(self, cfg: RunConfig, engine: Engine | None = None):
        self.cfg = cfg
        self.engine = engine
        self.clock = StageClock()

    def setup(self) -> None:
        if self.engine is None:
            self.engine = build_engine(self.cfg)

    def _ready(self) -> Engine:
        """The engine, its model calls timed on this stage's clock (an engine already timed by an enclosing stage,
        the fused one, stays on that stage's clock)."""
        if self.engine is None:
            self.setup()
        assert self.engine is not None
        if isinstance(self.engine, TimedEngine):
            return self.engine  # type: ignore[return-value]
        return TimedEngine(self.engine, self.clock)  # type: ignore[return-value]
