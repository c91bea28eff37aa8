"""Every config key with its default and the comment beside it in its schema module: what ``toolformer <job> --help``
lists and ``python -m jobs.docs`` writes into docs/configuration.md."""

from __future__ import annotations

import json

from toolformer.config.schema import RunConfig


def config_reference() -> list[tuple[str, str, str]]:
    """(dotted key, default, comment) for every setting, read from the dataclasses and the comments beside them
    in the schema modules: what ``toolformer <job> --help`` lists."""
    import ast
    import dataclasses
    import inspect
    import io
    import sys
    import tokenize

    def sections(cls: type) -> set[str]:  # the modules that define RunConfig and every section under it
        found = {cls.__module__}
        for f in dataclasses.fields(cls):
            value = getattr(cls(), f.name) if f.default is dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(value):
                found |= sections(type(value))
        return found

    parsed: dict[str, tuple[dict, set, dict]] = {}  # per module: comments, standalone comment lines, field lines
    for module in (sys.modules[name] for name in sorted(sections(RunConfig))):
        source = inspect.getsource(module)
        comments = {tok.start[0]: tok.string.lstrip("# ").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
        src_lines = source.splitlines()
        standalone = {n for n in comments if src_lines[n - 1].lstrip().startswith("#")}
        lines: dict[tuple[str, str], int] = {}
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        lines[(node.name, item.target.id)] = item.lineno
        parsed[module.__name__] = (comments, standalone, lines)

    def comment(cls: type, name: str) -> str:
        comments, standalone, lines = parsed.get(cls.__module__, ({}, set(), {}))
        line = lines.get((cls.__name__, name))
        if line is None:
            return ""
        if line in comments:
            return comments[line]
        above, k = [], line - 1
        while k in standalone:  # a comment block right above the field
            above.insert(0, comments[k])
            k -= 1
        return " ".join(above)

    out: list[tuple[str, str, str]] = []

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            else:
                shown = json.dumps(value if not isinstance(value, dict) else
                                   {k: (vars(v) if dataclasses.is_dataclass(v) else v) for k, v in value.items()},
                                   default=str)
                out.append((key, shown, comment(type(obj), f.name)))

    walk(RunConfig(), "")
    return out
