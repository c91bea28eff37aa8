"""Docs generated from the code: ``python -m jobs.docs`` writes docs/configuration.md from the config classes;
``python -m jobs.docs --check`` exits 1, saying so, when the file is not what the classes give now.

The page reads only ``toolformer.config.config_reference()`` (dotted key, default, comment for every key), so it
follows the config classes wherever they live.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGURATION = REPO / "docs" / "configuration.md"
COMMAND = "python -m jobs.docs"

HEADER = """\
# Configuration reference

Every config key with its default and what it is for. **Generated** from the config classes (through
`toolformer.config.config_reference()`) by `{command}`: do not edit it by hand. `{command} --check`
(run by `tests/test_docs.py`) fails when this page is out of date.

Every job reads the same keys. They are set, later wins, by the classes' defaults (the column below), a YAML file
and dotted overrides on the command line:

```bash
toolformer annotate --config jobs/configs/default.yaml corpus.limit=100 annotate.tools=[Calculator]
python -m jobs.finetune --config FILE key.sub=value ...     # the same, without the `toolformer` command
toolformer annotate --help                                   # this list, on the terminal
```

The YAML files in [jobs/configs/](../jobs/configs/) are the starting points: `default.yaml` (the paper's settings
on the embedded model and corpus), `demo.yaml`, `cluster.yaml` (a GPU cluster, with commented presets),
`bootstrap.yaml`, `math_corpus.yaml`, `math.yaml`, the benchmarks' `bench*.yaml`, and DeepSpeed's `ds_zero2.yaml`
/ `ds_zero3.yaml` (`train.deepspeed_config`). Each file's comments say what it changes and why. A misspelt key or
a value outside a fixed set fails before the run, naming the valid ones; tool options
(`annotate.tool_options.<Tool>`) are each tool's own and listed in [tools.md](tools.md).

Useful overrides: `engine.backend=hf` (the transformers reference engine), `model.name_or_path=/path/to/hf` (any
causal LM folder or hub name), `model.dtype=bfloat16` (2-3x faster on CPU, but see
[method.md](method.md#exactness)), `annotate.tools=[Calculator]`, `annotate.per_tool.Calendar.tau_f=2.0`,
`corpus.limit=100`, `corpus.max_text_tokens=512`, `annotate.no_result_form=bare` (`[T(x)]` instead of the paper's
`[T(x) -> ]`).
"""

TOP = "top level"


def _escape_text(text: str) -> str:
    """Markdown-safe table cell text: code spans kept as they are (pipes escaped), elsewhere HTML and emphasis
    characters escaped so that GitHub shows them as written."""
    out = []
    for i, part in enumerate(re.split(r"(`[^`]*`)", text)):
        if i % 2:  # a code span
            out.append(part.replace("|", "\\|"))
            continue
        part = part.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        for ch in "|*_[]":
            part = part.replace(ch, "\\" + ch)
        out.append(part)
    return "".join(out)


def _code(value: str) -> str:
    """A default as a code span (a backtick inside one needs a longer fence)."""
    value = value.replace("|", "\\|")
    fence = "``" if "`" in value else "`"
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def sections(rows: list[tuple[str, str, str]]) -> dict[str, list[tuple[str, str, str]]]:
    """Rows grouped by their top-level section, in the order the config classes declare them."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for key, default, comment in rows:
        out.setdefault(key.split(".", 1)[0] if "." in key else TOP, []).append((key, default, comment))
    return out


def render_configuration(rows: list[tuple[str, str, str]] | None = None) -> str:
    """docs/configuration.md from ``config_reference()`` rows (the current config classes when none given)."""
    if rows is None:
        from toolformer.config import config_reference

        rows = config_reference()
    groups = sections(rows)
    lines = [HEADER.format(command=COMMAND), "Sections: " + " · ".join(
        f"[{name}](#{name.replace(' ', '-')})" for name in groups) + "\n"]
    for name, items in groups.items():
        title = "Top level" if name == TOP else f"`{name}`"
        lines.append(f"## {title}\n")
        lines.append("| key | default | what it is for |")
        lines.append("|---|---|---|")
        for key, default, comment in items:
            lines.append(f"| {_code(key)} | {_code(default)} | {_escape_text(comment)} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def configuration_problem(path: Path = CONFIGURATION) -> str | None:
    """None when ``path`` is what the config classes give now; otherwise what is wrong and how to fix it."""
    want = render_configuration()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    if not path.exists():
        return f"{shown} is missing: run `{COMMAND}`"
    if path.read_text(encoding="utf-8") != want:
        return f"{shown} is out of date with the config classes: run `{COMMAND}`"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is out of date")
    args = parser.parse_args(argv)
    if args.check:
        problem = configuration_problem()
        if problem:
            print(problem, file=sys.stderr)
            return 1
        print(f"{CONFIGURATION.relative_to(REPO)} is up to date")
        return 0
    CONFIGURATION.parent.mkdir(parents=True, exist_ok=True)
    CONFIGURATION.write_text(render_configuration(), encoding="utf-8")
    print(f"wrote {CONFIGURATION.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
