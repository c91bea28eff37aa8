"""The math experiment of issue 28 (docs/math.md): seeds x settings x rounds of annotate → merge → finetune →
evaluate, resumable, most important results first.

    <output_dir>/seed<s>/default/rounds/r1/    round 1 with the configured C* options, its matched control
    <output_dir>/seed<s>/default/rounds/r2/    round 2 (annotated by r1's model, fresh problems), its control
    <output_dir>/seed<s>/no_<option>/rounds/r1/  the same seed with one C* option off (bootstrap.ablations)
    <output_dir>/base/                         the base model, plain and prompted with tools (seed-free)

The same machinery runs every experiment: its config says what (``jobs/configs/math.yaml``: the Calculator on
ASDiv; ``jobs/configs/multitool.yaml``: one C* from several sources, every tool where it helps, its corpus
built first by ``build_sources``), and ``bootstrap.report`` which report it writes.

A *unit* is one (seed, setting, round) or the base evaluation; each runs in a process of its own (vLLM and Ray
Train in one process for hours are not worth the risk) and its steps write markers (``bootstrap.Round``), so a
rerun of the same command skips what is done, also inside a unit. Units run in this order: round 1 of every
seed with its control (the base model after the first seed), then the ablations, then round 2; a failed unit is
logged and the run goes on with the units that do not need it. After every unit the report is rewritten
(``toolformer.experiments.math.report``).

The matched control of round r trains on round r's C* texts with the calls taken out, for the same number of
epochs, from the control of round r-1 (round 1: the base model); the model with calls trains from the model of
round r-1. Both choose their checkpoint on the same dev split of C* (train.dev_split).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from toolformer.experiments.bootstrap import Round, round_config, round_dir
from toolformer.config import RunConfig

# C* options that change only the merge: a setting with one of them off reuses the default setting's annotation
MERGE_ONLY = ("result_check", "keep_uncalled")
DEFAULT = "default"
# Positions at word/number boundaries or anywhere: round 1's default annotation reads both position sets in one
# pass (annotate.position_sets) when boundary_positions is measured, so its ablation annotates nothing either and
# takes exactly the positions it would have chosen alone (merge.position_set); only round 1 runs ablations.
BOUNDARY = "boundary_positions"


@dataclass(frozen=True)
class Unit:
    seed: int | None  # None: the base model's evaluation
    setting: str  # default | no_<option> | base
    round: int

    @property
    def name(self) -> str:
        return "base" if self.seed is None else f"seed{self.seed}/{self.setting}/r{self.round}"

    @staticmethod
    def parse(name: str) -> "Unit":
        if name == "base":
            return Unit(None, "base", 1)
        seed, setting, r = name.split("/")
        return Unit(int(seed.removeprefix("seed")), setting, int(r.removeprefix("r")))


def plan(cfg: RunConfig) -> list[Unit]:
    """The units in the order they run: what matters most first."""
    b = cfg.bootstrap
    units: list[Unit] = []
    for k, s in enumerate(b.seeds):
        units.append(Unit(s, DEFAULT, 1))
        if k == 0 and b.eval_base:
            units.append(Unit(None, "base", 1))
    ablation_seeds = b.seeds if b.ablation_seeds is None else b.ablation_seeds
    later_seeds = b.seeds if b.later_round_seeds is None else b.later_round_seeds
    units += [Unit(s, f"no_{opt}", 1) for s in ablation_seeds for opt in b.ablations]
    units += [Unit(s, DEFAULT, r) for r in range(2, b.rounds + 1) for s in later_seeds]
    return units


def shares_positions(cfg: RunConfig | None, r: int) -> bool:
    """Whether round r's default annotation serves both position settings (``cfg`` None: as if it did)."""
    if cfg is None:
        return r == 1
    return r == 1 and BOUNDARY in cfg.bootstrap.ablations and bool(cfg.annotate.boundary_positions)


def reuses_default(cfg: RunConfig | None, setting: str, r: int) -> bool:
    """Whether a setting merges the default setting's annotation of the same seed and round instead of its own."""
    option = setting.removeprefix("no_")
    return setting != DEFAULT and (option in MERGE_ONLY or (option == BOUNDARY and shares_positions(cfg, r)))


