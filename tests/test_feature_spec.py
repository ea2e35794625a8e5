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
            "granularity: {1h: 5m, 24h: 1h}",
            "granularity: {1h: 5m, 24hh: 1h}",
            r"granularity for \['24hh'\], which are not among its windows",
        ),
        # the head and tails of exact windows (docs/features.md, "Exact head, tiled tail")
        ("7d: 6h, 30d: 1d}", "7d: 6h}", r"velocity of card: exact window 30d needs a tail granularity"),
        (
            "7d: 6h, 30d: 1d}",
            "7d: 5h, 30d: 1d}",
            r"limits.tail: tail 5h of window 7d must be shorter than it",
        ),
        ("30d: 1d}", "30d: 30d}", r"tail 30d of window 30d must be shorter"),
        ("    head: 256\n", "    head: 256\n    tail: {2h: 5m}\n", r"tail for \['2h'\], which are not among"),
        ("  head: 64\n", "  head: 0\n", r":\d+: spec.limits.head: .*not a positive whole number"),
        ("  head: 64\n", "  heads: 64\n", r"spec.limits: unknown key 'heads'"),
        ("  distinct: 64\n", "  distinct: 0\n", r":\d+: spec.limits.distinct: .*not a positive whole number"),
        ("  dedupe: 64\n", "  dedupe: -1\n", r":\d+: spec.limits.dedupe: .*not a positive whole number"),
        ("    head: 256\n", "    head: 2.5\n", r"spec.velocity\[0\].head: expected a whole number"),
        ("version: 1\n", "", r"spec: missing 'version'"),
        # an entity kept within another (docs/feature-state.md, section 2.5)
        ("within: card}", "within: ip}", r"within: the key fields of ip \['ip'\] and one more must be"),
        ("within: card}", "within: cards}", r"within: unknown entity 'cards'"),
        ("{fields: [card_id, merchant_id]", "{field: [card_id, merchant_id]", r"unknown key 'field'"),
        ("256 payments\n", "256 payments\n    head: 64\n", r"card_merchant: no head of its own"),
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


def test_default_heads_and_tails() -> None:
    """The design's defaults (docs/feature-state.md, section 2.1): a head of 64 payments, 256 for a
    card; every exact window tiled at its granularity, the card's habit window with its 30-day one."""
    spec = load_spec()
    assert (spec.head("card"), spec.head("ip"), spec.head("card_merchant")) == (256, 64, 256)
    card = next(v for v in spec.velocity if v.entity == "card")
    minutes = {w.label: (w.tail_ms or 0) // 60_000 for w in card.windows}
    assert minutes == {"10m": 1, "1h": 5, "24h": 60, "7d": 360, "30d": 1440}
    assert spec.card_behaviour is not None and spec.card_behaviour.window.tail_ms == 1440 * 60_000
    # sections 2.2-2.4: distinct sets, feedback lists and dedupe rings of 64
    assert (spec.distinct_limit, spec.feedback_limit, spec.dedupe_limit) == (64, 64, 64)
