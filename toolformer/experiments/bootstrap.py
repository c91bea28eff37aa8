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
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from toolformer.config import RunConfig, config_hash, to_dict
from toolformer.run.faults import fault_point
from toolformer.experiments.round_report import write_round_report


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
        from toolformer.cstar.merge import run_merge

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
