"""Human names of the features, for people reading a decision ("card: payments in the last 10 minutes").

The one home for them, next to the spec: `feature_labels(spec)` walks the spec in the order
`FeatureSpec.feature_names` does and names each feature from its definition, so a feature added to
the spec gets a name without an edit here (tests/test_feature_labels.py checks that every feature
has one). docs/features.md keeps the long explanation of each.
"""

from __future__ import annotations

import functools

from antifraud.features.spec import FeatureSpec, Window, load_spec

#: the payment's own features (`FeatureSpec.payment`), which no spec entry describes
PAYMENT_LABELS: dict[str, str] = {
    "amount": "amount",
    "hour_of_day": "hour of the day (UTC)",
    "day_of_week": "day of the week (Monday 0)",
    "channel": "channel (ecom 0, pos 1, moto 2)",
    "mcc": "merchant category code",
    "card_on_file": "card on file",
    "authenticated": "already authenticated",
    "ip_card_country_mismatch": "IP country differs from the card's country",
    "billing_shipping_mismatch": "billing country differs from the shipping country",
    "ip_billing_country_mismatch": "IP country differs from the billing country",
}

_ENTITIES = {"ip": "IP address", "card_merchant": "card at this merchant"}
_FIELDS = {"merchant_id": "merchant", "ip_country": "IP country", "device_id": "device", "card_id": "card"}
_STATS = {"count": "payments", "sum": "total amount", "mean": "mean amount", "max": "largest amount"}
_EVENTS = {
    "decline": "bank declines reported",
    "reversal": "refunds and cancellations reported",
    "fraud": "fraud labels reported",
}
_UNITS = (("d", 86_400_000, "day"), ("h", 3_600_000, "hour"), ("m", 60_000, "minute"), ("s", 1_000, "second"))


def duration_words(ms: int) -> str:
    """A duration in words: 600000 -> "10 minutes", 3600000 -> "hour", 86400000 -> "day"."""
    for _, size, word in _UNITS:
        if ms % size == 0:
            count = ms // size
            return word if count == 1 else f"{count} {word}s"
    return f"{ms} ms"


def _window(window: Window) -> str:
    if window.lag_ms:
        return f"in the {duration_words(window.ms)} that ended {duration_words(window.lag_ms)} ago"
    return f"in the last {duration_words(window.ms)}"


def _entity(entity: str) -> str:
    return _ENTITIES.get(entity, entity.replace("_", " "))


def _field(field: str) -> str:
    return _FIELDS.get(field, field.replace("_", " "))


def feature_labels(spec: FeatureSpec | None = None) -> dict[str, str]:
    """Every feature's human name, by feature name, in the model's column order."""
    spec = spec or _default_spec()
    labels = {name: PAYMENT_LABELS.get(name, name.replace("_", " ")) for name in spec.payment}
    for v in spec.velocity:
        for w in v.windows:
            for stat in v.stats:
                labels[f"{v.entity}_{stat}_{w.label}"] = f"{_entity(v.entity)}: {_STATS[stat]} {_window(w)}"
    for d in spec.distinct:
        for w in d.windows:
            what = f"distinct {d.name.replace('_', ' ')}"
            labels[f"{d.entity}_distinct_{d.name}_{w.label}"] = f"{_entity(d.entity)}: {what} {_window(w)}"
    for n in spec.novelty:
        unseen = f"{_field(n.field)} not seen in the last {duration_words(n.lookback_ms)}"
        labels[f"{n.entity}_{n.name}"] = f"{_entity(n.entity)}: {unseen}"
    for f in spec.feedback:
        for w in f.windows:
            what = f"{_EVENTS[f.event]} {_window(w)}"
            labels[f"{f.entity}_{f.event}s_{w.label}"] = f"{_entity(f.entity)}: {what}"
    for r in spec.label_rate:
        entity = _entity(r.entity)
        for w in r.windows:
            labels[f"{r.entity}_known_frauds_{w.label}"] = f"{entity}: payments known as fraud {_window(w)}"
            labels[f"{r.entity}_fraud_rate_{w.label}"] = f"{entity}: known fraud rate {_window(w)}"
    if spec.card_behaviour is not None:
        b = spec.card_behaviour
        entity, span = _entity(b.entity), duration_words(b.window.ms)
        labels[f"{b.entity}_amount_to_mean_{b.window.label}"] = f"{entity}: amount / its mean over {span}"
        labels[f"{b.entity}_amount_zscore_{b.window.label}"] = f"{entity}: amount's z-score over {span}"
        labels[f"{b.entity}_seconds_since_prev"] = f"{entity}: seconds since its previous payment"
        labels[f"{b.entity}_age_days"] = f"{entity}: days since its first payment"
        for w in b.frequency:
            labels[f"{b.entity}_frequency_{w.label}_to_{b.window.label}"] = (
                f"{entity}: payments per day {_window(w)} / per day over {span}"
            )
    return labels


@functools.cache
def _default_spec() -> FeatureSpec:
    return load_spec()
