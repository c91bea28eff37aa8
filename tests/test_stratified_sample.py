"""The math problems a multi-tool experiment trains on are a seeded sample stratified on grade and operation, never
the file's order (issue 42: round 1 once read the first 300 ASDiv problems, grades 2-3, 3 % division)."""

from __future__ import annotations

import random
from collections import Counter

from toolformer.tasksets.math import asdiv_file, stratified_order


def _train(shared_data):
    from toolformer.tasksets import fold_ids

    train_ids, _ = fold_ids(shared_data / "asdiv" / "nfolds" / "asdiv-w", 0)
    return [e for e in asdiv_file(shared_data / "asdiv" / "ASDiv.xml") if e.uid in train_ids]


def test_the_sample_is_the_same_for_a_seed_whatever_the_file_order_and_differs_by_seed(shared_data):
    train = _train(shared_data)
    first = [e.uid for e in stratified_order(train, seed=0)[:300]]
    shuffled = train[:]
    random.Random(7).shuffle(shuffled)
    assert [e.uid for e in stratified_order(shuffled, seed=0)[:300]] == first
    assert [e.uid for e in stratified_order(train, seed=1)[:300]] != first
    assert first != [e.uid for e in train[:300]]  # never the file's order


def test_a_prefix_covers_every_operation_and_keeps_the_mix(shared_data):
    train = _train(shared_data)
    ops = Counter(e.meta["operation"] for e in train)
    strata = {(e.meta["grade"], e.meta["operation"]) for e in train}
    order = stratified_order(train, seed=0)
    assert {(e.meta["grade"], e.meta["operation"]) for e in order[:len(strata)]} == strata  # every stratum first
    sample = Counter(e.meta["operation"] for e in order[:300])
    assert set(sample) == set(ops)  # every operation, the rarest ones included
    for op, n in ops.items():  # in proportion: within 2 problems + 20 % of its share, plus one per grade of it
        want = 300 * n / len(train)  # (a stratum's first problem comes first, however small the stratum)
        firsts = len({e.meta["grade"] for e in train if e.meta["operation"] == op})
        assert abs(sample[op] - want) <= 2 + 0.2 * want + firsts, (op, sample[op], want)
    grades = Counter(e.meta["grade"] for e in order[:300])
    assert len(grades) == len({e.meta["grade"] for e in train})  # every grade, not grades 2-3
