"""Every feature has a human name (features/labels.py), for the console's decision page."""

from __future__ import annotations

from antifraud.features.labels import PAYMENT_LABELS, duration_words, feature_labels
from antifraud.features.spec import PAYMENT_FEATURES, load_spec


def test_every_feature_of_the_spec_has_a_name_in_the_models_order() -> None:
    spec = load_spec()
    labels = feature_labels(spec)
    assert list(labels) == spec.feature_names
    assert all(label and "_" not in label for label in labels.values()), labels
    assert len(set(labels.values())) == len(labels), "two features share a name"


def test_every_payment_feature_has_its_own_entry() -> None:
    assert set(PAYMENT_LABELS) == set(PAYMENT_FEATURES)


def test_names_read_as_words() -> None:
    labels = feature_labels()
    assert labels["card_count_10m"] == "card: payments in the last 10 minutes"
    assert labels["ip_sum_1h"] == "IP address: total amount in the last hour"
    assert labels["merchant_known_frauds_7d_lag14d"] == (
        "merchant: payments known as fraud in the 7 days that ended 14 days ago"
    )
    assert labels["card_frauds_30d"] == "card: fraud labels reported in the last 30 days"
    assert duration_words(86_400_000) == "day" and duration_words(172_800_000) == "2 days"
