"""QA (retrieval + reader) and MT (language id + translation) on real models and data."""

from __future__ import annotations

import json

import pytest

from toolformer.evaluation.lama import google_re_facts
from toolformer.tools import ToolRequest, build_tool
from toolformer.tools.index_build import IndexConfig, build_index
from toolformer.tools.mt import identify
from toolformer.tools.passages import read_passages
from toolformer.tools.qa import normalize_answer


@pytest.fixture(scope="module")
def qa_index(tmp_path_factory, shared_data):
    facts = [f for f in google_re_facts(shared_data, ("place_of_birth",), per_relation=40) if f.gold_passages][:12]
    wanted = {p for f in facts for p in f.gold_passages}
    wp = shared_data / "wiki_passages"
    passages = [p for p in read_passages([str(wp / "lama_google_re_snippets.jsonl")]) if p["id"] in wanted]
    passages += list(read_passages([str(wp / "flashrag_wiki18_100w_sample.tsv")]))[:300]
    out = tmp_path_factory.mktemp("qa-index")
    build_index(passages, out, IndexConfig(), sources=["test"])
    return str(out), facts


def test_qa_answers_easy_questions_from_indexed_passages(qa_index):
    index_dir, facts = qa_index
    qa = build_tool("QA", index_dir=index_dir)
    answers = qa([ToolRequest(f"Where was {f.subject} born?") for f in facts])
    right = sum(a is not None and (f.obj.lower() in a.lower() or any(x.lower() in a.lower() for x in f.aliases))
                for f, a in zip(facts, answers))
    assert right >= len(facts) * 0.5, list(zip([f.obj for f in facts], answers))
    assert qa([ToolRequest(""), ToolRequest("\x00\x01"), ToolRequest("?" * 10_000)]) == [None, None, None]


@pytest.mark.parametrize("raw, expected", [
    (" Paris.\nQuestion: more", "Paris"), ('"Alexander Fleming"', "Alexander Fleming"), ("I don't know", None),
    ("", None), ("The answer is 1928.", "1928"), ("one two three four five six seven eight nine ten eleven", "one two three four five six seven eight nine ten"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_language_id_on_xquad_questions(shared_data):
    rows = [json.loads(l) for l in (shared_data / "xquad" / "xquad_parallel_questions.jsonl").read_text().splitlines()[:100]]
    for lang in ("de", "es", "en", "zh", "ar", "hi", "vi"):
        got = [identify(r[f"question_{lang}"])[0] for r in rows]
        assert sum(g == lang for g in got) >= 85, (lang, got)
    assert identify("12345 %%% !!") == ("", 0.0)


def test_mt_embedded_translates_and_skips_english(shared_data):
    rows = [json.loads(l) for l in (shared_data / "xquad" / "xquad_parallel_questions.jsonl").read_text().splitlines()[:6]]
    mt = build_tool("MT")
    out = mt([ToolRequest(r["question_es"]) for r in rows] + [ToolRequest("This is already English, thanks."),
                                                              ToolRequest(""), ToolRequest("\x00" * 10)])
    assert all(isinstance(t, str) and t for t in out[:6])
    assert out[6:] == [None, None, None]
    # the translations are English (whatever their quality on a 135M model)
    assert sum(identify(t)[0] == "en" for t in out[:6]) >= 4, out[:6]


def test_mt_seq2seq_path_runs_a_local_marian(tmp_path):
    """The production path: a seq2seq model from a local folder (a tiny random Marian saved here)."""
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "hola", "mundo", "el", "gato", "hello", "world"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    cfg = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    MarianMTModel(cfg).save_pretrained(tmp_path / "marian")
    tok.save_pretrained(tmp_path / "marian")
    mt = build_tool("MT", translator=str(tmp_path / "marian"), max_new_tokens=5)
    mt.setup()
    assert mt.translator.seq2seq
    calls = []
    real = mt.translator.generate

    def spy(texts, *args, **kwargs):
        result = real(texts, *args, **kwargs)
        calls.append((list(texts), result))
        return result

    mt.translator.generate = spy
    out = mt([ToolRequest("el gato y el perro en la casa"), ToolRequest("the cat is on the mat")])
    # only the Spanish input reached the model, as raw text (no prompt: a seq2seq model translates directly)
    assert [c[0] for c in calls] == [["el gato y el perro en la casa"]]
    produced = calls[0][1][0].strip()
    assert out[0] == (produced or None)  # random weights: whatever it decoded, passed through unchanged
    assert out[1] is None  # English is not translated


def test_mt_heuristic_and_post_filter():
    from toolformer.tools.heuristics import foreign_chunk as mt_heuristic

    mixed = ("The motto of the republic, printed on every coin, reads Liberté, égalité, fraternité et la joie de vivre "
             "pour tous les citoyens du pays, and it was adopted during the revolution in the late eighteenth century.")
    assert mt_heuristic(mixed) == "fr"
    assert mt_heuristic("An ordinary English sentence about nothing in particular, long enough to be split into windows.") is None
    assert mt_heuristic("Liberté, égalité, fraternité et la joie de vivre pour tous les citoyens du pays entier.") is None
