"""Loading a run's configuration: defaults, a YAML file, dotted command-line overrides; the settings that take one
of a few values; and the hash of everything that changes outputs (two runs with equal hashes must agree)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from toolformer.config.schema import RunConfig


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults ← YAML file ← ``key.sub=value`` overrides; unknown keys are an error."""
    if not OmegaConf.has_resolver("shared_data"):  # ${shared_data:} in a YAML: the evaluation/test data folder
        from toolformer.paths import shared_data

        def _shared_data() -> str:
            return str(shared_data())

        OmegaConf.register_resolver("shared_data", _shared_data)
    schema = OmegaConf.structured(RunConfig)
    layers = [schema]
    if path:
        layers.append(OmegaConf.load(path))
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    merged = OmegaConf.merge(*layers)
    OmegaConf.resolve(merged)
    cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    check_choices(cfg)
    check_store_window(cfg)
    return cfg


# Settings that take one of a few values: anything else fails at load, naming the valid ones.
CHOICES = {
    "annotate.call_syntax": ("free", "constrained", "operands"),
    "annotate.no_result_form": ("arrow", "bare"),
    "engine.backend": ("vllm", "hf"),
}
# annotate.position_sets: boundary = annotate.boundary_positions on, free = off
POSITION_SETS = ("boundary", "free")


def check_store_window(cfg: RunConfig) -> None:
    """On an object store a conditional write (a marker, a failure record, the lease) lands up to
    ``conditional.WRITE_WINDOW_S`` after the fence check before it: the lease's margin must be longer, or a
    write of a driver past its deadline could land after another driver took the run over."""
    from toolformer.run.conditional import WRITE_WINDOW_S
    from toolformer.run.lease import lease_margin

    out = str(cfg.output_dir or "")
    if "://" not in out or out.startswith("file://"):
        return  # a local or POSIX disk: the check and the write happen under one lock
    s = cfg.shards
    margin = lease_margin(s.lease_ttl_s, s.lease_heartbeat_s, s.lease_margin_s)
    if margin <= WRITE_WINDOW_S:
        raise ValueError(
            f"shards.lease_margin_s is {margin:g} s (ttl {s.lease_ttl_s:g} s, heartbeat {s.lease_heartbeat_s:g} s) "
            f"on {out}: an object store's write lands up to {WRITE_WINDOW_S:g} s after its fence check "
            f"(toolformer/conditional: request timeouts and resends), so the margin must be longer: raise "
            f"shards.lease_margin_s, or shards.lease_ttl_s (the default margin is a quarter of it)")


def check_choices(cfg: RunConfig) -> None:
    for key, valid in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in valid:
            raise ValueError(f"unknown value {value!r} for {key}; valid: {', '.join(valid)}")
    sets = list(cfg.annotate.position_sets or [])
    for name in sets:
        if name not in POSITION_SETS:
            raise ValueError(f"unknown value {name!r} in annotate.position_sets; valid: {', '.join(POSITION_SETS)}")
    if len(set(sets)) != len(sets):
        raise ValueError(f"annotate.position_sets names a set twice: {sets}")
    if cfg.merge.position_set is not None and cfg.merge.position_set not in sets:
        # candidates carry only the sets they were annotated with: any other would merge nothing
        raise ValueError(f"merge.position_set {cfg.merge.position_set!r} is not in annotate.position_sets {sets}")


def to_dict(cfg: RunConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


# Keys added after runs were stored, with the value those runs had: left out of the hash at that value, so a stored
# run still matches its config (a config that sets a new value hashes it).
ADDED_KEYS = {("merge", "keep_uncalled"): False}


def config_hash(cfg: RunConfig) -> str:
    """Hash of the settings that change outputs (the run name and output place do not)."""
    data = to_dict(cfg)
    for (section, key), old in ADDED_KEYS.items():
        if data.get(section, {}).get(key, old) == old:
            data.get(section, {}).pop(key, None)
    # Where and how it runs does not change what it computes.
    for key in ("name", "output_dir", "ray", "train", "eval", "bootstrap"):
        data.pop(key, None)
    data.get("annotate", {}).pop("runner", None)
    data.get("annotate", {}).pop("tool_timeout_s", None)
    data.get("annotate", {}).pop("tool_timeout_s_per_tool", None)
    for key in ("tool_workers", "tool_in_process", "tool_setup_timeout_s", "tool_max_restarts"):  # where tools run
        data.get("annotate", {}).pop(key, None)
    for key in ("max_failures", "progress_every_shards", "progress_every_s", "lease_ttl_s", "lease_heartbeat_s",
                "lease_margin_s", "lease_wait_s", "retry_after_stops"):
        data.get("shards", {}).pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
