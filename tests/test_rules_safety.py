"""Rule expressions come from YAML files edited by people: nothing in them may escape the language.

Escape attempts are refused when a rule set loads, never run; hostile sizes give ExpressionError,
not RecursionError or MemoryError; random text and random syntax trees either compile to an
expression whose evaluation never raises, or raise ExpressionError, never any other exception.
"""

from __future__ import annotations

import ast
import builtins
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from antifraud.engine.rules.errors import ExpressionError
from antifraud.engine.rules.expression import Expression, compile_expression
from antifraud.engine.rules.nodes import FieldType
from antifraud.engine.rules.parser import MAX_DEPTH
from antifraud.engine.rules.vectorized import evaluate_frame, evaluate_values

NAMES: dict[str, FieldType] = {
    "amount": "number",
    "count": "number",
    "ip": "string",
    "country": "string",
    "authenticated": "bool",
    "y": "number",
}
LISTS = {"blocked": frozenset({"1.2.3.4", "x"}), "empty": frozenset(), "numbers": frozenset({1, 2.5})}

ESCAPES = [
    "__import__('os').system('id')",
    "__import__('os').system('id') == 0",
    "().__class__.__bases__",
    "().__class__.__bases__[0].__subclasses__()",
    "''.__class__.__mro__[1].__subclasses__()",
    "open('/etc/passwd')",
    "open('/etc/passwd').read() == ''",
    "lambda: 1",
    "(lambda: 1)() == 1",
    "[x for x in y]",
    "[x for x in lists.blocked] == []",
    "{x for x in y}",
    "{x: 1 for x in y}",
    "(x for x in y)",
    "any(x for x in lists.blocked)",
    "getattr(amount, 'real')",
    "getattr(__builtins__, 'eval')('1')",
    "a.b",
    "amount.real > 0",
    "ip.lower() == 'x'",
    "ip.__class__",
    "lists.blocked.__len__() > 0",
    "lists.__class__",
    "lists.__dict__",
    "lists.blocked.copy() == lists.blocked",
    "a[0]",
    "ip[0] == 'a'",
    "ip[1:] == 'a'",
    "f'{amount}' == '1'",
    "f'{__import__(\"os\").system(\"id\")}' == ''",
    "eval('1') == 1",
    "exec('import os')",
    "compile('1', '', 'eval')",
    "(x:=1)",
    "(amount := 5) > 1",
    "import os",
    "amount > 1; import os",
    "amount > 1\nimport os",
    "amount > 1 # \n or __import__('os')",
    "__builtins__",
    "__builtins__['eval']('1')",
    "globals()",
    "locals()['amount']",
    "vars()",
    "dir()",
    "type(amount)",
    "type(amount).__subclasses__()",
    "breakpoint()",
    "print(1)",
    "input()",
    "setattr(lists, 'x', 1)",
    "delattr(lists, 'blocked')",
    "__class__",
    "__name__ == '__main__'",
    "amount.__class__.__mro__",
    "'abc'.__class__",
    "'{0.__class__}'.format(amount)",
    "'%s' % amount == ''",
    "b'abc' == b'abc'",
    "1j == 1j",
    "... == ...",
    "*amount",
    "await amount",
    "(yield)",
    "{'a': 1}",
    "{1, 2}",
    "(1, 2)",
    "amount if True else ip",
    "lower.__globals__",
    "abs.__self__",
    "coalesce(**{})",
    "abs(*[1]) > 0",
    "lower(ip, **{'x': 1}) == ''",
    "min(amount, key=abs) > 0",
    "\x00",
    "amount > 1\x00",
    "\uff3f\uff3fimport\uff3f\uff3f('os')",  # fullwidth underscores: Python folds them to __import__
    "\\u005f\\u005fimport\\u005f\\u005f('os')",
    "\uff45\uff56\uff41\uff4c('1') == 1",  # fullwidth letters: Python folds them to eval
    "amount is not None",
    "not amount is None",
    "amount > 1 if authenticated else amount > 2",
    "[].__class__",
    "[1][0] == 1",
    "lists['blocked']",
    "lists.blocked[0]",
    "coalesce(ip, lists.blocked) == ''",
    "abs(lists.numbers) > 0",
    "(lambda f: f(f))(lambda f: f(f))",
    "amount ** 10 ** 10 ** 10 > 1",
    "'a' * 10 ** 9 == ''",
    "'a' * 1000000000 == ''",
    "ip * 100000000 == ''",
]


