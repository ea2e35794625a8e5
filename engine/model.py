"""The model at serving time: a LightGBM booster loaded from its text format, scored one row at a time.

A payment is scored through LightGBM's own C API single-row fast path
(`LGBM_BoosterPredictForMatSingleRowFast`): the same trees and the same arithmetic as
`Booster.predict`, without its per-call setup, so the scores are LightGBM's to the last bit.
Per-feature contributions (TreeSHAP) cost more than a prediction and are computed only on request.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lightgbm.basic import _LIB, _safe_call

from antifraud.engine.model_dir import MODEL_FILE, ModelError, feature_mismatch, read_model_dir

__all__ = ["Contribution", "ModelError", "ModelRuntime"]

_PREDICT_NORMAL = 0
_DTYPE_FLOAT64 = 1


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
        self._n = len(self.feature_names)
        self._row = np.zeros(self._n, dtype=np.float64)
        self._out = np.zeros(1, dtype=np.float64)
        self._out_len = ctypes.c_int64(0)
        self._fast = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                self.booster._handle,
                ctypes.c_int(_PREDICT_NORMAL),
                ctypes.c_int(0),
                ctypes.c_int(-1),
                ctypes.c_int(_DTYPE_FLOAT64),
                ctypes.c_int32(self._n),
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(self._fast),
            )
        )
        self._row_ptr = self._row.ctypes.data_as(ctypes.c_void_p)
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))

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

    def contributions(self, row: np.ndarray, top: int = 5) -> list[Contribution]:
        """The features that pushed this payment's score most, by LightGBM's TreeSHAP contributions."""
        # one thread: on a busy worker, LightGBM's default of every core costs more than it saves
        contrib = self.booster.predict(row.reshape(1, -1), pred_contrib=True, num_threads=1)[0][:-1]
        order = np.argsort(-np.abs(contrib))[:top]
        return [
            Contribution(self.feature_names[i], float(row[i]), float(contrib[i]))
            for i in order
            if contrib[i] != 0.0
        ]

    def __del__(self) -> None:
        fast = getattr(self, "_fast", None)
        if fast is not None and fast.value:
            _LIB.LGBM_FastConfigFree(fast)
