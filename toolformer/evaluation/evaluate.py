"""The evaluate job's driver: every setting on every task, one vLLM engine per model, a results table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from toolformer.config import RunConfig
from toolformer.evaluation.runner import Setting, evaluate_setting, write_results
from toolformer.evaluation.tasks import HUB, load_hub_task, load_task
from toolformer.inference import DecodeConfig
from toolformer.paths import shared_data


def data_dir(cfg: RunConfig) -> Path:
    return shared_data(cfg.eval.data_dir)


def settings(cfg: RunConfig, base_path: str) -> list[Setting]:
    # "base" is the paper's model without tools: plain greedy decoding, nothing banned; "disabled" (the start of
    # a call at probability 0) is for models that learned to call, the paper's "Toolformer (disabled)".
    out = [Setting("base", base_path, "plain")] if cfg.eval.base else []
    if cfg.eval.base_prompted:
        out.append(Setting("base + tools (prompted)", base_path, "prompted"))
    if cfg.eval.baseline:  # the paper's control: finetuned on the same texts without calls, decoded plainly
        out.append(Setting("baseline-finetuned", cfg.eval.baseline, "plain"))
    if cfg.eval.finetuned:
        if cfg.eval.disabled:
            out.append(Setting("finetuned (disabled)", cfg.eval.finetuned, "disabled"))
        out.append(Setting("finetuned + tools", cfg.eval.finetuned, "tools"))
    if not out:
        raise ValueError("nothing to evaluate: eval.base and eval.base_prompted are false and eval.finetuned is unset")
    return out


def tools_offered(names: Sequence[str], examples: Iterable) -> list[str]:
    """The tools of ``names`` that some example may call: only those are started (a math evaluation does not wait
    for the QA reader to load or the Wikipedia index to build)."""
    from toolformer.tools import canonical_name

    offered = {canonical_name(t) for ex in examples for t in ex.tools}
    return [name for name in names if canonical_name(name) in offered]


def build_tools(cfg: RunConfig, names: Sequence[str] | None = None) -> dict:
    """The evaluated tools (``names``, default ``eval.tools``), each call under its deadline as in annotation:
    worker processes a timeout ends (the Calendar in process), ``annotate.tool_timeout_s`` per call. Close them
    with ``close_tools``."""
    from toolformer.tools import canonical_name
    from toolformer.tools.runners import BoundedTool, start_runners

    a = cfg.annotate
    names = list(cfg.eval.tools if names is None else names)
    if not names:
        return {}
    runners = start_runners(names, a.tool_options, workers=a.tool_workers,
                            in_process=a.tool_in_process or [], setup_timeout_s=a.tool_setup_timeout_s,
                            max_restarts=a.tool_max_restarts)
    per_tool = {canonical_name(k): v for k, v in (a.tool_timeout_s_per_tool or {}).items()}
    return {name: BoundedTool(runners[canonical_name(name)], per_tool.get(canonical_name(name), a.tool_timeout_s))
            for name in names}


def close_tools(tools: dict) -> None:
    for tool in tools.values():
        close = getattr(tool, "close", None)
        if close is not None:
            close()


def run_evaluate(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    e = cfg.eval
    examples = []
    for task in e.tasks:
        if e.from_hub and task in HUB:
            examples += load_hub_task(task, limit=e.limit, seed=e.items_seed)
        else:
            examples += load_task(task, data_dir(cfg), limit=e.limit, seed=e.items_seed, tools=e.task_tools.get(task),
                                  templama_path=e.templama_path, path=e.task_paths.get(task),
                                  ids=e.task_ids.get(task))
    log(f"{len(examples)} examples from {len(e.tasks)} tasks")
    from toolformer.evaluation import language

    false_call = {s: language.false_call_examples(data_dir(cfg), s, e.false_call_n, e.items_seed, tuple(e.tools))
                  for s in e.false_call_sets}
    tools = build_tools(cfg, tools_offered(e.tools, examples + [p for ps in false_call.values() for p in ps]))
    try:
        return _evaluate(cfg, e, examples, false_call, tools, log)
    finally:
        close_tools(tools)


def _evaluate(cfg: RunConfig, e, examples: list, false_call: dict, tools: dict, log: Callable[[str], None]) -> dict:
    from toolformer.engine import build_engine
    from toolformer.models import resolve_model

    decode = DecodeConfig(max_new_tokens=e.max_new_tokens, top_k=e.top_k, max_calls=e.max_calls, stop=["\n"])
    base = resolve_model(cfg.model.name_or_path, cfg.model.cache_dir)
    from toolformer.evaluation import language

    ppl_texts = language.perplexity_texts(data_dir(cfg), e.perplexity_texts) if e.perplexity_texts else []
    results, engines, ppl = [], {}, {}
    for setting in settings(cfg, base):
        t_setting = time.perf_counter()  # the setting's whole cost: engine start (when new), tasks, false calls, ppl
        for t in tools.values():
            t.errors = {}
        if setting.model not in engines:
            for old in engines.values():
                old.close()
            engines = {setting.model: build_engine(_with_model(cfg, setting.model))}
        r = evaluate_setting(engines[setting.model], tools, setting, examples, decode)
        log(f"  {setting.name}: {r['examples_per_s']} examples/s; " +
            ", ".join(f"{t} {v['accuracy']}" for t, v in sorted(r["tasks"].items())))
        if false_call and setting.mode in ("tools", "prompted"):  # models that may call: do they when they should not?
            fc_decode = DecodeConfig(max_new_tokens=e.max_new_tokens, top_k=e.top_k, max_calls=e.max_calls)
            r["false_call"] = {}
            for name, prompts in false_call.items():
                fc = evaluate_setting(engines[setting.model], tools, setting, prompts, fc_decode)
                r["rows"] += fc["rows"]
                r["false_call"][name] = language.false_call_rate(fc["rows"])
            log(f"  {setting.name}: false calls " + ", ".join(
                f"{k} {v['any_call_share']}% (Calculator {v['calculator_call_share']}%)" for k, v in r["false_call"].items()))
        if ppl_texts:
            if setting.model not in ppl:
                ppl[setting.model] = language.perplexity(engines[setting.model], ppl_texts)
            r["perplexity"] = ppl[setting.model]
        r["seconds"] = round(time.perf_counter() - t_setting, 1)
        # why this setting's tool calls got no result (a timeout that ended the call, an exception), per tool
        r["tool_errors"] = {name: dict(t.errors) for name, t in tools.items() if getattr(t, "errors", None)}
        results.append(r)
    for engine in engines.values():
        engine.close()
    return write_results(results, e.out_dir or Path(cfg.output_dir) / "eval")


def _with_model(cfg: RunConfig, path: str) -> RunConfig:
    import copy

    c = copy.deepcopy(cfg)
    c.model.name_or_path = path
    return c