@pytest.mark.parametrize("text", ESCAPES)
def test_escape_attempts_are_refused_at_compile_time(text: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(text, NAMES, LISTS, expected=None)


HUGE = [
    "(" * 10_000 + "1" + ")" * 10_000,
    "-" * 100_000 + "1",
    "not " * 100_000 + "true",
    "1+" * 100_000 + "1",
    "a" * 1_000_000,
    "[" * 5_000 + "]" * 5_000,
    "abs(" * 3_000 + "1" + ")" * 3_000,
    "amount > 0 and " * 1_000 + "true",
    # within the length limit, beyond what the parser or the depth limit accept
    "-" * 3_990 + "1 > 0",
    "(" * 300 + "amount" + ")" * 300 + " > 1",
    "not " * 990 + "true",
    "not " * (MAX_DEPTH - 1) + "true",
    "abs(" * 500 + "amount" + ")" * 500 + " > 1",
    "1 + " * 990 + "1 > 0",
    "amount > " + "9" * 3_900,
    "[" + ", ".join(["1"] * 1_900) + "] == 1",
    "ip in [" + ", ".join(["'a'"] * 1_300) + "]",
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("text", HUGE, ids=lambda t: f"{t[:12]!r}..x{len(t)}")
def test_hostile_sizes_raise_expression_error(text: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(text, NAMES, LISTS)


@pytest.mark.timeout(20)
def test_large_but_valid_expressions_work() -> None:
    wide = compile_expression("amount > 0 and " * 250 + "true", NAMES, LISTS)
    assert wide.evaluate({"amount": 1.0}) is True
    deep = compile_expression("not " * (MAX_DEPTH - 3) + "authenticated", NAMES, LISTS)
    assert deep.evaluate({"authenticated": True}) is ((MAX_DEPTH - 3) % 2 == 0)
    _, skipped = evaluate_frame(deep, {"authenticated": np.array([True, False, None], dtype=object)}, 3)
    assert skipped.tolist() == [False, False, True]
    listed = compile_expression("ip in [" + ", ".join(f"'{i}'" for i in range(500)) + "]", NAMES, LISTS)
    assert listed.evaluate({"ip": "499"}) is True


def test_the_engine_never_calls_eval_exec_or_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """No source text is ever run: compile() only builds syntax trees (what ast.parse does) and
    eval()/exec() never receive text. (The import system may still exec library modules' code
    objects, so those are let through.)"""
    texts = [
        "abs(amount - count) > 3 * round(count, 1) and ip in lists.blocked",
        "coalesce(amount / count, 0) > 1 or is_missing(ip) or startswith(lower(country), 'f')",
        "country not in ['RU', 'NG'] and min(amount, 3) <= max(count, 2, 1) and not authenticated",
    ]
    env = {"amount": 5.0, "count": 0, "ip": "x", "country": "FR", "authenticated": False}
    columns = {k: np.array([v, None], dtype=object) for k, v in env.items()}

    def run() -> None:
        for text in texts:
            expr = compile_expression(text, NAMES, LISTS)
            assert expr.evaluate(env) in (True, False)
            evaluate_frame(expr, columns, 2)
        for text in ESCAPES:
            with pytest.raises(ExpressionError):
                compile_expression(text, NAMES, LISTS)

    run()  # warm up: lazy imports inside numpy / pandas happen now, before the guards
    real_compile, real_eval, real_exec = builtins.compile, builtins.eval, builtins.exec
    calls: list[str] = []

    def guarded_compile(source: Any, filename: Any, mode: Any, flags: int = 0, *args: Any, **kw: Any) -> Any:
        calls.append("compile")
        assert flags & ast.PyCF_ONLY_AST or str(filename).endswith(".py"), "compile() used to make code"
        return real_compile(source, filename, mode, flags, *args, **kw)

    def guarded(real: Any) -> Any:
        def call(source: Any, *args: Any, **kw: Any) -> Any:
            assert not isinstance(source, str | bytes), "eval/exec called on text"
            return real(source, *args, **kw)

        return call

    monkeypatch.setattr(builtins, "compile", guarded_compile)
    monkeypatch.setattr(builtins, "eval", guarded(real_eval))
    monkeypatch.setattr(builtins, "exec", guarded(real_exec))
    run()
    assert calls  # the guard was in the path: ast.parse goes through compile()


def test_no_eval_exec_in_the_source() -> None:
    """No call to eval/exec/compile/__import__ anywhere in engine/rules (re.compile is fine)."""
    package = Path(__file__).resolve().parents[1] / "engine" / "rules"
    dangerous = {"eval", "exec", "compile", "__import__", "import_module"}
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name):
                assert func.id not in dangerous, (path, node.lineno)
            elif isinstance(func, ast.Attribute) and func.attr in dangerous:
                is_regex = (
                    func.attr == "compile" and isinstance(func.value, ast.Name) and func.value.id == "re"
                )
                assert is_regex, (path, node.lineno)


# ---------------------------------------------------------------------------------------------
# Fuzzing

NUMBERS = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**53), 2**53),
    st.sampled_from([0, 0.0, -0.0, 1e308, -1e308, 5e-324, 10**400, -(10**400)]),
)
STRINGS = st.one_of(st.none(), st.just(math.nan), st.text(max_size=8))
BOOLS = st.sampled_from([None, True, False])
VALUE_FOR = {"number": NUMBERS, "string": STRINGS, "bool": BOOLS}


