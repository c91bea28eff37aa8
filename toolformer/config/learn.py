"""What comes after C*: finetuning (``train.*``), evaluation (``eval.*``) and rounds of bootstrapping
(``bootstrap.*``); the comment beside (or above) a field is what docs/configuration.md shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


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
    # A task's file instead of the shipped one, same format (asdiv, svamp, mawps, templama; dateset: a JSONL of
    # question, answers, today): e.g. {mawps: /data/mawps_full.json} for the full MAWPS or a split of your own.
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
    # Which report the experiment writes (toolformer/experiments/<report>/): math | multitool.
    report: str = "math"
    # Round 1 of every seed merges the first seed's annotation instead of sampling its own: the seeds then differ
    # in training order only (the page says so); what lets three seeds fit the time a small machine has.
    share_annotation: bool = False
    # The corpus built from several sources before the first unit (toolformer/experiments/sources.py),
    # texts per source: {math: 120, facts: 150, dated: 30, plain: 30}; written to corpus.paths' one corpus.jsonl.
    sources: dict[str, int] = field(default_factory=dict)
    sources_seed: int = 0  # the sample of every source: the same texts for every seed
    # The LAMA index (every LAMA evidence passage and a Wikipedia sample), built here once when set: the folder
    # the QA tool's options name (annotate.tool_options.QA.index_dir).
    lama_index: Optional[str] = None
