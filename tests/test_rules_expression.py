"""The rule expression language: parsing, precedence, operators, functions, missing values, errors,
and the agreement of the scalar and vectorized evaluators (property test)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from antifraud.engine.rules.errors import ExpressionError
from antifraud.engine.rules.expression import compile_expression
from antifraud.engine.rules.functions import FUNCTIONS
from antifraud.engine.rules.nodes import FieldType
from antifraud.engine.rules.parser import MAX_DEPTH
from antifraud.engine.rules.scalar import round_number
from antifraud.engine.rules.vectorized import evaluate_frame, evaluate_values

NAMES: dict[str, FieldType] = {
    "amount": "number",
    "card_mean_30d": "number",
    "card_std_30d": "number",
    "card_count_1h": "number",
    "ip_country": "string",
    "card_country": "string",
    "ip": "string",
    "card_bin": "string",
    "email": "string",
    "authenticated": "bool",
    "card_on_file": "bool",
}
LISTS = {
    "blocked_ips": frozenset({"203.0.113.7", "198.51.100.23"}),
    "risky_bins": frozenset({"411111", "0412"}),
    "amounts": frozenset({1.5, 100, -2}),
    "empty": frozenset(),
}
ENV: dict[str, Any] = {
    "amount": 1500.0,
    "card_mean_30d": 100.0,
    "card_std_30d": 50.0,
    "card_count_1h": 6,
    "ip_country": "RU",
    "card_country": "FR",
    "ip": "203.0.113.7",
    "card_bin": "0412",
    "email": "Bob@Example.COM",
    "authenticated": False,
    "card_on_file": True,
}


def ev(text: str, env: dict[str, Any] | None = None, expected: FieldType | None = None) -> Any:
    return compile_expression(text, NAMES, LISTS, expected=expected).evaluate(ENV if env is None else env)


def problems(text: str, expected: FieldType | None = "bool") -> list[Any]:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, NAMES, LISTS, expected=expected)
    return info.value.problems


# ---------------------------------------------------------------------------------------------
# The examples of the brief


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amount > 1000 and ip_country != card_country", True),
        ("card_count_1h >= 5", True),
        ("ip in lists.blocked_ips", True),
        ("card_bin in lists.risky_bins and not authenticated", True),
        ("abs(amount - card_mean_30d) > 3 * card_std_30d", True),
        ("amount < 1000 or ip_country == 'FR'", False),
    ],
)
def test_examples(text: str, expected: bool) -> None:
    assert ev(text) is expected


# ---------------------------------------------------------------------------------------------
# Precedence: compare the canonical (fully parenthesized) rendering


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("not authenticated and card_on_file", "((not authenticated) and card_on_file)"),
        ("authenticated or card_on_file and false", "(authenticated or (card_on_file and false))"),
        ("not amount > 5", "(not (amount > 5.0))"),
        ("amount + 2 * 3 > 1", "((amount + (2.0 * 3.0)) > 1.0)"),
        ("amount - 4 - 3 > 0", "(((amount - 4.0) - 3.0) > 0.0)"),
        ("amount / 2 % 3 > 0", "(((amount / 2.0) % 3.0) > 0.0)"),
        ("-amount * 2 < 0", "(((-amount) * 2.0) < 0.0)"),
        ("-2 * amount < 0", "((-2.0 * amount) < 0.0)"),
        ("1 < amount < 5", "((1.0 < amount) and (amount < 5.0))"),
        ("ip not in lists.blocked_ips", "(ip not in lists.blocked_ips)"),
        ("not ip in lists.blocked_ips", "(not (ip in lists.blocked_ips))"),
        ("(authenticated or card_on_file) and true", "((authenticated or card_on_file) and true)"),
        ("ip_country in ['RU', 'NG']", "(ip_country in ['NG', 'RU'])"),
        ("True and False", "(true and false)"),
        ("+amount > 0", "(amount > 0.0)"),
    ],
)
def test_precedence(text: str, canonical: str) -> None:
    assert compile_expression(text, NAMES, LISTS).canonical == canonical


def test_precedence_evaluates_like_python_arithmetic() -> None:
    assert ev("1 + 2 * 3 == 7")
    assert ev("10 - 4 - 3 == 3")
    assert ev("2 * 3 % 4 == 2")
    assert ev("-2 * 3 == -6")
    assert ev("7 % 3 == 1 and -7 % 3 == 2 and 7 % -3 == -2")  # sign of the divisor, as Python


def test_canonical_round_trip() -> None:
    for text in [
        "abs(amount - card_mean_30d) > 3 * card_std_30d",
        "ip_country in ['RU', 'NG'] or not authenticated",
    ]:
        expr = compile_expression(text, NAMES, LISTS)
        again = compile_expression(expr.canonical, NAMES, LISTS)
        assert again.canonical == expr.canonical


# ---------------------------------------------------------------------------------------------
# Every operator


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amount + 1", 1501.0),
        ("amount - 1", 1499.0),
        ("amount * 2", 3000.0),
        ("amount / 4", 375.0),
        ("amount % 7", 1500.0 % 7),
        ("-amount", -1500.0),
        ("amount == 1500", True),
        ("amount != 1500", False),
        ("amount < 1500", False),
        ("amount <= 1500", True),
        ("amount > 1499.5", True),
        ("amount >= 1500.5", False),
        ("ip_country == 'RU'", True),
        ('ip_country == "RU"', True),
        ("ip_country != card_country", True),
        ("authenticated == false", True),
        ("authenticated != card_on_file", True),
        ("authenticated and card_on_file", False),
        ("authenticated or card_on_file", True),
        ("not authenticated", True),
        ("ip in lists.blocked_ips", True),
        ("ip not in lists.blocked_ips", False),
        ("ip_country in ['RU', 'NG']", True),
        ("ip_country not in ['RU', 'NG']", False),
        ("amount in [1500, 2]", True),
        ("amount - 1498.5 in lists.amounts", True),
        ("-2 in lists.amounts", True),
        ("ip in lists.empty", False),
        ("amount not in []", True),
        ("true", True),
        ("False", False),
    ],
)
def test_operators(text: str, expected: Any) -> None:
    assert ev(text, expected=None) == expected
    assert type(ev(text, expected=None)) is type(expected)


def test_chained_comparison() -> None:
    assert ev("1000 < amount <= 1500")
    assert not ev("1000 < amount < 1500")
    assert ev("0 <= card_count_1h < 10 < amount")


# ---------------------------------------------------------------------------------------------
# Every function


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abs(card_mean_30d - amount)", 1400.0),
        ("min(amount, card_mean_30d)", 100.0),
        ("min(amount, card_mean_30d, -1)", -1.0),
        ("max(amount, card_mean_30d)", 1500.0),
        ("max(1, 2, 3, 4)", 4.0),
        ("round(amount / 7)", 214.0),
        ("round(amount / 7, 2)", 214.29),
        ("round(amount, -3)", 2000.0),
        ("round(2.5)", 2.0),  # half to even
        ("round(2.675, 2)", 2.68),  # numpy's rounding, not Python's repr-based 2.67
        ("lower(email)", "bob@example.com"),
        ("upper(email)", "BOB@EXAMPLE.COM"),
        ("startswith(ip, '203.')", True),
        ("endswith(lower(email), '@example.com')", True),
        ("endswith(email, '@example.com')", False),
        ("is_missing(card_mean_30d)", False),
        ("coalesce(card_mean_30d, 0)", 100.0),
        ("coalesce(ip_country, 'XX')", "RU"),
        ("coalesce(authenticated, true)", False),
    ],
)
def test_functions(text: str, expected: Any) -> None:
    assert ev(text, expected=None) == expected


def test_function_table_is_the_whitelist() -> None:
    assert set(FUNCTIONS) == {
        "abs",
        "min",
        "max",
        "round",
        "lower",
        "upper",
        "startswith",
        "endswith",
        "is_missing",
        "coalesce",
    }


@pytest.mark.parametrize(
    "text",
    [
        "abs()",
        "abs(1, 2)",
        "min(1)",
        "round(1, 2, 3)",
        "lower(amount) == 'x'",
        "startswith(ip) ",
        "startswith(ip, 1)",
        "coalesce(amount) > 1",
        "coalesce(amount, 'x') > 1",
        "round(amount, card_count_1h) > 1",
        "round(amount, 1.5) > 1",
        "round(amount, 99) > 1",
        "abs(x=1) > 0",
        "upper(ip_country, ) == 'a' and abs(*[1]) > 0",
    ],
)
def test_function_misuse_is_refused(text: str) -> None:
    assert problems(text)


def test_round_number_matches_numpy() -> None:
    for x in [2.675, 0.5, 1.5, -2.5, 1234.5678, 1e-10, 123456789.987654321]:
        for digits in (-3, -1, 0, 1, 2, 5):
            assert round_number(x, digits) == float(np.round(x, digits))
    assert round_number(1e308, 5) is None  # overflow is missing


# ---------------------------------------------------------------------------------------------
# Missing values


@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA, np.nan, float("inf"), -math.inf, "absent"])
def test_missing_required_name_skips(missing: Any) -> None:
    env = dict(ENV)
    if isinstance(missing, str):
        del env["card_mean_30d"]
    else:
        env["card_mean_30d"] = missing
    assert ev("abs(amount - card_mean_30d) > 3 * card_std_30d", env) is None
    # even where Python would short-circuit past it: the rule reads the name, so it is skipped
    assert ev("false and card_mean_30d > 1", env) is None
    assert ev("amount > 0 or card_mean_30d > 1", env) is None


@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA, "absent"])
def test_missing_string_and_bool(missing: Any) -> None:
    for name, text in [("ip", "ip in lists.blocked_ips"), ("authenticated", "not authenticated")]:
        env = dict(ENV)
        if isinstance(missing, str):
            del env[name]
        else:
            env[name] = missing
        assert ev(text, env) is None
        assert ev(f"is_missing({name})", env) is True


def test_tolerant_names() -> None:
    expr = compile_expression("is_missing(card_mean_30d) or coalesce(card_std_30d, 0) > 10", NAMES, LISTS)
    assert expr.names == {"card_mean_30d", "card_std_30d"}
    assert expr.tolerant_names == {"card_mean_30d", "card_std_30d"}
    assert expr.required_names == frozenset()
    assert expr.evaluate({}) is True
    assert expr.evaluate({"card_mean_30d": 1.0, "card_std_30d": None}) is False
    assert expr.evaluate({"card_mean_30d": 1.0, "card_std_30d": 11}) is True


def test_a_name_read_outside_is_required() -> None:
    expr = compile_expression("is_missing(card_mean_30d) or card_mean_30d > 5", NAMES, LISTS)
    assert expr.required_names == {"card_mean_30d"}
    assert expr.tolerant_names == frozenset()
    assert expr.evaluate({}) is None


def test_division_by_zero_is_missing_not_an_error() -> None:
    env = dict(ENV, card_count_1h=0)
    assert ev("amount / card_count_1h", env, expected=None) is None
    assert ev("amount % card_count_1h", env, expected=None) is None
    assert ev("amount / card_count_1h > 10", env) is None
    assert ev("is_missing(amount / card_count_1h)", env) is True
    assert ev("coalesce(amount / card_count_1h, -1)", env, expected=None) == -1.0
    assert ev("1 / 0 > 1", env) is None
    assert ev("amount * 1e308 > 1", env) is None  # overflow: missing too


def test_kleene_logic_with_missing_intermediates() -> None:
    env = dict(ENV, card_count_1h=0)
    missing = "amount / card_count_1h > 1"
    assert ev(f"false and {missing}", env) is False
    assert ev(f"{missing} and false", env) is False
    assert ev(f"true and {missing}", env) is None
    assert ev(f"true or {missing}", env) is True
    assert ev(f"{missing} or true", env) is True
    assert ev(f"false or {missing}", env) is None
    assert ev(f"not ({missing})", env) is None


def test_hostile_values_are_data() -> None:
    env = dict(ENV, ip="__import__('os').system('id')", email="{0.__class__}")
    assert ev("ip in lists.blocked_ips", env) is False
    assert ev("lower(email)", env, expected=None) == "{0.__class__}"


# ---------------------------------------------------------------------------------------------
# Errors: every problem, with a position


def test_unknown_name_suggests() -> None:
    (p,) = problems("amout > 5")
    assert p.message == "unknown name 'amout' (did you mean 'amount'?)"
    assert (p.offset, p.line, p.column) == (0, 1, 1)


def test_unknown_list_suggests() -> None:
    (p,) = problems("ip in lists.blocked_ip")
    assert "unknown list 'blocked_ip' (did you mean 'blocked_ips'?)" in p.message
    assert p.offset == 6


def test_all_problems_are_reported_in_order() -> None:
    found = problems("amout > 5 and ip_country > 3 and foo(1) and ip in lists.nope")
    messages = [p.message for p in found]
    assert len(found) == 4, messages
    assert "unknown name 'amout'" in messages[0]
    assert "'>' needs numbers" in messages[1]
    assert "unknown function 'foo'" in messages[2]
    assert "unknown list 'nope'" in messages[3]
    assert [p.offset for p in found] == sorted(p.offset for p in found)


@pytest.mark.parametrize(
    ("text", "fragment", "column"),
    [
        ("ip_country == 5", "cannot compare a string ('ip_country') with a number ('5')", 12),
        ("card_bin == 411111", "quote the number", 10),
        ("amount + ip > 1", "'+' needs numbers on both sides, but 'ip' is a string", 8),
        ("ip_country < 'M'", "strings and conditions only support == and !=", 12),
        ("ip in amount", "'in' needs a list", 4),
        ("ip in 'abc'", "'in' needs a list", 4),
        (
            "amount in lists.blocked_ips",
            "'amount' is a number but 'lists.blocked_ips' is a list of strings",
            8,
        ),
        ("amount", "the expression must be a condition (true/false), but it is a number", 1),
        ("ip", "compare it, e.g. x == 'value'", 1),
        ("amount and true", "'and' needs conditions on both sides", 1),
        ("not amount", "'not' needs a condition", 1),
        ("-ip == 'a'", "'-' needs a number", 1),
        ("lists.blocked_ips == 'a'", "a list can only be used after 'in'", 19),
        ("authenticated == 1", "use true or false", 15),
        ("amount is 5", "'is' is not supported", 8),
        ("amount == null", "there is no null value", 11),
        ("is_missing(None)", "there is no null value", 12),
        ("[amount] == [1]", "a list written [..] may only hold literal", 2),
        ("ip in ['a', 1]", "must not mix strings and numbers", 7),
        ("amount > 1e999", "number too large", 10),
        ("lists == 1", "'lists' must be followed by a list name", 1),
        ("abs > 1", "abs is a function", 1),
        ("amount > 5 AND true", "keywords are written in lower case", 12),
        ("amount > 5 && true", "write 'and' / 'or'", 13),
        ("!authenticated", "write 'not' instead of '!'", 1),
        ("amount = 5", "compare with '=='", 8),
        ("amount >", "ends too early", 9),
        ("(amount > 5", "'(' was never closed", 1),
        ("amount > 5)", "unmatched ')'", 11),
        ("amount > 1,000", "write 1000, not 1,000", 1),
        ("amount > 5 # big", "comments (#) are not allowed", 12),
        ("", "empty expression", 1),
        ("   ", "empty expression", 1),
        ("amount ** 2 > 1", "'**' (power) is not supported", 1),
        ("amount // 2 > 1", "'//' is not supported", 1),
        ("authenticated & card_on_file", "use 'and'", 1),
        ("authenticated | card_on_file", "use 'or'", 1),
        ("~authenticated", "use 'not'", 1),
        ("amount if true else 1", "'x if c else y' is not supported", 1),
    ],
)
def test_error_messages(text: str, fragment: str, column: int) -> None:
    found = problems(text)
    assert any(fragment in p.message for p in found), [p.message for p in found]
    assert found[0].column == column, [str(p) for p in found]


def test_offsets_count_characters_not_bytes() -> None:
    (p,) = problems("ip_country == 'Ü' and amout > 1")
    assert p.offset == "ip_country == 'Ü' and ".__len__()
    (p,) = problems("ip_country == 'é€' and ip_country > 1")
    assert p.column == len("ip_country == 'é€' and ip_country ") + 1


def test_multi_line_positions() -> None:
    text = "amount > 5\n  and amout > 1\r\n  and ip in lists.nope"
    found = problems(text)
    assert [(p.line, p.column) for p in found] == [(2, 7), (3, 13)]
    assert compile_expression("amount > 5\n and\n ip_country == 'RU'", NAMES, LISTS).evaluate(ENV) is True


def test_error_render_has_a_caret() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("amount > 5 and amout > 1", NAMES, LISTS)
    assert info.value.render().splitlines() == [
        "column 16: unknown name 'amout' (did you mean 'amount'?)",
        "  amount > 5 and amout > 1",
        "                 ^",
    ]
    assert info.value.column == 16 and info.value.offset == 15
    assert "column 16" in str(info.value)


def test_limits() -> None:
    assert "nested too deeply" in problems("not " * (MAX_DEPTH + 5) + "true")[0].message
    assert "too long" in problems("amount > " + "1" * 5000)[0].message


def test_names_of_the_wrong_type_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="type must be one of"):
        compile_expression("x > 1", {"x": "integer"}, {})  # type: ignore[dict-item]


def test_list_types_from_values() -> None:
    with pytest.raises(ExpressionError, match="mixes strings and numbers"):
        compile_expression("ip in lists.mixed", NAMES, {"mixed": frozenset({"a", 1})})
    expr = compile_expression("amount in lists.n", NAMES, {"n": frozenset({1500})})
    assert expr.evaluate(ENV) is True


# ---------------------------------------------------------------------------------------------
# Vectorized: the same semantics over columns

VNAMES: dict[str, FieldType] = {
    "n1": "number",
    "n2": "number",
    "n3": "number",
    "s1": "string",
    "s2": "string",
    "b1": "bool",
    "b2": "bool",
}
VLISTS = {"ls": frozenset({"a", "B", ""}), "ln": frozenset({0, 1.5, -2, 3}), "le": frozenset()}
NUMBER_LITERALS = [0.0, -0.0, 1.0, 2.5, 3.0, 100.0, 1e308, 5e-324, 0.1]
STRING_LITERALS = ["", "a", "A", "ab", "é", "B"]


def _number_literal(x: float) -> str:
    return f"({x!r})" if math.copysign(1.0, x) < 0 else repr(x)


@st.composite
def expressions(draw: st.DrawFn, kind: str, depth: int = 4) -> str:
    """Random well-typed expression text of a kind, fully parenthesized."""
    leaf = depth <= 0 or draw(st.integers(0, 4)) == 0
    if kind == "number":
        if leaf:
            choice = draw(st.sampled_from(["n1", "n2", "n3", "lit", "neglit"]))
            if choice == "lit":
                return _number_literal(draw(st.sampled_from(NUMBER_LITERALS)))
            if choice == "neglit":
                return _number_literal(-draw(st.sampled_from(NUMBER_LITERALS)))
            return choice
        sub = expressions("number", depth - 1)
        form = draw(st.integers(0, 6))
        if form == 0:
            return f"(-{draw(sub)})"
        if form == 1:
            return f"({draw(sub)} {draw(st.sampled_from('+-*/%'))} {draw(sub)})"
        if form == 2:
            return f"abs({draw(sub)})"
        if form == 3:
            args = draw(st.lists(sub, min_size=2, max_size=3))
            return f"{draw(st.sampled_from(['min', 'max']))}({', '.join(args)})"
        if form == 4:
            digits = draw(st.integers(-3, 3))
            return f"round({draw(sub)}, {digits})" if digits else f"round({draw(sub)})"
        if form == 5:
            return f"coalesce({', '.join(draw(st.lists(sub, min_size=2, max_size=3)))})"
        return f"({draw(sub)} * {draw(sub)})"
    if kind == "string":
        if leaf:
            choice = draw(st.sampled_from(["s1", "s2", "lit"]))
            return repr(draw(st.sampled_from(STRING_LITERALS))) if choice == "lit" else choice
        sub = expressions("string", depth - 1)
        form = draw(st.integers(0, 2))
        if form == 0:
            return f"{draw(st.sampled_from(['lower', 'upper']))}({draw(sub)})"
        if form == 1:
            return f"coalesce({', '.join(draw(st.lists(sub, min_size=2, max_size=3)))})"
        return draw(sub)
    # bool
    if leaf:
        return draw(st.sampled_from(["b1", "b2", "true", "false"]))
    sub = expressions("bool", depth - 1)
    num = expressions("number", depth - 1)
    text = expressions("string", depth - 1)
    form = draw(st.integers(0, 10))
    if form == 0:
        return f"(not {draw(sub)})"
    if form == 1:
        operands = draw(st.lists(sub, min_size=2, max_size=3))
        return "(" + f" {draw(st.sampled_from(['and', 'or']))} ".join(operands) + ")"
    if form == 2:
        return f"({draw(num)} {draw(st.sampled_from(['==', '!=', '<', '<=', '>', '>=']))} {draw(num)})"
    if form == 3:
        return f"({draw(text)} {draw(st.sampled_from(['==', '!=']))} {draw(text)})"
    if form == 4:
        return f"({draw(sub)} {draw(st.sampled_from(['==', '!=']))} {draw(sub)})"
    if form == 5:
        target = draw(st.sampled_from(["lists.ls", "lists.le", "['a', 'ab', 'é']", "[]"]))
        return f"({draw(text)} {draw(st.sampled_from(['in', 'not in']))} {target})"
    if form == 6:
        target = draw(st.sampled_from(["lists.ln", "lists.le", "[1.0, (-0.0), 2.5]"]))
        return f"({draw(num)} {draw(st.sampled_from(['in', 'not in']))} {target})"
    if form == 7:
        return f"{draw(st.sampled_from(['startswith', 'endswith']))}({draw(text)}, {draw(text)})"
    if form == 8:
        inner = draw(st.sampled_from([num, text, sub]))
        return f"is_missing({draw(inner)})"
    if form == 9:
        return f"coalesce({', '.join(draw(st.lists(sub, min_size=2, max_size=3)))})"
    return f"(({draw(num)} < {draw(num)}) == {draw(sub)})"


NUMBER_VALUES = st.sampled_from(
    [
        None,
        math.nan,
        math.inf,
        -math.inf,
        0.0,
        -0.0,
        1.0,
        2.5,
        -3.0,
        3,
        0,
        100.0,
        1e308,
        -1e308,
        5e-324,
        0.1,
        1.5,
    ]
)
STRING_VALUES = st.sampled_from([None, math.nan, "", "a", "A", "ab", "é", "B", "aB"])
BOOL_VALUES = st.sampled_from([None, True, False])
VALUES = {"number": NUMBER_VALUES, "string": STRING_VALUES, "bool": BOOL_VALUES}


@st.composite
def frames(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Rows as dicts (for the scalar evaluator) and the same data as columns; some columns absent."""
    n = draw(st.integers(1, 8))
    present = [name for name in VNAMES if draw(st.integers(0, 9)) > 0]
    data = {name: [draw(VALUES[VNAMES[name]]) for _ in range(n)] for name in present}
    rows = [{name: data[name][i] for name in present} for i in range(n)]
    columns: dict[str, Any] = {}
    for name, values in data.items():
        if VNAMES[name] == "number" and draw(st.booleans()):
            columns[name] = np.array([np.nan if v is None else v for v in values], dtype=float)
        else:
            columns[name] = np.array(values, dtype=object)
    return rows, columns, n


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=expressions("bool"), frame=frames())
def test_scalar_and_vectorized_agree_on_conditions(text: str, frame: Any) -> None:
    rows, columns, n = frame
    expr = compile_expression(text, VNAMES, VLISTS)
    fired, skipped = evaluate_frame(expr, columns, n)
    for i, row in enumerate(rows):
        result = expr.evaluate(row)
        assert bool(skipped[i]) == (result is None), (text, row, result)
        assert bool(fired[i]) == (result is not None and bool(result)), (text, row, result)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["number", "string"]), data=st.data(), frame=frames())
