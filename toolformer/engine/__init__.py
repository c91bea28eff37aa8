"""LM engines behind one interface: vLLM (GPU and CPU builds) and transformers (the reference)."""

from __future__ import annotations

from toolformer.engine.base import Engine, EngineDead, Sample, StartProbs, doc_start_ids, engine_is_dead, probe
from toolformer.models import resolve_dtype, resolve_model


def build_engine(cfg) -> Engine:
    """An engine from a RunConfig (its `model`, `engine` and `seed` sections)."""
    from toolformer.run.faults import dead_engine_fault

    return dead_engine_fault(_build(cfg))


def _build(cfg) -> Engine:
    path = resolve_model(cfg.model.name_or_path, cfg.model.cache_dir)
    e = cfg.engine
    dtype = resolve_dtype(cfg.model.dtype)  # auto: bf16 where the hardware has it, else fp32
    if e.backend == "hf":
        from toolformer.engine.hf import HFEngine

        return HFEngine(path, dtype, max_batch_tokens=e.hf_max_batch_tokens)
    if e.backend == "vllm":
        from toolformer.engine.vllm_engine import VLLMEngine

        return VLLMEngine(
            path,
            dtype,
            seed=cfg.seed,
            max_model_len=e.max_model_len,
            enforce_eager=e.enforce_eager,
            enable_prefix_caching=e.enable_prefix_caching,
            max_num_batched_tokens=e.max_num_batched_tokens,
            max_num_seqs=e.max_num_seqs,
            gpu_memory_utilization=e.gpu_memory_utilization,
            cpu_kv_cache_gib=e.cpu_kv_cache_gib,
            block_size=e.block_size,
            top_logprobs=e.top_logprobs,
            tensor_parallel_size=e.tensor_parallel_size,
            pipeline_parallel_size=e.pipeline_parallel_size,
            distributed_executor_backend=e.distributed_executor_backend,
        )
    raise ValueError(f"unknown engine backend {e.backend!r} (vllm | hf)")


__all__ = ["Engine", "EngineDead", "Sample", "StartProbs", "build_engine", "doc_start_ids", "engine_is_dead", "probe",
           "resolve_model"]
