"""What the LM stages share: the engine (built once, or passed in), the row filter, the scoring floor."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


class LMStage:
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