def test_scalar_and_vectorized_agree_on_values(kind: str, data: st.DataObject, frame: Any) -> None:
    text = data.draw(expressions(kind))
    rows, columns, n = frame
    expr = compile_expression(text, VNAMES, VLISTS, expected=None)
    values, skipped = evaluate_values(expr, columns, n)
    for i, row in enumerate(rows):
        result = expr.evaluate(row)
        assert bool(skipped[i]) == (result is None), (text, row, result)
        if result is not None:
            assert values[i] == result, (text, row, result, values[i])
            if kind == "number":
                assert math.isfinite(result)


def test_vectorized_column_forms() -> None:
    expr = compile_expression("amount > 10 and not authenticated and ip_country == 'RU'", NAMES, LISTS)
    columns = {
        "amount": pd.Series([20, None, 30, 40], dtype="Float64"),
        "authenticated": pd.Series([False, False, None, True], dtype="boolean"),
        "ip_country": pd.Series(["RU", "RU", "RU", pd.NA], dtype="string"),
    }
    fired, skipped = evaluate_frame(expr, columns, 4)
    assert fired.tolist() == [True, False, False, False]
    assert skipped.tolist() == [False, True, True, True]
    frame = pd.DataFrame({"amount": [20.0, 5.0], "authenticated": [False, False], "ip_country": ["RU", "RU"]})
    assert evaluate_frame(expr, frame, 2)[0].tolist() == [True, False]
    # an absent column is missing everywhere, as an absent field
    fired, skipped = evaluate_frame(expr, {"amount": [20.0, 30.0]}, 2)
    assert not fired.any() and skipped.all()


