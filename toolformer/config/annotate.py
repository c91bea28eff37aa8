"""The annotate and merge settings (``annotate.*``, ``merge.*``): which tools, the method's thresholds per tool, the
departures and optimisations we offer, and how C* is merged; the comment beside (or above) a field is what
docs/configuration.md shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ToolParams:
    """Per-tool overrides; None falls back to `annotate.defaults`."""

    tau_s: Optional[float] = None
    tau_f: Optional[float] = None
    top_k: Optional[int] = None
    num_samples: Optional[int] = None
    max_call_tokens: Optional[int] = None
    temperature: Optional[float] = None
    prompt_path: Optional[str] = None


@dataclass
class Optimizations:
    """The savings of the pipeline, each of which can be switched off (the benchmark's ablation). None of them
    changes the kept calls: they change what is computed, not what is decided."""

    prune: bool = True  # skip sampling where L_i(ε) < the scoring floor (no call there can be kept or counted)
    position_bounds: bool = True  # decide p_i > τs from top-k log-probs; exact values only where they matter
    truncated_scoring: bool = True  # score a candidate's sequence only up to x_{i+4}, the last token L_i reads
    shared_prefixes: bool = True  # one scored sequence per (text, prefix), not per candidate
    skip_call_only: bool = True  # L(e(c, ε)) only where L(ε) - L+ reaches the scoring floor


@dataclass
class AnnotateConfig:
    tools: list[str] = field(default_factory=lambda: ["Calculator", "Calendar"])
    # The paper's defaults (DESIGN §1.2).
    defaults: ToolParams = field(
        default_factory=lambda: ToolParams(
            tau_s=0.05, tau_f=1.0, top_k=5, num_samples=5, max_call_tokens=32, temperature=1.0
        )
    )
    # Calculator and MT: every position is a candidate, more samples, a lower bar (the paper's setting).
    per_tool: dict[str, ToolParams] = field(
        default_factory=lambda: {
            "Calculator": ToolParams(tau_s=0.0, top_k=20, num_samples=10, tau_f=0.5),
            "MT": ToolParams(tau_s=0.0, top_k=20, num_samples=10, tau_f=0.5),
        }
    )
    no_result_form: str = "arrow"  # arrow: [T(x) -> ]  (the paper's e(c, ε)) | bare: [T(x)]
    # free: the paper's sampling (a sample that does not parse as the tool's call is dropped) | constrained:
    # every sample is a well-formed call of the tool (a regular expression per tool: vLLM structured outputs,
    # xgrammar in the transformers engine); what the model writes inside the call is still its own. | operands:
    # constrained, and a Calculator call's operands are numbers the text wrote before the call (a per-text grammar).
    call_syntax: str = "free"
    # Gains below min(this, the tool's τf) are neither scored in full nor sampled for (pruning); None: the lowest
    # τf the report shows (0.5), which keeps every reported figure exact. Raise it to prune more.
    score_floor: Optional[float] = None
    optimizations: Optimizations = field(default_factory=Optimizations)
    prefix_separator: str = "\n"  # between a prefixed call and the text while scoring
    batch_size: int = 16  # texts per engine call
    # ray: shards on Ray Data actor pools (jobs.prepare's manifest; resumable) | local: one process, no shards
    runner: str = "ray"
    tool_options: dict[str, Any] = field(default_factory=dict)
    # A tool call that has not answered after this many seconds gets no result (`tool_timeout` in the funnel)
    # and the batch goes on; a hung search backend or model must not stall a shard. Per tool:
    # tool_timeout_s_per_tool: {QA: 120}.
    tool_timeout_s: float = 30.0
    tool_timeout_s_per_tool: dict[str, float] = field(default_factory=dict)
    # Tools run in worker processes that a timeout really ends (SIGKILL, then a fresh worker): this many per tool
    # and per actor, each holding the tool's index/model (its RSS); 0 runs every tool in the actor's process.
    tool_workers: int = 1
    # Cheap pure tools that stay in the actor's process (a call past its timeout is abandoned, not ended).
    tool_in_process: list[str] = field(default_factory=lambda: ["Calendar"])
    # A tool worker's set-up (loading its index or model) that takes longer is an error of the execution.
    tool_setup_timeout_s: float = 600.0
    # Tool worker replacements in a row, with no call answered in between, before the batch fails (ToolsWedged).
    tool_max_restarts: int = 8
    # A cleaner C* (issue 28), both off by default (the paper's method): positions only at word/number
    # boundaries, so a call never splits a number or a word ("70[Calculator(19 * 37) -> 703] 3" cannot happen)...
    boundary_positions: bool = False
    # ... and a Calculator call is kept only when its result agrees with the next number the text gives after the
    # call (within the tool's 2-decimal rounding); a contradicted call is dropped at the merge, counted as
    # `result_check` in merge.json and the card. A text with no number after the call is not contradicted.
    result_check: bool = False
    # Position settings read off one annotation (boundary: boundary_positions on, free: off): one scan, each set's k
    # best, calls sampled once at the union (seeds depend on the position only); each candidate names the sets that
    # chose it and merge.position_set takes one, as if annotated alone. Empty: boundary_positions decides.
    position_sets: list[str] = field(default_factory=list)


@dataclass
class MergeConfig:
    max_per_tool: int = 25_000
    # With annotate.position_sets: the one set whose candidates C* takes; None: every candidate.
    position_set: Optional[str] = None
    # Texts without a kept call stay in C* as they are: the paper's C* ("the exact same texts as C" apart from the
    # calls, DESIGN §1.4), which shows the model where calling nothing is right. False (the default the stored runs
    # were made with) keeps only texts with a call: a smaller, faster finetune that never sees an uncalled text.
    keep_uncalled: bool = False
