"""``python -m jobs.bench qa_ceiling``: how often the QA tool answers a LAMA fact right, before any model learns
to call it (issue 42, item 2): the ceiling of LAMA with tools.

The facts are split BY FACT (``tasksets.lama.split_facts``, seed 0): 20 per T-REx relation (560) and 100 per
Google-RE relation (300) are held out, the experiment's evaluation facts. The QA settings (retrieval mode, passages
the reader sees) are chosen on a seeded sample of TRAINING facts asked as questions, never on the held-out ones;
the held-out facts are then asked with the chosen setting, in both forms a model could write: the bare cloze
("Hans Scharoun died in") and the relation's natural question ("Where did Hans Scharoun die?"). Right: the answer
contains the gold object or one of its aliases (case-insensitive), as the tools benchmark counts.

Resumable: each measured setting is stored in ``--work-dir`` (with the LAMA index), so a rerun measures only what
is missing. The checks (the command exits 1 when one is false): every held-out fact was asked in both forms, no
dev fact is a held-out one, the reader answered. The figures are measurements, not goals.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from benchmarks.harness import REPO, finish
from benchmarks.tools import lama_index
from toolformer.paths import shared_data

RESULTS = REPO / "benchmarks" / "results" / "qa_ceiling.json"
HELD_OUT = {"trex": 20, "google_re": 100}  # per relation: 560 T-REx facts over 28 relations, 300 Google-RE
MODES = ("bm25", "dense", "hybrid")
PASSAGES = ((1, 160), (3, 320))  # passages the reader sees, and the context tokens they may fill


def right(answer: str | None, answers: list[str]) -> bool:
    return answer is not None and any(a.strip() and a.lower() in answer.lower() for a in answers)


def _ask(index_dir: Path, facts, form: str, mode: str, passages: int, context: int, batch_size: int) -> dict:
    from toolformer.tools import ToolRequest, build_tool

    qa = build_tool("QA", index_dir=str(index_dir), mode=mode, passages=passages, context_tokens=context,
                    batch_size=batch_size)
    qa.setup()
    asks = [f.cloze if form == "cloze" else f.question for f in facts]
    t0 = time.perf_counter()
    answers = qa([ToolRequest(a) for a in asks])
    seconds = time.perf_counter() - t0
    ok = [right(a, f.answers) for f, a in zip(facts, answers)]
    by_rel: dict[str, list[int]] = {}
    for f, r in zip(facts, ok):
        by_rel.setdefault(f.relation, [0, 0])
        by_rel[f.relation][0] += r
        by_rel[f.relation][1] += 1
    return {"form": form, "mode": mode, "passages": passages, "context_tokens": context, "facts": len(facts),
            "right": sum(ok), "accuracy": round(sum(ok) / max(1, len(facts)), 3),
            "answered": sum(a is not None for a in answers), "seconds": round(seconds, 1),
            "questions_per_second": round(len(facts) / max(seconds, 1e-9), 2),
            "per_relation": {k: {"right": v[0], "facts": v[1]} for k, v in sorted(by_rel.items())},
            "examples": [{"id": f.uid, "asked": q, "answer": a, "gold": f.obj, "right": r}
                         for f, q, a, r in list(zip(facts, asks, answers, ok))[:5]]}


def _stored(work: Path, key: str, measure) -> dict:
    path = work / "qa_ceiling" / f"{key}.json"
    if path.is_file():
        return {**json.loads(path.read_text()), "reused_from_earlier_run": True}
    out = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def check(result: dict) -> dict[str, bool]:
    held = result.get("held_out") or {}
    checks = {}
    for name in HELD_OUT:
        for form in ("cloze", "question"):
            r = held.get(f"{name}_{form}") or {}
            checks[f"{name}_{form}_every_held_out_fact_asked"] = r.get("facts") == result["facts"][f"{name}_held_out"]
            checks[f"{name}_{form}_reader_answered"] = (r.get("answered") or 0) > 0
    checks["dev_facts_are_training_facts"] = result["facts"].get("dev_in_held_out") == 0
    return checks


def run(args) -> dict:
    import tempfile

    from toolformer.tasksets.lama import google_re_facts, split_facts, trex_facts

    data = shared_data()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="toolformer-bench-qa-"))
    result: dict = {"benchmark": "qa_ceiling", "work_dir": str(work), "reader": "SmolLM2-135M-Instruct (embedded)",
                    "right": "the answer contains the gold object or an alias (case-insensitive)"}
    index_dir = work / "lama"
    result["lama_index"] = lama_index(index_dir)
    splits = {"trex": split_facts(trex_facts(data), HELD_OUT["trex"], seed=0),
              "google_re": split_facts(google_re_facts(data), HELD_OUT["google_re"], seed=0)}
    held_ids = {f.uid for _, held in splits.values() for f in held}
    train = [f for tr, _ in splits.values() for f in tr]
    dev = random.Random(0).sample(train, min(args.dev_facts, len(train)))
    result["facts"] = {**{f"{k}_held_out": len(v[1]) for k, v in splits.items()},
                       **{f"{k}_training": len(v[0]) for k, v in splits.items()},
                       "dev": len(dev), "dev_in_held_out": sum(f.uid in held_ids for f in dev),
                       "split": f"by fact, per relation: {HELD_OUT} held out (seed 0)"}

    # The setting, chosen on training facts asked as questions: retrieval mode x passages.
    sweep = []
    for mode in MODES:
        for passages, context in PASSAGES:
            sweep.append(_stored(work, f"dev{len(dev)}-{mode}-{passages}", lambda m=mode, p=passages, c=context: _ask(
                index_dir, dev, "question", m, p, c, args.batch_size)))
    best = max(sweep, key=lambda r: (r["accuracy"], -r["passages"], -MODES.index(r["mode"])))
    result["dev_sweep"] = [{k: r[k] for k in ("mode", "passages", "context_tokens", "facts", "accuracy",
                                              "questions_per_second")} for r in sweep]
    result["chosen"] = {"mode": best["mode"], "passages": best["passages"], "context_tokens": best["context_tokens"],
                        "on": f"{len(dev)} training facts asked as questions (never a held-out one)"}

    # The ceiling: held-out facts, both forms, with the chosen setting.
    held_out = {}
    for name, (_, held) in splits.items():
        held = held[:args.limit] if args.limit else held  # a smoke run only: the checks then fail
        for form in ("cloze", "question"):
            key = f"{name}_{form}"
            stored = f"held-{key}-{best['mode']}-{best['passages']}" + (f"-limit{args.limit}" if args.limit else "")
            held_out[key] = _stored(work, stored, lambda h=held, f=form: _ask(
                index_dir, h, f, best["mode"], best["passages"], best["context_tokens"], args.batch_size))
    result["held_out"] = held_out
    result["summary"] = {k: v["accuracy"] for k, v in held_out.items()}
    return finish(result, check(result), args.out)


def add_arguments(t) -> None:
    t.add_argument("--dev-facts", type=int, default=60, help="training facts the QA setting is chosen on")
    t.add_argument("--batch-size", type=int, default=8, help="questions the reader answers in one batch")
    t.add_argument("--work-dir", default=None, help="the LAMA index and each measured setting (resumable)")
    t.add_argument("--limit", type=int, default=0, help="a smoke run: ask only this many held-out facts per set")
    t.add_argument("--out", default=str(RESULTS), help="where the JSON is written too ('' for nowhere)")
