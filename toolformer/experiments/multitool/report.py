"""The multi-tool experiment's report (issue 42), from what the runs stored: ``results.json`` (per unit, setting
and set: accuracy with its Wilson interval; which tool each model chose per set and how right each choice was;
false calls on plain text; perplexity; the paired tests; the goals with their verdicts; why missed items were
missed; the corpus and C* per source; the timeline), ``items.jsonl.gz`` (every evaluated item: its generation,
each call's tool, input and output, and whether the answer was right) and the page ``docs/multitool.md``. It reads
only stored files, so it can be rerun at any time:

    python -m jobs.experiment --config jobs/configs/multitool.yaml --report-only
"""

from __future__ import annotations

import gzip
import json
import statistics
from pathlib import Path

from toolformer.config import RunConfig
from toolformer.evaluation.choice import tool_choice
from toolformer.experiments.multitool.goals import CHOSEN_TOOL, SETS, goals
from toolformer.experiments.paired import BASE, CONTROL, PROMPTED, TOOLS, compare, items_check, items_warning
from toolformer.experiments.math.report import _finetune_facts  # the same markers, read the same way
from toolformer.experiments.stats import wilson

FALSE_CALL = "false_call_webtext"
# Beyond, stated beside the results: the paper's GPT-J Toolformer (Table 3-5).
PAPER = {"lama_trex": 53.5, "lama_google_re": 11.5, "lama_squad": 33.8, "asdiv": 40.4, "svamp": 29.4,
         "mawps": 44.0, "dateset": 27.3}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def unit_dirs(root: Path) -> dict[str, Path]:
    """Every unit's folder that exists: base, and seed<s>/<setting>/r<k>."""
    out = {"base": root / "base"} if (root / "base").is_dir() else {}
    for sdir in sorted(root.glob("seed*")):
        for setting_dir in sorted(p for p in sdir.iterdir() if p.is_dir()):
            for rdir in sorted((setting_dir / "rounds").glob("r*")):
                out[f"{sdir.name}/{setting_dir.name}/{rdir.name}"] = rdir
    return out


def cstar_facts(rdir: Path) -> dict | None:
    """C* of one unit: texts (with and without a call), calls per tool, and per source how many texts carry a
    call of each tool; the annotation's funnel per tool."""
    if not (rdir / "merge.json").exists():
        return None
    import pyarrow.parquet as pq

    merge = json.loads((rdir / "merge.json").read_text())
    per_source: dict[str, dict] = {}
    for part in merge.get("parts") or []:
        t = pq.read_table(rdir / part, columns=["doc_id", "calls"])
        for doc, calls in zip(t.column("doc_id").to_pylist(), t.column("calls").to_pylist()):
            src = source_of(doc)
            entry = per_source.setdefault(src, {"texts": 0, "with_call": 0})
            entry["texts"] += 1
            entry["with_call"] += bool(calls)
            for tool in {c["tool"] for c in calls or []}:
                entry[tool] = entry.get(tool, 0) + 1
    ann = rdir / "steps" / "annotate.json"
    funnel = (json.loads(ann.read_text()).get("funnel") or {}) if ann.exists() else {}
    keep = ("texts_selected", "positions", "samples", "parsed", "executed", "kept_at_tool_tau_f")
    return {"texts": merge.get("texts"), "texts_without_calls": merge.get("texts_without_calls"),
            "calls": merge.get("calls"), "calls_per_tool": merge.get("calls_per_tool"), "per_source": per_source,
            "funnel": {tool: {k: v.get(k) for k in keep if k in v} for tool, v in funnel.items() if isinstance(v, dict)}}


def source_of(doc_id: str) -> str:
    """A corpus text's source from its id (``sources.py`` names them so)."""
    for prefix, name in (("asdiv-", "math"), ("lama_trex-", "facts"), ("lama_google_re-", "facts"),
                         ("c4-", "web")):
        if str(doc_id).startswith(prefix):
            return name
    return "other"


def item_row(unit: str, r: dict) -> dict:
    """One evaluated item as stored: the generation, each call (tool, input, output) and whether it was right."""
    return {"unit": unit, "setting": r["setting"], "task": r["task"], "uid": str(r["uid"]),
            "correct": bool(r.get("correct")), "answers": r.get("answers"), "generation": r.get("generation"),
            "calls": [{"tool": c.get("tool"), "input": c.get("input"), "output": c.get("result"),
                       **({"written": c.get("written")} if not c.get("tool") else {})} for c in r.get("calls") or []]}


