"""Prepare as a Ray job equals the one-loop prepare (same shard ids, bytes, checksums, skips, inputs, counts) on
corpora built to hit its edges, and a stopped Ray prepare resumes doing only the missing inputs. One private local
Ray for the module."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from toolformer.config import load_config
from toolformer.prepare.local import prepare_local
from toolformer.prepare.distributed import STOP_AFTER_ENV, WORK, prepare_ray

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def private_ray():
    import ray

    # address="local": always a new Ray of our own, even where another test's `ray start` head is running on
    # this machine (a bare ray.init() would join that one).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_", "TOOLFORMER_"))}
    env.update(PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": env}, log_to_driver=False)
    yield
    ray.shutdown()


def _doc(i: int, digest: str | None = None, words: int = 12) -> dict:
    return {"url": f"https://example.com/{i}", "date_download": "2021-03-05T00:00:00Z",
            "digest": digest or f"sha1:DOC{i}", "raw_content": f"Document {i} says hello. " * words + "\nThe end."}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    """Five inputs in four formats: malformed lines, bad encoding, empty texts, a truncated gzip, a file of
    nothing but bad lines, duplicate ids within and across files, documents long enough to chunk."""
    d = tmp_path_factory.mktemp("corpus")
    a = [json.dumps(_doc(i)).encode() for i in range(9)]
    a[2:2] = [b"{not json", json.dumps({"url": "x", "raw_content": "   "}).encode(), b"[1, 2]", b"\xff\xfe bad"]
    (d / "a.jsonl").write_bytes(b"\n".join(a) + b"\n")
    b = [json.dumps(_doc(100 + i)) for i in range(8)]
    b[3] = json.dumps(_doc(103, digest="sha1:DOC4"))  # a duplicate of a.jsonl's
    b[4] = json.dumps(_doc(104, digest="sha1:DOC101"))  # a duplicate inside the file
    raw = gzip.compress(("\n".join(b) + "\n").encode())
    (d / "b.json.gz").write_bytes(raw[: len(raw) - 30])  # truncated: the tail is lost, counted
    (d / "c.jsonl").write_text("{bad\n\n[oops\n")  # no record at all: only reader skips
    rows = [{"id": f"p{i}", "text": f"Parquet row {i} is here. " * 40, "url": None} for i in range(5)]
    rows[2]["id"] = "sha1:DOC0"  # a duplicate of the first document read
    pq.write_table(pa.Table.from_pylist(rows), d / "d.parquet")
    e = [json.dumps(_doc(200 + i, words=3 + 9 * i)) for i in range(6)] + ["not json at the end"]
    e[2:2] = ["{more than five bad lines in all", "{and six"]
    (d / "e.jsonl").write_text("\n".join(e) + "\n")
    return [str(d / n) for n in ("a.jsonl", "b.json.gz", "c.jsonl", "d.parquet", "e.jsonl")]


def _cfg(out: Path, paths: list[str], **extra):
    overrides = [f"output_dir={out}", f"corpus.paths={json.dumps(paths)}", "shards.docs_per_shard=4",
                 "corpus.max_text_tokens=32", *[f"{k}={json.dumps(v) if v is None else v}" for k, v in extra.items()]]
    return load_config(None, overrides)


def _manifest_json(m) -> str:
    d = asdict(m)
    d.pop("created")
    return json.dumps(d)  # key order included: skip reasons are listed in the order they first occurred


def _assert_same(tmp: Path, paths: list[str], **extra) -> dict:
    ref = prepare_local(_cfg(tmp / "local", paths, **extra), log=lambda _: None)
    stats: dict = {}
    got = prepare_ray(_cfg(tmp / "ray", paths, **extra), log=lambda _: None, stats=stats)
    assert _manifest_json(got) == _manifest_json(ref), extra
    for s in ref.shards:
        assert (tmp / "ray" / s.path).read_bytes() == (tmp / "local" / s.path).read_bytes()
    assert not (tmp / "ray" / WORK).exists()  # the work folder goes once the manifest is written
    return {"manifest": ref, "stats": stats}


def test_ray_prepare_equals_one_loop(corpus, tmp_path):
    full = _assert_same(tmp_path / "full", corpus)["manifest"]
    # what the corpus is built to hit
    assert set(full.skips["by_reason"]) == {"malformed_json", "empty_text", "not_an_object", "bad_encoding",
                                            "duplicate_doc_id", "truncated_file"}
    assert full.skips["by_reason"]["duplicate_doc_id"] == 3 and full.skips["by_reason"]["malformed_json"] > 5
    assert full.n_docs == 23 and full.n_texts > full.n_docs and len(full.inputs) == 4
    # offset and limit: the limit ending the read inside an input, at an input's last record (9: a.jsonl's; 13:
    # b.json.gz's, after which the read meets its truncated tail and c.jsonl's bad lines), at and past the end
    for offset, limit in [(0, 0), (0, 5), (0, 9), (0, 13), (3, 10), (7, 4), (2, None), (0, 23), (5, 100)]:
        _assert_same(tmp_path / f"o{offset}-l{limit}", corpus, **{"corpus.offset": offset, "corpus.limit": limit})
    _assert_same(tmp_path / "per7", corpus, **{"shards.docs_per_shard": 7})
    embedded = {"corpus.limit": 9, "corpus.offset": 3, "corpus.embedded_date": "2024-01-01"}
    _assert_same(tmp_path / "embedded", [], **embedded)  # one input: the packaged Wikipedia summaries


def test_ray_prepare_reads_math_problems_and_decontaminates_like_one_loop(tmp_path):
    """The math format and decontamination in the Ray tasks: the same shards and the same `contaminated` count."""
    problems = [{"question": q, "answer": a} for q, a in [
        ("Ann has 3 red pens and buys 7 blue pens at the shop. How many pens does Ann have now?", 10),
        ("A farmer plants 12 rows of corn with 9 plants in each row. How many corn plants are there?", 108),
        ("Leo saved 45 dollars and spent 18 dollars on a kite. How much money does Leo have left?", 27),
        ("There are 64 chairs shared equally by 8 tables in the hall. How many chairs stand at each table?", 8),
        ("A train travels 150 miles on Monday and 95 miles on Tuesday. How far did the train go in all?", 245),
        ("Mia baked 36 cookies and her brother ate 11 of them after dinner. How many cookies remain?", 25)]]
    corpus = tmp_path / "problems.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in problems))
    evalset = tmp_path / "mawps.json"  # two of the problems are evaluation items
    evalset.write_text(json.dumps([{"iIndex": i, "sQuestion": problems[i]["question"], "lSolutions": [0]}
                                   for i in (1, 4)]))
    got = _assert_same(tmp_path / "m", [str(corpus)], **{"corpus.format": "math", "corpus.decontaminate": "[mawps]",
                                                          "corpus.decontaminate_paths.mawps": str(evalset)})["manifest"]
    assert got.n_docs == 4 and got.skips["by_reason"] == {"contaminated": 2}


def test_jobs_prepare_runs_ray_on_shared_webtext(shared_data, tmp_path):
    """The job's default path on the shared web text, read by path (its licence and csv files are bad lines)."""
    from jobs.prepare import main

    paths = [str(shared_data / "webtext")]
    ref = prepare_local(_cfg(tmp_path / "local", paths, **{"shards.docs_per_shard": 300}), log=lambda _: None)
    got = main([f"output_dir={tmp_path / 'ray'}", f"corpus.paths={json.dumps(paths)}", "shards.docs_per_shard=300",
                "corpus.max_text_tokens=32"])
    assert _manifest_json(got) == _manifest_json(ref)
    assert ref.n_docs > 1000 and ref.skips["by_reason"]["malformed_json"] > 0
    assert [(tmp_path / "ray" / s.path).read_bytes() == (tmp_path / "local" / s.path).read_bytes()
            for s in ref.shards] == [True] * len(ref.shards)


