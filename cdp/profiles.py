"""Profiles as of a date: one rta.v1.Profile per OneID, and the device index that finds it.

Only data before as_of 00:00 UTC+8 is used (records created, orders placed, friendships added
before it; a friendship removed at or after it still counts), so a profile built "as of" a day is
what the CDP could have known that day. Only hashed identifiers appear in the output.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd

from rta.v1 import profile_pb2
from rta_service import keyspace

from .identity import resolve, str_isin

TZ = dt.timezone(dt.timedelta(hours=8))
DAY = 86400
SEGMENTS = ("member", "buyer", "lapsed_90_180", "wecom_friend", "vip")
VIP_QUANTILE = 0.9  # "vip" = buyers whose total spend is in the top decile
COLUMNS = ("one_id", "is_member", "segments", "order_count", "last_order_ts", "first_seen_ts", "monetary_fen",
           "wecom_friend", "channel_count", "device_count", "updated_ts")


def cutoff_ts(as_of: dt.date) -> int:
    """Unix seconds of as_of 00:00 UTC+8: what happened before it is known as of that date."""
    return int(dt.datetime.combine(as_of, dt.time(0), TZ).timestamp())


def _before(tables: dict[str, pd.DataFrame], cutoff: int) -> dict[str, pd.DataFrame]:
    members = tables["memberships"]
    members = members[members["created_ts"] < cutoff]
    orders, devices, wecom = tables["orders"], tables["membership_devices"], tables["wecom"]
    return {
        "memberships": members,
        "membership_devices": devices[str_isin(devices["record_id"], members["record_id"])],
        "orders": orders[(orders["ts"].to_numpy() < cutoff) & str_isin(orders["record_id"], members["record_id"])],
        "wecom": wecom[wecom["added_ts"] < cutoff],
    }


def device_index(identifiers: pd.DataFrame) -> pd.DataFrame:
    """[id_type, md5, one_id] for every usable device identifier."""
    dev = identifiers[identifiers["key"].str.startswith("dev:")]  # dev:{one-letter code}:{md5}
    return pd.DataFrame({
        "id_type": dev["key"].str[4].map(keyspace.CODE_TYPES).to_numpy(dtype=np.int8),
        "md5": dev["key"].str[6:].to_numpy(dtype=object),
        "one_id": dev["one_id"].to_numpy(),
    }).sort_values(["one_id", "id_type", "md5"], ignore_index=True)


def build_profiles(tables: dict[str, pd.DataFrame], as_of: dt.date,
                   built_ts: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(profiles with COLUMNS, device index [id_type, md5, one_id]) from the data before as_of."""
    cutoff = cutoff_ts(as_of)
    t = _before(tables, cutoff)
    records, identifiers = resolve(t)
    owner = pd.Series(records["one_id"].to_numpy(), index=records["table"] + "/" + records["record_id"])
    m, w, o = t["memberships"], t["wecom"], t["orders"]
    m_one = owner.reindex(("memberships/" + m["record_id"]).to_numpy()).to_numpy()
    w_one = owner.reindex(("wecom/" + w["friendship_id"]).to_numpy()).to_numpy()
    o_one = pd.Series(m_one, index=m["record_id"].to_numpy()).reindex(o["record_id"].to_numpy()).to_numpy()
    index = device_index(identifiers)

    p = pd.DataFrame(index=pd.Index(np.sort(records["one_id"].unique()), name="one_id"))
    p["is_member"] = pd.Series(m["is_member"].to_numpy(), index=m_one).groupby(level=0).any()
    p["is_member"] = p["is_member"].fillna(False).astype(bool)
    orders = pd.DataFrame({"one_id": o_one, "ts": o["ts"].to_numpy(), "fen": o["amount_fen"].to_numpy()})
    agg = orders.groupby("one_id").agg(order_count=("ts", "size"), last_order_ts=("ts", "max"),
                                       monetary_fen=("fen", "sum"))
    p = p.join(agg).fillna({"order_count": 0, "last_order_ts": 0, "monetary_fen": 0})
    seen = pd.concat([pd.Series(m["created_ts"].to_numpy(), index=m_one),
                      pd.Series(w["added_ts"].to_numpy(), index=w_one),
                      pd.Series(orders["ts"].to_numpy(), index=o_one)])
    p["first_seen_ts"] = seen.groupby(level=0).min()
    removed = w["removed_ts"].fillna(0).to_numpy()
    active = pd.Series((removed == 0) | (removed >= cutoff), index=w_one)
    p["wecom_friend"] = active.groupby(level=0).any().reindex(p.index, fill_value=False).astype(bool)
    wecom_channel = np.full(len(w), "wecom", dtype=object)
    channels = pd.DataFrame({"one_id": np.r_[m_one, w_one],
                             "channel": np.r_[m["channel"].to_numpy(dtype=object), wecom_channel]})
    p["channel_count"] = channels.drop_duplicates().groupby("one_id").size()
    p["device_count"] = index.groupby("one_id").size().reindex(p.index, fill_value=0)
    p["updated_ts"] = int(time.time()) if built_ts is None else built_ts
    p = p.astype({c: np.int64 for c in ("order_count", "last_order_ts", "monetary_fen", "first_seen_ts",
                                         "channel_count", "device_count")})
    p["segments"] = _segments(p, cutoff)
    return p.reset_index()[list(COLUMNS)], index


def _segments(p: pd.DataFrame, cutoff: int) -> list[tuple[str, ...]]:
    buyer = p["order_count"].to_numpy() > 0
    days = (cutoff - p["last_order_ts"].to_numpy()) / DAY
    monetary = p["monetary_fen"].to_numpy()
    vip_floor = np.quantile(monetary[buyer], VIP_QUANTILE) if buyer.any() else np.inf
    flags = np.column_stack([p["is_member"].to_numpy(), buyer, buyer & (days >= 90) & (days < 180),
                             p["wecom_friend"].to_numpy(), buyer & (monetary >= vip_floor)])
    names = np.array(SEGMENTS, dtype=object)
    return [tuple(names[row]) for row in flags]


def to_message(row) -> profile_pb2.Profile:
    """One profiles row (a namedtuple or mapping with COLUMNS) as an rta.v1.Profile."""
    get = row.__getitem__ if isinstance(row, dict) else lambda name: getattr(row, name)
    return profile_pb2.Profile(
        version=keyspace.PROFILE_VERSION, one_id=get("one_id"), is_member=bool(get("is_member")),
        segments=list(get("segments")), order_count=int(get("order_count")), last_order_ts=int(get("last_order_ts")),
        first_seen_ts=int(get("first_seen_ts")), monetary_fen=int(get("monetary_fen")),
        wecom_friend=bool(get("wecom_friend")), channel_count=int(get("channel_count")),
        device_count=int(get("device_count")), updated_ts=int(get("updated_ts")))


def to_messages(profiles: pd.DataFrame) -> dict[str, profile_pb2.Profile]:
    """one_id -> rta.v1.Profile for every row of `profiles`."""
    return {row.one_id: to_message(row) for row in profiles.itertuples(index=False)}
