"""What a rule set reads over many payments at once, and a rule set loaded as the service loads it.

The offline tools (backtest, score-history) decide many payments with `RuleSet.decide_frame`;
they must give rules the names, types and values the service gives them one payment at a time
(engine/pipeline.py), or a rule would decide differently offline than online. One home for both:

- :func:`rule_environment`: the columns for a set of payments: the payment's own fields, then
  every feature not named like one (`mcc` and `channel` are the request's strings, not codes);
- :func:`load_rules`: a rule-set directory loaded with the service's names and types
  (:func:`antifraud.engine.rules.names.rule_names`), so a rule set loads offline iff it loads in service.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from antifraud.engine.rules.names import rule_names
from antifraud.engine.rules.ruleset import METADATA_PREFIX, RuleSet
from antifraud.engine.rules.yaml_loader import load_ruleset


def payment_fields() -> tuple[str, ...]:
    """What rules read from the payment itself: every canonical field but the timestamp (rules
    read derived features such as hour_of_day instead)."""
    # imported here, as in engine.rules.names: the schema pulls in pydantic, which rules need not
    from antifraud.engine.schema import TRANSACTION_COLUMNS

    return tuple(c for c in TRANSACTION_COLUMNS if c != "timestamp")


def rule_environment(rows: pd.DataFrame, features: pd.DataFrame) -> dict[str, pd.Series[Any]]:
    """The columns rules read for these payments, by name: payment fields first, then features,
    then the payments' metadata.

    `rows` are canonical history rows and `features` their features, row for row. A feature named
    like a payment field (channel, mcc, amount...) is shadowed by it, as online. Metadata comes
    from columns named ``metadata.KEY`` in `rows`, or from a ``metadata`` column of dicts (or
    None), one column per key; a history without them gives every `metadata.KEY` rule a missing
    value (skipped), and a value of another type than the rule set declares is missing too
    (`RuleSet.decide_frame`), as online.
    """
    columns: dict[str, pd.Series[Any]] = {n: rows[n] for n in payment_fields() if n in rows}
    for name in features.columns:
        columns.setdefault(str(name), features[name])
    for name in rows.columns:
        if str(name).startswith(METADATA_PREFIX):
            columns[str(name)] = rows[name]
    if "metadata" in rows:
        dicts = [m if isinstance(m, dict) else {} for m in rows["metadata"]]
        for key in sorted({k for m in dicts for k in m}):
            columns.setdefault(
                METADATA_PREFIX + key, pd.Series([m.get(key) for m in dicts], index=rows.index, dtype=object)
            )
    return columns


def load_rules(directory: str | Path, feature_names: Sequence[str]) -> RuleSet:
    """Load the rule set in `directory` with the names and types the service gives rules.

    Raises engine.rules.RuleSetError (a ValueError listing each problem) for a bad rule set.
    """
    return load_ruleset(directory, rule_names(list(feature_names)))
