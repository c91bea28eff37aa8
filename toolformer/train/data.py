"""C* → token sequences for finetuning: tokenize, pack to a fixed length, mask labels; and the datasets.

Packing concatenates documents (each ended by EOS) and cuts the stream into ``seq_len`` pieces. Labels are
the input ids except: padding (-100), the first token of a document that follows another in the same
sequence (-100: it is not predictable from an unrelated document), and optionally the tokens of tool results
(``mask_results``; off by default, since the paper trains on everything).

The training set is a Ray Dataset read from the sharded C* and tokenized and packed batch by batch on Ray
workers (``TokenizePack``), so no process holds the corpus. The dev set (plain texts the run annotated without
keeping a call) is drawn from a few shards; the baseline's originals are fetched only for C*'s texts.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolformer.calls import RESULT_PATTERN
from toolformer.run.parts import AnnotationRun

IGNORE = -100


@dataclass
class TrainText:
    text: str
    result_spans: list[tuple[int, int]]  # character spans of tool results, masked when asked


def result_spans(text: str, calls: Sequence[dict] | None) -> list[tuple[int, int]]:
    """Character spans of every call's result in an augmented text (between ``->`` and ``]``)."""
    spans = []
    for call in calls or []:
        start, end = call.get("char_start"), call.get("char_end")
        if start is None or end is None:
            continue
        m = RESULT_PATTERN.search(text, start, end)
        if m and m.group(1):
            spans.append((m.start(1), m.end(1)))
    return spans


def tokenize(examples: Iterable[TrainText], tokenizer, mask_results: bool = False) -> list[tuple[list[int], list[bool]]]:
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


class TokenizePack:
    """Ray Data UDF: a batch of texts (C* rows, or ``text`` only) → packed sequences, one batch at a time."""

    def __init__(self, model_path: str, seq_len: int, mask_results: bool = False, exclude: Sequence[str] = ()):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos
        self.seq_len, self.mask_results, self.exclude = seq_len, mask_results, set(exclude)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        if self.exclude and "text_id" in batch.column_names:
            batch = batch.filter(pc.invert(pc.is_in(batch.column("text_id"), pa.array(list(self.exclude), pa.string()))))
        calls = batch.column("calls").to_pylist() if "calls" in batch.column_names else [None] * batch.num_rows
        texts = [TrainText(t, result_spans(t, c)) for t, c in zip(batch.column("text").to_pylist(), calls)]
        seqs = pack(tokenize(texts, self.tok, self.mask_results), self.seq_len, self.eos, self.pad)
        cols = {k: np.array([s[k] for s in seqs], dtype=np.int64).reshape(len(seqs), self.seq_len)
                for k in ("input_ids", "labels", "attention_mask")}
        cols["n_tokens"] = cols["attention_mask"].sum(1)
        return cols


def strip_calls(text: str, calls: Sequence[dict] | None) -> str:
    """A C* text with its inserted calls taken out again: the original text (``merge.insert_calls`` puts
    ``call + " "`` where the call follows a space or opens the text, the call alone otherwise)."""
    out = text
    for c in sorted(calls or [], key=lambda c: -int(c["char_start"])):
        start, end = int(c["char_start"]), int(c["char_end"])
        if (start == 0 or out[start - 1].isspace()) and out[end : end + 1] == " ":
            end += 1
        out = out[:start] + out[end:]
    return out


