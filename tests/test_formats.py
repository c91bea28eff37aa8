"""The corpora people have (Dolma, FineWeb / RedPajama, a datasets save_to_disk folder, any schema through a field
mapping) and the outputs they load (C* and the annotations through ``datasets.load_dataset``), on hand-made files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from toolformer.corpus import SkipLog, read_documents


def _read(paths, **kw):
    skips = SkipLog()
    docs = list(read_documents([str(p) for p in paths], skips=skips, **kw))
    return docs, skips


def test_dolma_jsonl(tmp_path):
    path = tmp_path / "dolma.jsonl"
    rows = [{"id": "d1", "text": "A Dolma document about boats.", "source": "c4", "added": "2023-08-01",
             "created": "2019-04-22T10:00:00Z", "metadata": {"url": "https://example.com/2019/04/22/boats"}},
            {"id": "d2", "text": "Another one.", "created": "2020-01-01", "metadata": json.dumps({"url": "https://x.org/a"})}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs, skips = _read([path])
    assert [(d.doc_id, d.url, d.date) for d in docs] == [
        ("d1", "https://example.com/2019/04/22/boats", "2019-04-22T10:00:00Z"), ("d2", "https://x.org/a", "2020-01-01")]
    assert json.loads(docs[0].meta)["source"] == "c4" and skips.total == 0


def test_fineweb_parquet(tmp_path):
    path = tmp_path / "fineweb.parquet"
    pq.write_table(pa.table({"text": ["Fine web text one.", "Fine web text two.", ""], "id": ["<urn:1>", "<urn:2>", "<urn:3>"],
                             "url": ["https://a.com/1", "https://b.com/2", "https://c.com/3"],
                             "date": ["2013-05-18T05:48:54Z", "2014-01-01T00:00:00Z", "2015-01-01T00:00:00Z"],
                             "language_score": [0.9, 0.8, 0.7]}), path)
    docs, skips = _read([path])
    assert [(d.doc_id, d.url, d.date[:10]) for d in docs] == [("<urn:1>", "https://a.com/1", "2013-05-18"),
                                                             ("<urn:2>", "https://b.com/2", "2014-01-01")]
    assert skips.as_dict()["by_reason"] == {"empty_text": 1}  # counted, not dropped silently


@pytest.mark.parametrize("as_dict", [False, True])
def test_datasets_save_to_disk_folder(tmp_path, as_dict):
    import datasets

    rows = [{"text": f"Document number {i}.", "id": f"h{i}", "url": f"https://h.org/{i}"} for i in range(5)]
    ds = datasets.Dataset.from_list(rows)
    if as_dict:
        ds = datasets.DatasetDict({"train": ds.select(range(3)), "validation": ds.select(range(3, 5))})
    ds.save_to_disk(str(tmp_path / "saved"))
    docs, skips = _read([tmp_path / "saved"])
    assert [d.doc_id for d in docs] == [f"h{i}" for i in range(5)] and skips.total == 0
    assert docs[0].source.startswith(str(tmp_path / "saved"))


def test_field_mapping_with_dotted_paths(tmp_path):
    path = tmp_path / "custom.jsonl"
    rows = [{"uid": 7, "body": "A text in a custom schema.", "meta": {"link": "https://c.com/2021/06/14/x"},
             "crawl_date": "2021-06-14"}, {"uid": 8, "other": "no body here"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fields = {"text": "body", "id": "uid", "url": "meta.link", "date": "crawl_date"}
    docs, skips = _read([path], fields=fields)
    assert [(d.doc_id, d.text, d.url, d.date) for d in docs] == [
        ("7", "A text in a custom schema.", "https://c.com/2021/06/14/x", "2021-06-14")]
    assert skips.as_dict()["by_reason"] == {"missing_text": 1}
    with pytest.raises(ValueError, match="unknown field 'body_text'"):
        _read([path], fields={"body_text": "body"})


def test_outputs_load_with_datasets_and_keep_nested_columns(tmp_path, monkeypatch):
    import datasets

    from benchmarks.synthetic import TOOLS, make_staged_run
    from toolformer.annotate.commit import commit_shard
    from toolformer.cstar.merge import cstar_files, run_merge
    from toolformer.run.shards import Manifest, RunState
    from toolformer.run.store import Store

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    run = tmp_path / "run"
    make_staged_run(run, n_texts=60, texts_per_shard=30, staging="_staging/t")
    for s in Manifest.load(Store(run)).shards:
        commit_shard(str(run), s, list(TOOLS), "_staging/t")
    run_merge(str(run), 25_000, parallel=False)
    cstar = datasets.load_dataset("parquet", data_files=cstar_files(str(run)), split="train")
    assert cstar.num_rows > 0 and isinstance(cstar[0]["calls"], list) and set(cstar[0]["calls"][0]) >= {"tool", "gain"}
    committed = RunState(Store(run), "annotate").committed_outputs(Manifest.load(Store(run)), "annotations")
    ann = datasets.load_dataset("parquet", data_files=committed, split="train")
    assert ann.num_rows == 60 * len(TOOLS) and "loss_call_result" in ann[0]["candidates"][0]
    card = (run / "cstar" / "README.md").read_text()
    assert card.startswith("---\n") and "license:" in card and "## Funnel" in card
