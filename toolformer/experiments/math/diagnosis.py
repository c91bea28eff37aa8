"""Why a math goal is missed, from the stored item rows (issue 33, item 8): per unit, model setting and set, how
often the model calls, where the call sits in its answer (before the answer's first number, or after one), which
operands it uses (all of them in the question, or not), copy errors in its generations (the number written after
a call against the call's result), answers right without a call and right with one. The C* copy errors come from
``cstar_facts`` per unit and are shown beside these."""

from __future__ import annotations

import re
from pathlib import Path

from toolformer.calls import CALL_WITH_RESULT_PATTERN

_CALL = re.compile(r"\[Calculator\((.*?)\)\s*->\s*([^\]]*)\]")
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+")


def numbers(text: str) -> list[float]:
    """The numbers written in ``text`` (thousands separators dropped; signs are read as operators)."""
    out = []
    for m in _NUMBER.finditer(text or ""):
        try:
            out.append(float(m.group().replace(",", "")))
        except ValueError:
            continue
    return out


def generation_copy_errors(rows: list[dict]) -> dict:
    """In generations with a Calculator call that returned a number: how often the next number the model then
    wrote disagrees with the result (the pattern C* taught: ``-> 0.62] 62``)."""
    from toolformer.cstar.augment import result_agrees

    compared = wrong = 0
    for r in rows:
        m = _CALL.search(r.get("generation") or "")
        if not m:
            continue
        agrees = result_agrees(r["generation"], m.end(), m.group(2).strip())
        if agrees is None:
            continue
        compared += 1
        wrong += not agrees
    return {"compared": compared, "disagree": wrong, "rate": round(100 * wrong / compared, 1) if compared else None}


def _share(k: int, n: int) -> float | None:
    return round(100 * k / n, 1) if n else None


def diagnose(rows: list[dict], questions: dict[str, str] | None) -> dict:
    """One setting on one set (``rows``: its generation rows). Counts and shares (% of the answers, or of the
    answers with a call where it says so)."""
    n = len(rows)
    called = started = right_with = right_without = 0
    where = {"before_first_number": 0, "after_a_number": 0, "not_in_text": 0}
    ops = {"calls": 0, "all_in_question": 0, "some_not_in_question": 0, "no_operands": 0, "question_unknown": 0}
    for r in rows:
        calls = r.get("calls") or []
        written = [c for c in calls if c.get("tool")]
        started += bool(calls)
        called += bool(written)
        right = bool(r.get("correct"))
        right_with += right and bool(written)
        right_without += right and not written
        if not written:
            continue
        gen = r.get("generation") or ""
        m = CALL_WITH_RESULT_PATTERN.search(gen)
        if m is None:  # a call that returned nothing leaves no trace in the text
            where["not_in_text"] += 1
        else:
            where["after_a_number" if numbers(gen[: m.start()]) else "before_first_number"] += 1
        first = written[0]
        ops["calls"] += 1
        operands = numbers(str(first.get("input") or ""))
        question = (questions or {}).get(str(r.get("uid")))
        if not operands:
            ops["no_operands"] += 1
        elif question is None:
            ops["question_unknown"] += 1
        else:
            given = numbers(question)
            inside = all(any(abs(x - g) < 1e-9 for g in given) for x in operands)
            ops["all_in_question" if inside else "some_not_in_question"] += 1
    known = ops["all_in_question"] + ops["some_not_in_question"]
    return {"n": n, "with_call": called, "with_call_share": _share(called, n),
            "call_started_share": _share(started, n),
            "position": {**where, "before_first_number_share_of_calls": _share(where["before_first_number"], called)},
            "operands": {**ops, "all_in_question_share_of_calls": _share(ops["all_in_question"], known)},
            "right_without_call": right_without, "right_without_call_share": _share(right_without, n),
            "right_with_call": right_with, "right_with_call_share": _share(right_with, n),
            "right_when_calling_share": _share(right_with, called),
            "generation_copy_errors": generation_copy_errors(rows)}


def diagnose_unit(rows: list[dict], questions: dict[str, dict[str, str]], sets: tuple[str, ...]) -> dict:
    """Per setting and set of one unit's generation rows."""
    by: dict = {}
    for r in rows:
        if r.get("task") in sets:
            by.setdefault(r["setting"], {}).setdefault(r["task"], []).append(r)
    return {setting: {task: diagnose(rs, questions.get(task)) for task, rs in sorted(per.items())}
            for setting, per in sorted(by.items())}


def load_questions(cfg, sets: tuple[str, ...]) -> tuple[dict[str, dict[str, str]], str | None]:
    """Item id -> question text per set, read from the files the evaluation reads (for operand provenance); on
    any failure, none and the reason (the provenance then counts those calls as ``question_unknown``)."""
    from toolformer.paths import shared_data
    from toolformer.tasksets.registry import load_task

    out: dict[str, dict[str, str]] = {}
    problems = []
    for task in sets:
        try:
            path = (cfg.eval.task_paths or {}).get(task)
            examples = load_task(task, shared_data(cfg.eval.data_dir), path=Path(path) if path else None)
            out[task] = {e.uid: e.prompt for e in examples}
        except Exception as e:  # the report never fails for want of the questions
            problems.append(f"{task}: {type(e).__name__}: {e}")
    return out, ("; ".join(problems) or None)


_QUESTION = re.compile(r"\?|\b(?:how many|how much|how long|how far|what is the total)\b", re.I)


def false_call_diagnosis(rows: list[dict], examples: int = 3) -> dict:
    """Per setting and false-call set (prompts with no arithmetic): how many generations wrote a Calculator call;
    of those, how many first turned the text into a question (``?``, "how many", ...: the word-problem form C*
    taught) and how many call with numbers the generation itself wrote before the call; a few examples."""
    out: dict = {}
    for r in rows:
        if not str(r.get("task", "")).startswith("false_call_"):
            continue
        v = out.setdefault(r["setting"], {}).setdefault(r["task"].removeprefix("false_call_"),
                                                         {"prompts": 0, "with_call": 0, "question_before_call": 0,
                                                          "answer_before_call": 0, "operands_written_before": 0,
                                                          "examples": []})
        v["prompts"] += 1
        gen = r.get("generation") or ""
        call = next((c for c in r.get("calls") or [] if c.get("tool") == "Calculator"), None)
        if call is None:  # counted as the evaluation counts a false call: the decoder parsed a Calculator call
            continue
        v["with_call"] += 1
        at = gen.find("[Calculator")
        before = gen[:at] if at >= 0 else gen
        v["question_before_call"] += bool(_QUESTION.search(before))
        v["answer_before_call"] += bool(re.search(r"\banswer\b", before, re.I))  # C*'s "Answer: [Calculator(...)"
        ops, written = numbers(call.get("input") or ""), set(numbers(before))
        v["operands_written_before"] += bool(ops) and all(x in written for x in ops)
        if len(v["examples"]) < examples:
            v["examples"].append(" ".join(gen.split())[:160])
    for per_set in out.values():
        for v in per_set.values():
            v["with_call_share"] = _share(v["with_call"], v["prompts"])
            v["question_before_call_share_of_calls"] = _share(v["question_before_call"], v["with_call"])
            v["answer_before_call_share_of_calls"] = _share(v["answer_before_call"], v["with_call"])
            v["operands_written_before_share_of_calls"] = _share(v["operands_written_before"], v["with_call"])
    return out