@st.composite
def envs(draw: st.DrawFn) -> dict[str, Any]:
    """Any values of the declared types, missing ones included, some names absent."""
    return {name: draw(VALUE_FOR[kind]) for name, kind in NAMES.items() if draw(st.integers(0, 5))}


def check_safe(text: str, data: st.DataObject) -> None:
    """Compiles, or raises ExpressionError; a compiled expression evaluates without raising."""
    expectations: tuple[FieldType | None, ...] = (None, "bool")
    for expected in expectations:
        try:
            expr = compile_expression(text, NAMES, LISTS, expected=expected)
        except ExpressionError as e:
            assert e.problems and all(0 <= p.offset <= len(text) for p in e.problems)
            str(e)
            e.render()
            continue
        exercise(expr, data)


def exercise(expr: Expression, data: st.DataObject) -> None:
    rows = [data.draw(envs()) for _ in range(3)]
    for row in rows:
        result = expr.evaluate(row)
        assert result is None or isinstance(result, bool | float | str), (expr.text, row, result)
        if isinstance(result, float):
            assert math.isfinite(result)
    columns = {name: np.array([row.get(name) for row in rows], dtype=object) for name in NAMES}
    if expr.type == "bool":
        evaluate_frame(expr, columns, len(rows))
    else:
        evaluate_values(expr, columns, len(rows))


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(text=st.text(max_size=120), data=st.data())
def test_random_text(text: str, data: st.DataObject) -> None:
    check_safe(text, data)


TOKENS = [
    *NAMES,
    "lists.blocked",
    "lists.empty",
    "lists.numbers",
    "lists",
    "and",
    "or",
    "not",
    "in",
    "not in",
    "is",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
    ":",
    ":=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "**",
    "//",
    "&",
    "|",
    "~",
    "0",
    "1",
    "2.5",
    "1e308",
    "'RU'",
    '"x"',
    "''",
    "true",
    "false",
    "True",
    "None",
    "null",
    *["abs", "min", "max", "round", "lower", "upper", "startswith", "endswith", "is_missing", "coalesce"],
    "__import__",
    "__class__",
    "eval",
    "lambda",
    "for",
    "if",
    "else",
    "f'{",
    "}'",
    "#",
    "\n",
    "\\",
]


@FUZZ
@given(tokens=st.lists(st.sampled_from(TOKENS), max_size=25), data=st.data())
def test_random_token_soup(tokens: list[str], data: st.DataObject) -> None:
    check_safe(" ".join(tokens), data)


# Random Python syntax trees, allowed and forbidden node types mixed, rendered with ast.unparse.
_LOAD = ast.Load()
FUNCTION_NAMES = ["abs", "min", "max", "round", "lower", "upper", "startswith", "endswith", "is_missing"]
FUNCTION_NAMES += ["coalesce", "eval", "getattr", "open", "__import__", "len", "type"]
NAME_IDS = [*NAMES, "lists", "x", "true", "false", "None", "null", "__class__", "os", "abs"]
BINOPS = [
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Mod,
    ast.Pow,
    ast.FloorDiv,
    ast.BitAnd,
    ast.BitOr,
    ast.MatMult,
]
CMPOPS = [ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot]
UNARYOPS = [ast.Not, ast.USub, ast.UAdd, ast.Invert]