def collect(cfg: RunConfig) -> dict:
    root = Path(cfg.output_dir)
    data: dict = {"units": {}, "right": {}, "rows": {}}
    for unit, d in unit_dirs(root).items():
        ev = d / "eval"
        entry: dict = {"eval": {}, "cstar": cstar_facts(d), "finetune": _finetune_facts(d, "finetune"),
                       "control": _finetune_facts(d, "baseline")}
        if (ev / "results.json").exists():
            for s in json.loads((ev / "results.json").read_text()):
                name = s["setting"]["name"]
                e = entry["eval"].setdefault(name, {"sets": {}})
                for task, v in s["tasks"].items():
                    n = v["n"]
                    k = round((v["accuracy"] or 0) * n / 100)
                    e["sets"][task] = {"n": n, "correct": k, "accuracy": v["accuracy"], "ci95": wilson(k, n)}
                for key in ("false_call", "perplexity", "seconds"):
                    if s.get(key):
                        e[key] = s[key]
        rows = _read_jsonl(ev / "generations.jsonl")
        data["rows"][unit] = rows
        for r in rows:
            data["right"].setdefault(unit, {}).setdefault(r["setting"], {}).setdefault(r["task"], {})[str(r["uid"])] = \
                bool(r.get("correct"))
        for name in entry["eval"]:
            entry["eval"][name]["choice"] = tool_choice(r for r in rows if r["setting"] == name)
        data["units"][unit] = entry
    data["timeline"] = _read_jsonl(root / "timeline.jsonl")
    built = root / "index_build.json"
    data["index_build"] = json.loads(built.read_text()) if built.is_file() else None
    return data


# -- why an item was missed, from its row ---------------------------------------------------------------------
def _words(text: str) -> set[str]:
    import re

    return {w for w in re.findall(r"\w+", (text or "").lower()) if len(w) > 3}


def miss_reason(row: dict, prompt: str | None = None) -> str:
    """Why a wrong answer was wrong, read from its row: no call, a malformed call, the wrong tool, a call with no
    result, a question not about the item (QA: no content word of the prompt in it), the tool's answer wrong, or
    a copy error (the tool's output held a right answer, the model's answer did not)."""
    from toolformer.evaluation.scoring import score

    calls = row.get("calls") or []
    if not calls:
        return "no call"
    c = calls[0]
    tool = c.get("tool")
    if not tool:
        return "malformed call"
    if tool != CHOSEN_TOOL.get(row["task"], tool):
        return "wrong tool"
    out = c.get("output") if "output" in c else c.get("result")
    if not out:
        return "call returned nothing"
    kind = "math" if row["task"] in ("asdiv", "svamp", "mawps") else "temporal" if row["task"] == "dateset" else "lama"
    answers = row.get("answers") or []
    try:
        held = bool(answers) and score(kind, str(out), answers)
    except (ValueError, TypeError):
        held = False
    if held:
        return "copy error (the tool's output held the answer)"
    if tool == "QA" and prompt is not None and not (_words(c.get("input")) & _words(prompt)):
        return "question not about the item"
    return f"{tool}'s answer wrong"


def diagnose(rows: list[dict], prompts: dict[tuple[str, str], str]) -> dict:
    """Per setting and set: the wrong items by reason (see ``miss_reason``)."""
    out: dict = {}
    for r in rows:
        if r.get("correct") or r["task"] not in SETS:
            continue
        row = item_row("", r)
        why = miss_reason(row, prompts.get((r["task"], str(r["uid"]))))
        per = out.setdefault(r["setting"], {}).setdefault(r["task"], {})
        per[why] = per.get(why, 0) + 1
    return out


def eval_operations(cfg: RunConfig) -> dict | None:
    """The operation mix of the evaluated ASDiv fold (beside the training sample's, ``sources.json``)."""
    from collections import Counter

    from toolformer.evaluation.evaluate import data_dir
    from toolformer.evaluation.tasks import load_task

    try:
        items = load_task("asdiv", data_dir(cfg), ids=cfg.eval.task_ids.get("asdiv"))
    except (OSError, ValueError):
        return None
    return dict(Counter(e.meta.get("operation") for e in items).most_common())


def load_prompts(cfg: RunConfig) -> dict[tuple[str, str], str]:
    """(task, item id) -> the prompt, read as the evaluation reads it (for the QA question check)."""
    from toolformer.evaluation.evaluate import data_dir
    from toolformer.evaluation.tasks import load_task

    out = {}
    for task in ("lama_trex", "lama_google_re", "lama_squad"):
        try:
            for e in load_task(task, data_dir(cfg), ids=cfg.eval.task_ids.get(task)):
                out[(task, e.uid)] = e.prompt
        except (OSError, ValueError):  # the report must not need the data to be written
            continue
    return out


