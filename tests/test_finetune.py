"""Finetuning on a real local Ray: 2 Ray Train workers, DeepSpeed ZeRO-2 on CPU (gloo), the embedded model.

One run of 4 steps serves the module: rank 0 is made to crash once right after the step-2 checkpoint, so the
same run shows that training resumes from that checkpoint (not from zero), that the loss falls on the fixed
training set, and that the exported checkpoint loads in the vLLM engine and generates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolformer.calls import Call, linearize
from toolformer.schemas import ANNOTATIONS, CSTAR, TEXTS, to_table
from toolformer.run.store import Store
from toolformer.tools import ToolRequest, build_tool

REPO = Path(__file__).resolve().parents[1]
CSTAR_PART = "cstar/part-00000.parquet"


def _texts(shared_data: Path, n: int) -> list[str]:
    out = []
    for line in (shared_data / "webtext" / "ccnet_output_20docs_text_trimmed.jsonl").read_text().splitlines():
        text = json.loads(line)["raw_content"].strip()
        if 200 < len(text) < 900:
            out.append(text)
    return out[:n]


@pytest.fixture(scope="module")
def merged_run(tmp_path_factory, shared_data) -> Path:
    """A merged run made by hand: 4 texts with a real Calculator call each (C*), 3 plain texts for dev."""
    run = tmp_path_factory.mktemp("ft") / "run"
    texts = _texts(shared_data, 7)
    assert len(texts) == 7
    calc = build_tool("Calculator")
    rows, cstar = [], []
    for i, text in enumerate(texts):
        rows.append(dict(text_id=f"d{i}#0", doc_id=f"d{i}", chunk=0, url=None, date=None, title=None, source="test", text=text))
        if i < 4:
            expr = f"{12 * (i + 1)} * {3 + i}"
            call = linearize(Call("Calculator", expr, calc([ToolRequest(expr)])[0]))
            cut = text.index(" ", 40)
            aug = f"{text[:cut]} {call}{text[cut:]}"
            start = cut + 1
            cstar.append(dict(text_id=f"d{i}#0", doc_id=f"d{i}", shard_id="local", text=aug, n_calls=1,
                              calls=[dict(tool="Calculator", input=expr, result=None, position=0, char_start=start,
                                          char_end=start + len(call), gain=1.0)]))
    store = Store(run)
    store.write_table(to_table(rows, TEXTS), "texts.parquet")
    store.write_table(ANNOTATIONS.empty_table(), "annotations.parquet")
    store.write_table(to_table(cstar, CSTAR), CSTAR_PART)
    (run / "merge.json").write_text(json.dumps({"parts": [CSTAR_PART]}))
    return run


@pytest.fixture(scope="module")
def finetuned(merged_run, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ft-out")
    flag = out / "crashed.txt"
    env = {**os.environ, "TOOLFORMER_FAULT_TRAIN_CRASH_AT": "2", "TOOLFORMER_FAULT_ONCE_FILE": str(flag),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.finetune", "name=fttest", f"output_dir={merged_run}", f"train.out_dir={out}",
           "train.seq_len=128", "train.effective_batch=4", "train.micro_batch=1", "train.lr=1e-4", "train.max_steps=4",
           "train.eval_every=2", "train.dev_size=8", "train.deepspeed_config=jobs/configs/ds_zero2.yaml",
           "train.num_workers=2", "train.max_failures=1", "ray.num_cpus=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"finetune failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    summary = json.loads((out / "fttest-toolformer" / "finetune.json").read_text())
    return {"summary": summary, "crashed": flag.exists(), "out": out}


def test_resume_after_crash_continues_from_the_checkpoint_step(finetuned):
    assert finetuned["crashed"], "rank 0 was to crash once after the step-2 checkpoint"
    final = finetuned["summary"]["final"]
    assert final["step"] == 4
    assert final["resumed_from"] == 2 and final["steps_this_attempt"] == 2, final  # steps 3-4 only, not from zero


def test_a_finished_run_keeps_its_exports_not_its_deepspeed_state(finetuned):
    """The DeepSpeed state (2.6 GB a checkpoint here) only served to resume; best/ and last/ stay, and last/ is
    hard links to best/ when the last checkpoint is the best."""
    summary, out = finetuned["summary"], finetuned["out"]
    assert summary["train_state"] is None and not (out / "ray_train").exists()
    best, last = (Path(summary["checkpoints"][k]) / "model.safetensors" for k in ("best", "last"))
    same = summary["best_dev_ppl"] == summary["final"]["dev_ppl"]
    assert (best.stat().st_ino == last.stat().st_ino) == same, (summary["best_dev_ppl"], summary["final"])


def _mean_loss(model_path: str, merged_run: Path) -> float:
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    losses = []
    with torch.no_grad():
        for text in pq.read_table(merged_run / CSTAR_PART).column("text").to_pylist():
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:128]])
            losses.append(float(model(input_ids=ids, labels=ids).loss))
    return sum(losses) / len(losses)


def test_loss_falls_on_the_training_set(finetuned, merged_run, model_path):
    last = finetuned["summary"]["checkpoints"]["last"]
    assert set(os.listdir(last)) >= {"config.json", "model.safetensors", "tokenizer.json"}
    before, after = _mean_loss(model_path, merged_run), _mean_loss(last, merged_run)
    assert after < before - 0.05, (before, after)
    assert finetuned["summary"]["best_dev_ppl"] > 1.0


@pytest.mark.slow  # 34 s: make test's tiny math round loads a finetuned checkpoint in the vLLM engine and decodes with it
def test_checkpoint_is_evaluated_in_the_vllm_engine(finetuned, merged_run, model_path):
    """The exported folder loads in the vLLM engine as it is: its perplexity on the training texts, computed
    by the engine, is below the base model's, and it generates."""
    code = (
        "import json, math, sys\n"
        "import pyarrow.parquet as pq\n"
        "from toolformer.engine.vllm_engine import VLLMEngine\n"
        "texts = pq.read_table(sys.argv[3]).column('text').to_pylist()\n"
        "out = {}\n"
        "for label, path in (('base', sys.argv[1]), ('finetuned', sys.argv[2])):\n"
        "    e = VLLMEngine(path, 'float32', seed=0, max_model_len=512, cpu_kv_cache_gib=1)\n"
        "    seqs = [e.doc_start + e.encode(t)[:128] for t in texts]\n"
        "    lps = e.sequence_logprobs(seqs, [len(e.doc_start)] * len(seqs))\n"
        "    nll = -sum(float(x.sum()) for x in lps) / sum(len(x) for x in lps)\n"
        "    gen = e.sample([e.encode('The total cost is 36 * 5 =')], n=1, max_tokens=8, stop=']', temperature=0.0, seeds=[0])\n"
        "    out[label] = {'ppl': math.exp(nll), 'text': gen[0][0].text}\n"
        "    e.close()\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, model_path, finetuned["summary"]["checkpoints"]["last"],
                           str(merged_run / CSTAR_PART)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["finetuned"]["ppl"] < res["base"]["ppl"] * 0.95, res
    assert res["finetuned"]["text"].strip(), "the finetuned checkpoint generated nothing"
