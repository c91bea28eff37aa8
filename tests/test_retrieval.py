"""Index build from every input format, BM25 / dense / hybrid retrieval on LAMA facts, and bad input."""

from __future__ import annotations

import json
import random

import pytest

from toolformer.evaluation.lama import google_re_facts, trex_facts
from toolformer.tools import ToolRequest, build_tool
from toolformer.tools.index import Retriever, rrf
from toolformer.tools.index_build import IndexConfig, build_index
from toolformer.tools.passages import read_passages, split_words


@pytest.fixture(scope="module")
def lama_index(tmp_path_factory, shared_data):
    """Gold passages of 60 LAMA facts among ~1,700 Wikipedia passages (distractors included)."""
    facts = google_re_facts(shared_data, per_relation=10) + trex_facts(shared_data, per_relation=2)[:30]
    facts = [f for f in facts if f.gold_passages]
    wanted = {p for f in facts for p in f.gold_passages}
    wp = shared_data / "wiki_passages"
    passages = [p for p in read_passages([str(wp / "lama_google_re_snippets.jsonl")]) if p["id"] in wanted]
    passages += [p for p in read_passages([str(wp / "lama_trex_evidence_sentences.jsonl.gz")]) if p["id"] in wanted]
    distract = list(read_passages([str(wp / "lama_google_re_snippets.jsonl")]))
    random.Random(0).shuffle(distract)
    passages += [p for p in distract if p["id"] not in wanted][:300]
    passages += list(read_passages([str(wp / "flashrag_wiki18_100w_sample.tsv")]))
    out = tmp_path_factory.mktemp("lama-index")
    meta = build_index(passages, out, IndexConfig(), sources=["test"])
    return Retriever(str(out)).setup(), facts, meta


def recall_at(retriever, facts, mode, k):
    hits = retriever.search([f.query for f in facts], k=k, mode=mode)
    import pyarrow.parquet as pq

    table_ids = pq.read_table(f"{retriever.index_dir}/passages.parquet", columns=["id"]).column("id").to_pylist()
    found = [any(table_ids[h.index] in f.gold_passages for h in hs) for f, hs in zip(facts, hits)]
    return sum(found) / len(found)


def test_index_metadata(lama_index):
    retriever, facts, meta = lama_index
    assert meta["passages"] == retriever.size > 1300
    assert meta["dense_kind"] == "flat" and meta["dim"] == 384 and len(facts) >= 50


@pytest.mark.parametrize("mode, floor", [("bm25", 0.7), ("dense", 0.6), ("hybrid", 0.8)])
def test_lama_facts_find_their_passage(lama_index, mode, floor):
    retriever, facts, _ = lama_index
    assert recall_at(retriever, facts, mode, 5) >= floor


def test_hybrid_beats_or_matches_each_retriever(lama_index):
    retriever, facts, _ = lama_index
    hybrid = recall_at(retriever, facts, "hybrid", 5)
    assert hybrid >= recall_at(retriever, facts, "bm25", 5) - 0.02
    assert hybrid >= recall_at(retriever, facts, "dense", 5) - 0.02


def test_rrf():
    assert [d for d, _ in rrf([[(1, 9.0), (2, 8.0)], [(2, 0.9), (3, 0.8)]])] == [2, 1, 3]


@pytest.mark.parametrize("query", ["", "   ", "!!!???", "\x00\x01\xff" * 50, "a" * 10_000, "the of and"])
def test_bad_queries_return_nothing_or_something_bounded(lama_index, query):
    retriever, _, _ = lama_index
    for mode in ("bm25", "dense", "hybrid"):
        hits = retriever.search([query], k=3, mode=mode)
        assert len(hits) == 1 and len(hits[0]) <= 3
        if not any(ch.isalnum() for ch in query):
            assert hits[0] == []


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished index"):
        Retriever(str(tmp_path / "nope")).setup()
    tool = build_tool("WikiSearch", index_dir=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="build_index"):
        tool.setup()


