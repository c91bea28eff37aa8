"""The math experiment's report (issue 28), from what the runs stored: ``results.json`` (per seed, set and
setting: accuracy, Wilson CI, share of answers with a call, false-call rate, perplexity; paired McNemar per seed
and pooled; the C* options' kept calls and copy-error rates; round 1 against round 2; timings), ``math.png`` and
the results page ``docs/math.md``. It reads only stored files, so it can be rerun at any time:

    python -m jobs.math_experiment --config jobs/configs/math.yaml --report-only
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from toolformer.config import RunConfig
from toolformer.stats import mcnemar_p, wilson

SETS = ("asdiv", "svamp", "mawps")
TOOLS, CONTROL, BASE, PROMPTED = "finetuned + tools", "baseline-finetuned", "base", "base + tools (prompted)"
GOAL_POINTS = {"asdiv": 10.0, "svamp": 5.0}
GOAL_P, GOAL_SPREAD, GOAL_FALSE_CALL, GOAL_PPL = 0.01, 5.0, 10.0, 5.0


def mcnemar(a: dict[str, bool], b: dict[str, bool]) -> dict:
    """Paired exact McNemar test on the items both settings answered: right with a only, with b only, p."""
    common = a.keys() & b.keys()
    only_a = sum(a[u] and not b[u] for u in common)
    only_b = sum(b[u] and not a[u] for u in common)
    return {"n": len(common), "only_first": only_a, "only_second": only_b, "p": mcnemar_p(only_a, only_b)}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


_CALL = re.compile(r"\[Calculator\((.*?)\)\s*->\s*([^\]]*)\]")


def generation_copy_errors(rows: list[dict]) -> dict:
    """In generations with a Calculator call that returned a number: how often the next number the model then
    wrote disagrees with the result (the pattern C* taught: ``-> 0.62] 62``)."""
    from toolformer.merge import result_agrees

    compared = wrong = 0
    for r in rows:
        m = _CALL.search(r.get("generation") or "")
        if not m:
            continue
        agrees = result_agrees(r["generation"], m.end(), m.group(2).strip())
        if agrees is None:
            continue
        compared += 1
        wrong += not agrees
    return {"compared": compared, "disagree": wrong, "rate": round(100 * wrong / compared, 1) if compared else None}


def cstar_facts(rdir: Path) -> dict:
    """Kept calls, C* texts, calls removed by the result check, and the C* copy-error rate of one round."""
    import pyarrow.parquet as pq

    from toolformer.merge import copy_errors

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


def collect_eval(edir: Path) -> tuple[dict, dict]:
    """(per setting: per set accuracy/CI/call share + false calls + perplexity; per setting and set: item -> right)."""
    out: dict = {}
    right: dict = {}
    results = edir / "results.json"
    if not results.exists():
        return out, right
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
    rows = _read_jsonl(edir / "generations.jsonl")
    for r in rows:
        if r["task"] in SETS:
            right.setdefault(r["setting"], {}).setdefault(r["task"], {})[r["uid"]] = bool(r.get("correct"))
    for name in out:
        mine = [r for r in rows if r["setting"] == name and r["task"] in SETS]
        if mine and name in (TOOLS, PROMPTED):
            out[name]["generation_copy_errors"] = generation_copy_errors(mine)
    return out, right


def collect(cfg: RunConfig) -> dict:
    """Everything stored so far, by unit."""
    root = Path(cfg.output_dir)
    data: dict = {"units": {}, "right": {}}
    base_eval, base_right = collect_eval(root / "base" / "eval")
    if base_eval:
        data["units"]["base"] = {"eval": base_eval}
        data["right"]["base"] = base_right
    for sdir in sorted(root.glob("seed*")):
        for setting_dir in sorted(p for p in sdir.iterdir() if p.is_dir()):
            for rdir in sorted((setting_dir / "rounds").glob("r*")):
                name = f"{sdir.name}/{setting_dir.name}/{rdir.name}"
                ev, right = collect_eval(rdir / "eval")
                unit = {"eval": ev, "cstar": cstar_facts(rdir) if (rdir / "merge.json").exists() else None,
                        "finetune": _finetune_facts(rdir, "finetune"), "control": _finetune_facts(rdir, "baseline"),
                        "steps_seconds": {p.stem: json.loads(p.read_text()).get("seconds")
                                          for p in sorted((rdir / "steps").glob("*.json"))}}
                if (rdir / "corpus_sources.json").exists():
                    unit["corpus_sources"] = json.loads((rdir / "corpus_sources.json").read_text())
                data["units"][name] = unit
                data["right"][name] = right
    data["timeline"] = _read_jsonl(root / "timeline.jsonl")
    return data


def _spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 1), "min": min(values), "max": max(values),
            "range": round(max(values) - min(values), 1),
            "sd": round(statistics.stdev(values), 1) if len(values) > 1 else 0.0, "seeds": len(values)}


def comparisons(data: dict, seeds: list[int], setting: str, r: int, against: dict[str, tuple[str, str]]) -> dict:
    """Per set: ``setting``'s finetuned + tools against each other row, paired per seed and pooled over seeds."""
    out: dict = {}
    for task in SETS:
        for label, (unit_of, other) in against.items():
            per_seed, pool_a, pool_b, n = {}, 0, 0, 0
            for s in seeds:
                mine = (data["right"].get(f"seed{s}/{setting}/r{r}") or {}).get(TOOLS, {}).get(task)
                unit = unit_of.format(s=s)
                theirs = (data["right"].get(unit) or {}).get(other, {}).get(task)
                if not mine or not theirs:
                    continue
                m = mcnemar(mine, theirs)
                per_seed[f"seed{s}"] = m
                pool_a, pool_b, n = pool_a + m["only_first"], pool_b + m["only_second"], n + m["n"]
            if per_seed:
                out.setdefault(task, {})[label] = {"per_seed": per_seed, "pooled": {
                    "n": n, "only_first": pool_a, "only_second": pool_b, "p": mcnemar_p(pool_a, pool_b)}}
    return out


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
    return {"rows": rows, "pooled": pooled, "paired": paired, "ablation": ablation, "language": language,
            "goals": goals(data, seeds, pooled, paired, language), "units_done": sorted(u for u, d in data["units"].items() if d.get("eval")),
            "units_started": sorted(u for u, d in data["units"].items() if not d.get("eval")),
            "finetune": {u: {"model": d.get("finetune"), "control": d.get("control")} for u, d in data["units"].items()
                         if d.get("finetune")},
            "timeline": data["timeline"],
            "corpus_sources": {u: d["corpus_sources"] for u, d in data["units"].items() if d.get("corpus_sources")}}


