"""The feature spec loader is strict: a typo or a wrong type is an error naming the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from antifraud.features.spec import DEFAULT_SPEC_PATH, SpecError, load_spec

BASE = DEFAULT_SPEC_PATH.read_text()


def _load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    load_spec(path)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # a misspelt granularity would silently make a bucketed window exact
        (
            "granularity: {1h: 5m",
            "granularty: {1h: 5m",
            r":\d+: spec.velocity\[6\]: unknown key 'granularty'; "
            r"did you mean 'granularity'\?",
        ),
        ("version: 1", "version: 2", r":10: version 2 is not supported"),
        (
            "granularity: 1d, prior: 0.01,",
            "granularity: 1d, prior: high,",
            r"label_rate\[0\].prior: expected a number",
        ),
        ("dedupe_horizon: 2d", "dedupe_horizon: 2days", r":\d+: spec.dedupe_horizon: bad duration '2days'"),
        (
            "{1h: 5m, 24h: 1h}",
            "{1h: 5m, 24hh: 1h}",
            r"granularity for \['24hh'\], which are not among its windows",
        ),
        ("windows: [10m, 1h", "windowz: [10m, 1h", r"spec.velocity\[0\]: unknown key 'windowz'"),
        ("  card: [card_id]\n", "  card: card_id\n", r"spec.entities.card: expected a list"),
        ("version: 1\n", "", r"spec: missing 'version'"),
    ],
)
def test_malformed_spec_names_file_line_and_key(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in BASE
    with pytest.raises(SpecError, match=expected) as caught:
        _load(tmp_path, BASE.replace(old, new, 1))
    assert str(caught.value).startswith(str(tmp_path / "spec.yaml"))


def test_default_spec_loads_with_its_version() -> None:
    spec = load_spec()
    assert (
        "terminal_known_frauds_7d" in spec.feature_names and "merchant_fraud_rate_30d" in spec.feature_names
    )
