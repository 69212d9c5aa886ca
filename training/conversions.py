"""Conversions: what happened in the private domain after an ad (docs/specs/attribution.md).

One row per conversion event, from the CDP's events or any other source, validated here:

    conversion_id  str      unique, not empty
    ts             float64  unix seconds, >= 0 and < 1e10 (a millisecond timestamp is refused)
    type           str      one of TYPES
    value_fen      int64    order value in fen, a whole number (0 for a WeCom friend add)
    trace_id       str      the RTA request / trace id the click carried (Tencent __RTA_TRACE_ID__), "" if none
    id_type        int32    rta.v1.IdType of the device ID the event carried, 0 if none
    md5            str      that device ID, lower-case hex MD5 (hashed, as in the profile store), "" if none
    one_id         str      the person's OneID when the CDP resolved one, "" if none

Files are Parquet or CSV (by suffix). Errors name the file, the 1-based data row and the field.
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


MAX_TS = 1e10  # year 2286 in unix seconds; today's time in milliseconds is ~170x past it


def _valid_id_types() -> set[int]:
    from rta.v1 import decision_pb2 as pb  # noqa: PLC0415

    return {0, *pb.IdType.values()}


def validate(df: pd.DataFrame, source: str = "conversions") -> pd.DataFrame:
    """The table with COLUMNS typed; raises ValueError naming the source, 1-based row and field of a bad value."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}")
    df = df[list(COLUMNS)].reset_index(drop=True).copy()
    for col in ("trace_id", "md5", "one_id"):
        df[col] = df[col].fillna("").astype(str)
    df["id_type"] = df["id_type"].fillna(0)
    whole = {}
    for col in ("ts", "value_fen", "id_type"):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna()
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise ValueError(f"{source}: row {i + 1}, field {col}: not a number ({df[col].iloc[i]!r})")
        whole[col] = num % 1 == 0
        df[col] = num.astype("float64") if col == "ts" else num
    ids = df["conversion_id"]
    checks = [
        ("conversion_id", ids.isna() | (ids.astype(str).str.strip() == ""), "a non-empty id"),
        ("ts", (df["ts"] < 0) | (df["ts"] >= MAX_TS), "unix seconds (is it milliseconds?)"),
        ("value_fen", ~whole["value_fen"], "a whole number of fen"),
        ("id_type", ~whole["id_type"] | ~df["id_type"].isin(_valid_id_types()), "an rta.v1.IdType number or 0"),
        ("type", ~df["type"].isin(TYPES), f"one of {TYPES}"),
        ("value_fen", df["value_fen"] < 0, "not negative"),
        ("md5", (df["md5"] != "") & ~df["md5"].str.fullmatch(_MD5.pattern), "lower-case hex MD5 or empty"),
        ("md5", (df["md5"] != "") & (df["id_type"] == 0), "an id_type for the device ID"),
        ("conversion_id", df["conversion_id"].duplicated(), "unique"),
    ]
    for field, bad, want in checks:
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise ValueError(f"{source}: row {i + 1}, field {field}: expected {want}, got {df[field].iloc[i]!r}")
    df["conversion_id"] = ids.astype(str)
    df["value_fen"] = df["value_fen"].astype("int64")
    df["id_type"] = df["id_type"].astype("int32")
    return df


def read(path: Path) -> pd.DataFrame:
    """A conversions file: Parquet, or CSV with a header row (by suffix)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such conversions file")
    try:
        if path.suffix.lower() == ".csv":
            raw = pd.read_csv(path, dtype={"conversion_id": str, "trace_id": str, "md5": str, "one_id": str,
                                           "type": str}, keep_default_na=False)
        else:
            raw = pd.read_parquet(path)
    except Exception as exc:  # pyarrow and the CSV parser raise many types: all mean an unreadable file
        raise ValueError(f"{path}: not a readable {'CSV' if path.suffix.lower() == '.csv' else 'Parquet'} "
                         f"file: {exc}") from None
    return validate(raw, str(path))


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
