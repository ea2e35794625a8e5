"""The model at serving time: a LightGBM booster loaded from its text format, scored one row at a time.

A payment is scored through LightGBM's own C API single-row fast path
(`LGBM_BoosterPredictForMatSingleRowFast`): the same trees and the same arithmetic as
`Booster.predict`, without its per-call setup, so the scores are LightGBM's to the last bit.
Per-feature contributions (TreeSHAP) cost more than a prediction (~1.5 ms with models/default):
they go through a second fast configuration of the same C API (predict type "contrib", the numbers
of `Booster.predict(pred_contrib=True)`), with buffers of their own and a lock, because the service
computes them in a thread, after answering a flagged payment, while the worker scores the next ones.
The risk score (0-100) of a score is the model's own :class:`RiskScale`, anchored on the thresholds
recorded in its metadata.json.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lightgbm.basic import _LIB, _safe_call

from antifraud.engine.model_dir import MODEL_FILE, ModelError, feature_mismatch, read_model_dir
from antifraud.engine.verdicts import RiskScale

__all__ = ["TOP_CONTRIBUTIONS", "Contribution", "ModelError", "ModelRuntime"]

_PREDICT_NORMAL = 0
_PREDICT_CONTRIB = 3  # C_API_PREDICT_CONTRIB: per-feature TreeSHAP values, then the expected value
_DTYPE_FLOAT64 = 1
#: how many contributions an answer carries
TOP_CONTRIBUTIONS = 5


@dataclass(frozen=True)
class Contribution:
    """One feature's share of a payment's score (log-odds units)."""

    feature: str
    value: float
    contribution: float


class ModelRuntime:
    """A loaded model directory (model.txt + metadata.json) ready to score single payments."""

    def __init__(self, directory: str | Path, feature_names: list[str] | None = None) -> None:
        self.directory = Path(directory)
        # the shared reader: it refuses a missing, corrupt or truncated model.txt with a ModelError
        read = read_model_dir(self.directory, require_metadata=False)
        model_file = self.directory / MODEL_FILE
        self.version = read.version
        self.metadata: dict[str, Any] = read.metadata
        self.booster = read.booster
        self.feature_names: list[str] = self.booster.feature_name()
        if feature_names is not None and (diff := feature_mismatch(self.feature_names, feature_names)):
            raise ModelError(
                f"{model_file} was trained on other features than the current spec ({diff}): retrain it"
            )
        #: the score -> risk score map, anchored on the thresholds this model recorded
        self.risk_scale: RiskScale = RiskScale.from_thresholds(self.metadata.get("thresholds"))
        self._n = len(self.feature_names)
        self._row = np.zeros(self._n, dtype=np.float64)
        self._out = np.zeros(1, dtype=np.float64)
        self._out_len = ctypes.c_int64(0)
        self._fast = self._fast_config(_PREDICT_NORMAL)
        self._row_ptr = self._row.ctypes.data_as(ctypes.c_void_p)
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        # contributions: one value per feature, then the expected value (binary objective); their
        # own row buffer, so that a contribution in a thread never overwrites a prediction's row
        self._contrib_lock = threading.Lock()
        self._contrib_row = np.zeros(self._n, dtype=np.float64)
        self._contrib_row_ptr = self._contrib_row.ctypes.data_as(ctypes.c_void_p)
        self._contrib = np.zeros(self._n + 1, dtype=np.float64)
        self._contrib_ptr = self._contrib.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._fast_contrib = self._fast_config(_PREDICT_CONTRIB)

    def _fast_config(self, predict_type: int) -> ctypes.c_void_p:
        """A single-row fast configuration (freed in __del__): one thread, every tree."""
        handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                self.booster._handle,
                ctypes.c_int(predict_type),
                ctypes.c_int(0),
                ctypes.c_int(-1),
                ctypes.c_int(_DTYPE_FLOAT64),
                ctypes.c_int32(self._n),
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(handle),
            )
        )
        return handle

    def predict_one(self, row: np.ndarray) -> float:
        """Probability of fraud for one feature row (NaN = missing). Not thread-safe: one per worker."""
        self._row[:] = row
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                self._fast, self._row_ptr, ctypes.byref(self._out_len), self._out_ptr
            )
        )
        return float(self._out[0])

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities for a matrix of rows (batch scoring, backtests)."""
        return np.asarray(self.booster.predict(rows, num_threads=2), dtype=float)

    def risk_score(self, score: float | None) -> int | None:
        """The 0-100 risk score of a score of this model (None for a missing score)."""
        return self.risk_scale.of(score)

    def contribution_values(self, row: np.ndarray) -> np.ndarray:
        """TreeSHAP contributions of one row (log-odds): one per feature, then the expected value.

        LightGBM's single-row fast path with the contrib predict type: the numbers of
        ``Booster.predict(row, pred_contrib=True)``. Safe to call from another thread than the one
        scoring (its own buffers, one call at a time); returns a copy.
        """
        with self._contrib_lock:
            self._contrib_row[:] = row
            out_len = ctypes.c_int64(0)
            _safe_call(
                _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                    self._fast_contrib, self._contrib_row_ptr, ctypes.byref(out_len), self._contrib_ptr
                )
            )
            return self._contrib.copy()

    def contributions(self, row: np.ndarray, top: int = TOP_CONTRIBUTIONS) -> list[Contribution]:
        """The features that pushed this payment's score most (largest absolute TreeSHAP values),
        through the fast path; features contributing exactly 0 are left out."""
        contrib = self.contribution_values(row)[:-1]
        # argpartition then a sort of the few: cheaper than sorting every feature
        k = min(top, self._n)
        if k <= 0:
            return []
        magnitude = np.abs(contrib)
        head = np.argpartition(-magnitude, k - 1)[:k] if k < self._n else np.arange(self._n)
        order = head[np.argsort(-magnitude[head], kind="stable")]
        return [
            Contribution(self.feature_names[i], float(row[i]), float(contrib[i]))
            for i in order
            if contrib[i] != 0.0
        ]

    def __del__(self) -> None:
        for name in ("_fast", "_fast_contrib"):
            fast = getattr(self, name, None)
            if fast is not None and fast.value:
                _LIB.LGBM_FastConfigFree(fast)
