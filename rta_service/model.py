"""Stage 4: the only module that touches onnxruntime.

An artifact is an ONNX model (LightGBM exported with zipmap=False) whose metadata_props carry:
    rta.feature_names  JSON list; must equal features.FEATURE_NAMES or the model is refused
    rta.model_version  free text shown in responses and metrics
    rta.metrics        JSON object (AUC etc.), informational
    rta.calibration    optional JSON {"x": [...], "y": [...]}: a monotone table mapping the graph's score
                       to a calibrated probability by linear interpolation (clipped at the ends)
The model's input is one float32 tensor [n, len(FEATURE_NAMES)]; the score is the probability of
class 1, read from the output named `probabilities` (or the second output).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import features

META_FEATURES = "rta.feature_names"
META_VERSION = "rta.model_version"
META_METRICS = "rta.metrics"
META_CALIBRATION = "rta.calibration"


class ModelError(RuntimeError):
    """The artifact cannot be served: unreadable, wrong features, or wrong shape."""


class OnnxModel:
    def __init__(self, session: ort.InferenceSession, version: str, metrics: dict, feature_names: tuple[str, ...]):
        self.session = session
        self.version = version
        self.metrics = metrics
        self.feature_names = feature_names
        self._input = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()]
        self._output = "probabilities" if "probabilities" in outputs else outputs[-1]
        self.calibration: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def load(cls, path: str | Path, expected_features: tuple[str, ...] = features.FEATURE_NAMES) -> OnnxModel:
        path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"{path}: cannot load ONNX model: {exc}") from exc
        meta = session.get_modelmeta().custom_metadata_map
        try:
            names = tuple(json.loads(meta[META_FEATURES]))
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{path}: no valid {META_FEATURES} in the model metadata") from exc
        if names != tuple(expected_features):
            raise ModelError(f"{path}: model features {list(names)} differ from the feature builder's "
                             f"{list(expected_features)}")
        model = cls(session, meta.get(META_VERSION, path.stem), json.loads(meta.get(META_METRICS, "{}")), names)
        if META_CALIBRATION in meta:
            model.calibration = parse_calibration(meta[META_CALIBRATION], path)
        model.predict(np.full((2, len(names)), np.nan, dtype=np.float32))  # fail at start-up, not on a request
        return model

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Scores in [0, 1], one per row of a float32 [n, n_features] matrix."""
        out = self.session.run([self._output], {self._input: matrix})[0]
        scores = out[:, 1] if out.ndim == 2 else out
        if scores.shape[0] != matrix.shape[0]:
            raise ModelError(f"model returned {scores.shape[0]} scores for {matrix.shape[0]} rows")
        if self.calibration is not None:
            return np.interp(scores, *self.calibration)
        return scores.astype(np.float64, copy=False)


def parse_calibration(raw: str, path) -> tuple[np.ndarray, np.ndarray]:
    """The calibration table of an artifact: increasing x, non-decreasing y in [0, 1]."""
    try:
        table = json.loads(raw)
        x, y = np.asarray(table["x"], dtype=np.float64), np.asarray(table["y"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable {META_CALIBRATION}: {exc}") from None
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2 or np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) \
            or y.min() < 0 or y.max() > 1:
        raise ModelError(f"{path}: {META_CALIBRATION} must be increasing x and non-decreasing y in [0, 1]")
    return x, y
