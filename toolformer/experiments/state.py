"""An experiment's finished work, small enough to commit, so that a run on a fresh clone skips it.

A unit's run directory holds checkpoints and caches (gigabytes) beside what its later steps and the report read
(kilobytes to megabytes). ``save_state`` packs the latter per unit into ``<results>/state/<unit>.tar.gz``:

- a unit whose evaluation is done: its step markers, its merge summary, C* (parts and card), its corpus account,
  its evaluation (results and every generation), its round config; so the unit is done again once restored, and
  the report reads it as it read the run;
- a unit whose annotation another unit reuses (``bootstrap.share_annotation``, merge-only settings): its annotation
  marker and files (texts, annotations, counts), even before its evaluation is done, so the units that merge it
  (and its own later steps) go on without annotating again.

``restore_state`` unpacks every stored unit that the run directory does not have done yet (nothing present is
overwritten). The markers carry the settings hash of each step (``bootstrap.Round``): a restored step whose
settings differ from the config's is refused as any rerun with other settings would be. The timeline says which
commit ran each unit.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Callable

from toolformer.config import RunConfig
from toolformer.experiments.experiment import annotation_source, plan, unit_dir, unit_done

DONE_FILES = ("merge.json", "corpus_sources.json", "config.round.yaml", "cstar/README.md", "cstar/part-*.parquet",
              "eval/results.json",
              "eval/results.md", "eval/generations.jsonl", "steps/annotate.json", "steps/merge.json",
              "steps/finetune.json", "steps/baseline.json", "steps/evaluate.json")
ANNOTATION_FILES = ("steps/annotate.json", "texts.parquet", "annotations.parquet", "stats.json",
                    "corpus_sources.json", "report.md")


def _reused(cfg: RunConfig) -> set[str]:
    """Units whose annotation another unit merges."""
    return {src.name for u in plan(cfg) if (src := annotation_source(cfg, u)) is not None}


def save_state(cfg: RunConfig, results: str | Path, log: Callable[[str], None] = print) -> list[str]:
    """Pack each unit's finished work (see the module); returns the units written (an archive is rewritten only
    when its unit has more to store than before)."""
    root, out = Path(cfg.output_dir), Path(results) / "state"
    reused, written = _reused(cfg), []
    for unit in plan(cfg):
        d = unit_dir(root, unit)
        if unit_done(cfg, unit):
            names = DONE_FILES + (ANNOTATION_FILES if unit.name in reused else ())
        elif unit.name in reused and (d / "steps" / "annotate.json").is_file():
            names = ANNOTATION_FILES
        else:
            continue
        files = sorted({str(f.relative_to(d)) for n in names for f in d.glob(n) if f.is_file()})
        target = out / f"{unit.name}.tar.gz"
        if target.is_file() and _members(target) == files:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name in files:
                info = tar.gettarinfo(str(d / name), arcname=name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""  # the same bytes on a rerun
                with open(d / name, "rb") as f:
                    tar.addfile(info, f)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(target)
        written.append(unit.name)
        log(f"state: {unit.name}: {len(files)} files, {target.stat().st_size / 2**20:.1f} MB -> {target}")
    return written


def _members(path: Path) -> list[str]:
    with tarfile.open(path, "r:gz") as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def restore_state(cfg: RunConfig, results: str | Path, log: Callable[[str], None] = print) -> list[str]:
    """Unpack the stored units the run directory lacks (never over a file that is there); returns them."""
    root, src = Path(cfg.output_dir), Path(results) / "state"
    restored = []
    timeline = Path(results) / "timeline.jsonl"  # the units' times so far: the report's timeline goes on from them
    if src.is_dir() and timeline.is_file() and not (root / "timeline.jsonl").exists():
        root.mkdir(parents=True, exist_ok=True)
        (root / "timeline.jsonl").write_bytes(timeline.read_bytes())
    for unit in plan(cfg):
        archive = src / f"{unit.name}.tar.gz"
        if not archive.is_file() or unit_done(cfg, unit):
            continue
        d = unit_dir(root, unit)
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and not (d / m.name).exists()]
            if not members:
                continue
            for m in members:
                if m.name.startswith(("/", "..")) or "/../" in m.name:
                    raise ValueError(f"{archive}: a member outside the unit's folder: {m.name}")
            tar.extractall(d, members=members, filter="data")
        restored.append(unit.name)
        log(f"state: {unit.name}: restored {len(members)} files from {archive} "
            f"({'done' if unit_done(cfg, unit) else 'its annotation'})")
    return restored


def stored_done(cfg: RunConfig, results: str | Path) -> set[str]:
    """Units done in the run directory or in the stored state (what a run would not do again)."""
    out = set()
    for unit in plan(cfg):
        archive = Path(results) / "state" / f"{unit.name}.tar.gz"
        if unit_done(cfg, unit) or (archive.is_file() and "steps/evaluate.json" in _members(archive)):
            out.add(unit.name)
    return out


__all__ = ["ANNOTATION_FILES", "DONE_FILES", "restore_state", "save_state", "stored_done"]
