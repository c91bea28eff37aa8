"""Where things are: the checkout, and the shared evaluation/test data beside it."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout this package runs from (workers of a local Ray import it from here)."""
    return Path(__file__).resolve().parents[1]


def shared_data(override: str | os.PathLike | None = None) -> Path:
    """Evaluation and benchmark data: ``override``, else ``$TOOLFORMER_SHARED_DATA``, else ``../shared/data``."""
    return Path(override or os.environ.get("TOOLFORMER_SHARED_DATA") or repo_root().parent / "shared" / "data")
