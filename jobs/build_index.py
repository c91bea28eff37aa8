"""Build the search index WikiSearch and QA read: passage store, BM25 (bm25s) and dense (FAISS).

    python -m jobs.build_index --out indexes/wiki                      # the embedded Wikipedia summaries
    python -m jobs.build_index --out indexes/psgs --source psgs_w100.tsv --dense-kind ivfpq
    python -m jobs.build_index --out indexes/kilt --source kilt_knowledgesource.json --dense-kind hnsw

Sources: DPR TSV (``id, text, title``), KILT knowledge-source JSONL, JSONL or Parquet with ``text``/``title``
(several files or globs are concatenated). Re-running the same command resumes: written passages and
embedded shards are kept. Point the tools at the result with
``annotate.tool_options.WikiSearch.index_dir=indexes/wiki`` (and the same for QA).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Sequence

from jobs.cli import offline_by_default


def main(argv: Sequence[str] | None = None) -> dict:
    offline_by_default()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="index folder")
    p.add_argument("--source", action="append", default=[], help="passage file or glob (repeatable); none = embedded")
    p.add_argument("--lang", default="en-us", help="embedded Wikipedia language (en-us, fr-fr, es-es)")
    p.add_argument("--encoder", default=None, help="sentence-transformers folder (default: all-MiniLM-L6-v2 package)")
    p.add_argument("--dense-kind", default="auto", choices=["auto", "flat", "ivf", "ivfpq", "hnsw"])
    p.add_argument("--ivf-nlist", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=50_000)
    p.add_argument("--no-bm25", action="store_true")
    p.add_argument("--no-dense", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="index only the first N passages")
    args = p.parse_args(argv)

    from itertools import islice

    from toolformer.corpus import SkipLog
    from toolformer.tools.index_build import IndexConfig, build_index
    from toolformer.tools.passages import read_passages

    cfg = IndexConfig(encoder=args.encoder, dense_kind=args.dense_kind, ivf_nlist=args.ivf_nlist,
                      batch_size=args.batch_size, shard_size=args.shard_size, bm25=not args.no_bm25,
                      dense=not args.no_dense)
    skips = SkipLog()
    passages = read_passages(args.source, skips, lang=args.lang)
    if args.limit:
        passages = islice(passages, args.limit)
    last = [0.0]

    def progress(msg: str) -> None:  # at most one line per 5 s
        if time.monotonic() - last[0] > 5:
            last[0] = time.monotonic()
            print(f"[build_index] {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    meta = build_index(passages, args.out, cfg, sources=args.source or [f"embedded:{args.lang}"], progress=progress)
    meta.update(skipped=skips.as_dict(), total_seconds=round(time.perf_counter() - t0, 1),
                peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print(json.dumps(meta, indent=2))
    return meta


if __name__ == "__main__":
    main()
