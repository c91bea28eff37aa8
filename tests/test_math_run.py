"""The math experiment's run (issue 33): seeds that reach the training data order, and the same evaluation items
for every model of the main comparison (round 1's default models and controls of every seed, the base rows)."""

from __future__ import annotations

import pytest

from toolformer.config import load_config


@pytest.fixture(scope="module")
def ray_local():
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _order(ds, seed: int, epoch: int, buffer: int) -> list[int]:
    from toolformer.train.loop import epoch_order

    return [int(x) for b in ds.iter_batches(batch_size=8, **epoch_order(seed, epoch, buffer)) for x in b["id"]]


def test_two_seeds_give_different_data_orders(ray_local):
    import ray

    ds = ray.data.range(64).map_batches(lambda b: b, batch_format="numpy").materialize()
    plain = _order(ds, 0, 0, 0)
    assert sorted(plain) == list(range(64))  # no shuffle (train.shuffle false): the stored order, every row once
    assert _order(ds, 0, 0, 0) == plain
    s0e0, s1e0, s0e1 = _order(ds, 0, 0, 64), _order(ds, 1, 0, 64), _order(ds, 0, 1, 64)
    assert sorted(s0e0) == sorted(s1e0) == list(range(64))  # every sequence once per epoch
    assert s0e0 != s1e0  # the seed changes the order ...
    assert s0e0 != s0e1  # ... and so does the epoch
    assert _order(ds, 0, 0, 64) == s0e0  # a rerun repeats itself


def test_the_texts_are_shuffled_by_the_seed_before_packing(ray_local):
    import ray

    ds = ray.data.range(64)
    a = [r["id"] for r in ds.random_shuffle(seed=0).take_all()]
    b = [r["id"] for r in ds.random_shuffle(seed=1).take_all()]
    assert a != b and sorted(a) == sorted(b) and a == [r["id"] for r in ds.random_shuffle(seed=0).take_all()]


def test_every_evaluated_model_reads_the_same_item_ids(shared_data):
    from toolformer.evaluation import language
    from toolformer.evaluation.evaluate import data_dir
    from toolformer.evaluation.tasks import load_task
    from toolformer.experiments.experiment import DEFAULT, Unit, plan, unit_config

    cfg = load_config("jobs/configs/math.yaml")
    units = plan(cfg)
    main = [u for u in units if u.seed is None or (u.setting == DEFAULT and u.round == 1)]
    assert len(main) == len(cfg.bootstrap.seeds) + 1

    def items(rc) -> dict[str, list[str]]:
        e = rc.eval
        out = {t: sorted(x.uid for x in load_task(t, data_dir(rc), limit=e.limit, seed=e.items_seed,
                                                  path=e.task_paths.get(t), ids=e.task_ids.get(t)))
               for t in e.tasks}
        for s in e.false_call_sets:
            out[s] = [x.uid for x in language.false_call_examples(data_dir(rc), s, e.false_call_n, e.items_seed)]
        return out

    seen = [items(unit_config(cfg, u, "base-model")) for u in main]
    assert all(s == seen[0] for s in seen[1:])  # every seed, its control (same config) and the base rows
    assert len(seen[0]["svamp"]) == 1000 and len(seen[0]["asdiv"]) == 396 and len(seen[0]["mawps"]) == 50
    assert len(seen[0]["webtext"]) == len(seen[0]["lama"]) == cfg.eval.false_call_n
    # the secondary units (ablations, round 2) read the stated fixed SVAMP subset, the same full ASDiv fold
    ablation = Unit(0, "no_result_check", 1)
    sub = items(unit_config(cfg, ablation, "base-model"))
    assert len(sub["svamp"]) == 500 and set(sub["svamp"]) <= set(seen[0]["svamp"]) and sub["asdiv"] == seen[0]["asdiv"]


@pytest.mark.parametrize("seed", [1, 2])
def test_a_units_seed_does_not_reach_the_items(shared_data, seed):
    from toolformer.evaluation import language
    from toolformer.evaluation.evaluate import data_dir

    cfg = load_config("jobs/configs/math.yaml", [f"seed={seed}"])
    a = [x.uid for x in language.false_call_examples(data_dir(cfg), "webtext", 20, cfg.eval.items_seed)]
    b = [x.uid for x in language.false_call_examples(data_dir(cfg), "webtext", 20, 0)]
    assert a == b


