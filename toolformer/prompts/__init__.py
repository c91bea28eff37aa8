"""Few-shot annotation prompts, one file per tool (the paper's shape, our own wording and examples).

Each file is an instruction, Input/Output examples, then ``Input:`` with the ``<<TEXT>>`` slot and
``Output:``. The text x appears in the Input slot, so the model may look ahead while it writes the Output
copy; the copy itself is x's token ids appended after the prompt, never re-tokenized.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

SLOT = "<<TEXT>>"


@functools.lru_cache(maxsize=None)
def load_prompt(tool: str, path: str | None = None) -> str:
    """The template of a tool (by name, or from a file path given in config)."""
    if path:
        text = Path(path).read_text(encoding="utf-8")
    else:
        name = tool.lower() + ".txt"
        try:
            text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KeyError(f"no prompt for tool {tool!r}") from None
    if text.count(SLOT) != 1 or not text.rstrip("\n").endswith("Output:"):
        raise ValueError(f"prompt for {tool!r} must contain {SLOT} once and end with 'Output:'")
    return text


def render_prompt(template: str, text: str) -> str:
    """P(x) up to and including the newline after ``Output:``; x's own tokens follow it."""
    return template.rstrip("\n").replace(SLOT, text) + "\n"
