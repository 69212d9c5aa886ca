"""Retraining: early stopping on a time split, class weights with a calibration the service applies,
the evaluation report, the parity gate and the registry."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rta_service import model as rta_model
from rta_service import registry
from rta_service.features import FEATURE_NAMES, N_FEATURES
from training import retrain as rt
from training.train import ParityError


def examples(n: int = 12000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    X[rng.random(n) < 0.2, 3] = np.nan
    logit = -3.5 + 1.2 * X[:, 0] + 0.8 * np.nan_to_num(X[:, 3]) - 0.6 * X[:, 5]
    p = 1 / (1 + np.exp(-logit))
    df = pd.DataFrame(X, columns=list(FEATURE_NAMES))
    df["label"] = (rng.random(n) < p).astype(np.int8)
    df["propensity"] = p
    df["ts"] = 1.75e9 + np.arange(n) * 10.0
    df["request_id"] = [f"r{i:06d}" for i in range(n)]
    return df


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("retrain")
    reg = out / "registry"
    summary = rt.retrain(examples(), out / "v1", registry=reg, promote=True)
    return out, reg, summary


def test_a_calibrated_model_is_published_with_its_metadata_and_report(trained):
    out, reg, s = trained
    served = rta_model.OnnxModel.load(out / "v1" / "model.onnx")
    assert served.version == s["model_version"] and served.calibration is not None
    assert s["best_iteration"] < 500  # early stopping stopped it
    assert s["parity_max_diff"] <= rt.PARITY_TOLERANCE and s["auc_diff"] <= rt.AUC_TOLERANCE
    assert 0.7 < s["auc"] <= s["ceiling_auc"] + 0.02
    rep = json.loads((out / "v1" / "report.json").read_text())
    model, truth = rep["metrics"]["model"], rep["metrics"]["truth"]
    assert set(model["lift"]) == {"1%", "5%", "10%", "20%"} and model["lift"]["5%"] > 2
    assert len(model["calibration"]) == 10 and truth["auc"] == s["ceiling_auc"]
    info = rep["info"]
    assert info["train"] > info["valid"] > 0 and info["training_window"]["train_end_ts"] < info["training_window"][
        "valid_end_ts"]
    html = (out / "v1" / "report.html").read_text()
    assert html.count("<svg") == 2 and s["model_version"] in html
    meta = served.session.get_modelmeta().custom_metadata_map
    assert json.loads(meta[rta_model.META_FEATURES]) == list(FEATURE_NAMES)
    assert meta[rt.META_DATA_HASH] == info["data_hash"] and json.loads(meta[rt.META_WINDOW])["end_ts"] > 0
    assert registry.read_pointer(reg)["version"] == s["model_version"]
    assert (reg / "versions" / s["model_version"] / "report.html").exists()


def test_the_served_score_is_calibrated_although_positives_were_weighted_up(trained):
    out, _, s = trained
    df = examples(seed=5)
    served = rta_model.OnnxModel.load(out / "v1" / "model.onnx")
    X = df[list(FEATURE_NAMES)].to_numpy(dtype=np.float32)
    calibrated = served.predict(X)
    served.calibration = None
    raw = served.predict(X)
    rate = df["label"].mean()
    assert raw.mean() > 3 * rate  # scale_pos_weight inflates the raw scores ...
    assert abs(calibrated.mean() - rate) < 0.25 * rate  # ... the table the service applies brings them back
    assert abs(calibrated.mean() - df["propensity"].mean()) < 0.25 * rate


def test_the_report_compares_with_the_previous_model(trained, tmp_path):
    out, reg, first = trained
    s = rt.retrain(examples(n=6000, seed=1), tmp_path / "v2", previous=out / "v1" / "model.onnx", registry=reg)
    rep = json.loads((tmp_path / "v2" / "report.json").read_text())
    assert rep["info"]["previous_version"] == first["model_version"]
    assert rep["metrics"]["previous"]["auc"] == s["previous_auc"] and s["previous_auc"] > 0.7
    assert registry.read_pointer(reg)["version"] == first["model_version"]  # published, not promoted
    assert s["model_version"] in [r["version"] for r in registry.list_versions(reg)]


def test_a_failed_gate_publishes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(rt, "AUC_TOLERANCE", -1.0)
    with pytest.raises(ParityError, match="AUC differs"):
        rt.retrain(examples(n=4000), tmp_path / "out", registry=tmp_path / "reg", promote=True)
    assert not (tmp_path / "out" / "model.onnx").exists() and not (tmp_path / "reg").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_a_worse_model_is_published_but_not_promoted(trained, tmp_path):
    out, reg, first = trained
    s = rt.retrain(examples(n=6000, seed=2), tmp_path / "weak", previous=out / "v1" / "model.onnx", registry=reg,
                   promote=True, n_estimators=1)  # one tree: a poor challenger
    assert not s["promoted"] and "log loss" in s["not_promoted"]
    assert registry.read_pointer(reg)["version"] == first["model_version"]
    assert s["model_version"] in [r["version"] for r in registry.list_versions(reg)]


def test_rta_train_on_an_exported_log(tmp_path):
    """`rta train --log`: the exported log and conversion events in, a calibrated model in the registry out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rta.v1 import decision_pb2 as pb
    from rta_service.cli import main as cli
    from training.log_export import SCHEMA, hour_dir

    df = examples(n=5000, seed=3)
    rows = [{"entry_id": f"{i}-0", "entry_index": 0, "ts": t, "request_id": rid, "platform": 1, "os": 1,
             "is_test": False, "decision": pb.BID, "reasons": [pb.SCORED], "ids": [f"{pb.OAID}:{i:032x}"],
             "matched_id_type": 0, "matched_id": "", "one_id": "", "known": False, "degraded": False, "score": 0.1,
             "experiment_bucket": 0, "holdout": False, "model_version": "m0", "strategy_ids": ["s"],
             "strategy_decisions": [pb.BID], "strategy_reasons": [pb.SCORED], "weight_factors": [1.0],
             "features": [None if v != v else float(v) for v in x]}
            for i, (t, rid, x) in enumerate(zip(df["ts"], df["request_id"], df[list(FEATURE_NAMES)].to_numpy(),
                                                strict=True))]
    hours: dict[str, list] = {}
    for r in rows:
        hours.setdefault(hour_dir(r["ts"]), []).append(r)
    for hour, part in hours.items():
        (tmp_path / "log" / hour).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(part, schema=SCHEMA), tmp_path / "log" / hour / "part-1.0_2.0.parquet")
    pos = df[df["label"] == 1]
    pd.DataFrame({"conversion_id": [f"c{i}" for i in range(len(pos))], "ts": pos["ts"] + 30.0, "type": "paid_order",
                  "value_fen": 100, "trace_id": pos["request_id"], "id_type": 0, "md5": "", "one_id": ""}).to_parquet(
        tmp_path / "conversions.parquet")
    code = cli(["train", "--log", str(tmp_path / "log"), "--conversions", str(tmp_path / "conversions.parquet"),
                "--out", str(tmp_path / "out"), "--window-s", "3600", "--observed-until", str(df["ts"].max() + 3600),
                "--registry", str(tmp_path / "reg"), "--promote"])
    assert code == 0
    current = registry.read_pointer(tmp_path / "reg")["version"]
    served = rta_model.OnnxModel.load(registry.model_path(tmp_path / "reg", current))
    assert served.calibration is not None and served.metrics["auc"] > 0.7
    assert cli(["train", "--log", str(tmp_path / "log"), "--out", str(tmp_path / "x")]) == 1  # no --conversions
