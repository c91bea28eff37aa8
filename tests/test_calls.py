import string

import pytest
from hypothesis import given, settings, strategies as st

from toolformer.calls import Call, NoResultForm, clean_field, find_calls, linearize, parse_call, start_token_ids

TOOLS = ["Calculator", "Calendar", "QA", "WikiSearch", "MT"]
# Inputs and results as tools produce them: any printable text; clean_field makes them safe inside a call.
text = st.text(alphabet=string.printable + "éßü→“”", max_size=60)


@settings(max_examples=300, deadline=None)
@given(tool=st.sampled_from(TOOLS), inp=text, result=text, quote=st.booleans())
def test_round_trip_with_result(tool, inp, result, quote):
    inp_c, res_c = clean_field(inp), clean_field(result)
    if quote:
        inp_c = inp_c.replace('"', "'")
    line = linearize(Call(tool, inp, result), quote_input=quote)
    parsed = parse_call(line, TOOLS)
    if not quote and (inp_c.count("(") != inp_c.count(")") or _unbalanced(inp_c) or _quoted(inp_c)):
        return  # a bare input with stray parentheses or its own quotes is not representable
    assert parsed == Call(tool, inp_c, res_c or None)


def _unbalanced(s):
    depth = 0
    for ch in s:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return True
    return depth != 0


def _quoted(s):
    return len(s) >= 2 and s[0] in "\"'“«„" and s[-1] in "\"'”»“"


@settings(max_examples=200, deadline=None)
@given(tool=st.sampled_from(TOOLS), inp=text, form=st.sampled_from(list(NoResultForm)))
def test_round_trip_without_result(tool, inp, form):
    line = linearize(Call(tool, inp), with_result=False, quote_input=True, no_result_form=form)
    assert parse_call(line, TOOLS) == Call(tool, clean_field(inp).replace('"', "'"), None)


def test_no_result_forms():
    c = Call("Calculator", "400 / 1400", "0.29")
    assert linearize(c) == "[Calculator(400 / 1400) -> 0.29]"
    assert linearize(c, with_result=False) == "[Calculator(400 / 1400) -> ]"
    assert linearize(c, with_result=False, no_result_form="bare") == "[Calculator(400 / 1400)]"
    assert linearize(Call("QA", "Who founded X?", "Jane Doe"), quote_input=True) == '[QA("Who founded X?") -> Jane Doe]'


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Calculator(400 / 1400)", Call("Calculator", "400 / 1400")),
        ("  calculator ( 2+3 ) ", Call("Calculator", " 2+3 ".strip())),
        ("[Calculator((2+3)*4) -> 20]", Call("Calculator", "(2+3)*4", "20")),
        ('QA("Who is X?") → Jane', Call("QA", "Who is X?", "Jane")),
        ("QA(“Who is X?”)", Call("QA", "Who is X?")),
        ("MT('tortuga')->turtle", Call("MT", "tortuga", "turtle")),
        ('WikiSearch("a (b)") -> x (y)', Call("WikiSearch", "a (b)", "x (y)")),
        ("Calendar()", Call("Calendar", "")),
        ("Calendar() -> ", Call("Calendar", "")),
    ],
)
def test_parse_messy_output(raw, expected):
    assert parse_call(raw, TOOLS) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "Calculator", "Calculator(2+3", "Calculator)(", 'Calendar()("Oct 10")', "Search(x)", "Calc[ulator(1)",
     "Calculator(1)\nmore", "123(4)", "(2+3)"],
)
def test_parse_rejects_non_calls(raw):
    assert parse_call(raw, TOOLS) is None


def test_find_calls_in_augmented_text():
    t = "Out of 1400, 400 (or [Calculator(400 / 1400) -> 0.29] 29%) passed [1]. [Calendar() -> Today is Monday, January 30, 2023.] ok"
    spans = list(find_calls(t, TOOLS))
    assert [s.call for s in spans] == [
        Call("Calculator", "400 / 1400", "0.29"),
        Call("Calendar", "", "Today is Monday, January 30, 2023."),
    ]
    assert t[spans[0].start : spans[0].end] == "[Calculator(400 / 1400) -> 0.29]"


def test_clean_field_keeps_calls_parseable():
    result = "Paris [1] is -> the capital\n of France]"
    line = linearize(Call("WikiSearch", "Paris", result), quote_input=True)
    assert line.count("[") == 1 and line.endswith("]") and line.count("]") == 1
    assert parse_call(line, TOOLS).result == "Paris (1) is the capital of France)"


def test_start_token_ids(tokenizer):
    ids = start_token_ids(tokenizer)
    assert sorted(tokenizer.decode([i]) for i in ids) == [" [", "["]


@pytest.mark.parametrize("tool", ["Calculator", "Calendar", "WikiSearch", "QA", "MT"])
def test_every_call_the_constrained_syntax_admits_parses(tool):
    """Constrained sampling (``annotate.call_syntax=constrained``) may only write calls the parser reads back: the
    input pattern admits nothing the parser takes for structure ("[" or an arrow inside a quoted input did)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from toolformer.tools import tool_class

    unparsed = []

    @settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None, derandomize=True)
    @given(st.from_regex(tool_class(tool).call_regex(), fullmatch=True))
    def check(sample: str) -> None:
        call = parse_call("[" + sample, [tool])
        if call is None or call.tool != tool:
            unparsed.append(sample)

    check()
    assert not unparsed, unparsed[:5]
