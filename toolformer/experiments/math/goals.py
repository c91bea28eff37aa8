"""The math experiment's goals (issue 33, item 7), each with its numbers, the test that gave its p, and a verdict:
``met`` true / false, or null only when units it needs are missing (``reason`` says which).

- per seed, on ASDiv's held-out fold: finetuned + tools >= its matched control + 10 points, and >= the prompted
  base + 10 points, each with exact McNemar p < 0.01 (every seed must meet it);
- pooled over seeds, on SVAMP: >= 5 points above both, the paired permutation test over items p < 0.01;
- the seeds' finetuned + tools within 5 points of each other on ASDiv and on SVAMP;
- false calls <= 10 % on the non-arithmetic prompts, every default model;
- plain-text perplexity within 5 % of the base model's, every default model."""

from __future__ import annotations

from toolformer.experiments.paired import BASE, CONTROL, MCNEMAR, PROMPTED, TOOLS

PER_SEED_POINTS, PER_SEED_SET = 10.0, "asdiv"
POOLED_POINTS, POOLED_SET = 5.0, "svamp"
SPREAD_SETS = ("asdiv", "svamp")
GOAL_P, GOAL_SPREAD, GOAL_FALSE_CALL, GOAL_PPL = 0.01, 5.0, 10.0, 5.0
OTHERS = {"control": ("matched control", "seed{s}/default/r1", CONTROL),
          "base + tools (prompted)": ("prompted base", "base", PROMPTED)}


def _verdict(checks: list[bool], missing: list[str]) -> tuple[bool | None, str | None]:
    """False as soon as one measured part fails; else null while a part is missing; else true."""
    if any(c is False for c in checks):
        return False, None
    if missing:
        return None, "missing: " + ", ".join(missing)
    return (True, None) if checks else (None, "nothing measured")


def _units_missing(data: dict, units: list[str], setting: str, task: str | None = None) -> list[str]:
    out = []
    for u in units:
        rows = (data["right"].get(u) or {}).get(setting) or {}
        if not rows or (task and not rows.get(task)):
            out.append(f"{u} ({setting}{', ' + task if task else ''})")
    return out


def per_seed_goal(data: dict, seeds: list[int], paired_r1: dict, label: str) -> dict:
    name, unit_fmt, setting = OTHERS[label]
    comp = (paired_r1.get(PER_SEED_SET) or {}).get(label) or {}
    rows, checks, missing = {}, [], []
    for s in seeds:
        m = (comp.get("per_seed") or {}).get(f"seed{s}")
        if m is None:
            missing += _units_missing(data, [f"seed{s}/default/r1"], TOOLS, PER_SEED_SET)
            missing += _units_missing(data, [unit_fmt.format(s=s)], setting, PER_SEED_SET)
            continue
        # on the unrounded counts: (right with tools only - right with the other only) / n, in points
        ok = m["n"] > 0 and 100 * (m["only_first"] - m["only_second"]) >= PER_SEED_POINTS * m["n"] and m["p"] < GOAL_P
        checks.append(ok)
        rows[f"seed{s}"] = {"n": m["n"], "tools": m["first"], "other": m["second"], "difference": m["difference"],
                            "only_tools": m["only_first"], "only_other": m["only_second"], "p": m["p"], "met": ok}
    met, reason = _verdict(checks, sorted(set(missing)))
    return {"goal": f"{PER_SEED_SET}, every seed: finetuned + tools >= {name} + {PER_SEED_POINTS:g} points, "
                    f"{MCNEMAR} p < {GOAL_P}",
            "kind": "per seed", "set": PER_SEED_SET, "vs": label, "test": f"{MCNEMAR} (two-sided, per seed)",
            "per_seed": rows, "met": met, **({"reason": reason} if reason else {})}


def pooled_goal(data: dict, seeds: list[int], paired_r1: dict, label: str) -> dict:
    name, unit_fmt, setting = OTHERS[label]
    comp = (paired_r1.get(POOLED_SET) or {}).get(label)
    goal = f"{POOLED_SET}, pooled over seeds: finetuned + tools >= {name} + {POOLED_POINTS:g} points, " \
           f"paired permutation over items p < {GOAL_P}"
    if not comp:
        missing = _units_missing(data, [f"seed{s}/default/r1" for s in seeds], TOOLS, POOLED_SET) + \
            _units_missing(data, sorted({unit_fmt.format(s=s) for s in seeds}), setting, POOLED_SET)
        return {"goal": goal, "kind": "pooled", "set": POOLED_SET, "vs": label, "test": None, "met": None,
                "reason": "missing: " + ", ".join(sorted(set(missing)) or ["rows"])}
    p = comp["pooled"]
    ok = p["mean_difference"] is not None and 100 * p["mean_difference"] >= POOLED_POINTS - 1e-9 and p["p"] < GOAL_P
    missing = [f"seed{s.removeprefix('seed')}/default/r1 or its {name}" for s in p["seeds_missing"]]
    met, reason = (None, "pooled over " + ", ".join(f"seed{s}" for s in p["seeds"]) + " only; missing: "
                   + ", ".join(missing)) if missing else (ok, None)
    return {"goal": goal, "kind": "pooled", "set": POOLED_SET, "vs": label, "test": p["test"],
            "method": p["method"], "seeds": p["seeds"], "items": p["items"], "nonzero_items": p["nonzero"],
            "tools": p["first"], "other": p["second"], "difference": p["difference"], "p": p["p"],
            "met": met, **({"reason": reason} if reason else {})}


