"""Every corpus source accounted for (issue 28): per configured path, the records read, the texts kept, and
those dropped with why (unreadable, the held-out fold, contaminated per evaluation set), and which kept texts
fall in this run's slice (``corpus.offset`` / ``corpus.limit``) versus an earlier slice or past the limit.

    facts = account_sources(cfg.corpus)          # -> written as <run>/corpus_sources.json, shown in the card

It re-reads the sources the way ``corpus_documents`` does (same reader, same fold split, same check), one
source at a time, so its ``in_slice`` total equals the documents the run annotates; a source with none in the
slice is a warning (``warnings``), or an error with ``corpus.require_every_source``.
"""

from __future__ import annotations

from typing import Callable

from toolformer.corpus.records import SkipLog


class EmptySourceError(RuntimeError):
    pass


def account_sources(c, log: Callable[[str], None] | None = None) -> dict:
    from toolformer.corpus.decontaminate import check_for
    from toolformer.corpus.readers import read_documents

    tasks = list(c.decontaminate or [])
    ids = dict(getattr(c, "decontaminate_ids", None) or {})
    paths = dict(c.decontaminate_paths or {})
    checks = {t: check_for([t], c.decontaminate_n, c.decontaminate_data, {t: paths[t]} if t in paths else None,
                           {t: ids[t]} if t in ids else None) for t in tasks}
    sources, order = [], []
    seen: set[str] = set()
    for path in (c.paths or ["embedded"]):
        skips = SkipLog()
        docs = list(read_documents([] if path == "embedded" else [path], fmt=c.format, skips=skips,
                                   max_doc_chars=c.max_doc_chars, min_text_chars=c.min_text_chars,
                                   embedded_lang=c.embedded_lang, embedded_date=c.embedded_date,
                                   fields=dict(c.fields or {}), folds=getattr(c, "folds", None),
                                   holdout_fold=getattr(c, "holdout_fold", None)))
        per_set = {t: 0 for t in tasks}
        kept = contaminated = duplicates = 0
        for d in docs:
            hits = [t for t, check in checks.items() if check(d.text)]
            for t in hits:
                per_set[t] += 1
            if hits:
                contaminated += 1
                continue
            if d.doc_id in seen:  # the real read counts a later duplicate as a skip
                duplicates += 1
                continue
            seen.add(d.doc_id)
            kept += 1
            order.append(len(sources))
        dropped = dict(skips.as_dict()["by_reason"])
        if contaminated:
            dropped["contaminated"] = contaminated
        if duplicates:
            dropped["duplicate_doc_id"] = duplicates
        sources.append({"path": path, "records": len(docs) + skips.total, "kept": kept, "dropped": dropped,
                        "contaminated_per_set": per_set, "before_slice": 0, "in_slice": 0, "past_limit": 0})
    lo = c.offset or 0
    hi = None if c.limit is None else lo + c.limit
    for k, src in enumerate(order):
        where = "before_slice" if k < lo else ("past_limit" if hi is not None and k >= hi else "in_slice")
        sources[src][where] += 1
    warnings = [f"corpus source {s['path']} gives no text to this run ({s['records']} records, {s['kept']} kept, "
                f"{s['before_slice']} in earlier slices, {s['past_limit']} past corpus.limit; dropped: "
                f"{s['dropped'] or 'none'})" for s in sources if s["in_slice"] == 0]
    out = {"sources": sources, "decontaminated_against": tasks, "decontaminate_paths": paths,
           "decontaminate_ids": ids, "folds": getattr(c, "folds", None), "holdout_fold": getattr(c, "holdout_fold", None),
           "offset": lo, "limit": c.limit, "in_slice": sum(s["in_slice"] for s in sources), "warnings": warnings}
    for w in warnings:
        if log:
            log(f"WARNING: {w}")
    if warnings and getattr(c, "require_every_source", False):
        raise EmptySourceError("; ".join(warnings) + " (corpus.require_every_source is set)")
    return out


def card_lines(facts: dict | None) -> list[str]:
    """The dataset card's account of the sources: a table per configured source, and the warnings."""
    if not facts:
        return []
    tasks = facts.get("decontaminated_against") or []
    lines = ["## Sources accounted for", ""]
    if facts.get("folds") is not None:
        lines += [f"Fold split: `{facts['folds']}`, fold {facts['holdout_fold']} held out (never read for training; "
                  "the evaluation's held-out set).", ""]
    lines += [f"Decontaminated against: {', '.join(tasks) or 'nothing'} (texts sharing an n-gram with a set's inputs; "
              "a text may match several sets).", "",
              "| source | records | kept | this slice | earlier slices | past the limit | dropped (why) | "
              + " | ".join(f"contaminated: {t}" for t in tasks) + " |",
              "|---|---|---|---|---|---|---|" + "---|" * len(tasks)]
    for s in facts["sources"]:
        why = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items())) or "none"
        lines.append(f"| `{s['path']}` | {s['records']} | {s['kept']} | {s['in_slice']} | {s['before_slice']} | "
                     f"{s['past_limit']} | {why} | " + " | ".join(str(s["contaminated_per_set"].get(t, 0)) for t in tasks)
                     + " |")
    lines.append("")
    for w in facts.get("warnings") or []:
        lines += [f"**Warning:** {w}.", ""]
    return lines
