"""Retraining on the decision log: LightGBM with early stopping on a time-based split, class weights,
a calibration table the service applies, an evaluation report, a parity gate, the registry.

Rows are split by time: the earliest 70% train, the next 15% ("valid") stop the boosting early and fit
the calibration, the latest 15% ("test") are only evaluated. Positives are rare, so they are weighted
up (scale_pos_weight = negatives / positives); that inflates the raw scores, and a Platt calibration
(a logistic fit on the raw score's logit) fitted on the valid rows maps them back to probabilities.
Platt rather than isotonic: two parameters are stable on the few positives of a day's log, and a
strictly increasing map keeps the model's ranking (isotonic steps tie rows and cost AUC). The table goes into the
artifact (`rta.calibration`) and rta_service.model applies it, so the service's score is the
calibrated probability the policy's thresholds and weight factors expect.

Gate before anything is published: onnxruntime must agree with LightGBM on the raw scores (max
|diff| <= PARITY_TOLERANCE on test rows and copies with missing values), the calibrated scores must
agree within CALIBRATED_TOLERANCE, and the AUC of the served scores on the test rows must be within
AUC_TOLERANCE of LightGBM's. Otherwise ParityError, and nothing is written.
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
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from rta_service import model as rta_model
from rta_service import registry as reg
from rta_service.features import FEATURE_NAMES

from . import evaluate
from .train import PARAMS, PARITY_TOLERANCE, ParityError, to_onnx, with_missing

CALIBRATED_TOLERANCE = 1e-3
AUC_TOLERANCE = 1e-3
LOGIT_RANGE = 12.0  # calibration knots span raw scores of sigmoid(-12)..sigmoid(12)
SPLIT = (0.70, 0.85)
META_WINDOW = "rta.training_window"
META_DATA_HASH = "rta.data_hash"


def time_split(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks (train, valid, test) by time: rows at or after a quantile go to the later part."""
    a, b = np.quantile(ts, SPLIT)
    return ts < a, (ts >= a) & (ts < b), ts >= b


def calibration_table(raw: np.ndarray, y: np.ndarray, knots: int = 257) -> tuple[list[float], list[float]]:
    """Platt scaling (a logistic fit on the logit of the raw score) as a table of knots: x increasing,
    y strictly increasing, so the calibrated score ranks rows exactly as the raw one does."""
    z = np.log(np.clip(raw, 1e-9, 1 - 1e-9) / np.clip(1 - raw, 1e-9, 1)).reshape(-1, 1)
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(z, y)
    a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if not a > 0:
        raise ValueError(f"calibration slope {a:.3g} is not positive: the model ranks the valid rows backwards")
    grid = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, knots)
    xs = np.r_[0.0, 1 / (1 + np.exp(-grid)), 1.0]
    ys = np.r_[0.0, 1 / (1 + np.exp(-(a * grid + b))), 1.0]
    return xs.tolist(), ys.tolist()


