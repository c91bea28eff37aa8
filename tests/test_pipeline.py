"""End to end on a few real documents: annotate (real model, real engine) → merge → check C*."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from toolformer.annotate.pipeline import run_annotate
from toolformer.calls import find_calls
from toolformer.config import load_config
from toolformer.cstar.merge import cstar_files, run_merge
from toolformer.schemas import ANNOTATIONS, CSTAR, TEXTS, read_rows
from toolformer.tools import ToolRequest, build_tool

TOOLS = ["Calculator", "Calendar"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data, vllm_engine):
    out = tmp_path_factory.mktemp("run")
    corpus = out / "corpus.jsonl"
    # Two real cc_net documents (the shortest and one with a date in its URL), two with arithmetic, two
    # broken lines.
    lines = (shared_data / "webtext" / "ccnet_output_10docs_exact.jsonl").read_text().splitlines()
    src = [lines[8], lines[3]]
    extra = [
        {"url": "https://shop.example.com/2021/06/14/sale", "date": "2021-06-14T08:00:00Z",
         "text": "The shop sold 120 shirts on Monday and 80 on Tuesday, 200 shirts in two days. Each shirt cost 15 "
                 "dollars, so Monday alone brought in 1800 dollars."},
        {"url": "https://news.example.com/a", "date": "2019-02-01T00:00:00Z",
         "text": "Of the 640 members who voted, 512 said yes. That is 80 percent of the votes cast, up from 70."},
    ]
    corpus.write_text("\n".join(src + [json.dumps(e) for e in extra] + ['{"broken', '{"text": ""}']) + "\n")
    cfg = load_config("jobs/configs/default.yaml", [
        f"output_dir={out}",
        f"corpus.paths=[{corpus}]",
        "corpus.max_text_tokens=192",
        # Small and permissive so that calls survive on a 135M model: this checks mechanics, not quality.
        "annotate.defaults.tau_s=0.0",
        "annotate.defaults.top_k=3",
        "annotate.defaults.num_samples=3",
        "annotate.defaults.tau_f=0.0",
        "annotate.per_tool.Calculator.top_k=4",
        "annotate.per_tool.Calculator.num_samples=4",
        "annotate.per_tool.Calculator.tau_f=0.0",
        "engine.top_logprobs=20",
    ])
    stats = run_annotate(cfg, engine=vllm_engine, log=lambda *_: None)
    print("pipeline test run:", stats["seconds"], {t: f["samples"] for t, f in stats["funnel"].items()})
    merged = run_merge(str(out), cfg.merge.max_per_tool)
    return cfg, out, stats, merged, corpus


def test_every_document_is_accounted_for(run):
    cfg, out, stats, _, corpus = run
    n_lines = sum(1 for line in corpus.read_text().splitlines() if line.strip())
    c = stats["corpus"]
    assert c["docs_read"] + c["docs_skipped"]["total"] == n_lines
    assert c["docs_skipped"]["by_reason"] == {"malformed_json": 1, "empty_text": 1}
    texts = read_rows(out / "texts.parquet")
    assert {t["doc_id"] for t in texts} == {json.loads(l).get("digest") or t_id(l) for l in corpus.read_text().splitlines()[:4]}
    annotations = read_rows(out / "annotations.parquet")
    # exactly one row per text and tool, each with a status
    assert sorted((a["text_id"], a["tool"]) for a in annotations) == sorted((t["text_id"], tool) for t in texts for tool in TOOLS)
    assert {a["status"] for a in annotations} <= {"annotated", "heuristic_rejected", "too_long"}
    for tool, f in stats["funnel"].items():
        assert f["texts_seen"] == len(texts)
        assert f["texts_passed"] == sum(a["status"] != "heuristic_rejected" for a in annotations if a["tool"] == tool)


def t_id(line):
    from toolformer.corpus import ccnet_digest

    return ccnet_digest(json.loads(line)["text"])


def test_schemas(run):
    _, out, *_ = run
    assert pq.read_schema(out / "texts.parquet").equals(TEXTS)
    assert pq.read_schema(out / "annotations.parquet").equals(ANNOTATIONS)
    assert all(pq.read_schema(f).equals(CSTAR) for f in cstar_files(str(out)))
    meta = json.loads((out / "stats.json").read_text())
    assert meta["engine"]["backend"] == "vllm" and meta["engine"]["dtype"] == "float32"
    assert meta["no_result_form"] == "arrow" and len(meta["config_hash"]) == 16


def test_no_kept_calculator_call_is_a_no_op_and_the_report_shows_the_kept_calls(run):
    from toolformer.tools.calculator import is_no_op

    _, out, *_ = run
    kept = [c for r in read_rows(out / "annotations.parquet") if r["tool"] == "Calculator"
            for c in r["candidates"] if c["kept"]]
    assert not [c["input"] for c in kept if is_no_op(c["input"])]
    report = (out / "report.md").read_text()
    assert report.startswith("# Kept calls") and ("## Calculator" in report or not kept)


def test_funnel_is_consistent(run):
    _, out, stats, *_ = run
    for tool, f in stats["funnel"].items():
        assert f["positions"] > 0, tool
        assert f["samples"] >= f["closed"] >= f["parsed"] >= f["candidates"] >= f["executed"] >= f["kept_at_tool_tau_f"]
        assert f["kept_calls_tau_0.5"] >= f["kept_calls_tau_1.0"] >= f["kept_calls_tau_2.0"]


def test_cstar_calls_parse_rerun_and_pass_the_filter(run):
    cfg, out, stats, merged, _ = run
    rows = [r for f in cstar_files(str(out)) for r in read_rows(f)]
    assert merged["texts"] == len(rows) > 0
    texts = {t["text_id"]: t for t in read_rows(out / "texts.parquet")}
    tools = {name: build_tool(name) for name in TOOLS}
    for row in rows:
        spans = list(find_calls(row["text"], TOOLS))
        assert len(spans) == row["n_calls"] == len(row["calls"])
        for span, call in zip(spans, row["calls"]):
            assert (span.call.tool, span.call.input, span.call.result) == (call["tool"], call["input"], call["result"])
            assert row["text"][call["char_start"] : call["char_end"]] == row["text"][span.start : span.end]
            assert call["gain"] >= cfg.tool_params(call["tool"]).tau_f
            source = texts[row["text_id"]]
            context = {"date": _doc_date(source)} if call["tool"] == "Calendar" else {}
            assert tools[call["tool"]]([ToolRequest(call["input"], context)]) == [call["result"]]
        # removing the calls gives back the original text
        stripped = row["text"]
        for span in reversed(spans):
            after_space = span.start > 0 and stripped[span.start - 1].isspace()
            end = span.end + (1 if after_space and stripped[span.end : span.end + 1] == " " else 0)
            stripped = stripped[: span.start] + stripped[end:]
        assert stripped == texts[row["text_id"]]["text"]


def _doc_date(text_row):
    from toolformer.tools.calendar import document_date

    date, _ = document_date(text_row["url"], {"date": text_row["date"]}, ("url", "date"))
    return date.isoformat()


# make test: the small chaos soak's Ray run equals a separate one-process run row for row, which rests on the same
# derived seeds; this one redoes the whole annotation in-process (41 s)
@pytest.mark.slow
def test_rerun_is_identical(run, vllm_engine, tmp_path):
    """Seeds derive from (run seed, text, tool, position): a redone run yields the same candidates."""
    cfg, out, *_ = run
    cfg.output_dir = str(tmp_path)
    run_annotate(cfg, engine=vllm_engine, log=lambda *_: None)
    first = {(r["text_id"], r["tool"]): r["candidates"] for r in read_rows(out / "annotations.parquet")}
    second = {(r["text_id"], r["tool"]): r["candidates"] for r in read_rows(tmp_path / "annotations.parquet")}
    assert first.keys() == second.keys()
    for key in first:
        a, b = first[key], second[key]
        assert [(c["position"], c["input"], c["result"]) for c in a] == [(c["position"], c["input"], c["result"]) for c in b]
        for ca, cb in zip(a, b):
            assert (ca["kept"] == cb["kept"]) and (ca["gain"] is None) == (cb["gain"] is None)
