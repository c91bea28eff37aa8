"""Evaluate models on the paper's tasks with and without tools: decode, score leniently, count calls.

A *setting* is a model and how it may use tools: ``tools`` (calls allowed, top-k trigger), ``disabled`` (the
start of a call forced to probability 0: "Toolformer (disabled)") and ``prompted`` (tools allowed and a
few-shot tool-use prompt in front: the base model "with tools via prompting only").
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from toolformer.evaluation.scoring import score
from toolformer.evaluation.tasks import Example
from toolformer.inference import DecodeConfig, ToolDecoder


@dataclass
class Setting:
    name: str  # the row of the table
    model: str  # HF folder (the vLLM engine loads it)
    mode: str  # plain (no tools) | tools | disabled (calls banned) | prompted (tools + a few-shot tool-use prompt)


def format_prompt(e: Example) -> str:
    if (e.kind in ("lama", "temporal") and e.task != "dateset") or e.kind == "text":
        return e.prompt  # a cloze or a passage (false-call prompts): the model continues it
    if e.kind == "mlqa":
        context, question = e.prompt.rsplit("\n", 1)
        return f"{context}\nQuestion: {question}\nAnswer:"
    return f"Question: {e.prompt}\nAnswer:"


def tool_use_prompt() -> str:
    """The few-shot tool-use preamble (not an annotation prompt: it has no text slot)."""
    from importlib import resources

    return resources.files("toolformer.prompts").joinpath("tool_use.txt").read_text(encoding="utf-8")


def evaluate_setting(engine, tools: dict, setting: Setting, examples: Sequence[Example], cfg: DecodeConfig) -> dict:
    """Per task: accuracy, examples, and the share of examples in which each tool was called (and worked)."""
    prefix = tool_use_prompt() if setting.mode == "prompted" else ""
    decoder = ToolDecoder(engine, tools, DecodeConfig(**{**cfg.__dict__, "disabled": setting.mode == "disabled"}))
    t0 = time.perf_counter()
    outs = decoder([prefix + format_prompt(e) for e in examples],
                   allowed=[() if setting.mode == "plain" else e.tools for e in examples],
                   contexts=[{"date": e.meta.get("today"), "allow_today": True} for e in examples])
    seconds = time.perf_counter() - t0
    per_task: dict[str, dict] = defaultdict(lambda: {"n": 0, "correct": 0, "calls": Counter()})
    rows = []
    for e, d in zip(examples, outs):
        t = per_task[e.task]
        t["n"] += 1
        ok = bool(e.answers) and score(e.kind, d.answer_text, e.answers)
        t["correct"] += ok
        for c in d.calls:
            if c["ok"]:
                t["calls"][c["tool"]] += 1
        rows.append({"task": e.task, "uid": e.uid, "answers": e.answers[:3], "generation": d.text, "correct": ok,
                     "calls": d.calls})
    results = {task: {"n": v["n"], "accuracy": round(100 * v["correct"] / v["n"], 1) if v["n"] else None,
                      "call_share": {tool: round(100 * c / v["n"], 1) for tool, c in v["calls"].items()}}
               for task, v in per_task.items()}
    return {"setting": setting.__dict__, "tasks": results, "seconds": round(seconds, 1),
            "examples_per_s": round(len(examples) / seconds, 2) if seconds else None, "rows": rows}


def results_table(all_results: list[dict]) -> str:
    """Markdown: settings × tasks, accuracy with the share of examples that called a tool."""
    tasks = sorted({t for r in all_results for t in r["tasks"]})
    lines = ["| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for r in all_results:
        cells = []
        for t in tasks:
            v = r["tasks"].get(t)
            if not v:
                cells.append("—")
                continue
            share = sum(v["call_share"].values())
            cells.append(f"{v['accuracy']}" + (f" ({share:.0f}% calls)" if share else ""))
        lines.append(f"| {r['setting']['name']} | " + " | ".join(cells) + " |")
    n = {t: next(r["tasks"][t]["n"] for r in all_results if t in r["tasks"]) for t in tasks}
    lines.append("")
    lines.append("Examples per task: " + ", ".join(f"{t} {n[t]}" for t in tasks) + ". Accuracy in %, lenient scoring (DESIGN §1.6).")
    if "trex_temporal_templates" in tasks:
        lines.append("trex_temporal_templates is not TempLAMA (T-REx objects in TempLAMA's templates, no time stamps): "
                     "not comparable with the paper's TempLAMA figures.")
    return "\n".join(lines)


def plot(all_results: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for r in all_results for t in r["tasks"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * len(all_results) / 2) + 2.5, 4))
    width = 0.8 / max(1, len(all_results))
    for i, r in enumerate(all_results):
        ys = [(r["tasks"].get(t) or {}).get("accuracy") or 0 for t in tasks]
        ax.bar([x + i * width for x in range(len(tasks))], ys, width, label=r["setting"]["name"])
    ax.set_xticks([x + width * (len(all_results) - 1) / 2 for x in range(len(tasks))])
    ax.set_xticklabels(tasks, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    # outside the axes, to the right: the legend never covers a bar
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(all_results: list[dict], out_dir: str | Path) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(all_results)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "rows"} for r in all_results], indent=2))
    with open(out / "generations.jsonl", "w") as f:
        for r in all_results:
            for row in r["rows"]:
                f.write(json.dumps({"setting": r["setting"]["name"], **row}, ensure_ascii=False) + "\n")
    png = plot(all_results, out / "accuracy.png")
    return {"table": table, "markdown": str(out / "results.md"), "json": str(out / "results.json"), "plot": str(png)}
