"""The bootstrapping rounds' report: per round and tool the positions, p([), sampled / parsed / kept calls and
gains (from the committed annotation parts, a batch at a time), the evaluation with intervals, where tool use
breaks (the call chain), paired McNemar tests, a few generations to read; written as ``rounds.md``,
``rounds.json`` and ``rounds.png`` beside the rounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolformer.config import RunConfig
from toolformer.report import yields
from toolformer.run.shards import Manifest, RunState
from toolformer.run.store import Store
from toolformer.experiments.stats import mcnemar_p, wilson

PAPER_TAU_S = 0.05


def committed_annotations(rdir: Path) -> tuple[Store, list[str]]:
    """A round's annotation files that are committed: by the annotate stage's markers in a sharded run (a part
    written without its marker, or quarantined, is not read), else the one file of a single-process run."""
    store = Store(rdir)
    if store.exists("manifest.json"):
        return store, RunState(store, "annotate").committed_outputs(Manifest.load(store), "annotations")
    return store, [store.path("annotations.parquet")] if store.exists("annotations.parquet") else []


_SUMMARY_COLUMNS = ["tool", "position_probs", "candidates", "n_samples", "n_parsed", "n_kept"]


def _tool_totals(store: Store, paths: list[str], batch_rows: int = 1024) -> dict[str, dict]:
    """Per tool, over the files batch by batch (only the columns used): the start probabilities of its positions
    (one float per position, what the median needs), sampled / parsed / kept counts, the kept calls' gains."""
    acc: dict[str, dict] = {}
    for path in paths:
        with store.fs.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=_SUMMARY_COLUMNS):
                tools = batch.column("tool")
                for tool in pc.unique(tools).to_pylist():
                    mine = batch.filter(pc.equal(tools, tool))
                    a = acc.setdefault(tool, {"probs": [], "sampled": 0, "parsed": 0, "kept": 0,
                                              "gain_sum": 0.0, "gain_n": 0})
                    a["probs"].append(pc.list_flatten(mine.column("position_probs")).to_numpy(zero_copy_only=False))
                    for key, column in (("sampled", "n_samples"), ("parsed", "n_parsed"), ("kept", "n_kept")):
                        a[key] += pc.sum(mine.column(column)).as_py() or 0
                    cands = pc.list_flatten(mine.column("candidates"))
                    gains = cands.field("gain").filter(pc.fill_null(cands.field("kept"), False)).drop_null()
                    a["gain_sum"] += pc.sum(gains).as_py() or 0.0
                    a["gain_n"] += len(gains)
    return acc


def round_summary(rdir: Path) -> dict:
    """Per tool: selected positions and p([) there, sampled / parsed / kept calls, kept per 1k sampled tokens,
    mean gain; then the evaluation of the round's finetuned model (disabled and with tools, with intervals).
    Reads the committed annotation parts only, a batch at a time."""
    out: dict = {"round": rdir.name, "tools": {}, "eval": {}}
    store, paths = committed_annotations(rdir)
    if not paths:
        return out
    steps = rdir / "steps"
    annotated = json.loads((steps / "annotate.json").read_text()) if (steps / "annotate.json").exists() else {}
    funnel = annotated.get("funnel") or {}
    out["docs_skipped"] = (annotated.get("docs_skipped") or {}).get("by_reason") or {}
    y = yields(funnel)
    totals = _tool_totals(store, paths)
    for tool in sorted(totals):
        t = totals[tool]
        probs = np.concatenate(t["probs"]) if t["probs"] else np.zeros(0)
        out["tools"][tool] = {
            "positions": int(len(probs)), "positions_above_tau_s": int((probs > PAPER_TAU_S).sum()),
            "p_start_median": round(float(np.median(probs)), 4) if len(probs) else None,
            "p_start_p90": round(float(np.percentile(probs, 90)), 4) if len(probs) else None,
            "sampled": t["sampled"], "parsed": t["parsed"], "kept": t["kept"],
            "kept_per_1k_sampled_tokens": (y.get(tool) or {}).get("kept_per_1k_sampled_tokens"),
            "mean_kept_gain": round(t["gain_sum"] / t["gain_n"], 3) if t["gain_n"] else None,
        }
    rows = generation_rows(rdir / "eval" / "generations.jsonl")
    out["chain"], out["generations"] = call_chain(rows)
    out["paired"] = paired(rows)
    results = rdir / "eval" / "results.json"
    if results.exists():
        for setting in json.loads(results.read_text()):
            for task, v in setting["tasks"].items():
                k = round(v["accuracy"] * v["n"] / 100) if v["accuracy"] is not None else 0
                out["eval"].setdefault(task, {})[setting["setting"]["name"]] = {
                    "accuracy": v["accuracy"], "ci95": wilson(k, v["n"]), "n": v["n"],
                    "call_share": round(sum(v["call_share"].values()), 1)}
    return out


