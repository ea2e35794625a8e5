"""What went wrong, located: in one expression (:class:`Problem`, :class:`ExpressionError`) and in
a rule set (:class:`RuleError`, :class:`RuleSetError`).

Every problem is found when a rule set loads and carries where it is, so that risk staff can fix
their YAML without reading Python: a column in the expression text, or a file, line and rule id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------
# In an expression


@dataclass(frozen=True)
class Problem:
    """One problem found in an expression, located in its text."""

    message: str
    offset: int  # 0-based character offset in the expression text
    line: int  # 1-based line in the expression text
    column: int  # 1-based column on that line

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}" if self.line > 1 else f"column {self.column}"
        return f"{where}: {self.message}"


class ExpressionError(ValueError):
    """An expression that cannot be compiled; ``problems`` lists every problem found, in order."""

    def __init__(self, text: str, problems: Sequence[Problem]) -> None:
        self.text = text
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    @property
    def message(self) -> str:
        """The first problem's message, without its position."""
        return self.problems[0].message

    @property
    def offset(self) -> int:
        """0-based character offset of the first problem."""
        return self.problems[0].offset

    @property
    def column(self) -> int:
        """1-based column of the first problem."""
        return self.problems[0].column

    def render(self) -> str:
        """The text with a caret under each problem, for terminals and logs."""
        lines = self.text.splitlines() or [""]
        out: list[str] = []
        for p in self.problems:
            source = lines[p.line - 1] if p.line <= len(lines) else ""
            out += [f"{p}", f"  {source}", "  " + " " * (p.column - 1) + "^"]
        return "\n".join(out)


def position(text: str, offset: int) -> tuple[int, int]:
    """(line, column), both 1-based, of a character offset; \\r\\n, \\r and \\n end lines."""
    line, start = 1, 0
    i = 0
    while i < offset and i < len(text):
        ch = text[i]
        if ch == "\n" or (ch == "\r" and text[i + 1 : i + 2] != "\n"):
            line, start = line + 1, i + 1
        i += 1
    return line, offset - start + 1


# --------------------------------------------------------------------------------------------
# In a rule set


@dataclass(frozen=True)
class RuleError:
    """One problem in a rule set; ``line`` is 1-based, ``rule_id`` None outside a rule."""

    file: str
    line: int | None
    rule_id: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        rule = f" [{self.rule_id}]" if self.rule_id else ""
        return f"{where}:{rule} {self.message}"


class RuleSetError(ValueError):
    """A rule set that cannot load; ``errors`` lists every problem found across all files."""

    def __init__(self, errors: Sequence[RuleError]) -> None:
        self.errors = list(errors)
        super().__init__(f"{len(self.errors)} error(s) in rule set:\n" + "\n".join(map(str, self.errors)))
