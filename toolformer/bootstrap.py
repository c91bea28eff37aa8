"""Iterative bootstrapping, beyond the paper (which names it as future work): rounds of annotate → merge →
finetune, each round annotating (and finetuning from) the previous round's finetuned checkpoint, so that a model
that learned to put probability on ``[`` where a call helps finds more and better positions the next time.

    <run>/rounds/r1/  a normal run (annotations, cstar/, finetune/, eval/), config.round.yaml, steps/*.json
    <run>/rounds/r2/  ... annotated by r1's checkpoint
    <run>/rounds.md, rounds.json, rounds.png   the round report

Each round's steps (annotate, merge, finetune, evaluate) write a marker when done, so a rerun of the same
command skips finished rounds and finished steps and continues where it stopped (the Ray annotate runner also
resumes inside the annotate step, shard by shard). Scoring in every round uses that round's model for ``L(ε)``,
``L(e(c, ε))`` and ``L(e(c, r))``, as the method defines.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from toolformer.config import RunConfig, config_hash, to_dict
from toolformer.faults import fault_point
from toolformer.report import yields
from toolformer.shards import Manifest, RunState, Store

PAPER_TAU_S = 0.05


def round_dir(cfg: RunConfig, r: int) -> Path:
    return Path(cfg.output_dir) / "rounds" / f"r{r}"


def round_config(cfg: RunConfig, r: int, model: str) -> RunConfig:
    """Round r's settings: its folder, its model (the base model in round 1), its slice of the corpus."""
    rc = copy.deepcopy(cfg)
    b = cfg.bootstrap
    out = round_dir(cfg, r)
    rc.name, rc.output_dir = f"{cfg.name}-r{r}", str(out)
    rc.model.name_or_path = model
    if b.slices == "fresh":
        rc.corpus.offset = cfg.corpus.offset + (r - 1) * (cfg.corpus.limit or 0)
    elif b.slices != "same":
        raise ValueError(f"bootstrap.slices must be fresh or same, got {b.slices!r}")
    rc.train.data_dir, rc.train.out_dir = str(out), str(out / "finetune")
    rc.train.extra_data = [str(round_dir(cfg, k)) for k in range(1, r)] if b.accumulate else []
    rc.eval.tasks, rc.eval.limit, rc.eval.out_dir = list(b.eval_tasks), b.eval_limit, str(out / "eval")
    # the corpus is decontaminated against every set this run evaluates, read where the evaluation reads it
    from toolformer.corpus.decontaminate import derive_decontamination

    derive_decontamination(rc, b.eval_tasks)
    # the round's report is about its finetuned model; its base (the previous round's model) was evaluated there;
    # round 1 may evaluate the base model too (bootstrap.eval_base)
    rc.eval.base = rc.eval.base_prompted = r == 1 and b.eval_base
    return rc


