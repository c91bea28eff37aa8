"""Shared fixtures. Heavy ones (the vLLM engine, the reference model) are built once per session."""

from __future__ import annotations

import os

# Before any Hugging Face import: a hub name must fail fast, never retry over a closed network.
for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before Ray is imported (it reads this once): every Ray a test starts in-process listens on loopback only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ.get("TOOLFORMER_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"test data not found at {path} (set TOOLFORMER_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def model_path() -> str:
    from toolformer.models import ensure_embedded_model

    return str(ensure_embedded_model())


@pytest.fixture(scope="session")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="session")
def vllm_engine(model_path):
    """The real vLLM engine on the embedded model, fp32, top-20 log-probs (the paper's cheap form)."""
    from toolformer.engine.vllm_engine import VLLMEngine

    engine = VLLMEngine(model_path, "float32", seed=0, max_model_len=2048, top_logprobs=20, block_size=32)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def reference_model(model_path):
    """An independent transformers model: the yardstick for the engine's numbers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval()
    return model