# -- the summary ----------------------------------------------------------------------------------------------
def _spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 1), "min": min(values), "max": max(values),
            "range": round(max(values) - min(values), 1), "seeds": len(values)}


def _merge_choice(tables: list[dict]) -> dict:
    """Tool-choice tables of several seeds summed (items, right, worked), shares and accuracies recomputed."""
    counts: dict = {}
    for t in tables:
        for task, per in t.items():
            for choice, v in per.items():
                c = counts.setdefault(task, {}).setdefault(choice, [0, 0, 0])
                c[0] += v["n"]
                c[1] += v["right"]
                c[2] += v["worked"]
    out: dict = {}
    for task, per in counts.items():
        total = sum(n for n, _, _ in per.values())
        out[task] = {ch: {"n": n, "right": r, "accuracy": round(100 * r / n, 1), "share": round(100 * n / total, 1),
                          "worked": w} for ch, (n, r, w) in per.items()}
    return out


def summarize(cfg: RunConfig, data: dict) -> dict:
    seeds = list(cfg.bootstrap.seeds)
    lines = {"finetuned + tools": ("seed{s}/default/r1", TOOLS), "control": ("seed{s}/default/r1", CONTROL)}
    for opt in cfg.bootstrap.ablations:
        lines[f"finetuned + tools, {opt} off"] = (f"seed{{s}}/no_{opt}/r1", TOOLS)
    table: dict = {}
    for task in SETS:
        row: dict = {}
        for label, setting in (("base", BASE), ("base + tools (prompted)", PROMPTED)):
            e = ((data["units"].get("base") or {}).get("eval", {}).get(setting) or {}).get("sets", {}).get(task)
            if e:
                row[label] = {"mean": e["accuracy"], "n": e["n"], "ci95": e["ci95"], "seeds": 0}
        for label, (fmt, setting) in lines.items():
            vals, per_seed = [], {}
            for s in seeds:
                e = ((data["units"].get(fmt.format(s=s)) or {}).get("eval", {}).get(setting) or {}).get("sets", {}).get(task)
                if e and e["accuracy"] is not None:
                    vals.append(e["accuracy"])
                    per_seed[f"seed{s}"] = {"accuracy": e["accuracy"], "ci95": e["ci95"], "n": e["n"]}
            if vals:
                row[label] = {**_spread(vals), "per_seed": per_seed}
        if row:
            table[task] = {**row, "paper_toolformer_gptj": PAPER.get(task)}
    against = {"control": ("seed{s}/default/r1", CONTROL), "base + tools (prompted)": ("base", PROMPTED),
               "base": ("base", BASE)}
    paired: dict = {}
    for task in SETS:
        for label, (unit, setting) in against.items():
            got = compare(data, seeds, "seed{s}/default/r1", TOOLS, unit, setting, task)
            if got:
                paired.setdefault(task, {})[label] = got
        for opt in cfg.bootstrap.ablations:
            got = compare(data, seeds, f"seed{{s}}/no_{opt}/r1", TOOLS, "seed{s}/default/r1", TOOLS, task)
            if got:
                paired.setdefault(task, {})[f"{opt} off vs on"] = got
    choice: dict = {}
    for label, (fmt, setting) in lines.items():
        if setting == CONTROL:
            continue
        per_seed = {f"seed{s}": ((data["units"].get(fmt.format(s=s)) or {}).get("eval", {}).get(setting) or {}).get("choice")
                    for s in seeds}
        per_seed = {k: v for k, v in per_seed.items() if v}
        if per_seed:
            choice[label] = {"pooled": _merge_choice(list(per_seed.values())), "per_seed": per_seed}
    base_choice = ((data["units"].get("base") or {}).get("eval", {}).get(PROMPTED) or {}).get("choice")
    if base_choice:
        choice["base + tools (prompted)"] = {"pooled": base_choice}
    language: dict = {}
    for unit, u in data["units"].items():
        for name, e in u["eval"].items():
            if e.get("false_call") or e.get("perplexity"):
                language.setdefault(unit, {})[name] = {"false_call": e.get("false_call"),
                                                       "perplexity": (e.get("perplexity") or {}).get("perplexity")}
    prompts = load_prompts(cfg)
    why = {unit: diagnose(rows, prompts) for unit, rows in data["rows"].items() if rows}
    main_units = ["base", *(f"seed{s}/default/r1" for s in seeds)]
    check = {"main": items_check(data["right"], main_units), "every_model": items_check(data["right"])}
    return {"table": table, "paired": paired, "choice": choice, "language": language,
            "goals": goals(data, seeds, paired),
            "why_missed": why, "items": check, "items_warning": items_warning(check["every_model"]),
            "cstar": {u: d["cstar"] for u, d in data["units"].items() if d.get("cstar")},
            "finetune": {u: {"model": d.get("finetune"), "control": d.get("control")}
                         for u, d in data["units"].items() if d.get("finetune")},
            "units_done": sorted(u for u, d in data["units"].items() if d.get("eval")),
            "timeline": data["timeline"], "index_build": data.get("index_build"),
            "tests": {"per seed": "exact McNemar (two-sided, binomial on the discordant pairs), Wilson 95 % intervals",
                      "pooled over seeds": "paired sign-flip permutation test over items on d_i = mean over seeds of "
                                           "right with tools - mean over seeds of right with the other"}}