def test_the_dev_split_is_the_same_problems_for_every_seed_model_and_control(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from toolformer.train.data import dev_split_ids, fixed_dev

    ids = [f"asdiv-{i:04d}" for i in range(120)]
    plain = {i: f"Problem {i}: 3 plus 4 is 7." for i in ids}
    pq.write_table(pa.table({"text_id": ids, "text": [plain[i] for i in ids]}), tmp_path / "texts.parquet")
    pq.write_table(pa.table({"text_id": ids}), tmp_path / "annotations.parquet")
    held = dev_split_ids(ids, 0.1, 32)
    assert len(held) == 32

    def cstar(seed: int) -> str:  # each seed keeps calls in other texts; some dev problems are among them
        kept = [i for k, i in enumerate(ids) if (k + seed) % 3 == 0]
        path = tmp_path / f"cstar{seed}.parquet"
        pq.write_table(pa.table({"text_id": kept, "text": [plain[i].replace("7", "[Calculator(3 + 4) -> 7] 7")
                                                          for i in kept]}), path)
        return str(path)

    seen = {}
    for seed in (0, 1, 2):
        f = cstar(seed)
        m_ids, m_texts = fixed_dev(str(tmp_path), [f], 0.1, 32, baseline=False)
        c_ids, c_texts = fixed_dev(str(tmp_path), [f], 0.1, 32, baseline=True)
        assert m_ids == c_ids == held  # every seed, the model and its control: the same problems
        assert c_texts == [plain[i] for i in held]  # the control reads them plain
        kept = set(pq.read_table(f).column("text_id").to_pylist())
        assert m_texts == [plain[i].replace("7", "[Calculator(3 + 4) -> 7] 7") if i in kept else plain[i]
                           for i in held]  # the model: its own C* version where it kept a call
        seen[seed] = m_texts
    assert seen[0] != seen[1]  # the seeds' C* differ, their dev problems do not


def test_the_plan_estimates_every_unit_and_learns_rates_from_a_timeline(capsys):
    from toolformer.experiments.experiment import plan
    from toolformer.experiments.plan import FIRST_RATES, estimate, measured_rates, print_plan

    cfg = load_config("jobs/configs/math.yaml")
    units = plan(cfg)
    total = print_plan(cfg, units, dict(FIRST_RATES))
    out = capsys.readouterr().out
    assert all(u.name in out for u in units) and "estimated total" in out and total > 0
    est = {u.name: estimate(cfg, u, dict(FIRST_RATES)) for u in units}
    assert est["seed0/no_result_check/r1"]["annotate"] == 0.0  # reuses the default annotation
    assert est["seed0/no_boundary_positions/r1"]["annotate"] == 0.0  # ... the union over both position sets
    assert "baseline" in est["seed0/default/r1"] and "baseline" not in est["seed0/default/r2"]  # baseline_rounds [1]
    timeline = [{"unit": "seed0/default/r1", "status": "done",
                 "phases_s": {"annotate": 300.0, "finetune": 370.0, "baseline": 310.0, "evaluate": 400.0}}]
    rates = measured_rates(cfg, timeline, dict(FIRST_RATES))
    assert rates["annotate_texts_per_s"] == round(cfg.corpus.limit / 300.0, 4)
    assert rates["finetune_s_per_text_epoch"] > 0 and rates["eval_items_per_s"] > 0
    assert "measured" in rates["source"]
    assert measured_rates(cfg, [], dict(FIRST_RATES)) is None


def test_the_false_call_diagnosis_reads_the_generations_as_the_evaluation_counts_them():
    from toolformer.experiments.math.diagnosis import false_call_diagnosis

    calc = lambda x: [{"tool": "Calculator", "input": x, "result": "1", "ok": True}]  # noqa: E731
    rows = [
        {"setting": "finetuned + tools", "task": "false_call_lama", "generation": "He had 3 cats and 4 dogs. How many "
         "pets? [Calculator(3 + 4) -> 7] 7", "calls": calc("3 + 4")},
        {"setting": "finetuned + tools", "task": "false_call_lama", "generation": "Answer: [Calculator(5 + 3) -> 8] 8",
         "calls": calc("5 + 3")},
        {"setting": "finetuned + tools", "task": "false_call_lama", "generation": "Paris.", "calls": []},
        # written by the model as text after its one call: not a call the decoder parsed, as the evaluation counts
        {"setting": "finetuned + tools", "task": "false_call_lama", "generation": "x [Calculator(1 + 1) -> 2]",
         "calls": []},
        {"setting": "finetuned + tools", "task": "svamp", "generation": "[Calculator(1 + 1) -> 2]", "calls": calc("1 + 1")},
    ]
    v = false_call_diagnosis(rows)["finetuned + tools"]["lama"]
    assert (v["prompts"], v["with_call"], v["with_call_share"]) == (4, 2, 50.0)
    assert v["question_before_call"] == 1 and v["operands_written_before"] == 1 and len(v["examples"]) == 2
    assert v["answer_before_call"] == 1
