"""Packing and label masking for finetuning, on hand-made examples."""

from __future__ import annotations

import pytest

from toolformer.train.data import IGNORE, TrainText, pack, result_spans, tokenize

EOS, PAD = 0, 99


def test_pack_concatenates_with_eos_and_masks_boundaries_and_padding():
    docs = [([1, 2, 3], [True] * 3), ([4, 5], [True] * 2), ([6, 7, 8, 9], [True] * 4)]
    seqs = pack(docs, seq_len=5, eos_id=EOS, pad_id=PAD)
    # stream: 1 2 3 E 4 | 5 E 6 7 8 | 9 E
    assert [s["input_ids"] for s in seqs] == [[1, 2, 3, EOS, 4], [5, EOS, 6, 7, 8], [9, EOS, PAD, PAD, PAD]]
    # 4 starts a document after another one in the same sequence: not a target; 6 likewise
    assert seqs[0]["labels"] == [1, 2, 3, EOS, IGNORE]
    assert seqs[1]["labels"] == [5, EOS, IGNORE, 7, 8]
    assert seqs[2]["labels"] == [9, EOS, IGNORE, IGNORE, IGNORE]
    assert seqs[2]["attention_mask"] == [1, 1, 0, 0, 0]
    assert all(len(s["input_ids"]) == len(s["labels"]) == len(s["attention_mask"]) == 5 for s in seqs)


def test_a_document_starting_a_sequence_keeps_its_first_label():
    seqs = pack([([1, 2], [True, True]), ([3, 4], [True, True])], seq_len=3, eos_id=EOS, pad_id=PAD)
    # 1 2 E | 3 4 E: the second document starts its own sequence, nothing to hide (and HF never scores pos 0)
    assert [s["labels"] for s in seqs] == [[1, 2, EOS], [3, 4, EOS]]


def test_result_masking_hides_only_result_tokens(tokenizer):
    text = "It costs 400 [Calculator(400 / 1400) -> 0.29] or 29% of the total."
    start = text.index("[")
    spans = result_spans(text, [{"char_start": start, "char_end": text.index("]") + 1}])
    assert [text[a:b] for a, b in spans] == ["0.29"]
    (ids, keep), = tokenize([TrainText(text, spans)], tokenizer, mask_results=True)
    hidden = tokenizer.decode([t for t, k in zip(ids, keep) if not k])
    assert hidden.strip() == "0.29"
    (ids2, keep2), = tokenize([TrainText(text, spans)], tokenizer, mask_results=False)
    assert ids2 == ids and all(keep2)  # off by default: the paper trains on everything
    seq = pack([(ids, keep)], seq_len=len(ids) + 1, eos_id=EOS, pad_id=PAD)[0]
    assert sum(label == IGNORE for label in seq["labels"]) == keep.count(False)


def test_pack_rejects_a_degenerate_length():
    with pytest.raises(ValueError):
        pack([([1], [True])], seq_len=1, eos_id=EOS, pad_id=PAD)
