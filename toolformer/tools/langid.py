"""Language identification (py3langid, a packaged model: no download), shared by the MT tool and the MT
text heuristic (``heuristics.foreign_chunk``), so that neither module imports the other."""

from __future__ import annotations

import functools
import re

_LETTERS = re.compile(r"[^\W\d_]", re.UNICODE)


@functools.lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) by py3langid; ("", 0.0) for text without letters."""
    if not text or not _LETTERS.search(text):
        return "", 0.0
    lang, prob = _identifier().classify(text)
    return lang, float(prob)
