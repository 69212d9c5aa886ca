"""`rta train`: fit a small LightGBM on the simulated world, export it to ONNX, check parity, publish.

The artifact (the format rta_service.model reads) is written to a temporary file beside out_path and
renamed over it only after onnxruntime, through OnnxModel, agrees with LightGBM on the validation
rows and on copies of them with missing values.

PARITY_TOLERANCE = 1e-4: the ONNX tree ensemble sums float32 leaf values where LightGBM sums doubles;
over ~100 trees that costs ~1e-7 in probability (measured max diffs are 1e-7). A real disagreement,
one tree sending a row down the other branch (a NaN default direction or a threshold rounded to
float32 on the wrong side), moves the score by about one leaf value times the sigmoid slope, >= 1e-3
for these models. 1e-4 sits well between the two, so it passes rounding and catches wrong routing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnx
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType
from sklearn.metrics import log_loss, roc_auc_score

from cdp.pipeline import world_as_of
from rta_service import model as rta_model
from rta_service.features import FEATURE_NAMES

from .dataset import build_dataset

PARITY_TOLERANCE = 1e-4
VALID_SHARE = 0.2  # the latest 20% of exposures by time
PARITY_ROWS = 5000
PARAMS = {
    "objective": "binary", "n_estimators": 100, "learning_rate": 0.05, "num_leaves": 15,
    "min_child_samples": 50, "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.9,
    "reg_lambda": 1.0, "n_jobs": 2, "deterministic": True, "force_row_wise": True, "verbose": -1,
}


class ParityError(RuntimeError):
    """onnxruntime and LightGBM disagree on the exported model; no artifact was published."""


def fit(X: np.ndarray, y: np.ndarray, seed: int, **overrides) -> lgb.LGBMClassifier:
    clf = lgb.LGBMClassifier(**{**PARAMS, "random_state": seed, **overrides})
    clf.fit(X, y)
    return clf


def to_onnx(clf: lgb.LGBMClassifier, metadata: dict[str, str]) -> onnx.ModelProto:
    n = clf.n_features_in_
    model = convert_lightgbm(clf, initial_types=[("input", FloatTensorType([None, n]))], zipmap=False)
    onnx.helper.set_model_props(model, metadata)
    return model


def with_missing(X: np.ndarray, seed: int, share: float = 0.3) -> np.ndarray:
    """X, a copy with `share` of the cells NaN, and one all-NaN row: parity must hold on missing values."""
    rng = np.random.default_rng(seed)
    holes = X.copy()
    holes[rng.random(X.shape) < share] = np.nan
    return np.vstack([X, holes, np.full((1, X.shape[1]), np.nan, dtype=X.dtype)])


def publish(clf: lgb.LGBMClassifier, model: onnx.ModelProto, out_path: Path, X_check: np.ndarray,
            expected_features: tuple[str, ...] = FEATURE_NAMES, tolerance: float = PARITY_TOLERANCE) -> float:
    """Write `model` to out_path if OnnxModel agrees with `clf` on X_check; returns the max abs diff."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        onnx.save(model, str(tmp))
        served = rta_model.OnnxModel.load(tmp, expected_features).predict(X_check.astype(np.float32))
        diff = float(np.max(np.abs(served - clf.predict_proba(X_check)[:, 1])))
        if not diff <= tolerance:
            raise ParityError(f"onnxruntime and LightGBM differ by {diff:.3g} > {tolerance:g}")
        os.replace(tmp, out_path)
        return diff
    finally:
        tmp.unlink(missing_ok=True)


def train(input_dir: Path, out_path: Path, seed: int = 7, as_of: dt.date | None = None,
          n_estimators: int = PARAMS["n_estimators"]) -> dict:
    """Train on input_dir's world, publish the ONNX artifact at out_path; returns the summary."""
    as_of = world_as_of(input_dir, as_of)
    data = build_dataset(input_dir, as_of)
    X = data[list(FEATURE_NAMES)].to_numpy(dtype=np.float32)
    y = data["label"].to_numpy()
    valid = data["ts"].to_numpy() >= np.quantile(data["ts"].to_numpy(), 1 - VALID_SHARE)
    if y[~valid].min() == y[~valid].max():
        raise ValueError("the training rows hold a single class; simulate more traffic")
    clf = fit(X[~valid], y[~valid], seed, n_estimators=n_estimators)
    p_valid = clf.predict_proba(X[valid])[:, 1]
    both = y[valid].min() != y[valid].max()
    truth = data.loc[valid, "propensity"].to_numpy()
    metrics = {
        "auc": round(float(roc_auc_score(y[valid], p_valid)), 4) if both else None,
        "ceiling_auc": round(float(roc_auc_score(y[valid], truth)), 4) if both and not np.isnan(truth).any() else None,
        "logloss": round(float(log_loss(y[valid], p_valid, labels=[0, 1])), 5),
        "n_train": int((~valid).sum()), "n_valid": int(valid.sum()),
        "base_rate": round(float(y[~valid].mean()), 5), "valid_base_rate": round(float(y[valid].mean()), 5),
        "match_rate": round(float(data["known"].mean()), 4),
    }
    digest = hashlib.sha256(X.tobytes() + y.tobytes()).hexdigest()[:8]
    version = f"lgbm-{as_of:%Y%m%d}-{digest}"
    model = to_onnx(clf, {rta_model.META_FEATURES: json.dumps(list(FEATURE_NAMES)),
                          rta_model.META_VERSION: version, rta_model.META_METRICS: json.dumps(metrics)})
    diff = publish(clf, model, out_path, with_missing(X[valid][:PARITY_ROWS], seed))
    return {**metrics, "parity_max_diff": diff, "model_version": version, "path": str(out_path),
            "as_of": as_of.isoformat()}
