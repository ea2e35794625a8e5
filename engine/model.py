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

When lleaves is installed, `predict_one` uses the model compiled to native code instead (about 3x
faster per row, scores within 1e-9 of LightGBM's): engine/compiled_model.py. The compiled artifact
is cached beside the model and compiled by a deploy step, never inside a worker; until it exists, or
whenever it cannot be used, LightGBM's fast path scores. `ANTIFRAUD_MODEL_RUNTIME` (auto, lightgbm,
compiled) chooses. Batches and contributions always go through LightGBM.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lightgbm.basic import _LIB, _safe_call

from antifraud.engine.compiled_model import (
    TOLERANCE,
    ArtifactKey,
    CompiledForest,
    CompileError,
    RuntimeChoice,
    artifact_key,
    artifact_paths,
    artifact_ready,
    check_rows,
    differs,
    runtime_choice,
    start_background_compile,
)
from antifraud.engine.model_dir import MODEL_FILE, ModelError, feature_mismatch, read_model_dir
from antifraud.engine.verdicts import RiskScale

__all__ = ["TOP_CONTRIBUTIONS", "Contribution", "ModelError", "ModelRuntime"]

log = logging.getLogger("antifraud.model")

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

    def __init__(
        self,
        directory: str | Path,
        feature_names: list[str] | None = None,
        runtime: RuntimeChoice | None = None,
    ) -> None:
        """Load `directory`; `runtime` overrides ``ANTIFRAUD_MODEL_RUNTIME`` (auto when unset)."""
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
        # the compiled model, when attached at load: predict_one calls `_entry` when it is set
        self._row_dptr = self._row.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self.compiled: CompiledForest | None = None
        self._entry: Any = None
        choice = runtime if runtime is not None else runtime_choice()
        if choice is not RuntimeChoice.LIGHTGBM:
            self._use_compiled(read.name, read.text, required=choice is RuntimeChoice.COMPILED)

    @property
    def runtime(self) -> str:
        """Which path scores single rows now: "compiled" or "lightgbm"."""
        return "compiled" if self._entry is not None else "lightgbm"

    def _use_compiled(self, name: str, text: str, required: bool) -> None:
        """Attach the compiled artifact; without one, compile it now if `required`, else score with
        LightGBM (never compiled by a serving worker). Not `required`: every failure is logged and
        LightGBM scores."""
        try:
            key = artifact_key(name, text)
        except (ImportError, OSError) as exc:
            key = None
            reason = f"the compiler does not load ({exc})"
        else:
            reason = "lleaves is not installed (pip install 'antifraud[compiled]')"
        if key is None:
            if required:
                raise CompileError(f"{self.directory}: no compiled model: {reason}")
            log.info("%s: scoring with LightGBM: %s", self.version, reason)
            return
        paths = artifact_paths(self.directory, key)
        # checked before it serves: rows over every feature's range, scored by LightGBM now
        rows = check_rows(text)
        expected = np.asarray(self.booster.predict(rows, num_threads=1), dtype=np.float64)
        if artifact_ready(paths, key):
            self._attach(key, rows, expected, required)
        elif required:
            # in a process of its own, so that this one does not keep the compiler's memory
            if start_background_compile(self.directory, key.model_sha256, paths.log).wait() != 0:
                tail = paths.log.read_text(errors="replace").strip().splitlines()[-1:]
                raise CompileError(f"{self.directory}: compiling the model failed: {tail} (see {paths.log})")
            self._attach(key, rows, expected, required)
        else:
            # compiling takes seconds to minutes and hundreds of MB: a deploy step, never a worker's
            failed = f" (it failed before: {paths.failed})" if paths.failed.exists() else ""
            log.info(
                "%s: scoring with LightGBM: no compiled model for this host%s; compile it with "
                "`python -m antifraud.engine.compiled_model %s`",
                self.version,
                failed,
                self.directory,
            )

    def _attach(self, key: ArtifactKey, rows: np.ndarray, expected: np.ndarray, required: bool) -> None:
        paths = artifact_paths(self.directory, key)
        try:
            compiled = CompiledForest(paths, key, self._n)
            gap = differs(compiled, rows, expected)
            if not gap <= TOLERANCE:
                raise CompileError(
                    f"{paths.object}: its scores differ from LightGBM's by {gap:.3g} (over {TOLERANCE}): "
                    "not used; delete it to compile it again"
                )
        except (CompileError, OSError, RuntimeError, ImportError) as exc:
            if required:
                raise CompileError(f"{self.directory}: the compiled model cannot serve: {exc}") from exc
            log.warning("%s: scoring with LightGBM: %s", self.version, exc)
            return
        self.compiled = compiled
        self._entry = compiled.entry
        log.info("%s: scoring with the compiled model %s", self.version, paths.object)

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
        entry = self._entry
        if entry is not None:
            entry(self._row_dptr, self._out_ptr, 0, 1)
            return float(self._out[0])
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
