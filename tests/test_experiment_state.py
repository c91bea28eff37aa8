"""A fresh clone's run skips what an earlier run finished and stored (``experiments/state.py``): a done unit comes
back done, a shared annotation comes back annotated (its merge, finetune and evaluation still to run), nothing
present is overwritten, and a rerun of ``save_state`` writes the same bytes."""

from __future__ import annotations

import json
import shutil

from toolformer.config import load_config
from toolformer.experiments.experiment import Unit, unit_dir, unit_done
from toolformer.experiments.state import restore_state, save_state


def _write(path, text="x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_stored_unit_is_restored_and_skipped(tmp_path):
    cfg = load_config("jobs/configs/multitool.yaml", [f"output_dir={tmp_path / 'run'}"])
    root = tmp_path / "run"
    base, seed0 = unit_dir(root, Unit(None, "default", 1)), unit_dir(root, Unit(0, "default", 1))
    for name in ("steps/evaluate.json", "eval/results.json", "eval/generations.jsonl", "config.round.yaml"):
        _write(base / name, json.dumps({"f": name}))
    _write(base / "eval" / "model" / "weights.bin", "big")  # not state: never stored
    for name in ("steps/annotate.json", "texts.parquet", "annotations.parquet", "stats.json"):
        _write(seed0 / name, name)
    _write(seed0 / "finetune" / "checkpoint" / "model.safetensors", "big")
    assert unit_done(cfg, Unit(None, "default", 1)) and not unit_done(cfg, Unit(0, "default", 1))

    written = save_state(cfg, tmp_path / "results", log=lambda _: None)
    assert sorted(written) == ["base", "seed0/default/r1"]  # seed 0's annotation: seeds 1, 2 and the ablation merge it
    state = tmp_path / "results" / "state"
    first = {p.name: p.read_bytes() for p in state.rglob("*.tar.gz")}
    assert save_state(cfg, tmp_path / "results", log=lambda _: None) == []  # nothing new: nothing rewritten

    shutil.rmtree(root)  # a fresh clone: no run directory
    (tmp_path / "results" / "timeline.jsonl").write_text('{"unit": "base"}\n')
    restored = restore_state(cfg, tmp_path / "results", log=lambda _: None)
    assert (root / "timeline.jsonl").read_text() == '{"unit": "base"}\n'  # the times so far, appended to next
    assert sorted(restored) == ["base", "seed0/default/r1"]
    assert unit_done(cfg, Unit(None, "default", 1))
    assert (base / "eval" / "generations.jsonl").read_text() == json.dumps({"f": "eval/generations.jsonl"})
    assert not (base / "eval" / "model").exists() and not (seed0 / "finetune").exists()
    assert (seed0 / "annotations.parquet").read_text() == "annotations.parquet" and not unit_done(cfg, Unit(0, "default", 1))

    (seed0 / "stats.json").write_text("mine")  # present: never overwritten
    (seed0 / "texts.parquet").unlink()
    assert restore_state(cfg, tmp_path / "results", log=lambda _: None) == ["seed0/default/r1"]
    assert (seed0 / "stats.json").read_text() == "mine" and (seed0 / "texts.parquet").read_text() == "texts.parquet"
    shutil.rmtree(root)
    restore_state(cfg, tmp_path / "results", log=lambda _: None)
    save_state(cfg, tmp_path / "results", log=lambda _: None)
    assert {p.name: p.read_bytes() for p in state.rglob("*.tar.gz")} == first  # the same bytes
