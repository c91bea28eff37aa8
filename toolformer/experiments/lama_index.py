"""The LAMA index: every shipped LAMA evidence passage (T-REx sentences, Google-RE snippets) and a Wikipedia
sample beside them, what the QA tool searches in the multi-tool experiment and in ``jobs.bench qa_ceiling``."""

from __future__ import annotations

import json
import time
from pathlib import Path


def lama_files(data_dir: str | Path | None = None) -> list[str]:
    from toolformer.paths import shared_data

    wp = shared_data(data_dir) / "wiki_passages"
    return [str(wp / "lama_google_re_snippets.jsonl"), str(wp / "lama_trex_evidence_sentences.jsonl.gz"),
            str(wp / "flashrag_wiki18_100w_sample.tsv")]


def lama_index(index_dir: Path, data_dir: str | Path | None = None) -> dict:
    """Built in ``index_dir``, or reused when an earlier run finished it there (its ``index.json``); what it holds."""
    from toolformer.tools.index_build import IndexConfig, build_index
    from toolformer.tools.passages import read_passages

    files = lama_files(data_dir)
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    if (index_dir / "index.json").is_file():
        meta = json.loads((index_dir / "index.json").read_text())
        out = {"passages": meta["passages"], "reused_from_earlier_run": True}
    else:
        meta = build_index(read_passages(files), index_dir, IndexConfig(), sources=["lama"])
        out = {"passages": meta["passages"], "seconds": round(time.perf_counter() - t0, 1)}
    out["expected_passages"] = sum(1 for _ in read_passages(files))  # what it was given
    return out