def setting_config(cfg: RunConfig, seed: int, setting: str, r: int | None = None) -> RunConfig:
    """The experiment's config for one seed and setting: its own folder, the seed, an option off; for round ``r``
    when the default annotation reads both position sets, the sets it annotates and the one this setting merges
    (they enter the config hash, so a rerun over an output made otherwise refuses)."""
    sc = copy.deepcopy(cfg)
    sc.seed = seed
    sc.name = f"{cfg.name}-s{seed}-{setting}"
    sc.output_dir = str(Path(cfg.output_dir) / f"seed{seed}" / setting)
    if setting != DEFAULT:
        option = setting.removeprefix("no_")
        section = sc.annotate if hasattr(sc.annotate, option) else sc.merge if hasattr(sc.merge, option) else None
        if section is None:
            raise ValueError(f"bootstrap.ablations: {option!r} is not an annotate or merge option")
        setattr(section, option, False)
    if r is not None and shares_positions(cfg, r) and (setting == DEFAULT or reuses_default(cfg, setting, r)):
        sc.annotate.position_sets = ["boundary", "free"]
        sc.merge.position_set = "free" if setting == f"no_{BOUNDARY}" else "boundary"
    return sc


def _best(rdir: Path, step: str) -> str:
    info = json.loads((rdir / "steps" / f"{step}.json").read_text())
    return info["checkpoints"].get("best") or info["checkpoints"]["last"]


def _reuse_annotation(src: Path, rnd: Round) -> dict:
    """A merge-only setting annotates nothing: the default setting's annotation files, copied (hard links)."""
    info = json.loads((src / "steps" / "annotate.json").read_text())
    for name in ("texts.parquet", "annotations.parquet", "stats.json", "corpus_sources.json", "report.md"):
        if (src / name).exists():
            dest = rnd.dir / name
            dest.unlink(missing_ok=True)
            try:
                dest.hardlink_to(src / name)
            except OSError:
                shutil.copy2(src / name, dest)
    return {"funnel": info["funnel"], "docs_skipped": info.get("docs_skipped") or {}, "reused_from": str(src)}


def annotation_source(cfg: RunConfig | None, unit: Unit) -> Unit | None:
    """The unit whose annotation this one merges instead of annotating: the same seed's default setting (a
    merge-only option off), or, with ``bootstrap.share_annotation``, the first seed's (seeds then differ in
    training order only); None when it annotates its own."""
    if unit.seed is None:
        return None
    first = cfg.bootstrap.seeds[0] if cfg is not None else unit.seed
    shared = cfg is not None and cfg.bootstrap.share_annotation and unit.round == 1 and unit.seed != first
    if shared:
        return Unit(first, DEFAULT, 1)
    if reuses_default(cfg, unit.setting, unit.round):
        return Unit(unit.seed, DEFAULT, unit.round)
    return None


def build_sources(cfg: RunConfig, log: Callable[[str], None] = print) -> dict | None:
    """The experiment's corpus from several sources (``bootstrap.sources``), written once where corpus.paths
    reads it; None when the corpus is read as configured."""
    if not cfg.bootstrap.sources:
        return None
    from toolformer.experiments.sources import build_corpus
    from toolformer.paths import shared_data

    target = Path(cfg.corpus.paths[0]) if len(cfg.corpus.paths) == 1 else None
    if target is None or target.name != "corpus.jsonl":
        raise ValueError("bootstrap.sources writes <dir>/corpus.jsonl: corpus.paths must name that one file")
    t0 = time.time()
    info = build_corpus(dict(cfg.bootstrap.sources), target.parent, shared_data(cfg.eval.data_dir),
                        cfg.bootstrap.sources_seed, cfg.corpus.holdout_fold or 0)
    log(f"sources: {info['texts']} ({time.time() - t0:.0f} s)")
    return info


def build_indexes(cfg: RunConfig, log: Callable[[str], None] = print) -> None:
    """The search index a tool reads, built once where its options name it (``bootstrap.lama_index``)."""
    if not cfg.bootstrap.lama_index:
        return
    from toolformer.experiments.lama_index import lama_index

    info = lama_index(Path(cfg.bootstrap.lama_index), cfg.eval.data_dir)
    log(f"LAMA index: {info}")
    record = Path(cfg.output_dir) / "index_build.json"  # what the build took (the timeline's first unit holds it)
    if "seconds" in info and not record.exists():
        record.write_text(json.dumps(info))


