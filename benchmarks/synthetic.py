"""Synthetic annotation runs for the scale benchmark: the project's real schemas, manifest, shard files and staged
batches, with synthetic text and candidates (random words, random calls and losses). Nothing here is a
measurement of the method: it exercises the bookkeeping (commit, merge, status) at sizes a 2-core machine cannot
annotate. Generated one shard at a time, so its memory is a shard's.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from toolformer.arrow import list_offsets
from toolformer.schemas import CANDIDATE, SHARD, STAGED
from toolformer.run.shards import Manifest, ShardInfo, sha256_bytes, shard_name
from toolformer.run.store import Store

TOOLS = ("Calculator", "Calendar")
TEXTS_PER_DOC = 2
CANDIDATES_PER_TEXT = 11  # over all tools, as in the runs the issue measured
KEPT_SHARE = 0.05
STAGED_TEXTS_PER_FILE = 16  # one scored batch of annotate.batch_size texts, as the job stages them


def _words(rng: np.random.Generator, n: int) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return np.array(["".join(rng.choice(letters, size=rng.integers(2, 9))) for _ in range(n)], dtype=object)


def _shard_texts(rng, vocab, sid: str, first_doc: int, n_texts: int) -> pa.Table:
    n_docs = -(-n_texts // TEXTS_PER_DOC)
    doc_of = np.repeat(np.arange(first_doc, first_doc + n_docs), TEXTS_PER_DOC)[:n_texts]
    chunk = np.tile(np.arange(TEXTS_PER_DOC), n_docs)[:n_texts]
    idx = rng.integers(0, len(vocab), size=(n_texts, 95))
    texts = [" ".join(vocab[row]) + "." for row in idx]
    doc_ids = [f"synthetic-{d:09d}" for d in doc_of]
    return pa.table({
        "shard_id": [sid] * n_texts, "text_id": [f"{d}#{c}" for d, c in zip(doc_ids, chunk)], "doc_id": doc_ids,
        "chunk": pa.array(chunk, pa.int32()), "url": [f"https://example.com/{d}" for d in doc_ids],
        "date": ["2019-02-01T00:00:00Z"] * n_texts, "title": [None] * n_texts, "source": ["synthetic"] * n_texts,
        "text": texts, "meta": ["{}"] * n_texts,
    }, schema=SHARD)


def _annotations(rng, texts: pa.Table, tools=TOOLS) -> pa.Table:
    n, t = texts.num_rows, len(tools)
    m = n * t
    per_row = rng.poisson(CANDIDATES_PER_TEXT / t, size=m).astype(np.int32)
    total = int(per_row.sum())
    text_len = np.repeat(np.array([len(x) for x in texts.column("text").to_pylist()]), t)
    n_tokens = np.repeat(rng.integers(120, 200, size=n), t).astype(np.int32)
    parent = np.repeat(np.arange(m), per_row)
    a, b = rng.integers(1, 999, size=total), rng.integers(1, 999, size=total)
    inputs = np.char.add(np.char.add(a.astype(str), " + "), b.astype(str))
    loss_none = rng.uniform(0.5, 6.0, size=total)
    gain = rng.normal(-0.5, 0.8, size=total)
    kept_mask = rng.random(total) < KEPT_SHARE
    gain[kept_mask] = rng.uniform(1.0, 4.0, size=int(kept_mask.sum()))
    kept = gain >= 1.0
    fields = {
        "position": pa.array((rng.random(total) * (n_tokens[parent] - 5)).astype(np.int32)),
        "char_start": pa.array((rng.random(total) * text_len[parent]).astype(np.int32)),
        "p_start": pa.array(rng.random(total) * 0.1),
        "call": pa.array(np.char.add(np.char.add("[Calculator(", inputs), ")]").tolist()),
        "input": pa.array(inputs.tolist()),
        "result": pa.array((a + b).astype(str).tolist()),
        "error": pa.nulls(total, pa.string()),
        "loss_none": pa.array(loss_none), "loss_call_only": pa.array(loss_none + rng.uniform(0, 1, size=total)),
        "loss_call_result": pa.array(loss_none - gain), "gain": pa.array(gain), "kept": pa.array(kept),
        "position_sets": pa.nulls(total, pa.list_(pa.string())),  # annotate.position_sets off
    }
    flat = pa.StructArray.from_arrays([fields[f.name] for f in CANDIDATE], fields=list(CANDIDATE))
    offsets = pa.array(np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32))
    cands = pa.ListArray.from_arrays(offsets, flat)
    n_kept = np.bincount(parent[kept], minlength=m).astype(np.int32)
    rep = pa.array(np.repeat(np.arange(n), t))
    zero_pos = pa.ListArray.from_arrays(list_offsets(cands), pa.array(np.zeros(total, dtype=np.int32)))
    return pa.table({
        "shard_id": texts.column("shard_id").take(rep), "text_id": texts.column("text_id").take(rep),
        "doc_id": texts.column("doc_id").take(rep), "tool": np.tile(np.array(tools, dtype=object), n).tolist(),
        "status": ["annotated"] * m, "heuristic": ["synthetic"] * m, "n_tokens": pa.array(n_tokens),
        "positions": zero_pos, "n_positions": pa.array(per_row),
        "position_probs": pa.ListArray.from_arrays(list_offsets(cands), pa.array(np.full(total, 0.01))), "n_pruned": pa.array(np.zeros(m, dtype=np.int32)),
        "n_samples": pa.array(per_row * 2), "n_sampled_tokens": pa.array(per_row * 24),
        "n_closed": pa.array(per_row * 2), "n_parsed": pa.array(per_row), "n_candidates": pa.array(per_row),
        "n_executed": pa.array(per_row), "n_kept": pa.array(n_kept), "candidates": cands,
        "tool_ms": pa.array(rng.uniform(0.05, 3.0, size=m) * per_row), "lm_ms": pa.array(rng.uniform(50, 500, size=m)),
    }, schema=STAGED)


def make_staged_run(root: Path, n_texts: int, texts_per_shard: int = 1000, seed: int = 0,
                    staging: str = "_staging/bench") -> Manifest:
    """A prepared run whose every shard has all its scored batches staged, as just before its commit."""
    store = Store(root)
    rng = np.random.default_rng(seed)
    vocab = _words(rng, 5000)
    shards, first_doc = [], 0
    for k, start in enumerate(range(0, n_texts, texts_per_shard)):
        sid = shard_name(k)
        texts = _shard_texts(rng, vocab, sid, first_doc, min(texts_per_shard, n_texts - start))
        first_doc += -(-texts.num_rows // TEXTS_PER_DOC)
        buf = io.BytesIO()
        pq.write_table(texts, buf)
        data = buf.getvalue()
        store.write_bytes(data, "shards", f"{sid}.parquet")
        shards.append(ShardInfo(sid, f"shards/{sid}.parquet", ["synthetic"], len(set(texts.column("doc_id").to_pylist())),
                                sha256_bytes(data), texts.num_rows))
        rows = _annotations(rng, texts)
        order = rng.permutation(texts.num_rows)  # batches finish in any order
        step = STAGED_TEXTS_PER_FILE
        for b, i in enumerate(range(0, texts.num_rows, step)):
            mine = np.sort(np.concatenate([order[i : i + step] * len(TOOLS) + j for j in range(len(TOOLS))]))
            store.write_table(rows.take(pa.array(mine)), staging, sid, f"batch-{b:05d}.parquet")
    manifest = Manifest(shards=shards, docs_per_shard=texts_per_shard // TEXTS_PER_DOC, config_hash="synthetic",
                        inputs=["synthetic"])
    manifest.save(store)
    return manifest



# ---- cc_net input files for the prepare point ------------------------------------------------------------

def _ccnet_text(rng: np.random.Generator, vocab: np.ndarray, words: int) -> str:
    """Random words in sentences and lines, so that chunking finds line and sentence breaks as in web text."""
    idx = rng.integers(0, len(vocab), size=words)
    out, line = [], []
    for j, w in enumerate(vocab[idx]):
        line.append(w)
        if j % 15 == 14:
            out.append(" ".join(line).capitalize() + ".")
            line = []
    if line:
        out.append(" ".join(line).capitalize() + ".")
    return "\n".join(" ".join(out[i : i + 3]) for i in range(0, len(out), 3))


def ccnet_record(rng: np.random.Generator, vocab: np.ndarray, i: int) -> dict:
    """One cc_net output record (the fields cc_net writes, in its order) with a synthetic text."""
    from urllib.parse import urlparse

    from toolformer.corpus.records import ccnet_digest

    text = _ccnet_text(rng, vocab, int(rng.integers(120, 600)))
    url = f"https://site{i % 977}.example.com/{2019 + i % 5}/{1 + i % 12:02d}/page-{i}.html"
    return {"url": url, "date_download": f"2019-02-{1 + i % 28:02d}T{i % 24:02d}:00:00Z", "digest": ccnet_digest(text),
            "length": len(text), "nlines": text.count("\n") + 1, "source_domain": urlparse(url).netloc,
            "title": f"Page {i}", "raw_content": text, "original_nlines": text.count("\n") + 9,
            "original_length": len(text) + 400, "language": "en", "language_score": 0.95,
            "perplexity": round(float(rng.uniform(100, 400)), 1), "bucket": "head", "cc_segment": "synthetic"}


def write_ccnet_files(folder: Path, n_docs: int, docs_per_file: int = 500, seed: int = 0,
                      dup_share: float = 0.01, bad_share: float = 0.002) -> list[Path]:
    """cc_net ``.json.gz`` files holding ``n_docs`` lines in all: records with synthetic text, ``dup_share`` of
    them repeating an earlier record (same digest, as a page crawled twice) and ``bad_share`` malformed lines,
    so that prepare's dedup and skip paths run as they do on a real crawl. One file in memory at a time."""
    import gzip
    import json

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = _words(rng, 5000)
    files, earlier = [], []
    for f, start in enumerate(range(0, n_docs, docs_per_file)):
        lines = []
        for i in range(start, min(start + docs_per_file, n_docs)):
            roll = rng.random()
            if roll < bad_share:
                lines.append('{"url": "https://broken.example.com/", "raw_content": "cut off')
            elif roll < bad_share + dup_share and earlier:
                lines.append(earlier[int(rng.integers(0, len(earlier)))])
            else:
                lines.append(json.dumps(ccnet_record(rng, vocab, i)))
                if len(earlier) < 1000:  # enough to draw repeats from, bounded
                    earlier.append(lines[-1])
        path = folder / f"en_head_{f:04d}.json.gz"
        path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=1))
        files.append(path)
    return files
