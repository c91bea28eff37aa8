"""Where a sharded annotate run stands: shards done / pending / failed / quarantined, documents, calls kept
per tool, and an ETA from the throughput of the recent progress summaries.

    python -m jobs.status runs/ccnet            # or s3://bucket/runs/ccnet;  --json for the raw figures
    python -m jobs.status runs/ccnet --examples # the kept calls in context, per tool (report.md; any run)
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence


def run_status(output_dir: str) -> dict:
    from toolformer.annotate.blame import read_nodes
    from toolformer.report import sum_funnels
    from toolformer.run.shards import Manifest, RunState
    from toolformer.run.store import Store

    store = Store(output_dir)
    manifest = Manifest.load(store)
    state = RunState(store, "annotate")
    done, quarantined = state.done(), state.quarantined()
    stats = state.stats()
    f = sum_funnels(s["funnel"] for s in stats)
    docs_done = sum(s["docs"] for s in stats)
    pending_docs = sum(s.n_docs for s in manifest.shards if s.shard_id not in done | quarantined)
    names = store.names("progress", suffix=".json")
    last = store.read_json("progress", names[-1]) if names else None
    rate = last["docs_per_s"] if last and last.get("docs_per_s") else None  # over the latest run so far
    return {
        "output_dir": store.uri,
        "shards": state.counts(manifest),
        "quarantined": {q: store.read_json("quarantine", "annotate", f"{q}.json")["error"] for q in sorted(quarantined)},
        "docs": {"total": manifest.n_docs, "processed": docs_done, "pending": pending_docs,
                 "skipped_by_prepare": manifest.skips.get("total", 0)},
        "calls_kept": {tool: v.get("kept_at_tool_tau_f", 0) for tool, v in f.items()},
        "candidates": {tool: v.get("candidates", 0) for tool, v in f.items()},
        "failures_by_cause": _causes(state, state.failed()),
        "nodes": read_nodes(store),  # deaths per node, by cause and by who paid; excluded nodes
        "docs_per_s_recent": round(rate, 3) if rate else None,
        "eta_s": round(pending_docs / rate) if rate else None,
    }


def _causes(state, failed: set[str]) -> dict[str, int]:
    """Charges to shards by cause (the error's first word: ActorDied, Stalled, ShardIncomplete, ...); a stale
    driver's late charge is not one (``toolformer.run.epochs``)."""
    out: dict[str, int] = {}
    for sid in sorted(failed):
        try:
            attempts = state.failures(sid)
        except Exception:  # noqa: BLE001 - a record being rewritten: counted next time
            continue
        for a in attempts:
            cause = a.get("error", "").removeprefix("fatal: ").split(":", 1)[0].strip()[:40] or "error"
            out[cause] = out.get(cause, 0) + 1
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir")
    p.add_argument("--json", action="store_true")
    p.add_argument("--examples", action="store_true", help="print the kept calls in context (the run's report.md)")
    args = p.parse_args(argv)
    if args.examples:
        from toolformer.cstar.inspection import format_report, inspect_run
        from toolformer.run.store import Store

        store = Store(args.output_dir)
        print(store.read_bytes("report.md").decode() if store.exists("report.md")
              else format_report(inspect_run(args.output_dir)))
        return {}
    try:
        s = run_status(args.output_dir)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc))
    if args.json:
        print(json.dumps(s, indent=2))
        return s
    sh = s["shards"]
    print(f"{s['output_dir']}: {sh['done']}/{sh['total']} shards done, {sh['pending']} pending "
          f"({sh['failed_retryable']} failed, will retry), {sh['quarantined']} quarantined")
    d = s["docs"]
    print(f"documents: {d['processed']} processed, {d['pending']} pending, {d['skipped_by_prepare']} skipped by prepare")
    for tool, kept in s["calls_kept"].items():
        print(f"  {tool}: {kept} calls kept of {s['candidates'][tool]} candidates")
    if s["failures_by_cause"]:
        print("charges to shards by cause: " + ", ".join(f"{c} {n}" for c, n in sorted(s["failures_by_cause"].items())))
    for nid, n in sorted(s["nodes"].items(), key=lambda kv: -kv[1]["deaths"]):
        causes = ", ".join(f"{c} {k}" for c, k in sorted(n["by_cause"].items()))
        paid = ", ".join(f"{w} {k}" for w, k in sorted(n["charged_to"].items()))
        print(f"  node {n['ip']} ({nid[:8]}): {n['deaths']} actor deaths ({causes}; charged to: {paid})"
              + (f", EXCLUDED since {n['excluded_at']}" if n["excluded_at"] else ""))
    for q, err in s["quarantined"].items():
        print(f"  quarantined {q}: {err[:200]}")
    if s["eta_s"] is not None:
        print(f"ETA: {s['eta_s'] // 3600}h{s['eta_s'] % 3600 // 60:02d}m at {s['docs_per_s_recent']} docs/s (recent progress)")
    return s


if __name__ == "__main__":
    main()
