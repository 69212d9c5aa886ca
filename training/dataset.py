"""The training set: every exposure after as_of, its features as the service would have built them, and
whether it converted within LABEL_WINDOW_S.

Profiles are built by the CDP code as of `as_of` and exposures before as_of are dropped, so no row
sees data from its future. Each exposure's device is matched like rta_service.ids does it: doubtful
IDs dropped, the first ID in DEFAULT_PRECEDENCE found in the device index wins. Feature rows come
only from rta_service.features.build_features, the function the service calls.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from cdp.identity import str_isin
from cdp.pipeline import CDP_TABLES, read_tables, world_as_of
from cdp.profiles import build_profiles, cutoff_ts, to_messages
from rta.v1 import decision_pb2 as pb
from rta_service.features import FEATURE_NAMES, build_features
from rta_service.ids import BUILTIN_DOUBTFUL, DEFAULT_PRECEDENCE

LABEL_WINDOW_S = 7 * 86400
TRAFFIC_TABLES = ("devices", "traffic", "conversions")


def match_devices(devices: pd.DataFrame, index: pd.DataFrame,
                  precedence: tuple[str, ...] = DEFAULT_PRECEDENCE) -> pd.DataFrame:
    """[device_key, one_id, match_type] for each device with an ID in the index (match_type: rta.v1.IdType)."""
    rank = {pb.IdType.Value(name): i for i, name in enumerate(precedence)}
    ids = devices[~devices["doubtful"] & ~devices["value_md5"].isin(BUILTIN_DOUBTFUL)
                  & devices["id_type"].isin(list(rank))]
    ids = ids.assign(rank=ids["id_type"].map(rank), md5=ids["value_md5"].str.lower())
    hits = ids.merge(index, on=["id_type", "md5"])
    hits = hits.sort_values(["device_key", "rank"], kind="stable").drop_duplicates("device_key")
    return hits[["device_key", "one_id", "id_type"]].rename(columns={"id_type": "match_type"})


def labels(traffic: pd.DataFrame, conversions: pd.DataFrame) -> np.ndarray:
    """1 where a conversion of the exposure followed it within LABEL_WINDOW_S."""
    conv = conversions.merge(traffic[["exposure_id", "ts"]], on="exposure_id", suffixes=("", "_exposure"))
    delay = conv["ts"] - conv["ts_exposure"]
    converted = conv.loc[(delay >= 0) & (delay <= LABEL_WINDOW_S), "exposure_id"]
    return traffic["exposure_id"].isin(converted).to_numpy(dtype=np.int8)


def assemble(tables: dict[str, pd.DataFrame], profiles: pd.DataFrame, index: pd.DataFrame,
             cutoff: int) -> pd.DataFrame:
    """One row per exposure at or after `cutoff`: ids, FEATURE_NAMES columns and `label`."""
    traffic = tables["traffic"]
    traffic = traffic[traffic["ts"] >= cutoff]
    devices = tables["devices"]
    os_of = devices.drop_duplicates("device_key").set_index("device_key")["os"]
    rows = traffic[["exposure_id", "ts", "device_key"]].merge(match_devices(devices, index), on="device_key",
                                                              how="left")
    rows["os"] = os_of.reindex(rows["device_key"].to_numpy()).fillna(pb.OS_UNKNOWN).to_numpy(dtype=np.int64)
    rows["one_id"] = rows["one_id"].fillna("")
    rows["match_type"] = rows["match_type"].fillna(0).astype(np.int64)
    messages = to_messages(profiles[str_isin(profiles["one_id"], rows["one_id"])])
    matrix = np.array([
        build_features(messages.get(one_id), os, id_type, ts)
        for one_id, os, id_type, ts in zip(rows["one_id"].tolist(), rows["os"].tolist(),
                                           rows["match_type"].tolist(), rows["ts"].tolist(), strict=True)
    ], dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))
    features = pd.DataFrame(matrix, columns=list(FEATURE_NAMES), index=rows.index)
    rows = pd.concat([rows, features], axis=1)
    rows["label"] = labels(rows, tables["conversions"])
    return rows


def build_dataset(input_dir: Path, as_of: dt.date | None = None) -> pd.DataFrame:
    """The training set of a world directory; adds the true `propensity` when truth_exposures exists."""
    as_of = world_as_of(input_dir, as_of)
    cutoff = cutoff_ts(as_of)
    tables = read_tables(input_dir, CDP_TABLES + TRAFFIC_TABLES)
    profiles, index = build_profiles(tables, as_of, built_ts=cutoff)
    rows = assemble(tables, profiles, index, cutoff)
    truth = Path(input_dir) / "truth_exposures.parquet"
    if truth.exists():
        p = pd.read_parquet(truth, columns=["exposure_id", "propensity"]).set_index("exposure_id")["propensity"]
        rows["propensity"] = p.reindex(rows["exposure_id"].to_numpy()).to_numpy()
    else:
        rows["propensity"] = np.nan
    return rows.sort_values(["ts", "exposure_id"], ignore_index=True)