class WithoutCalls:
    """Ray Data UDF for the matched control: C* rows → the same texts with their calls taken out
    (``strip_calls``), rows of every run alike (bootstrap's accumulated C* included)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [strip_calls(t, c) for t, c in zip(batch.column("text").to_pylist(), batch.column("calls").to_pylist())]
        return pa.table({"text_id": batch.column("text_id"), "text": pa.array(texts, pa.string())})


def _dev_rank(text_id: str) -> str:
    return hashlib.sha256(f"dev:{text_id}".encode()).hexdigest()


def dev_split_ids(text_ids: Iterable[str], share: float, minimum: int, total: int | None = None) -> list[str]:
    """The texts held out as the dev set: ``max(minimum, share x total)`` of them (at most ``total - 1``), those
    whose id hashes lowest. The rank depends on the id alone, never on a seed or on which texts kept a call, so
    every seed, a model and its control hold out the same problems. ``text_ids`` is streamed (only the k best
    are held), so a corpus of any size fits; ``total`` is its size when known up front."""
    ids = text_ids if total is not None else list(dict.fromkeys(text_ids))
    n = total if total is not None else len(ids)
    if share <= 0 or n < 2:
        return []
    k = min(max(minimum, round(share * n)), n - 1)
    best = heapq.nsmallest(k, ((_dev_rank(t), t) for t in dict.fromkeys(ids)))
    return sorted(t for _, t in best)


def fixed_dev(run_uri: str, cstar_files: Sequence[str], share: float, minimum: int,
              baseline: bool) -> tuple[list[str], list[str]]:
    """(held ids, dev texts): the dev problems chosen among every text the run annotated (``dev_split_ids``),
    each model on its own version: the model with calls reads a held text as C* holds it (with its calls) or,
    when no call was kept there, as plain text; the control reads the plain text. Read one shard at a time."""
    run = AnnotationRun(run_uri)
    parts = run.parts()
    total = sum(pq.ParquetFile(run.store.path(p.texts), filesystem=run.store.fs).metadata.num_rows for p in parts)

    def all_ids():
        for part in parts:
            table = pq.read_table(run.store.path(part.texts), filesystem=run.store.fs, columns=["text_id"])
            yield from table.column("text_id").to_pylist()

    held = dev_split_ids(all_ids(), share, minimum, total)
    want = set(held)
    texts: dict[str, str] = {}
    for part in parts:
        table = pq.read_table(run.store.path(part.texts), filesystem=run.store.fs, columns=["text_id", "text"],
                              filters=[("text_id", "in", list(want))] if want else None)
        texts.update(zip(table.column("text_id").to_pylist(), table.column("text").to_pylist()))
    if not baseline:
        for f in cstar_files:
            table = pq.read_table(f, columns=["text_id", "text"], filters=[("text_id", "in", list(want))] if want else None)
            texts.update(zip(table.column("text_id").to_pylist(), table.column("text").to_pylist()))
    return held, [texts[t] for t in held if t in texts and texts[t].strip()]


class Originals:
    """Ray Data UDF for the baseline ("GPT-J + CC"): C* rows → the same texts without their calls, read from
    each row's annotation shard (only the texts C* holds)."""

    def __init__(self, run_uri: str):
        self.run = AnnotationRun(run_uri)

    def __call__(self, batch: pa.Table) -> pa.Table:
        store, out = self.run.store, []
        for sid in pc.unique(batch.column("shard_id")).to_pylist():
            ids = batch.filter(pc.equal(batch.column("shard_id"), sid)).column("text_id").to_pylist()
            out.append(pq.read_table(store.path(self.run.texts_path(sid)), filesystem=store.fs,
                                     columns=["text_id", "text"], filters=[("text_id", "in", ids)]))
        return pa.concat_tables(out) if out else pa.table({"text_id": pa.array([], pa.string()), "text": pa.array([], pa.string())})


def dev_texts(run_uri: str, dev_size: int, seed: int = 0) -> list[str]:
    """Up to ``dev_size`` plain texts (none of C*'s) from a seeded choice of the run's shards, read one shard at a
    time (its texts and its C* part's ids) until there are enough."""
    from toolformer.cstar.merge import CSTAR_DIR, part_name

    run = AnnotationRun(run_uri)
    parts = run.parts()
    rng = random.Random(seed)
    rng.shuffle(parts)
    out: list[str] = []
    for part in parts:
        table = pq.read_table(run.store.path(part.texts), filesystem=run.store.fs, columns=["text_id", "text"])
        cpart = run.store.path(CSTAR_DIR, part_name(part))
        taken = set(pq.read_table(cpart, filesystem=run.store.fs, columns=["text_id"]).column("text_id").to_pylist()
                    if run.store.exists(CSTAR_DIR, part_name(part)) else [])
        plain = [t for tid, t in zip(table.column("text_id").to_pylist(), table.column("text").to_pylist())
                 if tid not in taken and t.strip()]
        rng.shuffle(plain)
        out += plain[: dev_size - len(out)]
        if len(out) >= dev_size:
            break
    return out
