"""The multi-tool experiment's corpus (issue 42): one file of texts from several sources, each where one tool
should help (or none), annotated with every tool of the experiment and merged once.

    build_corpus({"math": 120, "facts": 150, "dated": 30, "plain": 30}, "runs/multitool/sources", data)

- ``math``: ASDiv problems of the training folds (fold ``holdout_fold`` is the evaluation's), in a seeded order
  stratified on grade and operation (``stratified_order``; never the file's order), written as the evaluation
  reads them: ``Question: <problem>\\nAnswer: <number>``.
- ``facts``: the evidence sentence of T-REx training facts (and Google-RE training snippets), split by fact
  (``split_facts``: the held-out facts are the evaluation's), one relation after another; a text that states any
  held-out fact is dropped (``leak_free``), whatever fact it was evidence for.
- ``dated``: C4 documents whose text speaks of dates: the year of the document's own date (URL or crawl date), a
  month or weekday, or a relative time ("today", "last week", "ago"): where "Today is ..." may help the next
  tokens (the annotation's loss filter decides where it does). ``plain``: C4 documents with no year, month or weekday and no arithmetic,
  where no tool should help. Both come from the perplexity half of the C4 sample past its first
  ``EVAL_RESERVED`` documents (the perplexity texts), never from the false-call half: no evaluated text is trained
  on. Each is cut to its first ``WEB_WORDS`` words at a sentence end (the finetune's budget on this machine).

Every record says its source (``source_dataset``); the order interleaves the sources by a seeded shuffle. Next
to ``corpus.jsonl``, ``sources.json`` holds the counts, what was dropped and why, and the math operation mix.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

SOURCES = ("math", "facts", "dated", "plain")
EVAL_RESERVED = 100  # perplexity texts the evaluation may read from the C4 perplexity half (eval.perplexity_texts)
WEB_WORDS = 90
HELD_OUT = {"trex": 20, "google_re": 100}  # per relation: the evaluation's facts (the id files are these)
GOOGLE_RE_SHARE = 0.2  # of the fact texts: Google-RE snippets (long), the rest T-REx sentences
_MONTHS = ("January February March April May June July August September October November December Monday Tuesday "
           "Wednesday Thursday Friday Saturday Sunday").split()
_YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
_RELATIVE = re.compile(r"\b(today|tonight|tomorrow|yesterday|this (?:week|month|year|weekend)|last (?:week|month|year)|"
                       r"next (?:week|month|year)|ago|upcoming|recently)\b", re.I)


def held_out_facts(data: Path, seed: int = 0) -> tuple[list, list, list, list]:
    """(T-REx training, T-REx held out, Google-RE training, Google-RE held out): the one split by fact that the
    corpus and the evaluation's id files share."""
    from toolformer.tasksets.lama import google_re_facts, split_facts, trex_facts

    trex_train, trex_held = split_facts(trex_facts(data), HELD_OUT["trex"], seed)
    gre_train, gre_held = split_facts(google_re_facts(data), HELD_OUT["google_re"], seed)
    return trex_train, trex_held, gre_train, gre_held


def _round_robin(groups: dict[str, list], n: int) -> list:
    """Up to ``n`` items taking one from each group in turn (groups in name order): every group represented."""
    out, queues = [], {k: list(v) for k, v in sorted(groups.items())}
    while len(out) < n and any(queues.values()):
        for k in sorted(queues):
            if queues[k] and len(out) < n:
                out.append(queues[k].pop(0))
    return out


def math_texts(data: Path, n: int, seed: int = 0, holdout_fold: int = 0) -> tuple[list[dict], dict]:
    from toolformer.tasksets.math import asdiv, fold_ids, stratified_order

    train_ids, held_ids = fold_ids(data / "asdiv" / "nfolds" / "asdiv-w", holdout_fold)
    problems = [e for e in asdiv(data) if e.uid in train_ids and e.uid not in held_ids]
    picked = stratified_order(problems, ("grade", "operation"), seed)[:n]
    rows = [{"id": f"asdiv-{e.uid}", "text": f"Question: {e.prompt}\nAnswer: {e.answers[0]}",
             "source_dataset": "asdiv", "operation": e.meta.get("operation"), "grade": e.meta.get("grade")}
            for e in picked]
    return rows, {"available": len(problems), "operations": dict(Counter(r["operation"] for r in rows).most_common()),
                  "grades": dict(sorted(Counter(r["grade"] for r in rows).items()))}