def test_wikisearch_tool_snippet_and_own_article(lama_index):
    retriever, facts, _ = lama_index
    tool = build_tool("WikiSearch", index_dir=retriever.index_dir, max_tokens=20)
    fact = next(f for f in facts if f.relation == "place_of_birth")
    out = tool([ToolRequest(fact.subject), ToolRequest(""), ToolRequest("\x00\x01")])
    assert out[0] and ":" in out[0] and len(out[0].split()) <= 25
    assert out[1:] == [None, None]
    title = out[0].split(":")[0]
    other = tool([ToolRequest(fact.subject, {"title": title})])[0]
    assert other is None or not other.startswith(title + ":")


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_every_passage_format(tmp_path):
    tsv = _write(tmp_path / "psgs.tsv", "id\ttext\ttitle\n1\tAlpha beta gamma.\t\"Alpha\"\n2\t\tEmpty\n3\tDelta epsilon.\tDelta\n")
    kilt = _write(tmp_path / "kilt.jsonl", json.dumps(
        {"wikipedia_id": "77", "wikipedia_title": "Zeta", "text": ["Zeta", "Zeta is a letter. " * 40, "More text."]}) + "\n{bad\n")
    jl = _write(tmp_path / "plain.jsonl", json.dumps({"id": "p1", "title": "Eta", "text": "Eta text."}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["q1"], "title": ["Theta"], "text": ["Theta text."]}), tmp_path / "p.parquet")
    from toolformer.corpus import SkipLog

    skips = SkipLog()
    got = list(read_passages([tsv, kilt, jl, str(tmp_path / "p.parquet")], skips))
    assert [p["title"] for p in got] == ["Alpha", "Delta", "Zeta", "Zeta", "Eta", "Theta"]
    assert got[2]["id"] == "77#0" and not got[2]["text"].startswith("Zeta Zeta")
    assert dict(skips.counts) == {"empty_text": 1, "malformed_json": 1}
    embedded = list(zip(range(5), read_passages([])))
    assert all(p["title"] and len(p["text"].split()) <= 125 for _, p in embedded)
    assert [len(p.split()) for p in split_words("w " * 220)] == [100, 120]  # a short tail joins the last passage
    assert [len(p.split()) for p in split_words("w " * 230)] == [100, 100, 30]
    with pytest.raises(ValueError, match="unknown passage format"):
        list(read_passages([_write(tmp_path / "x.csv", "a,b")]))


def test_resume_keeps_embedded_shards(tmp_path):
    passages = [{"id": str(i), "title": f"T{i}", "text": f"passage number {i} about topic {i % 7}"} for i in range(120)]
    out = tmp_path / "idx"
    cfg = IndexConfig(shard_size=50, bm25=False)
    build_index(passages, out, cfg, sources=["s"])
    shard0 = (out / "dense" / "emb-00000.npy").stat().st_mtime_ns
    (out / "dense" / "emb-00002.npy").unlink()  # as if interrupted during the last shard
    (out / "index.json").unlink()
    meta = build_index(iter(()), out, cfg, sources=["s"])  # passages are not read again
    assert meta["passages"] == 120
    assert (out / "dense" / "emb-00000.npy").stat().st_mtime_ns == shard0
    assert Retriever(str(out)).setup().search(["topic 3"], k=2, mode="dense")[0]


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_large_corpus_index_kinds(tmp_path, kind):
    import numpy as np

    from toolformer.tools.index_build import build_faiss

    rng = np.random.default_rng(0)
    dense = tmp_path / "dense"
    dense.mkdir()
    vecs = rng.normal(size=(3000, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    np.save(dense / "emb-00000.npy", vecs[:2000])
    np.save(dense / "emb-00001.npy", vecs[2000:])
    got = build_faiss(tmp_path, 3000, 384, IndexConfig(dense_kind=kind, ivf_nprobe=64, pq_m=48))
    assert got == kind
    import faiss

    index = faiss.read_index(str(dense / "index.faiss"))
    if hasattr(index, "nprobe"):
        index.nprobe = 64
    _, ids = index.search(vecs[[5, 2500]], 5)
    assert 5 in ids[0] and 2500 in ids[1]  # a vector finds itself
