"""Shards without Ray: prepare (deterministic, immutable manifest, skips counted, fsspec inputs), markers,
failures and quarantine."""

from __future__ import annotations

import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from toolformer.config import load_config
from toolformer.prepare.local import prepare
from toolformer.run.shards import Manifest, RunState
from toolformer.run.store import Store


def _records(n: int) -> list[str]:
    return [json.dumps({"url": f"https://example.com/2021/03/{i + 1:02d}/post", "digest": f"sha1:D{i}",
                        "date_download": "2021-03-05T00:00:00Z", "raw_content": f"Document number {i}. " * 5})
            for i in range(n)]


def _cfg(tmp_path, paths, out, **extra):
    overrides = [f"output_dir={out}", f"corpus.paths={json.dumps([str(p) for p in paths])}",
                 "shards.docs_per_shard=3", *[f"{k}={v}" for k, v in extra.items()]]
    return load_config(None, overrides)


def test_prepare_shards_deterministically_and_counts_skips(tmp_path):
    src = tmp_path / "in.jsonl"
    lines = _records(7)
    lines.insert(2, "{not json")
    lines.insert(5, json.dumps({"url": "https://x.org", "raw_content": ""}))
    src.write_text("\n".join(lines) + "\n")
    m1 = prepare(_cfg(tmp_path, [src], tmp_path / "a"), log=lambda _: None)
    m2 = prepare(_cfg(tmp_path, [src], tmp_path / "b"), log=lambda _: None)
    assert [s.n_docs for s in m1.shards] == [3, 3, 1] and m1.n_docs == 7
    assert [s.sha256 for s in m1.shards] == [s.sha256 for s in m2.shards]  # same inputs, same bytes
    assert m1.skips["total"] == 2 and set(m1.skips["by_reason"]) == {"malformed_json", "empty_text"}
    t = pq.read_table(tmp_path / "a" / m1.shards[1].path)
    assert t.column("shard_id").to_pylist() == ["shard-00001"] * 3
    assert t.column("doc_id").to_pylist() == ["sha1:D3", "sha1:D4", "sha1:D5"]
    assert m1.shards[0].inputs == [str(src)]
    assert (tmp_path / "a" / "config.yaml").is_file() and m1.config_hash
    # The manifest is immutable: another prepare into the same directory keeps it.
    again = prepare(_cfg(tmp_path, [src], tmp_path / "a", **{"shards.docs_per_shard": 2}), log=lambda _: None)
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in m1.shards]
    other = Manifest(shards=[], docs_per_shard=1, config_hash="x")
    with pytest.raises(FileExistsError):
        other.save(Store(tmp_path / "a"))


def test_prepare_reads_fsspec_uris(tmp_path):
    with fsspec.open("memory://toolformer-test/cc/part-0.jsonl", "w") as f:
        f.write("\n".join(_records(4)) + "\n")
    m = prepare(_cfg(tmp_path, ["memory://toolformer-test/cc/"], tmp_path / "run"), log=lambda _: None)
    assert m.n_docs == 4 and m.shards[0].inputs == ["memory:///toolformer-test/cc/part-0.jsonl"]


def test_markers_failures_and_quarantine(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(_records(9)) + "\n")
    m = prepare(_cfg(tmp_path, [src], tmp_path / "run"), log=lambda _: None)
    store = Store(tmp_path / "run")
    state = RunState(store, "annotate", max_failures=2)
    assert state.pending(m) == ["shard-00000", "shard-00001", "shard-00002"]
    table = pa.table({"x": [1, 2]})
    state.commit("shard-00000", {"annotations": table}, {"docs": 3})
    assert state.done() == {"shard-00000"}
    committed = state.output("shard-00000", "annotations")  # the attempt's own file, named by the marker
    assert committed.startswith("annotations/shard-00000.") and committed != "annotations/shard-00000.parquet"
    assert pq.read_table(store.path(committed)).num_rows == 2
    assert state.stats() == [{"docs": 3}]  # carried by the marker
    assert not state.record_failure("shard-00001", RuntimeError("flaky")).quarantined
    assert state.pending(m) == ["shard-00001", "shard-00002"]  # failed once: still pending, retried
    try:
        raise ValueError("broken shard")
    except ValueError as exc:
        assert state.record_failure("shard-00001", exc).quarantined
    q = json.loads((tmp_path / "run" / "quarantine" / "annotate" / "shard-00001.json").read_text())
    assert q["attempts"] == 2 and "ValueError: broken shard" in q["error"] and "Traceback" in q["traceback"]
    assert state.pending(m) == ["shard-00002"]
    assert state.committed_outputs(m, "annotations") == [store.path(committed)]
    # No temporary files are left behind by the atomic writes.
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_a_prepared_run_keeps_its_manifest_whatever_the_config_asks_now(tmp_path):
    store, said = Store(tmp_path / "run"), []
    assert Manifest.prepared(store, "abc", said.append) is None  # not prepared yet
    Manifest(shards=[], docs_per_shard=4, config_hash="abc").save(store)
    assert Manifest.prepared(store, "abc", said.append).docs_per_shard == 4 and said == []
    assert Manifest.prepared(store, "xyz", said.append).config_hash == "abc"
    assert said == [f"note: {store.uri} was prepared with config abc; keeping its shards"]