LEAVES = st.one_of(
    st.sampled_from(NAME_IDS).map(lambda n: ast.Name(n, _LOAD)),
    st.one_of(
        st.integers(-(10**30), 10**30),
        st.floats(allow_nan=False),
        st.text(max_size=4),
        st.booleans(),
        st.none(),
        st.binary(max_size=2),
    ).map(ast.Constant),
    st.sampled_from(["blocked", "empty", "numbers", "nope", "__class__"]).map(
        lambda a: ast.Attribute(ast.Name("lists", _LOAD), a, _LOAD)
    ),
)


def _template(text: str, **parts: ast.expr) -> ast.expr:
    node = ast.parse(text, mode="eval").body
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and child.id in parts:
            child.id = "_placeholder"
    tree = ast.Expression(node)

    class Fill(ast.NodeTransformer):
        def __init__(self) -> None:
            self.names = iter(parts.values())

        def visit_Name(self, n: ast.Name) -> ast.AST:
            return next(self.names) if n.id == "_placeholder" else n

    return Fill().visit(tree).body


def _extend(children: st.SearchStrategy[ast.expr]) -> st.SearchStrategy[ast.expr]:
    lists_of = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        st.builds(
            ast.BoolOp, st.sampled_from([ast.And(), ast.Or()]), st.lists(children, min_size=2, max_size=3)
        ),
        st.builds(ast.BinOp, children, st.sampled_from(BINOPS).map(lambda op: op()), children),
        st.builds(ast.UnaryOp, st.sampled_from(UNARYOPS).map(lambda op: op()), children),
        st.builds(
            lambda left, ops, rights: ast.Compare(
                left, [op() for op in ops[: len(rights)]], rights[: len(ops)]
            ),
            children,
            st.lists(st.sampled_from(CMPOPS), min_size=1, max_size=3),
            lists_of,
        ),
        st.builds(
            lambda f, args: ast.Call(ast.Name(f, _LOAD), args, []),
            st.sampled_from(FUNCTION_NAMES),
            st.lists(children, max_size=3),
        ),
        st.builds(
            lambda v, a: ast.Attribute(v, a, _LOAD), children, st.sampled_from(["real", "__class__", "x"])
        ),
        st.builds(lambda v, i: ast.Subscript(v, i, _LOAD), children, children),
        st.builds(lambda e: ast.List(e, _LOAD), st.lists(children, max_size=3)),
        st.builds(lambda e: ast.Tuple(e, _LOAD), lists_of),
        st.builds(ast.IfExp, children, children, children),
        st.builds(lambda b: _template("lambda: B", B=b), children),
        st.builds(lambda e, i: _template("[E for x in I]", E=e, I=i), children, children),
        st.builds(lambda v: ast.NamedExpr(ast.Name("x", ast.Store()), v), children),
        st.builds(lambda v: ast.JoinedStr([ast.FormattedValue(v, -1, None)]), children),
        st.builds(lambda v: ast.Call(ast.Name("abs", _LOAD), [ast.Starred(v, _LOAD)], []), children),
        st.builds(
            lambda v: ast.Call(ast.Name("min", _LOAD), [v], [ast.keyword("key", ast.Name("abs", _LOAD))]),
            children,
        ),
    )


TREES = st.recursive(LEAVES, _extend, max_leaves=15)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=TREES, data=st.data())
def test_random_syntax_trees(tree: ast.expr, data: st.DataObject) -> None:
    try:
        text = ast.unparse(ast.fix_missing_locations(ast.Expression(tree)))
    except Exception:  # a tree ast.unparse cannot render is not an input anyone can write
        assume(False)
        return
    check_safe(text, data)


# Random *well-typed* trees: most random trees above are refused, so these make sure that compiled
# expressions meet extreme values (any float, large integers, any text, missing values).
NUMBER_NAMES = [n for n, k in NAMES.items() if k == "number"]
STRING_NAMES = [n for n, k in NAMES.items() if k == "string"]


