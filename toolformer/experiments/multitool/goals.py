"""The multi-tool experiment's goals (issue 42, item 7), each with its numbers and a verdict: ``met`` true / false,
or null only while units it needs are missing (``reason`` says which). Fixed before any run; never tuned.

- T-REx held out, per seed: finetuned + tools >= its control + 10 points and >= the prompted base + 5, exact
  McNemar p < 0.01 each; >= 80 % of its calls there are QA.
- Math, per seed: the ASDiv fold >= 30 % and >= its control + 10 points; SVAMP pooled over seeds >= 18 % (with the
  item-level test against the control); >= 90 % of the calls on the math sets are the Calculator.
- Dateset, per seed: >= its control + 10 points and >= the prompted base + 10, p < 0.01 each; >= 80 % of its calls
  are the Calendar.
- Plain text: any call on <= 10 % of the plain-text prompts; Calculator calls on <= 5 % of the LAMA items (every
  finetuned model).
- Perplexity within 5 % of the base model's; the seeds within 5 points of each other on every main set.
"""

from __future__ import annotations

from toolformer.experiments.paired import BASE, MCNEMAR, TOOLS

SETS = ("lama_trex", "lama_google_re", "lama_squad", "asdiv", "svamp", "mawps", "dateset")
MAIN_SETS = ("lama_trex", "asdiv", "svamp", "dateset")
MATH = ("asdiv", "svamp", "mawps")
LAMA = ("lama_trex", "lama_google_re", "lama_squad")
# the tool each set is for (what "chose right" means in the diagnosis)
CHOSEN_TOOL = {**{t: "QA" for t in LAMA}, **{t: "Calculator" for t in MATH}, "dateset": "Calendar"}
GOAL_P = 0.01
FALSE_CALL_MAX, LAMA_CALCULATOR_MAX, PPL_MAX, SPREAD_MAX = 10.0, 5.0, 5.0, 5.0


def _verdict(checks: list[bool], missing: list[str]) -> tuple[bool | None, str | None]:
    if any(c is False for c in checks):
        return False, None
    if missing:
        return None, "missing: " + ", ".join(sorted(set(missing)))
    return (True, None) if checks else (None, "nothing measured")


def _goal(name: str, checks: list[bool], missing: list[str], **numbers) -> dict:
    met, reason = _verdict(checks, missing)
    return {"goal": name, "met": met, **({"reason": reason} if reason else {}), **numbers}


def _tool_rows(data: dict, s: int) -> list[dict]:
    return [r for r in data["rows"].get(f"seed{s}/default/r1") or [] if r["setting"] == TOOLS]


def call_shares(rows: list[dict], tasks: tuple[str, ...]) -> dict:
    """Over the items of ``tasks``: items, those with a call of a named tool, and the share (%) of calls per tool."""
    calls: dict[str, int] = {}
    items = 0
    for r in rows:
        if r["task"] not in tasks:
            continue
        items += 1
        for c in r.get("calls") or []:
            if c.get("tool"):
                calls[c["tool"]] = calls.get(c["tool"], 0) + 1
    total = sum(calls.values())
    return {"items": items, "calls": total,
            "share": {t: round(100 * n / total, 1) for t, n in sorted(calls.items())} if total else {}}


def _versus(paired: dict, task: str, label: str, s: int) -> dict | None:
    return (((paired.get(task) or {}).get(label) or {}).get("per_seed") or {}).get(f"seed{s}")


def _beats(m: dict | None, points: float, need_p: bool) -> bool | None:
    if m is None or not m["n"]:
        return None
    ok = 100 * (m["only_first"] - m["only_second"]) >= points * m["n"]
    return ok and (m["p"] < GOAL_P if need_p else True)


def per_seed_set_goal(data: dict, seeds: list[int], paired: dict, task: str, margins: dict[str, float],
                      tool: str, tool_share: float, floor: float | None = None, need_p: bool = True) -> dict:
    """Per seed on ``task``: tools >= each other row + its margin (p < 0.01 when ``need_p``), an accuracy floor,
    and the share of its calls that are ``tool``."""
    checks, missing, per_seed = [], [], {}
    for s in seeds:
        row: dict = {}
        for label, points in margins.items():
            m = _versus(paired, task, label, s)
            ok = _beats(m, points, need_p)
            if ok is None:
                missing.append(f"seed{s} vs {label} on {task}")
                continue
            checks.append(ok)
            row[label] = {"tools": m["first"], "other": m["second"], "difference": m["difference"],
                          "only_tools": m["only_first"], "only_other": m["only_second"], "p": m["p"], "met": ok}
        rows = _tool_rows(data, s)
        if rows:
            shares = call_shares(rows, (task,) if task not in MATH else MATH)
            share = shares["share"].get(tool, 0.0) if shares["calls"] else None
            ok = share is not None and share >= tool_share
            checks.append(ok)
            row["calls"] = {**shares, f"{tool}_share": share, "met": ok}
            if floor is not None:
                acc = next((m["first"] for m in (_versus(paired, task, lab, s) for lab in margins) if m), None)
                if acc is not None:
                    checks.append(acc >= floor)
                    row["floor"] = {"accuracy": acc, "at_least": floor, "met": acc >= floor}
        else:
            missing.append(f"seed{s}/default/r1")
        if row:
            per_seed[f"seed{s}"] = row
    names = " and ".join(f">= {lab} + {p:g} points" for lab, p in margins.items())
    name = (f"{task}, every seed: finetuned + tools {names}" + (f", {MCNEMAR} p < {GOAL_P}" if need_p else "")
            + (f", at least {floor:g} %" if floor is not None else "") + f"; >= {tool_share:g} % of its calls "
            f"{'on the math sets ' if task in MATH else ''}are {tool}")
    return _goal(name, checks, missing, kind="per seed", set=task, per_seed=per_seed)


