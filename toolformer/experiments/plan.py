"""The math experiment's plan with a time estimate per unit, from stored rates (``--plan``), before anything
starts. The rates are what the experiment measured alone on this machine (benchmarks/results/math/rates.json,
rewritten from the stored timeline by the report); without them, the first measured figures below."""

from __future__ import annotations

import json
from pathlib import Path

from toolformer.config import RunConfig

RATES_FILE = Path("benchmarks/results/math/rates.json")
# First figures (issue 33, measured alone, bf16 engine): 300 problems annotated in 7:10, a finetune 8:33 with
# two workers and optimizer-state checkpoints, 400 items evaluated in 2:14 with two models.
FIRST_RATES = {"annotate_texts_per_s": 0.70, "finetune_s_per_text_epoch": 0.34, "finetune_overhead_s": 60.0,
               "eval_items_per_s": 6.0, "engine_start_s": 30.0, "source": "issue 33's single-unit figures"}
FULL_SIZES = {"asdiv": 396, "svamp": 1000, "mawps": 50,  # numeric-answer items of each evaluated set
              "lama_squad": 305, "lama_trex": 560, "lama_google_re": 300, "dateset": 300}
INDEX_BUILD_S = 215.0  # the LAMA index, built once before the first unit (benchmarks/results/qa_ceiling.json)


def texts_of(cfg: RunConfig) -> int:
    """Texts a round annotates: corpus.limit, or the sum of bootstrap.sources."""
    return cfg.corpus.limit or sum((cfg.bootstrap.sources or {}).values())


def load_rates(path: Path = RATES_FILE) -> dict:
    if path.exists():
        return {**FIRST_RATES, **json.loads(path.read_text())}
    return dict(FIRST_RATES)


def _items(task: str, ids: dict[str, str]) -> int:
    path = ids.get(task)
    if path and Path(path).is_file():
        n = sum(1 for line in Path(path).read_text().splitlines() if line.strip())
        return min(n, FULL_SIZES.get(task, n))
    return FULL_SIZES.get(task, 100)


def estimate(cfg: RunConfig, unit, rates: dict) -> dict[str, float]:
    """Seconds per phase of one unit (an estimate: the key says so in the printed plan)."""
    from toolformer.experiments.experiment import DEFAULT, MERGE_ONLY

    b, e = cfg.bootstrap, cfg.eval
    ids = dict(e.task_ids)
    primary = unit.seed is None or (unit.setting == DEFAULT and unit.round == 1)
    if not primary:
        ids.update(b.secondary_task_ids)
    items = sum(_items(t, ids) for t in b.eval_tasks) + len(e.false_call_sets) * e.false_call_n
    per_model = rates["engine_start_s"] + items / rates["eval_items_per_s"]
    if unit.seed is None:
        return {"evaluate": 2 * per_model - rates["engine_start_s"]}  # plain and prompted share one engine
    texts = texts_of(cfg)
    train = rates["finetune_overhead_s"] + (cfg.train.epochs or 1) * texts * rates["finetune_s_per_text_epoch"]
    out: dict[str, float] = {}
    reuses = unit.setting != DEFAULT and unit.setting.removeprefix("no_") in MERGE_ONLY + ("boundary_positions",)
    shared = b.share_annotation and unit.round == 1 and unit.seed != b.seeds[0]
    if b.lama_index and unit.seed == b.seeds[0] and unit.setting == DEFAULT and unit.round == 1:
        out["index"] = INDEX_BUILD_S
    out["annotate"] = 0.0 if reuses or shared else texts / rates["annotate_texts_per_s"]
    out["finetune"] = train
    rounds = b.baseline_rounds
    control = unit.setting == DEFAULT and b.baseline and (rounds is None or unit.round in rounds)
    if control:
        out["baseline"] = 0.8 * train  # the control's texts are shorter (no calls)
    out["evaluate"] = per_model * (2 if control else 1)
    return out


def print_plan(cfg: RunConfig, units: list, rates: dict | None = None, done: set[str] = frozenset()) -> float:
    """The units in order with their estimated minutes (``done``: finished or stored, not counted); returns the
    total in minutes."""
    rates = rates or load_rates()
    total = 0.0
    print(f"plan of {len(units)} units (estimated minutes, from {rates.get('source', RATES_FILE)}):")
    for u in units:
        if u.name in done:
            print(f"  {u.name:32s}   done (in the run, or in its stored state)")
            continue
        est = estimate(cfg, u, rates)
        minutes = sum(est.values()) / 60
        total += minutes
        parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in est.items() if v)
        print(f"  {u.name:32s} ~{minutes:5.1f} min  ({parts})")
    print(f"estimated total: ~{total:.0f} min")
    return total


def measured_rates(cfg: RunConfig, timeline: list[dict], base: dict | None = None) -> dict | None:
    """Rates read back from a stored timeline (the units' own phase timings), for the next ``--plan``: annotated
    problems per second, finetune seconds per problem-epoch, evaluated items per second. None without units."""
    from toolformer.experiments.experiment import Unit

    rates = dict(base or load_rates())
    limit, epochs = texts_of(cfg), cfg.train.epochs or 1
    ann, ft, ev = [], [], []
    for x in timeline:
        ph = x.get("phases_s") or {}
        if x.get("status") != "done":
            continue
        if (ph.get("annotate") or 0) > 30 and limit:
            ann.append(limit / ph["annotate"])
        for k in ("finetune", "baseline"):
            if (ph.get(k) or 0) > rates["finetune_overhead_s"] and limit:
                ft.append((ph[k] - rates["finetune_overhead_s"]) / (epochs * limit) / (0.8 if k == "baseline" else 1))
        if ph.get("evaluate"):
            unit = Unit.parse(x["unit"])
            counted = estimate(cfg, unit, {**rates, "eval_items_per_s": 1.0, "engine_start_s": 0.0})["evaluate"]
            models = 2 if unit.seed is None or "baseline" in ph else 1
            spent = ph["evaluate"] - rates["engine_start_s"] * (1 if unit.seed is None else models)
            if spent > 0:
                ev.append(counted / spent)
    if not (ann or ft or ev):
        return None
    mean = lambda xs: round(sum(xs) / len(xs), 4)  # noqa: E731
    if ann:
        rates["annotate_texts_per_s"] = mean(ann)
    if ft:
        rates["finetune_s_per_text_epoch"] = mean(ft)
    if ev:
        rates["eval_items_per_s"] = mean(ev)
    rates["source"] = f"measured from the stored timeline ({len(timeline)} unit runs)"
    return rates