def unit_config(cfg: RunConfig, unit: Unit, base: str) -> RunConfig:
    """A unit's round config: its folder, its model (the previous round's best, or ``base``) and what its
    evaluation reads. Every model of round 1's default setting and the base rows read the same item ids."""
    if unit.seed is None:  # the base model, plain and prompted: a round-1 config of the first seed
        bc = setting_config(cfg, cfg.bootstrap.seeds[0], DEFAULT, 1)
        rc = round_config(bc, 1, base)
        rc.output_dir = str(Path(cfg.output_dir) / "base")
        rc.eval.out_dir = str(Path(rc.output_dir) / "eval")
        rc.eval.base = rc.eval.base_prompted = True
        return rc
    r = unit.round
    sc = setting_config(cfg, unit.seed, unit.setting, r)
    prev = round_dir(sc, r - 1) if r > 1 else None
    rc = round_config(sc, r, _best(prev, "finetune") if prev else base)
    rc.eval.base = rc.eval.base_prompted = False
    if not (unit.setting == DEFAULT and r == 1):  # the secondary units: fixed smaller sets where configured
        rc.eval.task_ids = {**rc.eval.task_ids, **cfg.bootstrap.secondary_task_ids}
    return rc


def run_unit(cfg: RunConfig, unit: Unit, log: Callable[[str], None] = print) -> None:
    """One unit's steps, each skipped when done (call it in a process of its own: ``python -m
    jobs.experiment --unit NAME``)."""
    from toolformer.models import resolve_model

    base = resolve_model(cfg.model.name_or_path, cfg.model.cache_dir)
    build_sources(cfg, log)
    build_indexes(cfg, log)
    rc = unit_config(cfg, unit, base)
    if unit.seed is None:
        rnd = Round(rc, log)
        rnd.step("evaluate", lambda: rnd.evaluate(None))
        return
    r = unit.round
    sc = setting_config(cfg, unit.seed, unit.setting, r)
    prev = round_dir(sc, r - 1) if r > 1 else None
    rounds = cfg.bootstrap.baseline_rounds
    control = unit.setting == DEFAULT and cfg.bootstrap.baseline and (rounds is None or r in rounds)
    rnd = Round(rc, log)
    source = annotation_source(cfg, unit)
    if source is not None:
        src = round_dir(setting_config(cfg, source.seed, DEFAULT, r), r)
        if not (src / "steps" / "annotate.json").exists():
            raise RuntimeError(f"{unit.name} reuses {src}'s annotation, which is not done")
        rnd.step("annotate", lambda: _reuse_annotation(src, rnd))
    else:
        rnd.step("annotate", rnd.annotate)
    merged = rnd.step("merge", rnd.merge)
    if not merged["texts"]:
        raise RuntimeError(f"{unit.name}: no call survived filtering; nothing to finetune on")
    ft = rnd.step("finetune", rnd.finetune)
    checkpoint = ft["checkpoints"].get("best") or ft["checkpoints"]["last"]
    baseline = None
    if control:
        # the control continues its own previous round (the base model where that round trained none)
        start = _best(prev, "baseline") if prev and (prev / "steps" / "baseline.json").exists() else base

        def finetune_control() -> dict:
            from toolformer.train.finetune import run_finetune

            c = copy.deepcopy(rc)
            c.train.baseline = True
            c.model.name_or_path = start
            return run_finetune(c, log=lambda m: None)

        bl = rnd.step("baseline", finetune_control)
        baseline = bl["checkpoints"].get("best") or bl["checkpoints"]["last"]
    rnd.step("evaluate", lambda: rnd.evaluate(checkpoint, baseline))


def needs(unit: Unit, cfg: RunConfig | None = None) -> list[str]:
    """Units that must be done before this one (``cfg`` None: counting every setting that may reuse an annotation)."""
    if unit.seed is None:
        return []
    out = []
    if unit.round > 1:
        out.append(Unit(unit.seed, unit.setting, unit.round - 1).name)
    source = annotation_source(cfg, unit)
    if source is not None:
        out.append(source.name)
    return out


