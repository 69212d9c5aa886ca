"""Conversions: what happened in the private domain after an ad (docs/specs/attribution.md).

One row per conversion event, from the CDP's events or any other source, validated here:

    conversion_id  str      unique
    ts             float64  unix seconds
    type           str      one of TYPES
    value_fen      int64    order value in fen (0 for a WeCom friend add)
    trace_id       str      the RTA request / trace id the click carried (Tencent __RTA_TRACE_ID__), "" if none
    id_type        int32    rta.v1.IdType of the device ID the event carried, 0 if none
    md5            str      that device ID, lower-case hex MD5 (hashed, as in the profile store), "" if none
    one_id         str      the person's OneID when the CDP resolved one, "" if none
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

TYPES = ("wecom_friend_add", "first_order", "repurchase", "paid_order")
COLUMNS = {"conversion_id": str, "ts": "float64", "type": str, "value_fen": "int64", "trace_id": str,
           "id_type": "int32", "md5": str, "one_id": str}
_MD5 = re.compile(r"[0-9a-f]{32}")


def validate(df: pd.DataFrame, source: str = "conversions") -> pd.DataFrame:
    """The table with COLUMNS typed; raises ValueError naming the source, row and field of a bad value."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}")
    df = df[list(COLUMNS)].copy()
    for col in ("trace_id", "md5", "one_id"):
        df[col] = df[col].fillna("").astype(str)
    df["id_type"] = df["id_type"].fillna(0)
    for col in ("ts", "value_fen", "id_type"):
        bad = pd.to_numeric(df[col], errors="coerce").isna()
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise ValueError(f"{source}: row {i}, field {col}: not a number ({df[col].iloc[i]!r})")
        df[col] = df[col].astype(COLUMNS[col])
    checks = [
        ("type", ~df["type"].isin(TYPES), f"one of {TYPES}"),
        ("value_fen", df["value_fen"] < 0, "not negative"),
        ("md5", (df["md5"] != "") & ~df["md5"].str.fullmatch(_MD5.pattern), "lower-case hex MD5 or empty"),
        ("md5", (df["md5"] != "") & (df["id_type"] == 0), "an id_type for the device ID"),
        ("conversion_id", df["conversion_id"].duplicated(), "unique"),
    ]
    for field, bad, want in checks:
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise ValueError(f"{source}: row {i}, field {field}: expected {want}, got {df[field].iloc[i]!r}")
    return df.reset_index(drop=True)


def read(path: Path) -> pd.DataFrame:
    return validate(pd.read_parquet(path), str(path))


def from_world(world_dir: Path) -> pd.DataFrame:
    """The simulator's conversions (docs/specs/simulated-world.md) as conversion events: each carries its
    exposure's trace id (`sim-{exposure_id}`, the request id loadtest and the loop send) and the device's
    first usable hashed ID. The world has no event types or values: every one is a `paid_order` of value 0."""
    from rta_service.ids import BUILTIN_DOUBTFUL

    world = Path(world_dir)
    conv = pd.read_parquet(world / "conversions.parquet")
    devices = pd.read_parquet(world / "devices.parquet", columns=["device_key", "id_type", "value_md5", "doubtful"])
    usable = devices[~devices["doubtful"] & ~devices["value_md5"].isin(BUILTIN_DOUBTFUL)]
    first = usable.drop_duplicates("device_key").set_index("device_key")
    dev = first.reindex(conv["device_key"].to_numpy())
    return validate(pd.DataFrame({
        "conversion_id": conv["conversion_id"].astype(str).to_numpy(),
        "ts": conv["ts"].astype("float64").to_numpy(),
        "type": "paid_order", "value_fen": 0,
        "trace_id": ("sim-" + conv["exposure_id"].astype(str)).to_numpy(),
        "id_type": dev["id_type"].fillna(0).astype("int32").to_numpy(),
        "md5": dev["value_md5"].fillna("").to_numpy(),
        "one_id": "",
    }), str(world / "conversions.parquet"))
