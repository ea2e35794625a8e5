"""What a rule may read, with its type: the payment's fields and the features.

Kept apart from the service (engine/loader.py) and the rule-set loader, so that a backtest or
`antifraud rules check` gives rules exactly the names the service gives them without importing
the service stack.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args, get_origin

from antifraud.engine.rules.nodes import FieldType


def transaction_field_types() -> dict[str, FieldType]:
    """Types of the canonical transaction's fields as rules see them (engine/schema.py).

    The timestamp is left out (rules read derived features such as hour_of_day instead).
    """
    from antifraud.engine.schema import TRANSACTION_COLUMNS, Transaction

    def base_types(annotation: Any) -> set[Any]:
        args = get_args(annotation)
        if not args:
            return {annotation}
        if get_origin(annotation) is Annotated:
            return base_types(args[0])
        if get_origin(annotation) is Literal:
            return {type(a) for a in args}
        return set().union(*(base_types(a) for a in args))

    types: dict[str, FieldType] = {}
    for name in TRANSACTION_COLUMNS:
        if name == "timestamp":
            continue
        kinds = base_types(Transaction.model_fields[name].annotation) - {type(None)}
        if kinds == {bool}:
            types[name] = "bool"
        elif kinds <= {int, float}:
            types[name] = "number"
        else:
            types[name] = "string"
    return types


def rule_names(feature_names: list[str]) -> dict[str, FieldType]:
    """What a rule may read, with its type: every request field, then every feature."""
    names = transaction_field_types()
    for feature in feature_names:
        names.setdefault(feature, "number")
    return names
