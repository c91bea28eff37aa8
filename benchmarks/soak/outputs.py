"""Reading a soak's run directories: markers, rows, the uninterrupted run as a reference, row-for-row comparison,
the document accounting (nothing lost) and quarantine records."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

def markers(run: Path) -> set[str]:
    return {p.stem for p in (run / "markers" / "annotate").glob("*.json")}


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _state(run: Path):
    from toolformer.run.shards import RunState
    from toolformer.run.store import Store

    return RunState(Store(run), "annotate")


def ledger_events(run: Path, shard: str) -> list[dict]:
    """The deaths of this shard's actors on the run's node ledger (``failures/_nodes/``; blame.py)."""
    out = []
    for path in (run / "failures" / "_nodes").glob("*.json"):
        try:
            out += [e for e in json.loads(path.read_text())["events"] if e.get("shard") == shard]
        except (OSError, ValueError, KeyError):  # a record being rewritten: read at the next look
            continue
    return out


def rows(run: Path, shard: str, what: str = "annotations") -> list[dict]:
    """A committed shard's rows, from the files its marker names (attempt-unique names)."""
    return pq.read_table(run / _state(run).output(shard, what)).to_pylist()


TOOLS = ("Calculator", "Calendar")  # the order a committed shard's rows follow (text, then tool)


class Reference:
    """The uninterrupted run's rows, shard by shard: a Ray run's committed shards (``ray``), or the single-process
    run's files (``local``: ``annotations.parquet``, ``texts.parquet``) split by the manifest's texts."""

    def __init__(self, run: Path, prepared: Path, kind: str):
        self.run, self.kind = run, kind
        if kind == "local":
            self._ann = {(r["text_id"], r["tool"]): r for r in pq.read_table(run / "annotations.parquet").to_pylist()}
            self._texts = {r["text_id"]: r for r in pq.read_table(run / "texts.parquet").to_pylist()}
            self._ids = {s["shard_id"]: pq.read_table(prepared / s["path"], columns=["text_id"]).column("text_id")
                         .to_pylist() for s in manifest(prepared)["shards"]}

    def committed(self) -> set[str]:
        return markers(self.run) if self.kind == "ray" else set(self._ids)

    def annotations(self, sid: str) -> list[dict]:
        if self.kind == "ray":
            return rows(self.run, sid)
        return [self._ann[(t, tool)] for t in self._ids[sid] for tool in TOOLS if (t, tool) in self._ann]

    def texts(self, sid: str) -> list[dict]:
        if self.kind == "ray":
            return rows(self.run, sid, "texts")
        return [self._texts[t] for t in self._ids[sid] if t in self._texts]


def compare(ref: Reference, chaos: Path, shards: list[str], ended: dict[str, str]) -> dict:
    """Row for row over the shards committed in both: annotations (discrete fields exactly, losses within 1e-3
    nats) and texts (exactly). The Calculator rows of the texts in ``ended`` (fault → text id: calls that hung or
    held the GIL, ended by their timeout) are compared apart: the same calls at the same positions, every one of
    them ended."""
    from benchmarks.ray import same_annotations

    apart = {t: f for f, t in ended.items() if t}
    a, b, odd = [], [], {}
    texts_equal, first = True, ""
    for sid in shards:
        mine, theirs = rows(chaos, sid), ref.annotations(sid)
        for x, y in zip(mine, theirs):
            if x["text_id"] in apart and x["tool"] == "Calculator":
                odd[apart[x["text_id"]]] = (x, y)
                continue
            a.append(x), b.append(y)
        if len(mine) != len(theirs):
            a.append({"text_id": f"{sid}: {len(mine)} rows against {len(theirs)}"})
        if rows(chaos, sid, "texts") != ref.texts(sid):
            texts_equal, first = False, first or f"{sid}: texts differ"
    same, diff = same_annotations(a, b) if a else (False, "nothing to compare")
    out = {"reference": ref.kind, "shards_compared": len(shards), "annotation_rows": len(a) + len(odd),
           "annotations_equal": same, "texts_equal": texts_equal, "first_difference": diff or first, "ended_rows": {}}
    for fault, (x, y) in odd.items():
        out["ended_rows"][fault] = {
            "text_id": x["text_id"], "calls_in_uninterrupted_run": len(y["candidates"]),
            "calls_ended": sum("timeout" in (c["error"] or "") for c in x["candidates"]),
            "errors": sorted({(c["error"] or "")[:80] for c in x["candidates"]}),
            # same calls sampled at the same positions; only their execution differs
            "same_calls": [(c["position"], c["input"]) for c in x["candidates"]] ==
                          [(c["position"], c["input"]) for c in y["candidates"]],
        }
    return out


def accounting(run: Path, inputs: dict[str, int]) -> dict:
    """Documents in = committed + skipped (at prepare, in shards) + in quarantined shards; the rest is lost."""
    m = manifest(run)
    done = markers(run)
    quarantined = {p.stem for p in (run / "quarantine" / "annotate").glob("*.json")}
    committed = skipped_in_shards = in_quarantine = 0
    unaccounted = []
    for s in m["shards"]:
        sid = s["shard_id"]
        if sid in done:
            docs = {r["doc_id"] for r in rows(run, sid, "texts")}
            (stats,) = _state(run).stats([sid])
            skipped = stats.get("skipped") or stats.get("skips") or 0
            skipped = sum(skipped.values()) if isinstance(skipped, dict) else int(skipped)
            committed += len(docs)
            skipped_in_shards += skipped
            if len(docs) + skipped != s["n_docs"]:
                unaccounted.append(sid)
        elif sid in quarantined:
            in_quarantine += s["n_docs"]
        else:
            unaccounted.append(sid)
    docs_in = sum(inputs.values())
    at_prepare = int((m.get("skips") or {}).get("total", 0))
    return {"documents_in": docs_in, "committed": committed, "skipped_at_prepare": at_prepare,
            "skipped_at_prepare_by_reason": (m.get("skips") or {}).get("by_reason", {}),
            "skipped_in_shards": skipped_in_shards, "in_quarantined_shards": in_quarantine,
            "lost": docs_in - committed - at_prepare - skipped_in_shards - in_quarantine,
            "shards_unaccounted": unaccounted}


def quarantine(run: Path) -> list[dict]:
    out = []
    for p in sorted((run / "quarantine" / "annotate").glob("*.json")):
        q = json.loads(p.read_text())
        out.append({"shard": p.stem, "attempts": q.get("attempts"), "cause": (q.get("error") or "")[:400]})
    return out


def funnel_timeouts(stats: dict) -> dict:
    return {tool: {k: v for k, v in f.items() if "timeout" in k} for tool, f in (stats.get("funnel") or {}).items()}




def marker_epochs(run: Path) -> dict[str, dict]:
    """Shard → (the lease epoch that committed it, when), from the markers."""
    out = {}
    for p in (run / "markers" / "annotate").glob("*.json"):
        m = json.loads(p.read_text())
        out[p.stem] = {"epoch": m.get("lease_epoch"), "committed": m.get("committed")}
    return out


def failures(run: Path, sid: str) -> list[dict]:
    path = run / "failures" / "annotate" / f"{sid}.json"
    return json.loads(path.read_text())["attempts"] if path.exists() else []