def _digest(X: np.ndarray, y: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(X).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()


def _gate(clf, model: onnx.ModelProto, tmp: Path, X_test: np.ndarray, y_test: np.ndarray, cal, seed: int) -> dict:
    onnx.save(model, str(tmp))
    served = rta_model.OnnxModel.load(tmp)
    check = with_missing(X_test[:5000], seed)
    calibrated = served.predict(check.astype(np.float32))
    served.calibration = None
    raw_served = served.predict(check.astype(np.float32))
    raw_lgb = clf.predict_proba(check)[:, 1]
    raw_diff = float(np.max(np.abs(raw_served - raw_lgb)))
    cal_diff = float(np.max(np.abs(calibrated - np.interp(raw_lgb, *cal))))
    gate = {"parity_max_diff": raw_diff, "calibrated_max_diff": cal_diff, "auc_diff": None}
    if 0 < y_test.sum() < len(y_test):
        served.calibration = tuple(np.asarray(v) for v in cal)
        auc_served = roc_auc_score(y_test, served.predict(X_test.astype(np.float32)))
        auc_lgb = roc_auc_score(y_test, np.interp(clf.predict_proba(X_test)[:, 1], *cal))
        gate["auc_diff"] = float(abs(auc_served - auc_lgb))
    if not raw_diff <= PARITY_TOLERANCE:
        raise ParityError(f"onnxruntime and LightGBM differ by {raw_diff:.3g} > {PARITY_TOLERANCE:g} (raw scores)")
    if not cal_diff <= CALIBRATED_TOLERANCE:
        raise ParityError(f"calibrated scores differ by {cal_diff:.3g} > {CALIBRATED_TOLERANCE:g}")
    if gate["auc_diff"] is not None and not gate["auc_diff"] <= AUC_TOLERANCE:
        raise ParityError(f"AUC differs by {gate['auc_diff']:.3g} > {AUC_TOLERANCE:g}")
    return gate


def retrain(examples: pd.DataFrame, out_dir: Path, seed: int = 7, previous: Path | None = None,
            registry: Path | None = None, promote: bool = False, n_estimators: int = 500,
            early_stopping_rounds: int = 30, require_better: bool = True, **params) -> dict:
    """Train on examples (training.examples.build; a `propensity` column adds the truth to the report),
    write out_dir/model.onnx, report.json and report.html; publish (and promote) into `registry`.
    With require_better, a model whose test log loss is worse than the previous model's on the same rows
    is published but not promoted (the champion keeps serving)."""
    df = examples.sort_values(["ts", "request_id"], ignore_index=True) if "request_id" in examples else examples
    X = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float32)
    y = df["label"].to_numpy(dtype=np.int8)
    ts = df["ts"].to_numpy(dtype=np.float64)
    train, valid, test = time_split(ts)
    for name, mask in (("train", train), ("valid", valid)):
        if mask.sum() == 0 or y[mask].min() == y[mask].max():
            raise ValueError(f"the {name} rows ({int(mask.sum())}) hold a single class; log more decisions")
    pos = int(y[train].sum())
    spw = (len(y[train]) - pos) / pos
    # Stop on AUC, not log loss: class weights inflate the raw scores, so the valid rows' log loss
    # would rise from the first tree on and stop the boosting at once; ranking is what the trees add.
    clf = lgb.LGBMClassifier(**{**PARAMS, "n_estimators": n_estimators, "scale_pos_weight": spw, "metric": "auc",
                                "random_state": seed, **params})
    clf.fit(X[train], y[train], eval_X=(X[valid],), eval_y=(y[valid],),
            callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)])
    cal = calibration_table(clf.predict_proba(X[valid])[:, 1], y[valid])
    p_test = np.interp(clf.predict_proba(X[test])[:, 1], *cal)

    data_hash = _digest(X, y)
    end = dt.datetime.fromtimestamp(float(ts.max()), dt.UTC)
    version = f"lgbm-{end:%Y%m%dT%H%M}-{data_hash[:8]}"
    window = {"start_ts": float(ts[train].min()), "end_ts": float(ts.max()),
              "train_end_ts": float(ts[train].max()), "valid_end_ts": float(ts[valid].max())}
    prev_scores = None
    prev_version = None
    if previous is not None and Path(previous).exists():
        prev = rta_model.OnnxModel.load(previous)
        prev_version = prev.version
        prev_scores = prev.predict(X[test])
    truth = df.loc[test, "propensity"].to_numpy() if "propensity" in df and df["propensity"].notna().all() else None
    rep = evaluate.report(y[test], {"model": p_test, "previous": prev_scores, "truth": truth}, info={
        "model_version": version, "previous_version": prev_version, "rows": len(df),
        "train": int(train.sum()), "valid": int(valid.sum()), "test": int(test.sum()),
        "best_iteration": int(clf.best_iteration_ or n_estimators), "scale_pos_weight": round(spw, 3),
        "training_window": window, "data_hash": data_hash, "calibration_knots": len(cal[0])})
    m = rep["metrics"]["model"]
    summary_metrics = {"auc": m["auc"], "logloss": m["logloss"], "brier": m["brier"], "n_test": m["n"],
                       "ceiling_auc": rep["metrics"].get("truth", {}).get("auc"),
                       "previous_auc": rep["metrics"].get("previous", {}).get("auc")}
    model = to_onnx(clf, {rta_model.META_FEATURES: json.dumps(list(FEATURE_NAMES)),
                          rta_model.META_VERSION: version, rta_model.META_METRICS: json.dumps(summary_metrics),
                          rta_model.META_CALIBRATION: json.dumps({"x": cal[0], "y": cal[1]}),
                          META_WINDOW: json.dumps(window), META_DATA_HASH: data_hash})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".model.{os.getpid()}.tmp"
    try:
        gate = _gate(clf, model, tmp, X[test], y[test], cal, seed)
        rep["info"]["gate"] = gate
        os.replace(tmp, out_dir / "model.onnx")
    finally:
        tmp.unlink(missing_ok=True)
    json_path, html_path = evaluate.write(rep, out_dir)
    summary = {"model_version": version, **summary_metrics, **gate, "path": str(out_dir / "model.onnx"),
               "report": str(html_path), "best_iteration": rep["info"]["best_iteration"]}
    if registry is not None:
        reg.publish(registry, out_dir / "model.onnx", (json_path, html_path))
        prev_loss = rep["metrics"].get("previous", {}).get("logloss")
        worse = require_better and prev_loss is not None and m["logloss"] > prev_loss
        if promote and not worse:
            reg.promote(registry, version)
        summary["registry"] = str(registry)
        summary["promoted"] = bool(promote and not worse)
        if promote and worse:
            summary["not_promoted"] = f"test log loss {m['logloss']} > the previous model's {prev_loss}"
    return summary