def test_stopped_prepare_resumes_missing_inputs_only(tmp_path, monkeypatch):
    paths = []
    for f in range(7):  # more inputs than tasks in flight (2 per CPU), so that the stop leaves some unread
        p = tmp_path / f"in{f}.jsonl"
        p.write_text("\n".join(json.dumps(_doc(10 * f + i, digest=f"sha1:{(10 * f + i) % 23}")) for i in range(5)))
        paths.append(str(p))
    ref = prepare_local(_cfg(tmp_path / "local", paths, **{"corpus.limit": 20}), log=lambda _: None)
    cfg = _cfg(tmp_path / "ray", paths, **{"corpus.limit": 20})
    inputs = tmp_path / "ray" / WORK / "inputs"

    # 1. the driver stops after one input is read (those in flight finish): no manifest, some inputs done
    monkeypatch.setenv(STOP_AFTER_ENV, "1")
    monkeypatch.setenv("TOOLFORMER_FAULT_ONCE_FILE", str(tmp_path / "once"))
    with pytest.raises(RuntimeError, match=STOP_AFTER_ENV):
        prepare_ray(cfg, log=lambda _: None)
    done = len(list(inputs.glob("*.json")))
    assert 1 <= done < 7 and not (tmp_path / "ray" / "manifest.json").exists()
    stats: dict = {}
    m = prepare_ray(cfg, log=lambda _: None, stats=stats, keep_work=True)
    assert stats["inputs_scanned"] == 7 - done and stats["inputs_reused"] == done
    assert _manifest_json(m) == _manifest_json(ref)

    # 2. a prepare lost its manifest, two input markers and a shard: only those are done again
    (tmp_path / "ray" / "manifest.json").unlink()
    for n in (1, 4):
        (inputs / f"{n:06d}.json").unlink()
    (tmp_path / "ray" / "shards" / "shard-00002.parquet").unlink()
    stats = {}
    again = prepare_ray(cfg, log=lambda _: None, stats=stats)
    assert stats["inputs_scanned"] == 2 and stats["inputs_reused"] == 5
    assert stats["shards_written"] == 1 and stats["shards_reused"] == len(ref.shards) - 1
    assert _manifest_json(again) == _manifest_json(ref)
    for s in ref.shards:
        assert (tmp_path / "ray" / s.path).read_bytes() == (tmp_path / "local" / s.path).read_bytes()
