"""The soak's model: SmolLM2-135M's architecture and tokenizer shrunk to 2 layers of width 128, random weights from a
fixed seed, built once into the model cache. The start-of-call tokens (``[``, `` [``) and the closing ones (``)``,
``]``, ``)]``) are lifted into the top-20 by a constant hidden dimension that only their output weights read: a
uniformly random model never has ``[`` among its 20 most likely tokens, and its constrained calls would rarely close;
with them there, positions come from the top-k log-probs and every sampled call closes, as with a trained model.
The machinery, not the LM, is what costs in the soak and the fault tests."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_MODEL = "soak-tiny-llama-v1"  # change the name when tiny_model changes: the cache is keyed by it


def tiny_model(seed: int = 0) -> dict:
    """The tiny model's folder (built once into the model cache, deterministic) and what it is."""
    from toolformer.models import cache_root

    folder = cache_root() / "models" / f"{TINY_MODEL}-seed{seed}"
    if not (folder / "soak_model.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        try:
            info = build_tiny_model(tmp, seed)
            (tmp / "soak_model.json").write_text(json.dumps(info))
            try:
                os.replace(tmp, folder)
            except OSError:  # another soak built it meanwhile: same seed, same weights
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(folder), **json.loads((folder / "soak_model.json").read_text())}


def build_tiny_model(folder: Path, seed: int = 0) -> dict:
    """The embedded model's architecture and tokenizer, 2 layers of width 128, random weights (see the module doc)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from toolformer.models import ensure_embedded_model

    src = ensure_embedded_model()
    tok = AutoTokenizer.from_pretrained(src)
    cfg = LlamaConfig.from_pretrained(src)
    cfg.update(dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                    intermediate_size=256, tie_word_embeddings=False))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    vocab = {i: tok.convert_tokens_to_string([t]) for t, i in tok.get_vocab().items()}
    starts = sorted(i for i, s in vocab.items() if s in ("[", " ["))
    closing = sorted(i for i, s in vocab.items() if s in (")", ")]", "]"))
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0  # a constant direction in the residual stream ...
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[starts, 0] = 0.3  # ... that only the start-of-call tokens read: top-20, p ≈ 7e-4
        model.lm_head.weight[closing, 0] = 0.3  # and the closing ones: a constrained call closes in a few tokens
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"name": TINY_MODEL, "parameters": sum(p.numel() for p in model.parameters()), "layers": 2,
            "hidden_size": 128, "vocab_size": cfg.vocab_size, "seed": seed, "lifted_token_ids": starts + closing}
