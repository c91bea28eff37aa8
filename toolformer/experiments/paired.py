"""The math report's paired tests (issue 33) and the check that every evaluated model read the same items.

Per seed: the exact McNemar test (two-sided, binomial on the discordant pairs) and Wilson intervals, on the items
both settings answered. Pooled over seeds: the paired sign-flip permutation test over ITEMS
(``toolformer.experiments.stats.paired_permutation_p``) on d_i = mean over seeds of right with tools - mean over seeds of
right with the other setting (the base rows: their one answer), so the seeds' copies of an item are never counted
as independent items. ``data["right"]`` maps unit -> setting -> set -> {item id: right}."""

from __future__ import annotations

from toolformer.experiments.stats import mcnemar_p, paired_permutation_p, seed_mean_differences, wilson

SETS = ("asdiv", "svamp", "mawps")
TOOLS, CONTROL, BASE, PROMPTED = "finetuned + tools", "baseline-finetuned", "base", "base + tools (prompted)"
MCNEMAR = "exact McNemar"


def mcnemar(a: dict[str, bool], b: dict[str, bool]) -> dict:
    """Paired exact McNemar test on the items both settings answered: right with a only, with b only, p; the
    accuracies on those items with their Wilson intervals and the difference in points."""
    common = a.keys() & b.keys()
    only_a = sum(a[u] and not b[u] for u in common)
    only_b = sum(b[u] and not a[u] for u in common)
    n = len(common)
    ka, kb = sum(bool(a[u]) for u in common), sum(bool(b[u]) for u in common)
    acc = (lambda k: round(100 * k / n, 1) if n else None)
    return {"n": n, "only_first": only_a, "only_second": only_b, "p": mcnemar_p(only_a, only_b), "test": MCNEMAR,
            "first": acc(ka), "second": acc(kb), "first_ci95": wilson(ka, n), "second_ci95": wilson(kb, n),
            "difference": round(100 * (ka - kb) / n, 1) if n else None}


def _rows(data: dict, unit: str, setting: str, task: str) -> dict[str, bool] | None:
    return ((data["right"].get(unit) or {}).get(setting) or {}).get(task) or None


def compare(data: dict, seeds: list[int], mine_unit: str, mine_setting: str, their_unit: str, their_setting: str,
            task: str) -> dict | None:
    """``mine`` against ``theirs`` on one set: exact McNemar per seed, and pooled over the seeds both have, the
    item-level paired permutation test (difference = mean over items of d_i, in points). Units are formats with
    ``{s}``; a unit without it (the base) is the same rows for every seed. None when no seed has both."""
    per_seed, firsts, seconds, used, missing = {}, [], [], [], []
    once = "{s}" not in their_unit
    for s in seeds:
        mine = _rows(data, mine_unit.format(s=s), mine_setting, task)
        theirs = _rows(data, their_unit.format(s=s), their_setting, task)
        if not mine or not theirs:
            missing.append(f"seed{s}")
            continue
        per_seed[f"seed{s}"] = mcnemar(mine, theirs)
        firsts.append(mine)
        used.append(s)
        if not once or not seconds:
            seconds.append(theirs)
    if not per_seed:
        return None
    diffs = seed_mean_differences(firsts, seconds)
    perm = paired_permutation_p(list(diffs.values()))
    n = len(diffs)
    mine_mean = [sum(bool(m[u]) for m in firsts) / len(firsts) for u in diffs]
    their_mean = [sum(bool(m[u]) for m in seconds) / len(seconds) for u in diffs]
    pooled = {"seeds": used, "seeds_missing": missing, "items": n, "nonzero": perm["nonzero"],
              "first": round(100 * sum(mine_mean) / n, 1) if n else None,
              "second": round(100 * sum(their_mean) / n, 1) if n else None,
              "difference": round(100 * perm["mean"], 1) if perm["mean"] is not None else None,
              "mean_difference": perm["mean"],  # unrounded, a share: what the goals compare
              "p": perm["p"], "method": perm["method"], "test": perm["test"],
              "unit": "item (d_i = mean over seeds of right with tools - mean over seeds of right with the other)"}
    return {"per_seed": per_seed, "pooled": pooled}


def comparisons(data: dict, seeds: list[int], setting: str, r: int, against: dict[str, tuple[str, str]]) -> dict:
    """Per set: ``setting``'s round-``r`` finetuned + tools against each other row: per seed exact McNemar,
    pooled over seeds the item-level permutation test (never the seeds' discordant pairs summed)."""
    out: dict = {}
    for task in SETS:
        for label, (their_unit, other) in against.items():
            got = compare(data, seeds, f"seed{{s}}/{setting}/r{r}", TOOLS, their_unit, other, task)
            if got:
                out.setdefault(task, {})[label] = got
    return out


def items_check(right: dict, units: list[str] | None = None) -> dict:
    """Per set: whether every evaluated setting of ``units`` (all when None) read the same item ids. The union of
    their ids is the reference; each setting whose ids differ is listed with its count, missing and extra ids."""
    per_set: dict = {}
    for unit, per_setting in right.items():
        if units is not None and unit not in units:
            continue
        for setting, per_task in per_setting.items():
            for task, items in per_task.items():
                per_set.setdefault(task, {})[f"{unit} | {setting}"] = set(items)
    out: dict = {}
    for task, rows in sorted(per_set.items()):
        union = set().union(*rows.values())
        common = set.intersection(*rows.values())
        differing = {k: {"n": len(v), "missing": len(union - v)} for k, v in sorted(rows.items()) if v != union}
        out[task] = {"equal": not differing, "rows": len(rows), "n_union": len(union), "n_common": len(common),
                     "counts": sorted({len(v) for v in rows.values()}), "differing": differing}
    return {"items_equal": all(v["equal"] for v in out.values()), "per_set": out}


def ids_within(right: dict, inner: list[str], outer: list[str]) -> dict[str, bool]:
    """Per set: whether every item id the ``inner`` units read is one the ``outer`` units read (a stated subset
    lies within the full set)."""
    def ids(units: list[str]) -> dict[str, set]:
        out: dict[str, set] = {}
        for unit in units:
            for per_task in (right.get(unit) or {}).values():
                for task, items in per_task.items():
                    out.setdefault(task, set()).update(items)
        return out

    a, b = ids(inner), ids(outer)
    return {t: v <= b.get(t, set()) for t, v in sorted(a.items())}


def items_warning(check: dict) -> str | None:
    """One loud line when the item sets differ, else None."""
    bad = {t: v for t, v in check["per_set"].items() if not v["equal"]}
    if not bad:
        return None
    return ("ITEM SETS DIFFER: " + "; ".join(
        f"{t}: {v['n_common']} items common to all {v['rows']} rows of {v['n_union']} (counts {v['counts']}; "
        f"{len(v['differing'])} rows differ)" for t, v in bad.items())
        + ". The paired tests use the common items only.")
