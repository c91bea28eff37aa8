import datetime as dt
import time

import pytest

from toolformer.tools import ToolRequest, build_tool, canonical_name, tool_names
from toolformer.tools.calculator import calculate
from toolformer.tools.calendar import date_from_url, document_date, format_date


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("10-2-3", "5"),
        ("2+3*4", "14"),
        ("(2+3)*4", "20"),
        ("100/10/5", "2"),
        ("2*3/4", "1.5"),
        ("723 / 252", "2.87"),
        ("400 / 1400", "0.29"),
        ("1,234 + 5", "1239"),
        ("1,234,567 - 0.5", "1234566.5"),
        ("0.1 + 0.2", "0.3"),
        (".5 * 4", "2"),
        ("-3 + 5", "2"),
        ("-(2 - 7)", "5"),
        ("18 + 12 x 3", "54"),
        ("12 × 3 ÷ 4 − 1", "8"),
        ("1/3", "0.33"),
        ("2/3", "0.67"),
        ("-1/3", "-0.33"),
        ("0.001 * 3", "0"),
    ],
)
def test_calculator_semantics(expr, expected):
    assert calculate(expr) == expected


@pytest.mark.parametrize(
    "expr",
    ["", "   ", "1/0", "2 +", "(1 + 2", "1 + 2)", "2 ** 3", "1,2 + 3", "abc", "3 % 2", "1e5", "sqrt(4)", "2 3"],
)
def test_calculator_invalid(expr):
    assert calculate(expr) is None


@pytest.mark.parametrize("expr", ["2", "(2)", "-2", "3.0", "  7  ", "((5))", "+4", "-(-3)", "1,500"])
def test_calculator_no_op_is_not_a_call(expr):
    """A number alone is not a calculation: the tool returns nothing, as for invalid input (DESIGN §1.7)."""
    assert calculate(expr) is None


@pytest.mark.parametrize("expr, expected", [("400 / 1400", "0.29"), ("2 * (3 + 4)", "14"), ("-2 + 2", "0"), ("(7) * 2", "14"),
                                            ("(3 + 4) * 1", "7"), ("2 * 1 + 3", "5"), ("0 * 7", "0"), ("0 - 7", "-7")])
def test_calculator_with_an_operation_is_a_call(expr, expected):
    """Identities beside a real operation leave a calculation (``(3 + 4) * 1`` still adds)."""
    assert calculate(expr) == expected


IDENTITIES = [("7 * 1", "7"), ("1 * 7", "7"), ("7 + 0", "7"), ("0 + 7", "7"), ("7 - 0", "7"), ("7 / 1", "7"),
              ("(7) * 1", "7"), ("12.5 / 1.0", "12.5"), ("1 * 7 + 0", "7"), ("2", "2"), ("(2)", "2")]


@pytest.mark.parametrize("expr, value", IDENTITIES)
def test_calculator_identities_are_no_ops_unless_the_option_is_off(expr, value):
    """skip_noops (on by default, our departure from the paper): an identity calculates nothing and gets no
    result; off, the tool answers as the paper's does."""
    from toolformer.tools.calculator import is_no_op

    assert is_no_op(expr)
    assert calculate(expr) is None and calculate(expr, skip_noops=True) is None
    assert calculate(expr, skip_noops=False) == value


def test_calculator_skip_noops_is_a_config_option():
    from toolformer.config import load_config
    from toolformer.tools import check_tool_options

    exprs = [ToolRequest(e) for e, _ in IDENTITIES] + [ToolRequest("2 + 2")]
    assert build_tool("Calculator")(exprs) == [None] * len(IDENTITIES) + ["4"]
    cfg = load_config(None, ["annotate.tool_options.Calculator.skip_noops=false"])
    check_tool_options(cfg)
    off = build_tool("Calculator", **cfg.annotate.tool_options["Calculator"])
    assert off.options.skip_noops is False
    assert off(exprs) == [v for _, v in IDENTITIES] + ["4"]
    with pytest.raises(ValueError, match="valid: skip_noops"):
        build_tool("Calculator", skip_noop=False)


HOSTILE = [
    "9**9**9",
    "__import__('os').system('true')",
    "(" * 10_000 + "1" + ")" * 10_000,
    "9" * 10_000,
    "9" * 10_000 + " * " + "9" * 10_000,
    "-" * 10_000 + "1",
    "1" + "*999999999999" * 18,
    "((((((((((((((((((((((((((((((((((((((1))))))))))))))))))))))))))))))))))))))",
    "\x00\xff" * 1000,
]


@pytest.mark.parametrize("expr", HOSTILE, ids=range(len(HOSTILE)))
def test_calculator_hostile_input_returns_nothing_fast(expr):
    t0 = time.perf_counter()
    assert calculate(expr) is None
    assert time.perf_counter() - t0 < 0.05


