"""The whole job, small, on the embedded defaults: annotate 30 Wikipedia summaries with calls to all five tools on
SmolLM2-135M-Instruct, merge the survivors into C*, show what was kept, finetune the model on C* for a few steps
(2 Ray Train workers, DeepSpeed ZeRO-2 on CPU), export the checkpoint, and evaluate the model before and after on
small built-in task samples, with and without tools.

Only ~3% of the summaries pass the Calculator's heuristic (arithmetic among three numbers) and few hold a
foreign phrase for MT, so the demo picks its documents on purpose: up to a fifth with a foreign phrase, up
to half with arithmetic, the rest plain (every one has a date, so all go to the Calendar; all go to QA and
WikiSearch). It writes them as cc_net records to ``<output_dir>/demo_corpus.jsonl`` and annotates that. Their
date (what the Calendar returns for them) is ``corpus.embedded_date``, pinned in jobs/configs/demo.yaml so that
the funnel and C* do not change with the day the demo runs.

    python -m jobs.demo                       # what `make demo` runs
    python -m jobs.demo corpus.limit=10       # any override of jobs/configs/demo.yaml
    python -m jobs.demo --verbose             # the engines' and frameworks' output on the terminal too
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from jobs.cli import offline_by_default, parse
from toolformer.console import job_console, log_path

DEMO_CONFIG = str(Path(__file__).parent / "configs" / "demo.yaml")


def write_demo_corpus(path: Path, n: int, lang: str, date: str, seed: int, shuffle: bool = False) -> Path:
    """``n`` embedded summaries as cc_net JSONL: some with a foreign phrase, some with arithmetic, the rest plain
    (``shuffle``: in a seeded random order, so that any slice of the file has the same mix)."""
    import json

    from toolformer.cstar.card import WIKIPEDIA_SUMMARIES, write_source_note
    from toolformer.corpus import embedded_ccnet_records
    from toolformer.tools.heuristics import calculator_rule, foreign_chunk

    foreign, with_math, plain = [], [], []
    for record, _ in embedded_ccnet_records(lang, date):
        text = record.get("raw_content") or ""
        if not text.strip():
            continue
        if len(foreign) < n // 5 and foreign_chunk(text):
            foreign.append(record)
        elif calculator_rule(text, record["digest"], random_keep=0.0, seed=seed) is not None:
            with_math.append(record)
        else:
            plain.append(record)
    chosen = foreign + with_math[: n // 2 - len(foreign) // 2]
    chosen += plain[: n - len(chosen)]
    if shuffle:
        import random

        random.Random(seed).shuffle(chosen)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen), encoding="utf-8")
    # The texts are Wikipedia's: the note beside the file carries that source's name and licence into C*'s card.
    write_source_note(path, WIKIPEDIA_SUMMARIES,
                      f"{len(chosen)} summaries written unchanged as cc_net records by jobs.demo, dated {date}")
    return path


def step(n: int, text: str) -> None:
    print(f"\n[{n}/5] {text}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    offline_by_default()
    cfg, args = parse(__doc__, argv, DEMO_CONFIG)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    with job_console(cfg.output_dir, "demo", args.verbose):
        _run(cfg, args)


def _run(cfg, args) -> None:
    from toolformer.annotate.pipeline import run_annotate
    from toolformer.cstar.merge import cstar_files, run_merge
    from toolformer.report import format_funnel, format_yields
    from toolformer.schemas import read_rows

    t0 = time.perf_counter()
    print("Toolformer demo: a small LM (SmolLM2-135M) annotates text with calls to five tools, keeps the calls that "
          "make the following words easier to predict, and is finetuned on the result.")
    if log_path():
        print(f"(engine and framework output: {log_path()}; --verbose shows it here)")
    dated = ""
    if not cfg.corpus.paths:
        n = cfg.corpus.limit or 30
        dated = f" dated {cfg.corpus.embedded_date} (corpus.embedded_date)"
        corpus = write_demo_corpus(Path(cfg.output_dir) / "demo_corpus.jsonl", n, cfg.corpus.embedded_lang,
                                   cfg.corpus.embedded_date, cfg.seed)
        cfg.corpus.paths = [str(corpus)]
    step(1, f"annotating {cfg.corpus.limit or 'all'} Wikipedia summaries{dated} with "
            f"{', '.join(cfg.annotate.tools)} ({cfg.engine.backend}, {cfg.model.dtype}); the first run also converts "
            "the model and builds the index")
    stats = run_annotate(cfg, log=lambda m: print(f"  {m}"))
    print("Funnel per tool (kept: calls with gain >= τf, and the texts holding them):")
    print(format_funnel(stats["funnel"], stats.get("docs_skipped")))
    print(format_yields(stats["funnel"]))

    step(2, "merging the kept calls into C* (one call per position, the larger gain wins)")
    summary = run_merge(cfg.output_dir, cfg.merge.max_per_tool, cfg)
    print(f"C*: {summary['texts']} texts with {summary['calls']} calls {summary['calls_per_tool']}")
    rows = [r for f in (cstar_files(cfg.output_dir) if summary["texts"] else []) for r in read_rows(f)]
    shown: set[str] = set()
    for row in rows:  # one example per tool, the best kept call first
        for call in sorted(row["calls"], key=lambda c: -c["gain"]):
            if call["tool"] in shown:
                continue
            shown.add(call["tool"])
            lo = max(0, call["char_start"] - 80)
            print(f"  [{call['tool']}, gain {call['gain']:.2f}] …{row['text'][lo: call['char_end'] + 60]}…")
    if summary["texts"] and cfg.train.max_steps > 0:
        from toolformer.train.finetune import run_finetune

        t = cfg.train
        step(3, f"finetuning on C* for {t.max_steps} steps only (effective batch {t.effective_batch}, sequence length "
                f"{t.seq_len}, lr {t.lr}): this shows the machinery, it does not make a better model")
        ft = run_finetune(cfg, log=lambda m: print(f"  {m}"))
        print(f"  train loss {ft['final']['train_loss']:.3f} at step {ft['final']['step']}, dev perplexity "
              f"{ft['best_dev_ppl']:.1f}; checkpoint (HF folder, loads in vLLM): {ft['checkpoints'].get('last')}")
        cfg.eval.finetuned = ft["checkpoints"].get("last")
    else:
        step(3, "no call survived filtering: nothing to finetune on (more documents or a larger model)")
    if cfg.eval.tasks:
        import subprocess
        import sys

        step(4, f"evaluating on {', '.join(cfg.eval.tasks)} ({cfg.eval.limit} examples each: a small sample, indicative "
                "only), before and after the short finetune")
        # A process of its own: vLLM's kernel registry trips over modules Ray Train left imported in this one.
        cmd = [sys.executable, "-m", "jobs.evaluate", "--config", args.config, *args.overrides,
               f"output_dir={cfg.output_dir}"]
        if cfg.eval.finetuned:
            cmd.append(f"eval.finetuned={cfg.eval.finetuned}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"evaluation failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        print(proc.stdout.strip())
    out = Path(cfg.output_dir)
    step(5, f"done in {time.perf_counter() - t0:.0f} s. Files in {out}:")
    for name, what in (("stats.json", "the run: config, engine and dtype, the funnel"), ("report.md", "kept calls in context"),
                       ("cstar/", "C* (Parquet parts, README.md dataset card)"), ("finetune/", "checkpoints (HF folders)"),
                       ("eval/", "results.md, accuracy.png, generations.jsonl"), ("logs/", "engine and framework output")):
        if (out / name.rstrip("/")).exists():
            print(f"  {name:12s} {what}")


if __name__ == "__main__":
    main()