def svamp_goal(data: dict, seeds: list[int], paired: dict, floor: float = 18.0) -> dict:
    comp = ((paired.get("svamp") or {}).get("control") or {}).get("pooled")
    if not comp:
        return _goal(f"svamp pooled over seeds: finetuned + tools at least {floor:g} %", [], ["svamp units"])
    ok = comp["first"] is not None and comp["first"] >= floor
    missing = [f"seed{str(s).removeprefix('seed')}" for s in comp.get("seeds_missing") or []]
    return _goal(f"svamp pooled over seeds: finetuned + tools at least {floor:g} % (item-level test against the control "
                 "stated)", [ok], missing, kind="pooled", set="svamp",
                 pooled={"tools": comp["first"], "control": comp["second"], "difference": comp["difference"],
                         "p": comp["p"], "test": comp["test"], "items": comp["items"], "seeds": comp["seeds"]})


def plain_text_goal(data: dict, seeds: list[int]) -> dict:
    checks, missing, rows = [], [], {}
    for s in seeds:
        unit = f"seed{s}/default/r1"
        fc = (((data["units"].get(unit) or {}).get("eval", {}).get(TOOLS) or {}).get("false_call") or {}).get("webtext")
        lama = call_shares(_tool_rows(data, s), LAMA)
        if not fc or not lama["items"]:
            missing.append(unit)
            continue
        calc = 0
        for r in _tool_rows(data, s):
            if r["task"] in LAMA and any(c.get("tool") == "Calculator" for c in r.get("calls") or []):
                calc += 1
        lama_calc = round(100 * calc / lama["items"], 1)
        ok_fc, ok_lama = fc["any_call_share"] <= FALSE_CALL_MAX, lama_calc <= LAMA_CALCULATOR_MAX
        checks += [ok_fc, ok_lama]
        rows[f"seed{s}"] = {"plain_text_any_call": fc["any_call_share"], "plain_text_calls_per_tool": fc.get("calls_per_tool"),
                            "prompts": fc["n"], "lama_items_with_a_calculator_call": lama_calc,
                            "lama_items": lama["items"], "met": ok_fc and ok_lama}
    return _goal(f"any call on <= {FALSE_CALL_MAX:g} % of the plain-text prompts; a Calculator call on <= "
                 f"{LAMA_CALCULATOR_MAX:g} % of the LAMA items (every seed)", checks, missing, kind="per seed",
                 per_seed=rows)


def perplexity_goal(data: dict, seeds: list[int]) -> dict:
    base = (((data["units"].get("base") or {}).get("eval", {}).get(BASE) or {}).get("perplexity") or {}).get("perplexity")
    checks, missing, rows = [], [], {}
    if base is None:
        missing.append("base")
    for s in seeds:
        unit = f"seed{s}/default/r1"
        ppl = (((data["units"].get(unit) or {}).get("eval", {}).get(TOOLS) or {}).get("perplexity") or {}).get("perplexity")
        if ppl is None:
            missing.append(unit)
            continue
        if base is not None:
            change = round(100 * (ppl / base - 1), 1)
            checks.append(change <= PPL_MAX)
            rows[f"seed{s}"] = {"perplexity": ppl, "base": base, "change_percent": change, "met": change <= PPL_MAX}
    return _goal(f"plain-text perplexity within {PPL_MAX:g} % of the base model's (every seed)", checks, missing,
                 kind="per seed", per_seed=rows)


def spread_goal(data: dict, seeds: list[int]) -> dict:
    checks, missing, rows = [], [], {}
    for task in MAIN_SETS:
        vals = {}
        for s in seeds:
            e = (((data["units"].get(f"seed{s}/default/r1") or {}).get("eval", {}).get(TOOLS) or {}).get("sets") or {}).get(task)
            if e is None:
                missing.append(f"seed{s} on {task}")
            else:
                vals[f"seed{s}"] = e["accuracy"]
        if len(vals) == len(seeds) and vals:
            spread = round(max(vals.values()) - min(vals.values()), 1)
            checks.append(spread <= SPREAD_MAX)
            rows[task] = {"accuracy": vals, "range": spread, "met": spread <= SPREAD_MAX}
    return _goal(f"the seeds' finetuned + tools within {SPREAD_MAX:g} points of each other on "
                 + ", ".join(MAIN_SETS), checks, missing, kind="spread", per_set=rows)


def goals(data: dict, seeds: list[int], paired: dict) -> list[dict]:
    return [
        per_seed_set_goal(data, seeds, paired, "lama_trex", {"control": 10.0, "base + tools (prompted)": 5.0}, "QA", 80.0),
        per_seed_set_goal(data, seeds, paired, "asdiv", {"control": 10.0}, "Calculator", 90.0, floor=30.0,
                          need_p=False),
        svamp_goal(data, seeds, paired),
        per_seed_set_goal(data, seeds, paired, "dateset", {"control": 10.0, "base + tools (prompted)": 10.0},
                          "Calendar", 80.0),
        plain_text_goal(data, seeds),
        perplexity_goal(data, seeds),
        spread_goal(data, seeds),
    ]
