"""Model monitoring arithmetic shared by the offline report (`antifraud monitor`) and the service's
periodic job: a model's reference profile (`profile`), drift against it (`drift`) and the flags it
raises (`flags`).

numpy, PyYAML and the standard library only: it sits beside `antifraud.engine.model` in the import
layers, so both the service and the offline tools can use it. Reading decisions (the store, an
exported Parquet) is the caller's job; this package takes plain arrays. docs/monitoring.md explains
every figure.
"""

from antifraud.engine.monitoring.drift import FeatureDrift, Thresholds, feature_drift, psi, score_drift
from antifraud.engine.monitoring.profile import (
    REFERENCE_FILE,
    Distribution,
    ReferenceProfile,
    build_profile,
)

__all__ = [
    "REFERENCE_FILE",
    "Distribution",
    "FeatureDrift",
    "ReferenceProfile",
    "Thresholds",
    "build_profile",
    "feature_drift",
    "psi",
    "score_drift",
]
