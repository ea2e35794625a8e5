"""The model at serving time: a LightGBM booster loaded from its text format, scored one row at a time.

A payment is scored through LightGBM's own C API single-row fast path
(`LGBM_BoosterPredictForMatSingleRowFast`): the same trees and the same arithmetic as
`Booster.predict`, without its per-call setup, so the scores are LightGBM's to the last bit.
Per-feature contributions (TreeSHAP) cost more than a prediction and are computed only on request.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, _safe_call

_PREDICT_NORMAL = 0
_DTYPE_FLOAT64 = 1


class ModelError(ValueError):
    """A model directory is missing, unreadable or does not match the feature spec."""


@dataclass(frozen=True)
class Contribution:
    """One feature's share of a payment's score (log-odds units)."""

    feature: str
    value: float
    contribution: float


def _check_complete(text: str, path: Path) -> None:
    """Refuse a model file that is not whole: LightGBM aborts the process on a truncated one
    instead of raising, so a model caught half-copied would take the worker down."""
    sizes = re.search(r"^tree_sizes=([0-9 ]+)$", text, re.MULTILINE)
    start, end = text.find("Tree=0"), text.find("end of trees")
    whole = (
        sizes is not None
        and start >= 0
        and end > start
        and sum(map(int, sizes.group(1).split())) == end - start
        and "end of parameters" in text[end:]
    )
    if not whole:
        raise ModelError(
            f"{path} is incomplete or not a LightGBM text model (was it still being copied?): "
            "write the new model beside it and rename it into place"
        )


class ModelRuntime:
    """A loaded model directory (model.txt + metadata.json) ready to score single payments."""

    def __init__(self, directory: str | Path, feature_names: list[str] | None = None) -> None:
        self.directory = Path(directory)
        model_file = self.directory / "model.txt"
        if not model_file.is_file():
            raise ModelError(
                f"{model_file} not found: train a model first (antifraud train ... --out {directory})"
            )
        text = model_file.read_text()
        self.version = f"{self.directory.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
        meta_file = self.directory / "metadata.json"
        self.metadata: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        _check_complete(text, model_file)
        try:
            self.booster = lgb.Booster(model_str=text)
        except lgb.basic.LightGBMError as exc:
            raise ModelError(f"{model_file}: not a LightGBM model: {exc}") from exc
        self.feature_names: list[str] = self.booster.feature_name()
        if feature_names is not None and feature_names != self.feature_names:
            missing = sorted(set(self.feature_names) - set(feature_names))
            extra = sorted(set(feature_names) - set(self.feature_names))
            raise ModelError(
                f"{model_file} was trained on other features than the current spec "
                f"(model needs {missing or 'the same names in another order'}; spec adds {extra}): retrain it"
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
