"""What C* will teach, shown without writing code: per tool, kept calls in context (largest and smallest gains and
a seeded random sample), with their three losses; the share of kept calls whose result appears in the next 20
words of the text (a call that only echoes what follows teaches copying), the share of distinct inputs and the
most frequent inputs. Written as ``report.md`` in the run folder and printed by ``jobs.status --examples``.

Memory is bounded: the run's committed parts are read one at a time, and per tool only the k examples of each
kind, a reservoir sample, a hash per distinct input and a pruned counter of inputs are kept.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolformer.calls import Call, linearize
from toolformer.cstar.augment import kept_candidates
from toolformer.run.parts import AnnotationRun
from toolformer.tools import tool_class

_WORD = re.compile(r"\S+")
NEXT_WORDS = 20
CONTEXT_CHARS = 140
_COUNTER_CAP, _COUNTER_KEEP = 50_000, 5_000  # inputs counted exactly until many distinct ones, then the top kept


def result_follows(text: str, char_start: int, result: str, words: int = NEXT_WORDS) -> bool:
    """Whether the result string appears in the next ``words`` words of the text after the call's position."""
    nxt = [m.group(0) for m in _WORD.finditer(text, char_start)][:words]
    return bool(result) and result.strip().lower() in " ".join(nxt).lower()


@dataclass
class _ToolStats:
    k: int
    rng: random.Random
    kept: int = 0
    follows: int = 0
    largest: list = field(default_factory=list)  # min-heap of (gain, seq, example)
    smallest: list = field(default_factory=list)  # min-heap of (-gain, seq, example)
    sample: list = field(default_factory=list)
    distinct: set = field(default_factory=set)
    inputs: Counter = field(default_factory=Counter)

    def add(self, ex: dict, seq: int) -> None:
        self.kept += 1
        self.follows += ex["result_follows"]
        self.distinct.add(hashlib.blake2b(ex["input"].encode(), digest_size=8).digest())
        self.inputs[ex["input"]] += 1
        if len(self.inputs) > _COUNTER_CAP:
            self.inputs = Counter(dict(self.inputs.most_common(_COUNTER_KEEP)))
        for heap, key in ((self.largest, ex["gain"]), (self.smallest, -ex["gain"])):
            item = (key, seq, ex)
            if len(heap) < self.k:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
        if len(self.sample) < self.k:  # reservoir sampling: every kept call equally likely
            self.sample.append(ex)
        elif (j := self.rng.randrange(self.kept)) < self.k:
            self.sample[j] = ex


def _example(text: str, c: dict) -> dict:
    call = linearize(Call(c["tool"], c["input"], c["result"]), quote_input=tool_class(c["tool"]).quote_input)
    at = c["char_start"]
    before = text[max(0, at - CONTEXT_CHARS): at]
    after = text[at: at + CONTEXT_CHARS]
    return {**{k: c[k] for k in ("text_id", "tool", "input", "result", "gain", "loss_none", "loss_call_only",
                                 "loss_call_result")},
            "context": ("…" if at > CONTEXT_CHARS else "") + before + call + " " + after.lstrip()
                       + ("…" if at + CONTEXT_CHARS < len(text) else ""),
            "result_follows": result_follows(text, at, c["result"])}


def inspect_run(run_uri: str, k: int = 10, seed: int = 0) -> dict:
    """Per tool: counts, shares and the examples (see the module docstring)."""
    run = AnnotationRun(run_uri)
    stats: dict[str, _ToolStats] = {}
    seq = 0
    for part in run.parts():
        table = pq.read_table(run.store.path(part.annotations), filesystem=run.store.fs,
                              columns=["text_id", "tool", "candidates"], filters=[("n_kept", ">", 0)])
        kept = kept_candidates(table, losses=True)
        if kept.num_rows == 0:
            continue
        ids = pc.unique(kept.column("text_id")).to_pylist()
        texts = pq.read_table(run.store.path(part.texts), filesystem=run.store.fs, columns=["text_id", "text"],
                              filters=[("text_id", "in", ids)])
        text_of = dict(zip(texts.column("text_id").to_pylist(), texts.column("text").to_pylist()))
        for c in kept.to_pylist():
            t = stats.setdefault(c["tool"], _ToolStats(k, random.Random(f"{seed}:{c['tool']}")))
            t.add(_example(text_of.get(c["text_id"], ""), c), seq)
            seq += 1
    out = {}
    for tool, t in sorted(stats.items()):
        out[tool] = {
            "kept": t.kept, "result_in_next_20_words_share": round(t.follows / t.kept, 4) if t.kept else None,
            "distinct_inputs_share": round(len(t.distinct) / t.kept, 4) if t.kept else None,
            "most_frequent_inputs": t.inputs.most_common(10),
            "largest_gains": [ex for _, _, ex in sorted(t.largest, key=lambda x: (-x[0], x[1]))],
            "smallest_gains": [ex for _, _, ex in sorted(t.smallest, key=lambda x: (-x[0], x[1]))],
            "random_sample": t.sample,
        }
    return out


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def format_report(report: dict, title: str = "Kept calls") -> str:
    lines = [f"# {title}", "",
             "Per tool: the kept calls with the largest and the smallest gains and a random sample, each in its text "
             "(the call as C* will hold it), with `L(ε)`, `L(e(c,ε))`, `L(e(c,r))` and the gain; then how often the "
             "result already appears in the next 20 words (an echo teaches copying, not using the tool), the share "
             "of distinct inputs and the most frequent inputs.", ""]
    if not report:
        lines.append("No call was kept in this run.")
    for tool, r in report.items():
        share = lambda v: "—" if v is None else f"{100 * v:.1f} %"  # noqa: E731
        lines += [f"## {tool}", "",
                  f"{r['kept']} kept calls; result in the next 20 words: {share(r['result_in_next_20_words_share'])}; "
                  f"distinct inputs: {share(r['distinct_inputs_share'])}.", "",
                  "Most frequent inputs: " + (", ".join(f"`{i}` ({n})" for i, n in r["most_frequent_inputs"]) or "—"), ""]
        for name, key in (("Largest gains", "largest_gains"), ("Smallest gains", "smallest_gains"),
                          ("Random sample", "random_sample")):
            lines += [f"### {name}", "", "| gain | L(ε) | L(e(c,ε)) | L(e(c,r)) | in context |", "|---|---|---|---|---|"]
            for ex in r[key]:
                ctx = ex["context"].replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {_fmt(ex['gain'])} | {_fmt(ex['loss_none'])} | {_fmt(ex['loss_call_only'])} | "
                             f"{_fmt(ex['loss_call_result'])} | {ctx} |")
            lines.append("")
    return "\n".join(lines)


def write_report(run_uri: str, k: int = 10, seed: int = 0) -> str:
    """``report.md`` in the run folder; returns its text."""
    text = format_report(inspect_run(run_uri, k, seed))
    AnnotationRun(run_uri).store.write_bytes(text.encode(), "report.md")
    return text


