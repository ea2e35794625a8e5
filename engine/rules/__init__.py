"""The rule engine: YAML rules written by risk staff, which override the model score.

- :mod:`engine.rules.expression`: the condition language (parser, type checker, scalar evaluator)
- :mod:`engine.rules.vectorized`: the same language over columns, for backtests
- :mod:`engine.rules.ruleset`: loading a directory of rules, versioning, deciding a verdict
- :mod:`engine.rules.check`: the `antifraud rules check` command

docs/rules.md is the reference for rule authors.
"""

from engine.rules.check import check_rules, print_report, run_check
from engine.rules.expression import (
    FUNCTIONS,
    Expression,
    ExpressionError,
    FieldType,
    Problem,
    compile_expression,
)
from engine.rules.ruleset import (
    Action,
    FiredRule,
    Rule,
    RuleError,
    RuleOutcome,
    RuleSet,
    RuleSetError,
    ScoreBands,
    Verdict,
    load_ruleset,
    ruleset_from_texts,
    transaction_field_types,
)
from engine.rules.vectorized import evaluate_frame, evaluate_values, prepare_columns

__all__ = [
    "FUNCTIONS",
    "Action",
    "Expression",
    "ExpressionError",
    "FieldType",
    "FiredRule",
    "Problem",
    "Rule",
    "RuleError",
    "RuleOutcome",
    "RuleSet",
    "RuleSetError",
    "ScoreBands",
    "Verdict",
    "check_rules",
    "compile_expression",
    "evaluate_frame",
    "evaluate_values",
    "load_ruleset",
    "prepare_columns",
    "print_report",
    "ruleset_from_texts",
    "run_check",
    "transaction_field_types",
]
