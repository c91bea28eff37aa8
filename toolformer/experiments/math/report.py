"""The math experiment's report (issues 28, 33), from what the runs stored: ``results.json`` (per seed, set and
setting: accuracy, Wilson CI, share of answers with a call, false-call rate, perplexity; per seed the exact McNemar
test, pooled over seeds the paired permutation test over items (``toolformer.experiments.paired``); the goals with their
verdicts (``toolformer.experiments.math.goals``); whether every model read the same items; the diagnosis from the item rows
(``toolformer.experiments.math.diagnosis``); the C* options' kept calls and copy-error rates; round 1 against round 2;
timings), ``items.json``, ``math.png`` and the results page ``docs/math.md``. Paths it writes are relative to the
repository. It reads only stored files, so it can be rerun at any time:

    python -m jobs.math_experiment --config jobs/configs/math.yaml --report-only
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from toolformer.config import RunConfig
from toolformer.experiments.math.diagnosis import diagnose_unit, false_call_diagnosis, generation_copy_errors, load_questions
from toolformer.experiments.math.goals import goals
from toolformer.experiments.paired import (BASE, CONTROL, PROMPTED, SETS, TOOLS, comparisons, ids_within, items_check,
                                    items_warning, mcnemar)
from toolformer.experiments.stats import wilson

__all__ = ["mcnemar", "wilson", "write_report", "collect", "summarize", "generation_copy_errors"]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def cstar_facts(rdir: Path) -> dict:
    """Kept calls, C* texts, calls removed by the result check, and the C* copy-error rate of one round."""
    import pyarrow.parquet as pq

    from toolformer.cstar.augment import copy_errors

    merge = json.loads((rdir / "merge.json").read_text()) if (rdir / "merge.json").exists() else {}
    compared = wrong = 0
    for part in merge.get("parts") or []:
        table = pq.read_table(rdir / part, columns=["text", "calls"])
        for text, calls in zip(table.column("text").to_pylist(), table.column("calls").to_pylist()):
            c, w = copy_errors(text, calls)
            compared, wrong = compared + c, wrong + w
    removed = (merge.get("checks") or {}).get("removed_by_rule") or {}
    annotate = json.loads((rdir / "steps" / "annotate.json").read_text()) if (rdir / "steps" / "annotate.json").exists() else {}
    funnel = (annotate.get("funnel") or {}).get("Calculator") or {}
    return {"texts": merge.get("texts"), "calls": merge.get("calls"),
            "kept_by_filter": funnel.get("kept_at_tool_tau_f"), "sampled": funnel.get("samples"),
            "removed_by_result_check": sum((removed.get("result_check") or {}).values()),
            "copy_errors": {"compared": compared, "disagree": wrong,
                            "rate": round(100 * wrong / compared, 1) if compared else None}}


def _finetune_facts(rdir: Path, step: str) -> dict | None:
    path = rdir / "steps" / f"{step}.json"
    if not path.exists():
        return None
    f = json.loads(path.read_text())
    return {k: f.get(k) for k in ("train_texts", "train_sequences", "train_tokens_per_epoch", "dev_texts", "epochs",
                                  "steps", "steps_per_epoch", "best_dev_ppl", "seconds")}


def collect_eval(edir: Path, questions: dict | None = None) -> tuple[dict, dict, dict]:
    """(per setting: per set accuracy/CI/call share + false calls + perplexity; per setting and set: item ->
    right; the diagnosis per setting and set, from the item rows)."""
    out: dict = {}
    right: dict = {}
    results = edir / "results.json"
    if not results.exists():
        return out, right, {}
    for s in json.loads(results.read_text()):
        name = s["setting"]["name"]
        entry = out.setdefault(name, {"sets": {}})
        for task, v in s["tasks"].items():
            if task not in SETS:
                continue
            n = v["n"]
            k = round((v["accuracy"] or 0) * n / 100)
            entry["sets"][task] = {"n": n, "correct": k, "accuracy": v["accuracy"], "ci95": wilson(k, n),
                                   "call_share": round(sum(v["call_share"].values()), 1)}
        if s.get("false_call"):
            entry["false_call"] = s["false_call"]
        if s.get("perplexity"):
            entry["perplexity"] = s["perplexity"]
    rows = [r for r in _read_jsonl(edir / "generations.jsonl") if r["task"] in SETS]
    for r in rows:
        right.setdefault(r["setting"], {}).setdefault(r["task"], {})[str(r["uid"])] = bool(r.get("correct"))
    for name in out:
        mine = [r for r in rows if r["setting"] == name]
        if mine and name in (TOOLS, PROMPTED):
            out[name]["generation_copy_errors"] = generation_copy_errors(mine)
    return out, right, diagnose_unit(rows, questions or {}, SETS)


def collect(cfg: RunConfig, questions: dict | None = None) -> dict:
    """Everything stored so far, by unit. ``questions`` (set -> item id -> question) for the operand provenance;
    None: read from the evaluation's task files."""
    root = Path(cfg.output_dir)
    questions_note = None
    if questions is None:
        questions, questions_note = load_questions(cfg, SETS)
    data: dict = {"units": {}, "right": {}, "diagnosis": {}, "false_calls": {},
                  "questions": {"sets": {t: len(q) for t, q in questions.items()}, "problem": questions_note}}
    base_eval, base_right, base_diag = collect_eval(root / "base" / "eval", questions)
    if base_eval:
        data["units"]["base"] = {"eval": base_eval}
        data["right"]["base"] = base_right
        data["diagnosis"]["base"] = base_diag
        data["false_calls"]["base"] = false_call_diagnosis(_read_jsonl(root / "base" / "eval" / "generations.jsonl"))
    for sdir in sorted(root.glob("seed*")):
        for setting_dir in sorted(p for p in sdir.iterdir() if p.is_dir()):
            for rdir in sorted((setting_dir / "rounds").glob("r*")):
                name = f"{sdir.name}/{setting_dir.name}/{rdir.name}"
                ev, right, diag = collect_eval(rdir / "eval", questions)
                unit = {"eval": ev, "cstar": cstar_facts(rdir) if (rdir / "merge.json").exists() else None,
                        "finetune": _finetune_facts(rdir, "finetune"), "control": _finetune_facts(rdir, "baseline"),
                        "steps_seconds": {p.stem: json.loads(p.read_text()).get("seconds")
                                          for p in sorted((rdir / "steps").glob("*.json"))}}
                if (rdir / "corpus_sources.json").exists():
                    unit["corpus_sources"] = json.loads((rdir / "corpus_sources.json").read_text())
                data["units"][name] = unit
                data["right"][name] = right
                if diag:
                    data["diagnosis"][name] = diag
                fc = false_call_diagnosis(_read_jsonl(rdir / "eval" / "generations.jsonl"))
                if fc:
                    data["false_calls"][name] = fc
    data["timeline"] = _read_jsonl(root / "timeline.jsonl")
    return data