def _call(name: str, *args: ast.expr) -> ast.expr:
    return ast.Call(ast.Name(name, _LOAD), list(args), [])


@st.composite
def typed_trees(draw: st.DrawFn, kind: str, depth: int = 4) -> ast.expr:
    """A random syntax tree of the given type (number, string, bool) in the rule language."""
    leaf = depth <= 0 or draw(st.integers(0, 3)) == 0
    sub = lambda k: typed_trees(k, depth - 1)  # noqa: E731
    if kind == "number":
        if leaf:
            if draw(st.booleans()):
                return ast.Name(draw(st.sampled_from(NUMBER_NAMES)), _LOAD)
            return ast.Constant(
                draw(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 10**6)))
            )
        form = draw(st.integers(0, 5))
        if form == 0:
            op = draw(st.sampled_from([ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod]))
            return ast.BinOp(draw(sub("number")), op(), draw(sub("number")))
        if form == 1:
            return ast.UnaryOp(ast.USub(), draw(sub("number")))
        if form == 2:
            return _call(draw(st.sampled_from(["abs", "round"])), draw(sub("number")))
        if form == 3:
            return _call("round", draw(sub("number")), ast.Constant(draw(st.integers(-15, 15))))
        if form == 4:
            return _call(
                draw(st.sampled_from(["min", "max", "coalesce"])), draw(sub("number")), draw(sub("number"))
            )
        return ast.BinOp(draw(sub("number")), ast.Div(), draw(sub("number")))
    if kind == "string":
        if leaf:
            if draw(st.booleans()):
                return ast.Name(draw(st.sampled_from(STRING_NAMES)), _LOAD)
            return ast.Constant(draw(st.text(max_size=5)))
        form = draw(st.integers(0, 1))
        if form == 0:
            return _call(draw(st.sampled_from(["lower", "upper"])), draw(sub("string")))
        return _call("coalesce", draw(sub("string")), draw(sub("string")))
    if leaf:
        if draw(st.booleans()):
            return ast.Name("authenticated", _LOAD)
        return ast.Constant(draw(st.booleans()))
    form = draw(st.integers(0, 7))
    if form == 0:
        return ast.UnaryOp(ast.Not(), draw(sub("bool")))
    if form == 1:
        return ast.BoolOp(
            draw(st.sampled_from([ast.And(), ast.Or()])), [draw(sub("bool")), draw(sub("bool"))]
        )
    if form == 2:
        ops = draw(
            st.lists(
                st.sampled_from([ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE]), min_size=1, max_size=3
            )
        )
        return ast.Compare(draw(sub("number")), [op() for op in ops], [draw(sub("number")) for _ in ops])
    if form == 3:
        return ast.Compare(
            draw(sub("string")), [draw(st.sampled_from([ast.Eq, ast.NotEq]))()], [draw(sub("string"))]
        )
    if form == 4:
        target = draw(st.sampled_from(["blocked", "empty"]))
        member: type[ast.cmpop] = draw(st.sampled_from([ast.In, ast.NotIn]))
        return ast.Compare(
            draw(sub("string")), [member()], [ast.Attribute(ast.Name("lists", _LOAD), target, _LOAD)]
        )
    if form == 5:
        member = draw(st.sampled_from([ast.In, ast.NotIn]))
        return ast.Compare(
            draw(sub("number")), [member()], [ast.Attribute(ast.Name("lists", _LOAD), "numbers", _LOAD)]
        )
    if form == 6:
        return _call(
            draw(st.sampled_from(["startswith", "endswith"])), draw(sub("string")), draw(sub("string"))
        )
    return _call("is_missing", draw(sub(draw(st.sampled_from(["number", "string", "bool"])))))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(["bool", "number", "string"]))
def test_random_well_typed_trees_evaluate_without_raising(data: st.DataObject, kind: str) -> None:
    text = ast.unparse(ast.fix_missing_locations(ast.Expression(data.draw(typed_trees(kind)))))
    try:
        expr = compile_expression(text, NAMES, LISTS, expected=None)
    except ExpressionError as e:  # only the size limits may refuse a well-typed tree
        assert "too long" in e.message or "too large" in e.message or "number too large" in e.message, e
        return
    assert expr.type == kind
    exercise(expr, data)