def fact_texts(data: Path, n: int, seed: int = 0) -> tuple[list[dict], dict]:
    from toolformer.tasksets.files import read_jsonl
    from toolformer.tasksets.lama import _rank, leak_free

    trex_train, trex_held, gre_train, gre_held = held_out_facts(data, seed)
    held = trex_held + gre_held
    wp = data / "wiki_passages"
    passages = {p["id"]: p["text"] for f in ("lama_trex_evidence_sentences.jsonl.gz", "lama_google_re_snippets.jsonl")
                for p in read_jsonl(wp / f)}

    def candidates(facts, source: str) -> dict[str, list]:
        by_rel: dict[str, list] = {}
        for f in sorted(facts, key=lambda f: _rank(seed, f.uid)):
            texts = [passages[p] for p in f.gold_passages if p in passages]
            if texts:
                by_rel.setdefault(f.relation, []).append((f"{source}-{f.uid}", texts[0], source, f.relation))
        return by_rel

    n_gre = round(n * GOOGLE_RE_SHARE)
    out, dropped, seen = [], 0, set()
    for facts, source, want in ((gre_train, "lama_google_re", n_gre), (trex_train, "lama_trex", n - n_gre)):
        # a few spare per relation: texts that state a held-out fact are dropped after picking
        picked = _round_robin(candidates(facts, source), 2 * want)
        kept, lost = leak_free([(tid, text) for tid, text, _, _ in picked], held)
        dropped += lost
        ok = {tid for tid, _ in kept}
        mine = [p for p in picked if p[0] in ok and p[1] not in seen][:want]
        seen.update(p[1] for p in mine)
        out += [{"id": tid, "text": text, "source_dataset": src, "relation": rel} for tid, text, src, rel in mine]
    return out, {"training_facts": {"trex": len(trex_train), "google_re": len(gre_train)},
                 "held_out_facts": {"trex": len(trex_held), "google_re": len(gre_held)},
                 "dropped_stating_a_held_out_fact": dropped,
                 "relations": len({r["relation"] for r in out})}


def _cut(text: str, words: int = WEB_WORDS) -> str:
    """The first ``words`` words, ended at the last sentence end within them (whole sentences read naturally)."""
    head = " ".join(text.split()[:words])
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", head)]
    return head[: ends[-1]] if ends and ends[-1] > len(head) // 2 else head


def _year_of(doc: dict) -> int | None:
    from toolformer.tools.calendar import date_from_url, parse_date

    date = date_from_url(doc.get("url")) or parse_date(doc.get("date"))
    return date.year if date else None


def web_texts(data: Path, n_dated: int, n_plain: int, seed: int = 0) -> tuple[list[dict], list[dict], dict]:
    from toolformer.evaluation.language import _halves
    from toolformer.tools.heuristics import calculator_rule

    pool = _halves(data)[1][EVAL_RESERVED:]
    order = list(range(len(pool)))
    random.Random(f"{seed}:web").shuffle(order)
    dated, plain = [], []
    for i in order:
        d = pool[i]
        text = _cut(d["text"])
        if len(text.split()) < 30:
            continue
        year = _year_of(d)
        row = {"id": f"c4-{EVAL_RESERVED + i}", "text": text, "url": d.get("url"), "date": d.get("date")}
        speaks_of_dates = ((year and re.search(rf"\b{year}\b", text)) or _RELATIVE.search(text)
                           or any(re.search(rf"\b{m}\b", text) for m in _MONTHS))
        if year and speaks_of_dates and len(dated) < n_dated:
            dated.append({**row, "source_dataset": "c4_dated"})
        elif (not speaks_of_dates and not _YEAR.search(text)
              and calculator_rule(text, row["id"], random_keep=0.0) is None and len(plain) < n_plain):
            plain.append({**row, "source_dataset": "c4_plain"})
    return dated, plain, {"pool": len(pool), "reserved_for_evaluation": EVAL_RESERVED}


def build_corpus(counts: dict[str, int], out_dir: str | Path, data: Path, seed: int = 0,
                 holdout_fold: int = 0) -> dict:
    """Write ``<out_dir>/corpus.jsonl`` and ``sources.json`` (done once: a finished build is reused as it is)."""
    out = Path(out_dir)
    info_path = out / "sources.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    unknown = set(counts) - set(SOURCES)
    if unknown:
        raise ValueError(f"bootstrap.sources: unknown source(s) {sorted(unknown)}; known: {', '.join(SOURCES)}")
    data = Path(data)
    rows: list[dict] = []
    info: dict = {"requested": dict(counts), "seed": seed}
    if counts.get("math"):
        got, info["math"] = math_texts(data, counts["math"], seed, holdout_fold)
        rows += got
    if counts.get("facts"):
        got, info["facts"] = fact_texts(data, counts["facts"], seed)
        rows += got
    if counts.get("dated") or counts.get("plain"):
        dated, plain, info["web"] = web_texts(data, counts.get("dated", 0), counts.get("plain", 0), seed)
        rows += dated + plain
    info["texts"] = dict(Counter(r["source_dataset"] for r in rows))
    short = {s: (n, got) for s, n in counts.items()
             if (got := sum(1 for r in rows if _source_of(r) == s)) < n}
    if short:
        raise ValueError(f"the sources could not give the texts asked for (asked, got): {short}")
    random.Random(f"{seed}:mix").shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".corpus.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out / "corpus.jsonl")
    tmp = out / ".sources.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(info_path)
    return info


def _source_of(row: dict) -> str:
    s = row["source_dataset"]
    return {"asdiv": "math", "lama_trex": "facts", "lama_google_re": "facts", "c4_dated": "dated",
            "c4_plain": "plain"}[s]
