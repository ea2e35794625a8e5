"""Expression text -> Python syntax tree, with :func:`ast.parse` used *as a parser only*.

The tree is then checked against a whitelist by engine/rules/checker.py; the text is never given to
``eval``, ``exec`` or ``compile``. Here: the limits that keep hostile or accidental input from
exhausting the parser or the stack, line breaks of YAML block scalars, and syntax errors turned into
messages for risk staff.
"""

from __future__ import annotations

import ast
import re
import warnings
from typing import Final, NamedTuple

from antifraud.engine.rules.errors import ExpressionError, Problem, position

# Limits that keep hostile or accidental input from exhausting the parser or the stack.
MAX_LENGTH: Final = 4000
MAX_DEPTH: Final = 100
MAX_NODES: Final = 2500


class Parsed(NamedTuple):
    """A parsed expression: its syntax tree and the one-line text it was parsed from."""

    tree: ast.Expression
    source: str  # the text on one line, leading blanks stripped (col_offsets count in it)
    lead: int  # characters stripped: an offset in ``source`` plus lead is one in the text


def parse(text: str) -> Parsed:
    """Parse an expression's text; raises :class:`ExpressionError` for bad, empty or oversize text."""
    if not isinstance(text, str):
        raise ExpressionError(str(text), [Problem("an expression must be text", 0, 1, 1)])
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            text[:200],
            [
                Problem(
                    f"expression too long ({len(text)} characters, at most {MAX_LENGTH}); "
                    "move long value lists to lists:",
                    0,
                    1,
                    1,
                )
            ],
        )
    # YAML block scalars may span lines. Python needs one logical line in eval mode: map every
    # line break to a space (same length, so offsets hold) and strip the indentation it rejects.
    flat = text.replace("\r", " ").replace("\n", " ")
    parsed = flat.lstrip()
    lead = len(flat) - len(parsed)
    if not parsed.strip():
        raise ExpressionError(text, [Problem("empty expression", 0, 1, 1)])
    tree = _parse(text, parsed, lead)
    _check_size(text, tree, lead)
    return Parsed(tree, parsed, lead)


def _parse(text: str, parsed: str, lead: int) -> ast.Expression:
    try:
        with warnings.catch_warnings():
            # e.g. SyntaxWarning for `x is 5`: we report our own error, and a warnings filter set
            # to "error" must not turn it into a different exception.
            warnings.simplefilter("ignore")
            return ast.parse(parsed, mode="eval")
    except SyntaxError as e:
        # 3.11 reports a 1-based character offset on the single line we parsed; 0 when the
        # input ended too early, which we point at the end of the text.
        offset = len(text.rstrip()) if not e.offset or (e.lineno or 1) != 1 else lead + e.offset - 1
        offset = min(offset, len(text))
        line, column = position(text, offset)
        raise ExpressionError(text, [Problem(_syntax_message(e, parsed), offset, line, column)]) from None
    except (RecursionError, MemoryError, ValueError, OverflowError):
        # The parser's own limits (deep nesting, huge literals): refuse rather than crash.
        problem = Problem("expression too complex or nested too deeply", 0, 1, 1)
        raise ExpressionError(text, [problem]) from None


def _check_size(text: str, tree: ast.Expression, lead: int) -> None:
    """Refuse trees too deep or too large, iteratively: later passes recurse over the tree."""
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH or count > MAX_NODES:
            column = getattr(node, "col_offset", 0)  # in UTF-8 bytes of the parsed text
            prefix = text[lead:].encode("utf-8", "surrogatepass")[:column]
            offset = min(lead + len(prefix.decode("utf-8", "replace")), len(text))
            line, column = position(text, offset)
            what = f"nested too deeply (more than {MAX_DEPTH} levels)" if depth > MAX_DEPTH else "too large"
            raise ExpressionError(text, [Problem(f"expression {what}", offset, line, column)])
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _syntax_message(error: SyntaxError, text: str) -> str:
    message = (error.msg or "invalid syntax").replace(
        "Perhaps you forgot a comma?", "Is an operator missing?"
    )
    if not error.offset and message == "invalid syntax":
        message = "the expression ends too early"
    if "Maybe you meant '==' or ':='" in message or re.search(r"(?<![=!<>])=(?!=)", text):
        return "invalid syntax: compare with '==' (a single '=' is not allowed)"
    if "&&" in text or "||" in text:
        return f"{message}: write 'and' / 'or' instead of '&&' / '||'"
    if "!" in text.replace("!=", ""):
        return f"{message}: write 'not' instead of '!'"
    words = {w.upper() for w in text.split()}
    lower_keywords = any(w in text.split() for w in ("and", "or", "not"))
    if any(w in words for w in ("AND", "OR", "NOT")) and not lower_keywords:
        return f"{message}: keywords are written in lower case (and, or, not)"
    return message
