"""Texts on which a tool has something to do, for the benchmark's and the tests' evidence (TEXTS rows).

The first C4 documents carry no arithmetic the Calculator accepts, so a saving measured there can be a no-op
(on the benchmark's 8 C4 documents no selected position had L(ε) under the 0.5-nat floor: pruning removed
nothing) and a comparison can measure nothing (the Calendar's call is the fixed string ``Calendar()``, so every
sample at a position is the same call). These are real texts where the tools have something to do:

- ``worked_problems``: ASDiv (``asdiv/ASDiv.xml``) word problems whose formula is one step ``a + b`` or ``a * b``
  with an answer of four digits or more (a sum or product the 135M model cannot do in its head), written as a
  question and a worked answer: ``Question: <body> <question>\\nAnswer: 8 * 1785 = 14280``. The Calculator's
  heuristic accepts every one (three numbers, one the result of the other two). In the worked answer the
  restated operands are copies of the question's numbers, so the model is sure of them (L(ε) under 0.5 nats at
  the space before one of them in most problems: positions pruning removes); a call can help where a number
  follows from others (SmolLM2-135M keeps a few, with gains of 0.5-0.8 nats, e.g. ``[Calculator(1415 / 5) ->
  283]`` before "283 people" in the question, the model having read the whole text in the prompt's Input).
- ``wikipedia``: embedded Wikipedia summaries, as the demo picks them (``jobs/demo.py``): some with arithmetic
  (the Calculator's heuristic), the rest plain; every one has a title and a date.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from toolformer.paths import shared_data

_FORMULA = re.compile(r"(\d+)([+*])(\d+)=(\d+)")


def _row(text_id: str, text: str, source: str, url=None, date=None, title=None) -> dict:
    return dict(text_id=f"{text_id}#0", doc_id=text_id, chunk=0, url=url, date=date, title=title, source=source,
                text=text)


def worked_problems(n: int, data: Path | None = None, min_answer_digits: int = 4, ids: list[str] | None = None) -> list[dict]:
    """The first ``n`` ASDiv problems (in file order, or those in ``ids``) with a one-step ``+``/``*`` formula and
    an answer of at least ``min_answer_digits`` digits, as ``Question: …\\nAnswer: a op b = c`` (no date: the
    Calendar's heuristic leaves them out)."""
    path = (data or shared_data()) / "asdiv" / "ASDiv.xml"
    rows = []
    for p in ET.parse(path).getroot().iter("Problem"):
        m = _FORMULA.fullmatch((p.findtext("Formula") or "").replace(" ", ""))
        if not m or len(m.group(4)) < min_answer_digits or (ids is not None and p.get("ID") not in ids):
            continue
        a, op, b, c = m.groups()
        question = f"{(p.findtext('Body') or '').strip()} {(p.findtext('Question') or '').strip()}"
        rows.append(_row(f"asdiv-{p.get('ID')}", f"Question: {question}\nAnswer: {a} {op} {b} = {c}",
                         f"{path.name}:{p.get('ID')}"))
        if len(rows) == n:
            break
    return rows


def wikipedia(n: int, tokenizer, max_text_tokens: int = 256, date: str = "2023-01-30", seed: int = 0) -> list[dict]:
    """TEXTS rows of ``n`` embedded Wikipedia summaries picked as the demo picks them (a fifth with a foreign
    phrase, up to half with arithmetic, the rest plain) with a fixed document date."""
    import tempfile

    from jobs.demo import write_demo_corpus
    from toolformer.config import CorpusConfig
    from toolformer.corpus import SkipLog, corpus_documents, texts_of

    with tempfile.TemporaryDirectory() as tmp:
        path = write_demo_corpus(Path(tmp) / "wiki.jsonl", n, "en-us", date, seed)
        docs = list(corpus_documents(CorpusConfig(paths=[str(path)]), SkipLog()))
    return [t for doc in docs for t in texts_of(doc, tokenizer, max_text_tokens)]