class Round:
    """One round's steps, each skipped when its marker says it is done."""

    def __init__(self, cfg: RunConfig, log: Callable[[str], None]):
        self.cfg, self.log = cfg, log
        self.dir = Path(cfg.output_dir)
        (self.dir / "steps").mkdir(parents=True, exist_ok=True)
        (self.dir / "config.round.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))

    def done(self, step: str) -> dict | None:
        path = self.dir / "steps" / f"{step}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def mark(self, step: str, info: dict) -> dict:
        tmp = self.dir / "steps" / f".{step}.json.tmp"
        tmp.write_text(json.dumps(info, indent=2, default=str))
        tmp.replace(self.dir / "steps" / f"{step}.json")
        return info

    def settings(self, step: str) -> str:
        """A hash of what a step's output depends on: the annotation settings (``config_hash``) and, for the steps
        that read them, the finetuning or evaluation settings."""
        import hashlib

        data = {"run": config_hash(self.cfg)}
        full = to_dict(self.cfg)
        if step in ("finetune", "baseline"):
            data["train"] = full["train"]
        if step == "evaluate":
            data["eval"] = full["eval"]
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def step(self, name: str, fn: Callable[[], dict]) -> dict:
        info = self.done(name)
        if info is not None:
            done_with = info.get("settings")
            if done_with is not None and done_with != self.settings(name):  # a rerun must not mix two configs
                raise RuntimeError(f"{self.dir}/{name} was done with other settings ({done_with}; now "
                                   f"{self.settings(name)}): use another output_dir, or delete "
                                   f"{self.dir / 'steps' / (name + '.json')} and what follows it to redo it")
            self.log(f"  {self.dir.name}/{name}: done earlier, skipped")
            return info
        self.log(f"  {self.dir.name}/{name} ...")
        start = time.perf_counter()
        info = self.mark(name, {**fn(), "seconds": round(time.perf_counter() - start, 1),
                                "settings": self.settings(name)})
        fault_point("bootstrap_step", step=f"{self.dir.name}/{name}")
        return info

    def annotate(self) -> dict:
        cfg = self.cfg
        from toolformer.corpus.accounting import account_sources

        sources = account_sources(cfg.corpus, log=self.log)  # every configured source accounted for (the card)
        tmp = self.dir / ".corpus_sources.json.tmp"
        tmp.write_text(json.dumps(sources, indent=2))
        tmp.replace(self.dir / "corpus_sources.json")
        if cfg.annotate.runner == "local":
            from toolformer.annotate.pipeline import run_annotate

            stats = run_annotate(cfg, log=lambda m: None)
        else:
            from toolformer.annotate.ray_job import annotate_on_ray

            stats = annotate_on_ray(cfg, log=lambda m: None)
        return {"funnel": stats["funnel"], "docs_skipped": stats.get("docs_skipped") or {}}

    def merge(self) -> dict:
        from toolformer.cstar import run_merge

        return run_merge(self.cfg.output_dir, self.cfg.merge.max_per_tool, self.cfg)

    def finetune(self, baseline: bool = False) -> dict:
        from toolformer.train.finetune import run_finetune

        cfg = self.cfg
        if baseline:  # the same texts, calls removed, the same recipe (train.baseline)
            cfg = copy.deepcopy(cfg)
            cfg.train.baseline = True
        return run_finetune(cfg, log=lambda m: None)

    def evaluate(self, checkpoint: str | None, baseline: str | None = None) -> dict:
        # A process of its own: vLLM's kernel registry trips over modules Ray Train leaves imported in this one.
        cmd = [sys.executable, "-m", "jobs.evaluate", "--config", str(self.dir / "config.round.yaml")]
        cmd += ([f"eval.finetuned={checkpoint}"] if checkpoint else []) + ([f"eval.baseline={baseline}"] if baseline else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"evaluation of {self.dir.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return {"results": json.loads((Path(self.cfg.eval.out_dir) / "results.json").read_text())}


def run_bootstrap(cfg: RunConfig, log: Callable[[str], None] = print) -> dict:
    """Every round, in order; returns the round report (also written as rounds.md / .json / .png)."""
    from toolformer.models import resolve_model

    model = resolve_model(cfg.model.name_or_path, cfg.model.cache_dir)
    for r in range(1, cfg.bootstrap.rounds + 1):
        rc = round_config(cfg, r, model)
        rnd = Round(rc, log)
        log(f"round {r}: annotating with {model}")
        rnd.step("annotate", rnd.annotate)
        merged = rnd.step("merge", rnd.merge)
        if not merged["texts"] and not rc.train.extra_data:
            log(f"round {r}: no call survived filtering; the rounds stop here")
            break
        ft = rnd.step("finetune", rnd.finetune)
        checkpoint = ft["checkpoints"][cfg.bootstrap.checkpoint]
        baseline = None
        if cfg.bootstrap.baseline:  # the matched control, every round (its texts: this round's C*)
            bl = rnd.step("baseline", lambda: rnd.finetune(baseline=True))
            baseline = bl["checkpoints"][cfg.bootstrap.checkpoint]
        rnd.step("evaluate", lambda: rnd.evaluate(checkpoint, baseline))
        model = checkpoint
    return write_round_report(cfg)


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a proportion, in %."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(100 * max(0.0, centre - half), 1), round(100 * min(1.0, centre + half), 1))


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
                    "accuracy": v["accuracy"], "ci95": _wilson(k, v["n"]), "n": v["n"],
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


def _mcnemar_p(a: int, b: int) -> float:
    """Exact two-sided McNemar p-value: a and b are the discordant pairs (right in one setting only)."""
    n = a + b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a, b) + 1)) / 2 ** n
    return round(min(1.0, 2 * tail), 4)


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
                                              "mcnemar_p": _mcnemar_p(a, b)}
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
