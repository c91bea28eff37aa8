"""Tools the LM learns to call. Importing this package registers every built-in tool."""

from toolformer.tools.base import (Selection, Tool, ToolRequest, ToolResult, build_tool, canonical_name, make_options,
                                   tool_class, tool_names)
from toolformer.tools import calculator, calendar, mt, qa, wikisearch  # noqa: F401  (registration)


def check_tool_options(cfg) -> None:
    """Every ``annotate.tool_options`` entry names a known tool and only options it declares (fail before a run)."""
    for name, options in (cfg.annotate.tool_options or {}).items():
        cls = tool_class(name)
        make_options(cls.Options, dict(options or {}), cls.name)


__all__ = ["Selection", "Tool", "ToolRequest", "ToolResult", "build_tool", "canonical_name", "check_tool_options",
           "tool_class", "tool_names"]
