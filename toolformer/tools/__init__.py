"""Tools the LM learns to call. Importing this package registers every built-in tool."""

from toolformer.tools.base import Tool, ToolRequest, build_tool, canonical_name, tool_class, tool_names
from toolformer.tools import calculator, calendar, mt, qa, wikisearch  # noqa: F401  (registration)

__all__ = ["Tool", "ToolRequest", "build_tool", "canonical_name", "tool_class", "tool_names"]