def spread_goal(data: dict, seeds: list[int], task: str) -> dict:
    """The seeds' finetuned + tools accuracies on the items every seed answered: max - min <= 5 points."""
    maps = {s: ((data["right"].get(f"seed{s}/default/r1") or {}).get(TOOLS) or {}).get(task) for s in seeds}
    have = {s: m for s, m in maps.items() if m}
    missing = [f"seed{s}/default/r1 ({TOOLS}, {task})" for s in seeds if s not in have]
    goal = f"{task}: the seeds' finetuned + tools within {GOAL_SPREAD:g} points of each other"
    if len(have) < 2:
        return {"goal": goal, "kind": "spread", "set": task, "met": None,
                "reason": "fewer than 2 seeds; missing: " + ", ".join(missing)}
    common = set.intersection(*(set(m) for m in have.values()))
    acc = {f"seed{s}": round(100 * sum(bool(m[u]) for u in common) / len(common), 1) if common else None
           for s, m in have.items()}
    vals = [v for v in acc.values() if v is not None]
    spread = round(max(vals) - min(vals), 1) if vals else None
    met, reason = _verdict([spread is not None and spread <= GOAL_SPREAD], missing)
    return {"goal": goal, "kind": "spread", "set": task, "items": len(common), "accuracy": acc, "range": spread,
            "met": met, **({"reason": reason} if reason else {})}


def _default_models(data: dict, seeds: list[int]) -> tuple[list[str], list[str]]:
    """(default units with a finetuned + tools evaluation, round-1 default units that should have one but don't)."""
    present = sorted(u for u, d in data["units"].items() if "/default/" in u and TOOLS in (d.get("eval") or {}))
    missing = [f"seed{s}/default/r1" for s in seeds if f"seed{s}/default/r1" not in present]
    return present, missing


def false_call_goal(data: dict, seeds: list[int]) -> dict:
    present, missing = _default_models(data, seeds)
    rates = []
    for unit in present:
        for name, fc in (data["units"][unit]["eval"][TOOLS].get("false_call") or {}).items():
            rates.append({"unit": unit, "prompts": name, "n": fc.get("n"), "rate": fc["calculator_call_share"]})
        if not data["units"][unit]["eval"][TOOLS].get("false_call"):
            missing.append(f"{unit} (no false-call rows)")
    met, reason = _verdict([r["rate"] <= GOAL_FALSE_CALL for r in rates], missing)
    return {"goal": f"false calls <= {GOAL_FALSE_CALL:g} % on non-arithmetic prompts (every default model)",
            "kind": "false calls", "rates": rates, "worst": max((r["rate"] for r in rates), default=None),
            "met": met, **({"reason": reason} if reason else {})}


def perplexity_goal(data: dict, seeds: list[int]) -> dict:
    present, missing = _default_models(data, seeds)
    base = (((data["units"].get("base") or {}).get("eval") or {}).get(BASE) or {}).get("perplexity") or {}
    base_ppl = base.get("perplexity")
    if not base_ppl:
        missing.append("base (perplexity of the base model)")
    changes = []
    for unit in present:
        ppl = (data["units"][unit]["eval"][TOOLS].get("perplexity") or {}).get("perplexity")
        if ppl is None:
            missing.append(f"{unit} (no perplexity)")
        elif base_ppl:
            changes.append({"unit": unit, "perplexity": ppl, "change_percent": round(100 * (ppl / base_ppl - 1), 1)})
    met, reason = _verdict([abs(c["change_percent"]) <= GOAL_PPL for c in changes], missing)
    return {"goal": f"plain-text perplexity within {GOAL_PPL:g} % of the base model's (every default model)",
            "kind": "perplexity", "base": base_ppl, "models": changes,
            "worst": max((abs(c["change_percent"]) for c in changes), default=None),
            "met": met, **({"reason": reason} if reason else {})}


def goals(data: dict, seeds: list[int], paired_r1: dict) -> list[dict]:
    """Every goal, in the issue's order."""
    return ([per_seed_goal(data, seeds, paired_r1, label) for label in OTHERS]
            + [pooled_goal(data, seeds, paired_r1, label) for label in OTHERS]
            + [spread_goal(data, seeds, task) for task in SPREAD_SETS]
            + [false_call_goal(data, seeds), perplexity_goal(data, seeds)])