def _spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 1), "min": min(values), "max": max(values),
            "range": round(max(values) - min(values), 1),
            "sd": round(statistics.stdev(values), 1) if len(values) > 1 else 0.0, "seeds": len(values)}


def rows_table(data: dict, seeds: list[int]) -> list[dict]:
    """Flat rows: unit, seed, round, setting name, set, accuracy, CI, call share, false calls, perplexity."""
    rows = []
    for unit, u in data["units"].items():
        seed = None if unit == "base" else int(unit.split("/")[0].removeprefix("seed"))
        cstar_setting = "base" if unit == "base" else unit.split("/")[1]
        r = 1 if unit == "base" else int(unit.split("/")[2].removeprefix("r"))
        for name, e in u["eval"].items():
            fc = e.get("false_call") or {}
            for task, v in e["sets"].items():
                rows.append({"unit": unit, "seed": seed, "round": r, "cstar": cstar_setting, "setting": name,
                             "set": task, **v,
                             "false_call": {k: x["calculator_call_share"] for k, x in fc.items()} or None,
                             "perplexity": (e.get("perplexity") or {}).get("perplexity")})
    return rows


def summarize(cfg: RunConfig, data: dict) -> dict:
    seeds = list(cfg.bootstrap.seeds)
    rows = rows_table(data, seeds)

    def acc(unit_fmt: str, setting: str, task: str) -> list[float]:
        vals = []
        for s in seeds:
            e = (data["units"].get(unit_fmt.format(s=s)) or {}).get("eval", {}).get(setting, {}).get("sets", {}).get(task)
            if e and e["accuracy"] is not None:
                vals.append(e["accuracy"])
        return vals

    pooled: dict = {}
    lines_of = {"r1 finetuned + tools": ("seed{s}/default/r1", TOOLS), "r1 control": ("seed{s}/default/r1", CONTROL),
                "r2 finetuned + tools": ("seed{s}/default/r2", TOOLS), "r2 control": ("seed{s}/default/r2", CONTROL)}
    for opt in cfg.bootstrap.ablations:
        lines_of[f"r1 finetuned + tools, {opt} off"] = (f"seed{{s}}/no_{opt}/r1", TOOLS)
    for task in SETS:
        for label, (fmt, setting) in lines_of.items():
            vals = acc(fmt, setting, task)
            if vals:
                pooled.setdefault(task, {})[label] = _spread(vals)
        for label, setting in (("base", BASE), ("base + tools (prompted)", PROMPTED)):
            e = (data["units"].get("base") or {}).get("eval", {}).get(setting, {}).get("sets", {}).get(task)
            if e:
                pooled.setdefault(task, {})[label] = {"mean": e["accuracy"], "seeds": 0, "ci95": e["ci95"]}
    against_r1 = {"control": ("seed{s}/default/r1", CONTROL), "base + tools (prompted)": ("base", PROMPTED),
                  "base": ("base", BASE)}
    paired = {"r1": comparisons(data, seeds, "default", 1, against_r1),
              "r2": comparisons(data, seeds, "default", 2, {"control": ("seed{s}/default/r2", CONTROL),
                                                            "r1 finetuned + tools": ("seed{s}/default/r1", TOOLS)})}
    for opt in cfg.bootstrap.ablations:
        paired[f"r1 {opt} off"] = comparisons(data, seeds, f"no_{opt}", 1, {"on (default)": ("seed{s}/default/r1", TOOLS)})
    ablation = {}
    for opt in [None, *cfg.bootstrap.ablations]:
        label = "on (default)" if opt is None else f"{opt} off"
        setting = "default" if opt is None else f"no_{opt}"
        per_seed = {}
        for s in seeds:
            u = data["units"].get(f"seed{s}/{setting}/r1")
            if not u or not u.get("cstar"):
                continue
            e = u["eval"].get(TOOLS, {})
            per_seed[f"seed{s}"] = {**u["cstar"], "accuracy": {t: v["accuracy"] for t, v in e.get("sets", {}).items()},
                                    "generation_copy_errors": e.get("generation_copy_errors"),
                                    "false_call": {k: x["calculator_call_share"] for k, x in (e.get("false_call") or {}).items()}}
        if per_seed:
            ablation[label] = per_seed
    language = {}
    for unit, u in data["units"].items():
        for name, e in u["eval"].items():
            if e.get("false_call") or e.get("perplexity"):
                language.setdefault(unit, {})[name] = {"false_call": e.get("false_call"),
                                                       "perplexity": (e.get("perplexity") or {}).get("perplexity")}
    goal_units = ["base", *(f"seed{s}/default/r1" for s in seeds)]
    # the main comparison reads the full sets; the ablations and later rounds a stated fixed subset
    # (bootstrap.secondary_task_ids): each group must read the same ids, and a subset must lie within the full set
    others = [u for u in data["right"] if u not in goal_units]
    check = {"goal_models": items_check(data["right"], goal_units), "secondary": items_check(data["right"], others),
             "secondary_within_main": ids_within(data["right"], others, goal_units),
             "every_model": items_check(data["right"])}
    warning = " ".join(w for w in (items_warning(check["goal_models"]), items_warning(check["secondary"])) if w) or None
    diagnosis = {"rows": data["diagnosis"], "questions": data.get("questions"),
                 "cstar_copy_errors": {u: d["cstar"]["copy_errors"] for u, d in data["units"].items()
                                       if d.get("cstar")},
                 "false_calls": data.get("false_calls") or {},
                 "note": "per unit, setting and set: answers with a call (%), where the first call sits (before the "
                         "answer's first number or after one), its operands (all in the question or not), copy "
                         "errors in the generations (and in C*: cstar_copy_errors), right without / with a call"}
    return {"rows": rows, "pooled": pooled, "paired": paired, "ablation": ablation, "language": language,
            "goals": goals(data, seeds, paired["r1"]),
            "items_equal": check["goal_models"]["items_equal"] and check["secondary"]["items_equal"],
            "items": check, "items_warning": warning,
            "tests": {"per seed": "exact McNemar (two-sided, binomial on the discordant pairs), Wilson 95 % intervals",
                      "pooled over seeds": "paired sign-flip permutation test over items on d_i = mean over seeds "
                                           "of right with tools - mean over seeds of right with the other (base: "
                                           "its one answer); exact, or Monte Carlo (stated per test)"},
            "diagnosis": diagnosis,
            "units_done": sorted(u for u, d in data["units"].items() if d.get("eval")),
            "units_started": sorted(u for u, d in data["units"].items() if not d.get("eval")),
            "finetune": {u: {"model": d.get("finetune"), "control": d.get("control")} for u, d in data["units"].items()
                         if d.get("finetune")},
            "timeline": data["timeline"],
            "corpus_sources": {u: d["corpus_sources"] for u, d in data["units"].items() if d.get("corpus_sources")}}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["base", "base + tools (prompted)", "r1 control", "r1 finetuned + tools", "r2 control",
             "r2 finetuned + tools"] + sorted({k for t in summary["pooled"].values() for k in t if k.endswith(" off")})
    fig, axes = plt.subplots(1, len(SETS), figsize=(5.2 * len(SETS), 4.6), sharey=True)
    for ax, task in zip(axes, SETS):
        labels = [lab for lab in order if lab in (summary["pooled"].get(task) or {})]
        for x, lab in enumerate(labels):
            pts = [r for r in summary["rows"] if r["set"] == task and _row_label(r) == lab]
            for j, r in enumerate(sorted(pts, key=lambda r: r["seed"] if r["seed"] is not None else -1)):
                dx = (j - (len(pts) - 1) / 2) * 0.12
                lo, hi = r["ci95"]
                ax.errorbar(x + dx, r["accuracy"], yerr=[[r["accuracy"] - lo], [hi - r["accuracy"]]], fmt="o",
                            ms=4, capsize=2, color=f"C{x % 10}")
            mean = summary["pooled"][task][lab]["mean"]
            ax.hlines(mean, x - 0.3, x + 0.3, color="k", lw=1)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=8)
        n = next((r["n"] for r in summary["rows"] if r["set"] == task), 0)
        ax.set_title(f"{task} (n = {n})")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy % (points: seeds, 95 % Wilson CI; line: mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _row_label(r: dict) -> str:
    if r["unit"] == "base":
        return r["setting"]
    kind = "control" if r["setting"] == CONTROL else "finetuned + tools"
    if r["cstar"] != "default":
        return f"r{r['round']} finetuned + tools, {r['cstar'].removeprefix('no_')} off"
    return f"r{r['round']} {kind}"


_SMALL_FILES = ("merge.json", "corpus_sources.json", "config.round.yaml", "cstar/README.md", "eval/results.json",
                "eval/results.md", "steps/annotate.json", "steps/merge.json", "steps/finetune.json", "steps/baseline.json",
                "steps/evaluate.json")


def store_units(cfg: RunConfig, data: dict, out: Path) -> None:
    """What the report rests on, small enough to commit: per unit its markers, merge summary, C* card, corpus
    account and evaluation results (``units/<unit>/``), and every item's right/wrong per unit, setting and set
    (``items.json``: the uids once per set, then a 0/1 string per row in that order), so every test here can be
    recomputed without the generations."""
    root = Path(cfg.output_dir)
    for unit in data["units"]:
        src = root / "base" if unit == "base" else root / unit.split("/")[0] / unit.split("/")[1] / "rounds" / unit.split("/")[2]
        for name in _SMALL_FILES:
            if (src / name).is_file():
                dest = out / "units" / unit / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(relative_paths((src / name).read_text(encoding="utf-8")), encoding="utf-8")
    every: dict[str, set[str]] = {}
    for per_setting in data["right"].values():
        for per_task in per_setting.values():
            for task, items in per_task.items():
                every.setdefault(task, set()).update(items)
    uids = {task: sorted(ids) for task, ids in every.items()}
    rows = {unit: {setting: {task: "".join("1" if items.get(u) else ("0" if u in items else "-") for u in uids[task])
                             for task, items in per_task.items()}
                   for setting, per_task in per_setting.items()}
            for unit, per_setting in data["right"].items()}
    (out / "items.json").write_text(json.dumps({"uids": uids, "right": rows}))
    if (root / "timeline.jsonl").is_file():  # start, end, phases and load of every unit run
        (out / "timeline.jsonl").write_text(relative_paths((root / "timeline.jsonl").read_text(encoding="utf-8")),
                                            encoding="utf-8")
        from toolformer.experiments.plan import measured_rates

        rates = measured_rates(cfg, data["timeline"])
        if rates:  # what the next --plan estimates from
            (out / "rates.json").write_text(json.dumps(rates, indent=1))


def _prefixes() -> list[tuple[str, str]]:
    """Absolute prefixes of this machine and what a stored report writes instead: the checkout -> relative to
    it, the shared data -> ``${shared_data:}`` (as the configs write it); longest first."""
    from toolformer.paths import repo_root, shared_data

    pairs = {}
    for p in {str(shared_data()), str(shared_data().resolve())}:
        pairs[p.rstrip("/")] = "${shared_data:}"
    checkouts = {str(repo_root()), str(repo_root().resolve())}
    if (Path.cwd() / "toolformer").is_dir() and (Path.cwd() / "jobs").is_dir():  # a run made in another worktree
        checkouts |= {str(Path.cwd()), str(Path.cwd().resolve())}
    for p in checkouts:
        pairs[p.rstrip("/") + "/"] = ""
        pairs[p.rstrip("/")] = "."
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def relative_paths(obj):
    """``obj`` (a string, or lists / dicts of them) with every absolute path of the checkout or the shared data
    written relative to the repository (the shared data as ``${shared_data:}``)."""
    if isinstance(obj, str):
        for old, new in _prefixes():
            obj = obj.replace(old, new)
        return obj
    if isinstance(obj, dict):
        return {relative_paths(k): relative_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [relative_paths(v) for v in obj]
    return obj


def _run_dir(path: str) -> str:
    import os

    from toolformer.paths import repo_root

    p = Path(path)
    return relative_paths(str(p)) if not p.is_absolute() or p.resolve().is_relative_to(repo_root().resolve()) \
        else os.path.relpath(p.resolve(), repo_root().resolve())


def write_report(cfg: RunConfig, results_dir: str | Path = "benchmarks/results/math",
                 docs_path: str | Path = "docs/math.md", questions: dict | None = None) -> dict:
    """results.json, items.json, units/, math.png and the page; ``questions`` as ``collect`` takes them."""
    from toolformer.experiments.math.page import page

    data = collect(cfg, questions)
    summary = summarize(cfg, data)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary["config"] = {"seeds": list(cfg.bootstrap.seeds), "ablations": list(cfg.bootstrap.ablations),
                         "rounds": cfg.bootstrap.rounds, "corpus_limit": cfg.corpus.limit, "epochs": cfg.train.epochs,
                         "lr": cfg.train.lr, "holdout_fold": cfg.corpus.holdout_fold, "folds": cfg.corpus.folds,
                         "boundary_positions": cfg.annotate.boundary_positions,
                         "result_check": cfg.annotate.result_check, "run_dir": _run_dir(cfg.output_dir),
                         "task_ids": dict(cfg.eval.task_ids), "dtype": cfg.model.dtype,
                         "ablation_seeds": cfg.bootstrap.ablation_seeds, "later_round_seeds": cfg.bootstrap.later_round_seeds,
                         "baseline_rounds": cfg.bootstrap.baseline_rounds,
                         "secondary_task_ids": dict(cfg.bootstrap.secondary_task_ids),
                         "dev_split": cfg.train.dev_split, "dev_size": cfg.train.dev_size,
                         "num_workers": cfg.train.num_workers, "shuffle": cfg.train.shuffle}
    summary = relative_paths(json.loads(json.dumps(summary, default=str)))
    if summary["items_warning"]:  # loud: on stderr, at the top of the page, and in results.json
        import sys

        print(f"math report: {summary['items_warning']}", file=sys.stderr, flush=True)
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    png = out / "math.png"
    if summary["rows"]:
        plot(summary, png)
    store_units(cfg, data, out)
    notes = out / "notes.md"
    text = page(summary, notes.read_text() if notes.exists() else "")
    Path(docs_path).parent.mkdir(parents=True, exist_ok=True)
    Path(docs_path).write_text(text)
    return {"json": str(out / "results.json"), "plot": str(png), "docs": str(docs_path), "summary": summary}
