"""Training set-up that must never wait forever: DeepSpeed's CPU shared-memory op is never JIT-built (a killed
build leaves a lock file every later build waits on; seen on this machine), so nothing compiles or waits."""

from __future__ import annotations

import os


def test_deepspeed_on_cpu_builds_no_shm_op_and_waits_on_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    # a stale lock where a killed build left it: the build would wait on it forever
    (tmp_path / "py311_cpu" / "deepspeed_shm_comm").mkdir(parents=True)
    (tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock").write_text("")
    from deepspeed.comm.torch import build_shm_op

    from toolformer.train.loop import without_shm_jit

    without_shm_jit()
    assert build_shm_op() is None  # returns at once: no build, no wait
    assert not any(p.suffix == ".so" for p in tmp_path.rglob("*"))
    assert os.environ["DS_ACCELERATOR"] == "cpu"
