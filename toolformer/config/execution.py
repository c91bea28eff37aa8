"""The Ray settings of a run (``ray.*``): actor pools, retries, timeouts and how failures are charged; the comment
beside (or above) a field is what docs/configuration.md shows (``reference.py`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class StageResources:
    """One Ray Data actor pool: its size and what each actor asks the scheduler for."""

    actors: int = 1
    max_actors: Optional[int] = None  # autoscale up to this many (None: fixed at `actors`)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom resources steer stages to node types
    batch_size: Optional[int] = None  # rows (text x tool) per call; None: annotate.batch_size texts' worth
    # Memory each actor reserves (GiB): Ray packs no more actors on a node than its memory holds, instead of
    # letting the OOM killer pick. Defaults are peak RSS measured with the embedded model (README).
    memory_gb: float = 1.0


@dataclass
class RayConfig:
    # None: RAY_ADDRESS if set (a submitted job), else a local Ray started for the run; or "auto", "ray://..".
    address: Optional[str] = None
    num_cpus: Optional[int] = None  # for a local Ray only
    # Fractions of a CPU here so that every pool, plus the read and write tasks, fits on 2 cores (pools
    # whose reservations fill the node starve the reader and the run waits forever); jobs/configs/cluster.yaml
    # gives GPUs and whole nodes instead.
    select: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.1, memory_gb=0.5))
    sample: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.3, memory_gb=3.5))
    execute: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.1, memory_gb=1.5))
    score: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.3, memory_gb=3.5))
    # One LM pool whose actors sample, run the tools and score on one engine, instead of separate sample /
    # execute / score pools: every LM actor stays busy (scoring costs ~1/4 of sampling) and holds one model
    # copy. For cheap tools (Calculator, Calendar); search, QA and MT are better in their own CPU pool.
    fuse_lm: bool = False
    lm: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, memory_gb=3.5))
    io_num_cpus: float = 0.25  # read, stage-write and commit tasks: I/O bound
    io_memory_gb: float = 0.5  # per read/write/commit task: one shard's rows at most
    # The plan check before any pool starts (toolformer/annotate/plan.py, issue 27): the pools' smallest sizes must fit
    # the nodes the cluster has or its autoscaler may add. error: a plan that cannot fit stops the run at once
    # (instead of waiting forever for actors); warn: say so and start anyway; off: no check.
    plan_check: str = "error"
    # The cluster's own file (ray_cluster.yaml, cluster/raycluster.yaml or cluster/rayjob.yaml): the node types
    # and max workers the plan check counts on when the running cluster does not tell what its autoscaler may add.
    cluster_file: Optional[str] = None
    # Bounded retries (Ray's defaults retry a batch that kills its actor forever and the job hangs): a batch
    # that kills its actor (OOM, segfault, CUDA error, the LM watchdog) this many times fails its shards,
    # which then take the shard retry path (shards.max_failures, quarantine with the cause).
    batch_attempts: int = 3
    max_actor_restarts: int = 8  # per actor of a pool, for the whole run
    # An engine call (sampling or scoring one chunk of a batch) still running after this many seconds is stuck (a
    # hung engine): the watchdog ends its actor, and the batch is retried as a killed one. Tool calls are not timed
    # by it (annotate.tool_timeout_s). Size it well above one engine call's time.
    lm_batch_timeout_s: float = 900.0
    # An LM actor whose engine is dead (vLLM's EngineDeadError after a CUDA error or a GPU OOM, or an engine that
    # also fails a one-token probe after a batch raised) ends its own process, so the death path applies (restart,
    # in-flight record, node ledger, exclusion when it repeats) instead of error rows charged to healthy shards.
    # Also after this many chunks in a row raised, whatever the probe says (0: never on a count alone).
    lm_dead_after_errors: int = 3
    # The driver stops waiting when no row reaches it, no commit lands and no actor reports for this long: it cuts
    # the pass, charges the shards its actors hold and resumes the rest with fresh actors (or stops, naming the
    # pools, when nothing was in flight). None: 2 x lm_batch_timeout_s (an engine call that long is ended by the
    # watchdog first; a big model's first start also counts as silence, so keep it above that).
    progress_timeout_s: Optional[float] = None
    # Charged shards (and those a node's death left behind) are retried together in one pass after the fresh ones,
    # each in a block of its own; a number caps the shards per retry pass.
    retry_pass_shards: Optional[int] = None
    # Heal in the job: a cut pass is followed by one with fresh pools; this many passes in a row with no commit and
    # no charge stop the run (exit 1).
    max_passes_without_progress: int = 3
    # A node whose workers died holding this many different shards within the window is excluded (blame.py).
    node_max_failures: int = 2
    node_failure_window_s: float = 3600.0
    # Before a death is charged to a shard because its node looked alive, the driver waits this long for the GCS to
    # say the node is gone (it marks a lost node dead only after its health checks fail). None: Ray's own bound from
    # the cluster's health-check settings, threshold x (period + timeout), at least 70 s (65 s with Ray's defaults).
    node_grace_s: Optional[float] = None
    # An LM actor not set up (engine started) after this long ends itself and is replaced. None: no bound.
    lm_setup_timeout_s: Optional[float] = 1800.0