def test_calculator_tool_never_raises():
    tool = build_tool("calculator")
    assert tool([ToolRequest("2 + 2"), ToolRequest(None), ToolRequest("9**9**9")]) == ["4", None, None]


def test_calendar_format_and_sources():
    assert format_date(dt.date(2023, 1, 30)) == "Today is Monday, January 30, 2023."
    assert date_from_url("https://example.com/news/2017/03/09/story.html") == dt.date(2017, 3, 9)
    assert date_from_url("https://example.com/blog/2019-07-17-title") == dt.date(2019, 7, 17)
    assert date_from_url("https://example.com/2016/05/page") == dt.date(2016, 5, 1)
    assert date_from_url("https://example.com/item/12345678/2019") is None
    assert date_from_url("https://example.com/v2.13.0/docs") is None
    assert date_from_url(None) is None
    fields = {"date": "2019-07-17T12:15:59Z"}
    assert document_date("https://x.com/2017/03/09/a", fields) == (dt.date(2017, 3, 9), "url")
    assert document_date("https://x.com/a", fields, ("url", "date")) == (dt.date(2019, 7, 17), "date")
    assert document_date("https://x.com/a", {}, ("url", "date")) == (None, None)


def test_calendar_tool():
    tool = build_tool("Calendar")
    out = tool([ToolRequest("", {"date": "2023-01-30"}), ToolRequest("tomorrow", {"date": "2023-01-30"}), ToolRequest("", {})])
    assert out == ["Today is Monday, January 30, 2023.", None, None]
    fixed = build_tool("calendar", today="2020-02-29")
    assert fixed([ToolRequest("")]) == ["Today is Saturday, February 29, 2020."]


def test_registry():
    assert {"Calculator", "Calendar"} <= set(tool_names())
    assert canonical_name("CALCULATOR") == "Calculator"
    with pytest.raises(KeyError, match="unknown tool"):
        build_tool("Teleporter")


def test_unknown_tool_option_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) max_tokenz for tool WikiSearch; valid: .*max_tokens"):
        build_tool("WikiSearch", max_tokenz=20)
    with pytest.raises(ValueError, match="valid: today"):
        build_tool("Calendar", day="2020-01-01")
    from toolformer.config import load_config
    from toolformer.tools import check_tool_options

    cfg = load_config(None, ["annotate.tools=[Calculator,QA]", "annotate.tool_options.QA.passage=2"])
    with pytest.raises(ValueError, match="passage for tool QA; valid: .*passages"):
        check_tool_options(cfg)
    check_tool_options(load_config(None, ["annotate.tool_options.QA.passages=2"]))


def test_a_tool_that_raises_is_a_counted_tool_exception_and_the_run_goes_on(caplog):
    """One request's exception costs that call: the batch's other calls keep their results, the error is
    recorded per candidate as tool_exception (apart from rejected inputs) and logged once per type."""
    import logging

    import pyarrow as pa

    from toolformer.annotate.stages import ExecuteCalls
    from toolformer.config import load_config
    from toolformer.report import funnel
    from toolformer.schemas import ANNOTATIONS, WORK, conform

    class Flaky(type(build_tool("Calculator"))):
        def run(self, request):
            if "7" in request.input:
                raise ZeroDivisionError("a bug in the tool")
            return super().run(request)

    cand = lambda inp: dict(position=1, char_start=1, input=inp, kept=False)  # noqa: E731
    rows = [dict(text_id=f"t{i}", doc_id=f"d{i}", tool="Calculator", status="annotated", text="x", n_candidates=3,
                 positions=[], x_ids=[], x_offsets=[], candidates=[cand("1 + 1"), cand("7 * 2"), cand("2 ** oops")])
            for i in range(2)]
    table = pa.Table.from_pylist(rows, schema=WORK)
    stage = ExecuteCalls(load_config(None, ["annotate.tools=[Calculator]"]))
    stage.tools = {"Calculator": Flaky()}
    with caplog.at_level(logging.WARNING, logger="toolformer.tools"):
        out = stage(table)
    cands = out.column("candidates").to_pylist()
    assert [[c["result"] for c in cs] for cs in cands] == [["2", None, None]] * 2
    assert [c["error"] for c in cands[0]] == [None, "tool_exception: ZeroDivisionError: a bug in the tool", "no_result"]
    assert out.column("n_executed").to_pylist() == [1, 1]
    assert sum("ZeroDivisionError" in r.message for r in caplog.records) == 1  # logged once, counted twice
    f = funnel(conform(out, ANNOTATIONS))["Calculator"]
    assert f["tool_exceptions"] == 2 and f["rejected_inputs"] == 2 and f["executed"] == 2