def goals(data: dict, seeds: list[int], pooled: dict, paired: dict, language: dict) -> list[dict]:
    """The issue's goals, each with its numbers and met / not met (None: not measured yet)."""
    out = []
    for task, points in GOAL_POINTS.items():
        p = pooled.get(task) or {}
        mine = (p.get("r1 finetuned + tools") or {}).get("mean")
        for other in ("r1 control", "base + tools (prompted)"):
            theirs = (p.get(other) or {}).get("mean")
            label = "control" if other == "r1 control" else other
            test = ((paired.get("r1") or {}).get(task) or {}).get(label, {}).get("pooled")
            met = None if mine is None or theirs is None or test is None else (
                mine - theirs >= points and test["p"] < GOAL_P)
            out.append({"goal": f"{task}: finetuned + tools >= {other} + {points:g} points, pooled McNemar p < {GOAL_P}",
                        "tools": mine, "other": theirs, "difference": None if mine is None or theirs is None
                        else round(mine - theirs, 1), "p": None if test is None else test["p"], "met": met})
    for task in SETS:
        s = (pooled.get(task) or {}).get("r1 finetuned + tools")
        out.append({"goal": f"{task}: the seeds of finetuned + tools within {GOAL_SPREAD:g} points",
                    "range": None if not s else s["range"], "seeds": None if not s else s["seeds"],
                    "met": None if not s or s["seeds"] < 2 else s["range"] <= GOAL_SPREAD})
    rates, ppl_ratio = [], []
    base_ppl = ((language.get("base") or {}).get(BASE) or {}).get("perplexity")
    for unit, settings in language.items():
        if not unit.endswith("default/r1") and not unit.endswith("default/r2"):
            continue
        e = settings.get(TOOLS) or {}
        for name, fc in (e.get("false_call") or {}).items():
            rates.append((unit, name, fc["calculator_call_share"]))
        if base_ppl and e.get("perplexity"):
            ppl_ratio.append((unit, round(100 * (e["perplexity"] / base_ppl - 1), 1)))
    out.append({"goal": f"false-call rate <= {GOAL_FALSE_CALL:g} % (every default model, webtext and lama)",
                "rates": rates, "worst": max((r for _, _, r in rates), default=None),
                "met": None if not rates else max(r for _, _, r in rates) <= GOAL_FALSE_CALL})
    out.append({"goal": f"perplexity on held-out web text within {GOAL_PPL:g} % of the base model's",
                "base": base_ppl, "change_percent": ppl_ratio,
                "met": None if not ppl_ratio else max(abs(x) for _, x in ppl_ratio) <= GOAL_PPL})
    return out


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
    import shutil

    root = Path(cfg.output_dir)
    for unit in data["units"]:
        src = root / "base" if unit == "base" else root / unit.split("/")[0] / unit.split("/")[1] / "rounds" / unit.split("/")[2]
        for name in _SMALL_FILES:
            if (src / name).is_file():
                dest = out / "units" / unit / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / name, dest)
    uids: dict[str, list[str]] = {}
    for per_setting in data["right"].values():
        for per_task in per_setting.values():
            for task, items in per_task.items():
                uids.setdefault(task, sorted(set(uids.get(task, [])) | set(items)))
    rows = {unit: {setting: {task: "".join("1" if items.get(u) else ("0" if u in items else "-") for u in uids[task])
                             for task, items in per_task.items()}
                   for setting, per_task in per_setting.items()}
            for unit, per_setting in data["right"].items()}
    (out / "items.json").write_text(json.dumps({"uids": uids, "right": rows}))


def write_report(cfg: RunConfig, results_dir: str | Path = "benchmarks/results/math",
                 docs_path: str | Path = "docs/math.md") -> dict:
    from toolformer.math_page import page

    data = collect(cfg)
    summary = summarize(cfg, data)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary["config"] = {"seeds": list(cfg.bootstrap.seeds), "ablations": list(cfg.bootstrap.ablations),
                         "rounds": cfg.bootstrap.rounds, "corpus_limit": cfg.corpus.limit, "epochs": cfg.train.epochs,
                         "lr": cfg.train.lr, "holdout_fold": cfg.corpus.holdout_fold, "folds": cfg.corpus.folds,
                         "boundary_positions": cfg.annotate.boundary_positions,
                         "result_check": cfg.annotate.result_check, "run_dir": cfg.output_dir,
                         "task_ids": dict(cfg.eval.task_ids), "dtype": cfg.model.dtype}
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