def test_integers_beyond_float_range_are_missing_in_both_evaluators() -> None:
    expr = compile_expression("amount > 1", NAMES, LISTS)
    assert expr.evaluate({"amount": 10**400}) is None
    fired, skipped = evaluate_frame(expr, {"amount": np.array([10**400, 5, None], dtype=object)}, 3)
    assert fired.tolist() == [False, True, False] and skipped.tolist() == [True, False, True]


def test_vectorized_rejects_bad_columns() -> None:
    expr = compile_expression("amount > 10", NAMES, LISTS)
    with pytest.raises(ValueError, match="has 2 rows, expected 3"):
        evaluate_frame(expr, {"amount": [1.0, 2.0]}, 3)
    with pytest.raises(TypeError, match="declared number"):
        evaluate_frame(expr, {"amount": np.array(["a", "b"], dtype=object)}, 2)


def test_vectorized_does_not_modify_inputs() -> None:
    amounts = np.array([1.0, np.inf, np.nan])
    emails = np.array(["A", None, "b"], dtype=object)
    expr = compile_expression("amount > 0 and lower(email) == 'a'", NAMES, LISTS)
    evaluate_frame(expr, {"amount": amounts, "email": emails}, 3)
    assert np.isinf(amounts[1]) and emails[1] is None
