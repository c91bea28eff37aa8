"""Commit and merge on synthetic runs (real schemas, random candidates; no model): the Arrow commit checks and
orders a shard, the Arrow/Ray merge equals the one-process reference merge, the Arrow funnel equals a row count."""

from __future__ import annotations

import shutil
from collections import defaultdict

import pyarrow.parquet as pq
import pytest
from merge_reference import reference_cstar, sharded_cstar

from benchmarks.synthetic import TOOLS, make_staged_run
from toolformer.annotate.commit import ShardIncomplete, commit_shard
from toolformer.cstar.merge import run_merge
from toolformer.report import REPORT_TAU_F, funnel
from toolformer.run.shards import Manifest, RunState
from toolformer.run.store import Store

STAGING = "_staging/test"


@pytest.fixture()
def staged(tmp_path):
    make_staged_run(tmp_path / "run", n_texts=120, texts_per_shard=40, seed=3, staging=STAGING)
    return tmp_path / "run"


def _commit_all(run) -> Manifest:
    manifest = Manifest.load(Store(run))
    for s in manifest.shards:
        commit_shard(str(run), s, list(TOOLS), STAGING)
    return manifest


def test_commit_orders_checks_and_marks_a_shard(staged):
    manifest = _commit_all(staged)
    assert RunState(Store(staged), "annotate").done() == {s.shard_id for s in manifest.shards}
    assert not (staged / STAGING).exists() or not any((staged / STAGING).iterdir())
    state = RunState(Store(staged), "annotate")
    for s in manifest.shards:
        marker = state.marker(s.shard_id)  # names the attempt's own files, and carries the shard's stats
        texts = pq.read_table(staged / marker["outputs"]["texts"]["path"]).column("text_id").to_pylist()
        assert texts == pq.read_table(staged / s.path).column("text_id").to_pylist()
        rows = pq.read_table(staged / marker["outputs"]["annotations"]["path"])
        keys = list(zip(rows.column("text_id").to_pylist(), rows.column("tool").to_pylist()))
        assert keys == [(t, tool) for t in texts for tool in TOOLS]  # text order, then tool order
        stats = marker["stats"]
        assert stats["texts"] == s.n_texts and stats["rows"] == s.n_texts * len(TOOLS)
        times = ("lm_ms", "tool_ms")  # from the staged rows; the committed annotations carry no timings
        assert {t: {k: v for k, v in f.items() if k not in times} for t, f in stats["funnel"].items()} == funnel(rows)
        assert all(f["lm_ms"] > 0 for f in stats["funnel"].values())


def test_a_batch_staged_twice_counts_once(staged, tmp_path):
    sid = "shard-00000"
    folder = staged / STAGING / sid
    first = sorted(folder.iterdir())[0]
    shutil.copy(first, folder / "retried-copy.parquet")
    manifest = Manifest.load(Store(staged))
    commit_shard(str(staged), manifest.shard(sid), list(TOOLS), STAGING)
    rows = pq.read_table(staged / RunState(Store(staged), "annotate").output(sid, "annotations"))
    assert rows.num_rows == manifest.shard(sid).n_texts * len(TOOLS)


def test_a_missing_batch_fails_the_commit_and_writes_no_marker(staged):
    sid = "shard-00001"
    sorted((staged / STAGING / sid).iterdir())[-1].unlink()
    manifest = Manifest.load(Store(staged))
    with pytest.raises(ShardIncomplete, match="lack a tool's row"):
        commit_shard(str(staged), manifest.shard(sid), list(TOOLS), STAGING)
    assert not (staged / "markers" / "annotate" / f"{sid}.json").exists()


def test_arrow_funnel_equals_counting_rows(staged):
    _commit_all(staged)
    table = pq.read_table(staged / RunState(Store(staged), "annotate").output("shard-00000", "annotations"))
    want: dict = defaultdict(lambda: defaultdict(int))
    for r in table.to_pylist():
        f = want[r["tool"]]
        f["texts_seen"] += 1
        f["candidates"] += r["n_candidates"]
        gains = [c["gain"] for c in r["candidates"] if c["gain"] is not None]
        for tau in REPORT_TAU_F:
            f[f"kept_calls_tau_{tau}"] += sum(g >= tau for g in gains)
            f[f"texts_with_calls_tau_{tau}"] += any(g >= tau for g in gains)
    got = funnel(table)
    for tool, counts in want.items():
        assert {k: got[tool][k] for k in counts} == dict(counts)


@pytest.mark.parametrize("cap", [25_000, 7])
def test_sharded_merge_equals_the_reference(staged, cap):
    _commit_all(staged)
    summary = run_merge(str(staged), cap, parallel=False)
    want = reference_cstar(staged, cap)
    assert want and sharded_cstar(staged) == want
    assert summary["texts"] == len(want) and summary["calls"] == sum(r["n_calls"] for r in want)
    if cap == 7:
        texts_per_tool = defaultdict(set)
        for r in want:
            for c in r["calls"]:
                texts_per_tool[c["tool"]].add(r["text_id"])
        assert all(len(v) <= 7 for v in texts_per_tool.values())


def test_merge_as_ray_tasks_equals_in_process(staged, tmp_path):
    import ray

    _commit_all(staged)
    run_merge(str(staged), 7, parallel=False)
    local = sharded_cstar(staged)
    try:
        run_merge(str(staged), 7, parallel=True)  # starts a private local Ray in this process...
    finally:
        ray.shutdown()  # ...which must not outlive the test (later tests run `ray stop` and their own head)
    assert sharded_cstar(staged) == local


def test_inspection_report_and_merge_checks_on_a_tiny_run(staged):
    from toolformer.cstar.inspection import inspect_run, write_report

    _commit_all(staged)
    text = write_report(str(staged), k=3)
    assert (staged / "report.md").read_text() == text
    for tool in TOOLS:
        section = text.split(f"## {tool}")[1].split("\n## ")[0]
        for heading in ("### Largest gains", "### Smallest gains", "### Random sample", "Most frequent inputs:"):
            assert heading in section, (tool, heading)
        assert section.count("\n| ") >= 3 * (1 + 3)  # header row + 3 examples per table
    report = inspect_run(str(staged), k=3)
    for tool, r in report.items():
        assert r["kept"] > 0 and 0 <= r["result_in_next_20_words_share"] <= 1 and 0 < r["distinct_inputs_share"] <= 1
        gains = [ex["gain"] for ex in r["largest_gains"]]
        assert gains == sorted(gains, reverse=True) and min(gains) >= max(ex["gain"] for ex in r["smallest_gains"])
        assert all("[" + tool in ex["context"] for ex in r["random_sample"])
    summary = run_merge(str(staged), 7, parallel=False)
    checks = summary["checks"]
    assert set(checks) == {"calls_per_text", "duplicate_texts", "removed_by_rule"}
    assert set(checks["removed_by_rule"]) == {"max_per_tool_cap", "mt_post_filter", "no_op", "one_call_per_position"}
    assert sum(checks["removed_by_rule"]["max_per_tool_cap"].values()) > 0  # the cap of 7 did remove calls
    for tool, c in checks["calls_per_text"].items():
        assert c["texts"] <= 7 and c["calls"] == summary["calls_per_tool"][tool] and c["max"] >= 1
