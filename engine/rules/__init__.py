"""The rule engine: YAML rules written by risk staff, which override the model score.

The condition language, one job per module:

- :mod:`antifraud.engine.rules.expression`: :class:`Expression` and :func:`compile_expression` (parse,
  check, compile)
- :mod:`antifraud.engine.rules.parser`: expression text -> Python syntax tree, with size limits
- :mod:`antifraud.engine.rules.checker`: the type checker, Python syntax tree -> typed tree, every problem
  found
- :mod:`antifraud.engine.rules.nodes`: the language's types and the typed tree
- :mod:`antifraud.engine.rules.functions`: the functions rules may call (signatures, arities, result types)
- :mod:`antifraud.engine.rules.scalar`: the typed tree -> closures over one payment (the service's hot path)
- :mod:`antifraud.engine.rules.vectorized`: the same language over columns, for backtests
- :mod:`antifraud.engine.rules.errors`: problems located in an expression or in a rule set

Rule sets:

- :mod:`antifraud.engine.rules.ruleset`: the rule-set types and the decision of a verdict (RuleSet.decide)
- :mod:`antifraud.engine.rules.yaml_loader`: loading a directory of YAML rules and list files, checked as a
  whole
- :mod:`antifraud.engine.rules.names`: what a rule may read (payment fields and features), with types
- :mod:`antifraud.engine.rules.environment`: a rule set loaded with the service's names, and the columns it
  reads for many payments (backtests, score-history)
- :mod:`antifraud.engine.rules.check`: the `antifraud rules check` command

The verdict vocabulary itself (Verdict, VERDICTS, band) lives in :mod:`antifraud.engine.verdicts`.
docs/rules.md is the reference for rule authors.
"""

from antifraud.engine.rules.check import check_rules, print_report, run_check
from antifraud.engine.rules.environment import load_rules, payment_fields, rule_environment
from antifraud.engine.rules.errors import ExpressionError, Problem, RuleError, RuleSetError
from antifraud.engine.rules.expression import Expression, compile_expression
from antifraud.engine.rules.functions import FUNCTIONS
from antifraud.engine.rules.names import rule_names, transaction_field_types
from antifraud.engine.rules.nodes import FieldType
from antifraud.engine.rules.ruleset import (
    Action,
    FiredRule,
    Rule,
    RuleOutcome,
    RuleSet,
    ScoreBands,
    Verdict,
)
from antifraud.engine.rules.vectorized import evaluate_frame, evaluate_values, prepare_columns
from antifraud.engine.rules.yaml_loader import load_ruleset, ruleset_from_texts

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
    "load_rules",
    "load_ruleset",
    "payment_fields",
    "prepare_columns",
    "print_report",
    "rule_environment",
    "rule_names",
    "ruleset_from_texts",
    "run_check",
    "transaction_field_types",
]