def _number(x) -> float | None:
    try:
        return float(str(x).replace(",", ""))
    except (TypeError, ValueError):
        return None


def generation_rows(path: Path) -> list[dict]:
    """The evaluation's ``generations.jsonl`` (a row per setting and item), or none where it was not written."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def call_chain(rows: list[dict], n_examples: int = 10) -> tuple[dict, list[dict]]:
    """Where tool use breaks, per task and setting that may call: examples where decoding started a call
    (``[`` among the top k), where what followed was a well-formed call that returned a result, where that result
    was the gold answer, and where the answer was right; with ten "finetuned + tools" generations (half right,
    half wrong where there are enough) to read."""
    chain: dict = {}
    pool: dict[bool, list[dict]] = {True: [], False: []}
    for row in rows:
        calls = row.get("calls") or []
        if row["setting"] not in ("finetuned + tools", "base + tools (prompted)"):
            continue
        c = chain.setdefault(row["task"], {}).setdefault(row["setting"], {
            "n": 0, "started_a_call": 0, "well_formed_with_result": 0, "result_is_gold": 0, "correct": 0,
            "correct_after_a_call": 0})
        gold = [_number(a) for a in row.get("answers") or []]
        ok = [x for x in calls if x.get("ok")]
        c["n"] += 1
        c["started_a_call"] += bool(calls)
        c["well_formed_with_result"] += bool(ok)
        c["result_is_gold"] += any(_number(x.get("result")) in gold for x in ok if _number(x.get("result")) is not None)
        c["correct"] += bool(row.get("correct"))
        c["correct_after_a_call"] += bool(row.get("correct")) and bool(ok)
        if row["setting"] == "finetuned + tools":
            pool[bool(row.get("correct"))].append(row)
    half = n_examples // 2
    right, wrong = pool[True][:half], pool[False][:half]
    fill = (pool[True][half:] + pool[False][half:])[: n_examples - len(right) - len(wrong)]
    picked = [{k: r.get(k) for k in ("task", "uid", "answers", "generation", "calls", "correct")}
              for r in right + wrong + fill]
    return chain, picked


def paired(rows: list[dict], against: str = "finetuned + tools") -> dict:
    """Per task, ``against`` vs every other setting on the same items: items right only with ``against``, right
    only with the other, and the exact McNemar p-value (paired, so sharper than comparing two intervals)."""
    right: dict = {}
    for row in rows:
        right.setdefault(row["task"], {}).setdefault(row["setting"], {})[row["uid"]] = bool(row.get("correct"))
    out: dict = {}
    for task, settings in right.items():
        mine = settings.get(against)
        if mine is None:
            continue
        for name, other in settings.items():
            if name == against:
                continue
            common = mine.keys() & other.keys()
            a = sum(mine[u] and not other[u] for u in common)
            b = sum(other[u] and not mine[u] for u in common)
            out.setdefault(task, {})[name] = {"n": len(common), "only_" + against: a, "only_other": b,
                                              "mcnemar_p": round(mcnemar_p(a, b), 4)}
    return out


def write_round_report(cfg: RunConfig) -> dict:
    root = Path(cfg.output_dir)
    rounds = [round_summary(d) for d in sorted((root / "rounds").glob("r*"), key=lambda p: int(p.name[1:]))]
    lines = ["# Bootstrapping rounds", "", "| round | tool | positions (p > 0.05) | p([) median / p90 | sampled | "
             "parsed | kept | kept / 1k sampled tokens | mean gain |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        for tool, t in r["tools"].items():
            lines.append(f"| {r['round']} | {tool} | {t['positions']} ({t['positions_above_tau_s']}) | "
                         f"{t['p_start_median']} / {t['p_start_p90']} | {t['sampled']} | {t['parsed']} | {t['kept']} | "
                         f"{t['kept_per_1k_sampled_tokens']} | {'–' if t['mean_kept_gain'] is None else t['mean_kept_gain']} |")
    lines += ["", "| round | task | setting | accuracy % (95 % CI) | examples with a call % |", "|---|---|---|---|---|"]
    for r in rounds:
        for task, settings in r["eval"].items():
            for name, v in settings.items():
                lines.append(f"| {r['round']} | {task} | {name} | {v['accuracy']} ({v['ci95'][0]}–{v['ci95'][1]}) | "
                             f"{v['call_share']} |")
    skipped = [f"{r['round']}: " + (", ".join(f"{k} {v}" for k, v in sorted(r.get("docs_skipped", {}).items())) or "none")
               for r in rounds]
    lines += ["", "Documents skipped before annotation (contaminated: shares an n-gram with an evaluation input): "
              + "; ".join(skipped) + "."]
    lines += ["", "Where tool use breaks (examples, of n): a call started (`[` among the top k), a well-formed call "
              "that returned a result, that result the gold answer, the answer right.", "",
              "| round | task | setting | n | call started | well-formed + result | result = gold | correct | "
              "correct after a call |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        for task, settings in (r.get("chain") or {}).items():
            for name, c in settings.items():
                lines.append(f"| {r['round']} | {task} | {name} | {c['n']} | {c['started_a_call']} | "
                             f"{c['well_formed_with_result']} | {c['result_is_gold']} | {c['correct']} | "
                             f"{c['correct_after_a_call']} |")
    lines += ["", "Paired, on the same items: right with `finetuned + tools` only / right with the other setting only, "
              "exact McNemar p.", "", "| round | task | vs | n | tools only | other only | p |", "|---|---|---|---|---|---|---|"]
    for r in rounds:
        for task, others in (r.get("paired") or {}).items():
            for name, v in others.items():
                p = v["mcnemar_p"]
                lines.append(f"| {r['round']} | {task} | {name} | {v['n']} | {v['only_finetuned + tools']} | "
                             f"{v['only_other']} | {'< 0.0001' if p < 1e-4 else p} |")
    for r in rounds:
        if r.get("generations"):
            lines += ["", f"Generations of the finetuned model with tools, {r['round']} (right, then wrong):", ""]
            for g in r["generations"]:
                mark = "right" if g["correct"] else "wrong"
                lines.append(f"- {g['task']} {g['uid']} ({mark}; gold {', '.join(map(str, g['answers']))}): "
                             f"`{' '.join(str(g['generation']).split())}`")
    text = "\n".join(lines) + "\n"
    (root / "rounds.md").write_text(text)
    (root / "rounds.json").write_text(json.dumps(rounds, indent=2))
    _plot(rounds, root / "rounds.png")
    return {"rounds": rounds, "table": text}


def _plot(rounds: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [r["round"] for r in rounds]
    for tool in sorted({t for r in rounds for t in r["tools"]}):
        a.plot(names, [(r["tools"].get(tool) or {}).get("kept_per_1k_sampled_tokens") or 0 for r in rounds],
               marker="o", label=tool)
    a.set_title("kept calls per 1,000 sampled tokens")
    a.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    for task in sorted({t for r in rounds for t in r["eval"]}):
        for setting in ("finetuned (disabled)", "finetuned + tools"):
            ys = [((r["eval"].get(task) or {}).get(setting) or {}).get("accuracy") for r in rounds]
            b.plot(names, [y if y is not None else np.nan for y in ys], marker="o", label=f"{task}: {setting}")
    b.set_title("accuracy (%)")
    b.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
