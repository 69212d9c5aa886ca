"""Training: the dataset shares the service's feature builder, and the ONNX artifact matches LightGBM."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import onnx
import pandas as pd
import pytest

from cdp.pipeline import read_tables
from cdp.profiles import build_profiles, cutoff_ts, to_messages
from rta.v1 import decision_pb2 as pb
from rta_service import model as rta_model
from rta_service.features import FEATURE_NAMES, N_FEATURES, build_features
from simulate.world import simulate
from training.dataset import build_dataset
from training.train import PARITY_TOLERANCE, ParityError, fit, publish, to_onnx, train, with_missing

AS_OF = dt.date(2025, 6, 1)
CUTOFF = cutoff_ts(AS_OF)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("train-world")
    simulate(path, people=8000, seed=21, as_of=AS_OF)
    return path


@pytest.fixture(scope="module")
def dataset(world):
    return build_dataset(world)


def metadata(names=FEATURE_NAMES, version="test-1") -> dict[str, str]:
    return {rta_model.META_FEATURES: json.dumps(list(names)), rta_model.META_VERSION: version,
            rta_model.META_METRICS: "{}"}


def tiny_model(seed: int = 0, n: int = 4000):
    """A small LightGBM on FEATURE_NAMES-shaped data with NaNs in some training columns only."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    X[:, 0] = rng.integers(0, 2, n)
    X[rng.random(n) < 0.3, 3] = np.nan
    X[rng.random(n) < 0.3, 4] = np.nan
    logit = X[:, 0] + np.nan_to_num(X[:, 3], nan=-1.0) - X[:, 5] - 2
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return fit(X, y, seed, n_estimators=30), X


def test_rows_are_exposures_after_as_of_with_conversion_labels(world, dataset):
    traffic = pd.read_parquet(world / "traffic.parquet")
    assert len(dataset) == len(traffic) and dataset["ts"].min() >= CUTOFF
    converted = set(pd.read_parquet(world / "conversions.parquet")["exposure_id"])
    assert (dataset["label"] == dataset["exposure_id"].isin(converted)).all()
    assert 0.005 < dataset["label"].mean() < 0.1


def test_features_are_the_services_features(world, dataset):
    profiles, _ = build_profiles(read_tables(world), AS_OF)
    messages = to_messages(profiles)
    sample = pd.concat([dataset[dataset["known"] == 1].head(200), dataset[dataset["known"] == 0].head(50)])
    for row in sample.itertuples(index=False):
        expected = build_features(messages.get(row.one_id), row.os, row.match_type, row.ts)
        got = [getattr(row, name) for name in FEATURE_NAMES]
        assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, expected, strict=True))
    known = dataset[dataset["known"] == 1]
    assert len(known) > 300
    assert (known["days_since_last_order"].dropna() > 0).all()  # no order from the exposure's future


def test_devices_match_by_precedence_and_junk_never_matches(world, dataset):
    owners = pd.read_parquet(world / "truth_devices.parquet").set_index("device_key")["truth_person"]
    unknown = owners.reindex(dataset["device_key"]).to_numpy() < 0
    assert unknown.any() and (dataset.loc[unknown, "known"] == 0).all()  # e.g. the all-zero IDFA of strangers
    devices = pd.read_parquet(world / "devices.parquet")
    _, index = build_profiles(read_tables(world), AS_OF)
    indexed = devices.merge(index, left_on=["id_type", "value_md5"], right_on=["id_type", "md5"])
    indexed = indexed[~indexed["doubtful"]]
    both = indexed.groupby("device_key")["id_type"].agg(set)
    imei_and_oaid = both[both.map(lambda s: {pb.IMEI, pb.OAID} <= s)].index
    rows = dataset[dataset["device_key"].isin(imei_and_oaid)]
    assert len(rows) and (rows["match_type"] == pb.IMEI).all() and (rows["matched_id_type"] == pb.IMEI).all()


def test_train_publishes_a_parity_checked_model(world, tmp_path):
    out = tmp_path / "models" / "model.onnx"
    summary = train(world, out, seed=3, n_estimators=40)
    assert out.exists() and [p.name for p in out.parent.iterdir()] == ["model.onnx"]
    assert summary["parity_max_diff"] <= PARITY_TOLERANCE
    assert 0.58 < summary["auc"] < summary["ceiling_auc"] < 1.0
    served = rta_model.OnnxModel.load(out)
    assert served.version == summary["model_version"] and served.version.startswith("lgbm-20250601-")
    assert served.feature_names == FEATURE_NAMES
    assert {"auc", "logloss", "n_train", "n_valid", "base_rate", "ceiling_auc"} <= served.metrics.keys()
    assert served.metrics["n_train"] + served.metrics["n_valid"] == 40000
    assert train(world, tmp_path / "again.onnx", seed=3, n_estimators=40)["model_version"] == summary["model_version"]


def test_onnx_matches_lightgbm_including_missing_values(tmp_path):
    clf, X = tiny_model()
    check = with_missing(X[:500], seed=1)
    assert np.isnan(check).any(axis=0).all() and np.isnan(check[-1]).all()  # also columns never NaN in training
    diff = publish(clf, to_onnx(clf, metadata()), tmp_path / "m.onnx", check)
    assert diff < 1e-5
    served = rta_model.OnnxModel.load(tmp_path / "m.onnx").predict(check.astype(np.float32))
    expected = clf.predict_proba(check)[:, 1]
    nan_rows = np.isnan(check).any(axis=1)
    assert np.abs(served[nan_rows] - expected[nan_rows]).max() < 1e-5
    assert expected.std() > 0.05  # the model is not a constant: agreement means something


def test_failed_parity_leaves_the_published_artifact_alone(tmp_path):
    clf, X = tiny_model()
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the model currently served")
    with pytest.raises(ParityError):
        publish(clf, to_onnx(clf, metadata()), out, X[:100], tolerance=-1.0)
    assert out.read_bytes() == b"the model currently served"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_model_with_other_features_is_refused(tmp_path):
    clf, X = tiny_model()
    reordered = tuple(reversed(FEATURE_NAMES))
    path = tmp_path / "other.onnx"
    onnx.save(to_onnx(clf, metadata(reordered)), str(path))
    with pytest.raises(rta_model.ModelError, match="differ"):
        rta_model.OnnxModel.load(path)
    assert rta_model.OnnxModel.load(path, reordered).feature_names == reordered
    with pytest.raises(rta_model.ModelError):
        publish(clf, to_onnx(clf, metadata(reordered)), tmp_path / "new.onnx", X[:10])
    assert not (tmp_path / "new.onnx").exists()
    unlabelled = to_onnx(clf, {})
    onnx.save(unlabelled, str(tmp_path / "bare.onnx"))
    with pytest.raises(rta_model.ModelError):
        rta_model.OnnxModel.load(tmp_path / "bare.onnx")
