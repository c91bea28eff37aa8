"""C* → token sequences for finetuning: tokenize, pack to a fixed length, mask labels.

Packing concatenates documents (each ended by EOS) and cuts the stream into ``seq_len`` pieces. Labels are
the input ids except: padding (-100), the first token of a document that follows another in the same
sequence (-100: it is not predictable from an unrelated document), and optionally the tokens of tool results
(``mask_results``; off by default, since the paper trains on everything).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

IGNORE = -100
_RESULT = re.compile(r"->\s?([^\]]*)\]")


@dataclass
class Example:
    text: str
    result_spans: list[tuple[int, int]]  # character spans of tool results, masked when asked


def result_spans(text: str, calls: Sequence[dict] | None) -> list[tuple[int, int]]:
    """Character spans of every call's result in an augmented text (between ``->`` and ``]``)."""
    spans = []
    for call in calls or []:
        start, end = call.get("char_start"), call.get("char_end")
        if start is None or end is None:
            continue
        m = _RESULT.search(text, start, end)
        if m and m.group(1):
            spans.append((m.start(1), m.end(1)))
    return spans


def tokenize(examples: Iterable[Example], tokenizer, mask_results: bool = False) -> list[tuple[list[int], list[bool]]]:
    """(ids, trainable) per example; ``trainable`` is False on result tokens when masking them."""
    out = []
    for ex in examples:
        enc = tokenizer(ex.text, add_special_tokens=False, return_offsets_mapping=mask_results)
        ids = list(enc["input_ids"])
        keep = [True] * len(ids)
        if mask_results and ex.result_spans:
            for j, (a, b) in enumerate(enc["offset_mapping"]):
                if any(a < e and b > s for s, e in ex.result_spans):
                    keep[j] = False
        out.append((ids, keep))
    return out


def pack(
    docs: Sequence[tuple[list[int], list[bool]]], seq_len: int, eos_id: int, pad_id: int
) -> list[dict[str, list[int]]]:
    """Greedy packing into ``seq_len`` sequences: ``input_ids``, ``labels``, ``attention_mask``."""
    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    ids: list[int] = []
    labels: list[int] = []
    for doc_ids, keep in docs:
        if not doc_ids:
            continue
        first = len(ids)
        ids.extend(doc_ids + [eos_id])
        labels.extend([t if k else IGNORE for t, k in zip(doc_ids, keep)] + [eos_id])
        if first % seq_len != 0:  # the document starts mid-sequence, after another one
            labels[first] = IGNORE
    out = []
    for start in range(0, len(ids), seq_len):
        chunk, lab = ids[start : start + seq_len], labels[start : start + seq_len]
        n = len(chunk)
        out.append({
            "input_ids": chunk + [pad_id] * (seq_len - n),
            "labels": lab + [IGNORE] * (seq_len - n),
            "attention_mask": [1] * n + [0] * (seq_len - n),
        })
    return out


def read_training_texts(run_dir: str, baseline: bool = False, dev_size: int = 1000, seed: int = 0):
    """(train examples, dev texts) from an annotation run that has been merged.

    Train: C* (``cstar.parquet``), or with ``baseline`` the same texts without their calls (the paper's
    "GPT-J + CC"). Dev: plain texts of the run that received no call (held out from training either way),
    up to ``dev_size``; when every text has a call, the dev set is carved from C*'s originals instead.
    """
    import random

    from jobs.merge import read_annotation_run
    from toolformer.shards import Store

    store = Store(run_dir)
    if not store.exists("cstar.parquet"):
        raise FileNotFoundError(f"no cstar.parquet in {store.uri}: run jobs.merge first")
    cstar = store.read_table("cstar.parquet").to_pylist()
    _, text_rows, _ = read_annotation_run(run_dir)
    originals = {r["text_id"]: r["text"] for r in text_rows}
    with_calls = {r["text_id"] for r in cstar}
    rng = random.Random(seed)
    plain = [t for tid, t in originals.items() if tid not in with_calls and t.strip()]
    rng.shuffle(plain)
    dev = plain[:dev_size]
    if not dev and len(cstar) > 1:
        held = rng.sample(range(len(cstar)), max(1, len(cstar) // 10))
        dev = [originals.get(cstar[i]["text_id"], "") for i in held]
        cstar = [r for i, r in enumerate(cstar) if i not in set(held)]
    if baseline:
        train = [Example(originals[r["text_id"]], []) for r in cstar if r["text_id"] in originals]
    else:
        train = [Example(r["text"], result_spans(r["text"], r["calls"])) for r in cstar]
    return train, [d for d in dev if d]