def unit_done(cfg: RunConfig, unit: Unit) -> bool:
    root = Path(cfg.output_dir)
    d = root / "base" if unit.seed is None else root / f"seed{unit.seed}" / unit.setting / "rounds" / f"r{unit.round}"
    return (d / "steps" / "evaluate.json").exists()


def run_experiment(cfg: RunConfig, config_path: str, overrides: list[str], log: Callable[[str], None] = print,
                   report: Callable[[], None] | None = None) -> dict:
    """Every unit in order, each in a child process; the report after each. Returns {unit: done | failed | skipped}."""
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    status: dict[str, str] = {}
    t_start = time.time()
    units = plan(cfg)
    # a second pass retries what failed (or was skipped for it) once: a fix made while the run goes is picked up
    for unit in units + units:
        if status.get(unit.name) == "done" or status.get(unit.name + "#retried"):
            continue
        if unit.name in status:
            status[unit.name + "#retried"] = "yes"
        if unit_done(cfg, unit):
            status[unit.name] = "done"
            log(f"{unit.name}: done earlier")
            continue
        blocked = [n for n in needs(unit, cfg) if status.get(n) != "done"]
        if blocked:
            status[unit.name] = "skipped"
            log(f"{unit.name}: skipped (needs {', '.join(blocked)})")
            continue
        log(f"{unit.name}: starting ({time.strftime('%H:%M:%S')})")
        t0, load = time.time(), os.getloadavg()
        logf = root / "logs" / (unit.name.replace("/", "_") + ".log")
        logf.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "jobs.experiment", "--unit", unit.name]
        cmd += (["--config", config_path] if config_path else []) + list(overrides)
        with open(logf, "a") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
        minutes = (time.time() - t0) / 60
        status[unit.name] = "done" if proc.returncode == 0 and unit_done(cfg, unit) else "failed"
        log(f"{unit.name}: {status[unit.name]} after {minutes:.1f} min (log {logf})")
        _append_timeline(root, unit, status[unit.name], t0, time.time(), load)
        if report is not None:
            try:
                report()
            except Exception:  # noqa: BLE001 - the report must never stop the experiment
                log("report failed:\n" + traceback.format_exc())
    status = {k: v for k, v in status.items() if not k.endswith("#retried")}
    log(f"experiment finished in {(time.time() - t_start) / 60:.1f} min: " +
        ", ".join(f"{k} {v}" for k, v in status.items()))
    return status


def unit_dir(root: Path, unit: Unit) -> Path:
    return root / "base" if unit.seed is None else root / f"seed{unit.seed}" / unit.setting / "rounds" / f"r{unit.round}"


def unit_phases(root: Path, unit: Unit) -> dict[str, float]:
    """Seconds per phase of a unit, from its step markers: annotate, merge, finetune (the model), baseline (its
    control), and each evaluated setting (the evaluation's own timings) plus the evaluation's engine starts."""
    steps = unit_dir(root, unit) / "steps"
    out: dict[str, float] = {}
    for name in ("annotate", "merge", "finetune", "baseline", "evaluate"):
        f = steps / f"{name}.json"
        if f.exists():
            info = json.loads(f.read_text())
            out[name] = info.get("seconds")
            if name == "evaluate":
                rows = info.get("results")
                for row in rows if isinstance(rows, list) else []:
                    if isinstance(row, dict) and row.get("seconds") is not None:
                        out[f"evaluate: {(row.get('setting') or {}).get('name')}"] = row["seconds"]
    return out


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _append_timeline(root: Path, unit: Unit, status: str, t0: float, t1: float,
                     load: tuple[float, float, float]) -> None:
    """One line per unit run: start, end, status, seconds per phase, the load average when it started (a unit
    that ran beside other work shows it), the code's commit."""
    with open(root / "timeline.jsonl", "a") as f:
        f.write(json.dumps({"unit": unit.name, "status": status, "start": round(t0, 1), "end": round(t1, 1),
                            "minutes": round((t1 - t0) / 60, 2), "phases_s": unit_phases(root, unit),
                            "load_at_start": [round(x, 2) for x in load], "commit": _commit()}) + "\n")