def store(cfg: RunConfig, data: dict, out: Path) -> None:
    """``items.jsonl.gz`` (every item of every unit and setting), ``timeline.jsonl``, the corpus account
    (``sources.json``) and each unit's small files (``units/<unit>/``)."""
    from toolformer.experiments.math.report import _SMALL_FILES, relative_paths

    root = Path(cfg.output_dir)
    with gzip.open(out / "items.jsonl.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        for unit, rows in sorted(data["rows"].items()):
            for r in rows:
                f.write(json.dumps(item_row(unit, r), ensure_ascii=False) + "\n")
    for unit, d in unit_dirs(root).items():
        for name in _SMALL_FILES:
            if (d / name).is_file():
                dest = out / "units" / unit / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(relative_paths((d / name).read_text(encoding="utf-8")), encoding="utf-8")
    for name, src in (("timeline.jsonl", root / "timeline.jsonl"),
                      ("sources.json", Path(cfg.corpus.paths[0]).parent / "sources.json" if cfg.corpus.paths else None)):
        if src is not None and src.is_file():
            (out / name).write_text(relative_paths(src.read_text(encoding="utf-8")), encoding="utf-8")
    if data["timeline"]:
        from toolformer.experiments.plan import measured_rates

        rates = measured_rates(cfg, data["timeline"])
        if rates:
            (out / "rates.json").write_text(json.dumps(rates, indent=1))


def write_report(cfg: RunConfig, results_dir: str | Path = "benchmarks/results/multitool",
                 docs_path: str | Path = "docs/multitool.md") -> dict:
    from toolformer.experiments.math.report import _run_dir, relative_paths
    from toolformer.experiments.multitool.page import page

    data = collect(cfg)
    summary = summarize(cfg, data)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = Path(cfg.corpus.paths[0]).parent / "sources.json" if cfg.corpus.paths else None
    summary["config"] = {"seeds": list(cfg.bootstrap.seeds), "ablations": list(cfg.bootstrap.ablations),
                         "share_annotation": cfg.bootstrap.share_annotation, "sources": dict(cfg.bootstrap.sources),
                         "tools": list(cfg.annotate.tools), "eval_tools": list(cfg.eval.tools),
                         "epochs": cfg.train.epochs, "lr": cfg.train.lr, "keep_uncalled": cfg.merge.keep_uncalled,
                         "task_ids": dict(cfg.eval.task_ids), "eval_tasks": list(cfg.bootstrap.eval_tasks),
                         "run_dir": _run_dir(cfg.output_dir), "dtype": cfg.model.dtype,
                         "per_tool": {k: {f: x for f, x in vars(v).items() if x is not None}
                                      for k, v in cfg.annotate.per_tool.items()}}
    summary["corpus"] = json.loads(sources.read_text()) if sources is not None and sources.is_file() else None
    summary["eval_operations"] = {"asdiv": eval_operations(cfg)}
    summary = relative_paths(json.loads(json.dumps(summary, default=str)))
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    store(cfg, data, out)
    notes = out / "notes.md"
    text = page(summary, notes.read_text() if notes.exists() else "")
    Path(docs_path).parent.mkdir(parents=True, exist_ok=True)
    Path(docs_path).write_text(text)
    return {"json": str(out / "results.json"), "plot": None, "docs": str(docs_path), "summary": summary}
