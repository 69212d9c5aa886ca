"""People and their private-domain history before the cutoff: channel accounts, orders, WeCom.

Every timestamp here is unix seconds before `cutoff` (as_of 00:00 UTC+8). Identifiers are what each
channel really holds: the brand CRM member id (store, mini-program and app members), a salted phone
hash, the WeChat unionid (mini-program, WeChat login in the app, WeCom), marketplace buyer ids that
mean nothing outside their marketplace, and device IDs (app SDK, Douyin ad attribution). A few
values are the junk real systems collect ("", "0", "null", md5 of ""), which must never link people.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from rta.v1 import decision_pb2 as pb

DAY = 86400
CHANNELS = ("store", "miniprogram", "app", "tmall", "jd", "douyin")
STORE, MINIPROGRAM, APP, TMALL, JD, DOUYIN = range(6)
_P_CHANNEL = np.array([0.40, 0.50, 0.45, 0.35, 0.20, 0.25])
_P_MEMBER = np.array([0.90, 0.60, 0.70, 0.40, 0.30, 0.25])
_P_PHONE_MEMBER = np.array([0.9, 0.6, 0.7, 0.7, 0.5, 0.5])
_P_PHONE_OTHER = np.array([0.9, 0.6, 0.7, 0.0, 0.0, 0.1])
_P_UNIONID = np.array([0.0, 1.0, 0.3, 0.0, 0.0, 0.0])
_BUYER_PREFIX = {TMALL: "tb_", JD: "jd_", DOUYIN: "dy_"}
JUNK_VALUES = ("", "0", "-1", "null", "NULL", "d41d8cd98f00b204e9800998ecf8427e")
JUNK_SHARE = 0.02
PHONE_SALT = "rta-sim-v1:"
CATEGORIES = ("tops", "bottoms", "outerwear", "shoes", "accessories", "kids")


def _hex(rng: np.random.Generator, n: int, prefix: str) -> np.ndarray:
    return np.array([f"{prefix}{x:012x}" for x in rng.integers(0, 16**12, n)], dtype=object)


def _junk(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """Replace JUNK_SHARE of the present values by junk; None stays None (absent)."""
    values = values.copy()
    hit = np.nonzero(pd.notna(values) & (rng.random(len(values)) < JUNK_SHARE))[0]
    values[hit] = rng.choice(np.array(JUNK_VALUES, dtype=object), len(hit))
    return values


def make_people(rng: np.random.Generator, n: int, cutoff: int) -> pd.DataFrame:
    """Hidden per-person attributes: activity window, engagement and the person's own identifiers."""
    u = rng.random(n)
    recency = np.where(u < 0.35, rng.uniform(1, 90, n), np.where(u < 0.6, rng.uniform(90, 180, n),
                                                                  rng.uniform(180, 900, n)))
    last_active = cutoff - (recency * DAY).astype(np.int64)
    phones = [f"1{x:010d}" for x in rng.integers(0, 10**10, n)]
    return pd.DataFrame({
        "person": np.arange(n, dtype=np.int64),
        "first_seen_ts": last_active - (rng.uniform(0, 700, n) * DAY).astype(np.int64),
        "last_active_ts": last_active,
        "activity": rng.gamma(0.9, 2.5, n),
        "phone_hash": [hashlib.md5((PHONE_SALT + p).encode()).hexdigest() for p in phones],
        "unionid": _hex(rng, n, "oWx"),
        "member_id": [f"M{x:010d}" for x in rng.integers(0, 10**10, n)],
        "external_userid": _hex(rng, n, "wm"),
        "home_store": rng.integers(0, max(5, n // 400), n),
    })


def make_accounts(rng: np.random.Generator, people: pd.DataFrame) -> pd.DataFrame:
    """One row per (person, channel) account; `person` is ground truth, kept out of the CDP's input."""
    n = len(people)
    has = rng.random((n, len(CHANNELS))) < _P_CHANNEL
    lonely = np.nonzero(~has.any(axis=1))[0]
    has[lonely, rng.choice(len(CHANNELS), len(lonely), p=_P_CHANNEL / _P_CHANNEL.sum())] = True
    person, ch = np.nonzero(has)
    m = len(person)
    starts = np.r_[0, np.nonzero(np.diff(person))[0] + 1]
    u = rng.random(m)
    u -= np.minimum.reduceat(u, starts)[person]  # the earliest account opens at first_seen
    first, last = people["first_seen_ts"].to_numpy(), people["last_active_ts"].to_numpy()
    created = first[person] + (u * (last - first)[person]).astype(np.int64)
    member = rng.random(m) < _P_MEMBER[ch]
    p_phone = np.where(member, _P_PHONE_MEMBER[ch], _P_PHONE_OTHER[ch])
    none = np.full(m, None, dtype=object)
    buyer = none.copy()
    for code, prefix in _BUYER_PREFIX.items():
        at = np.nonzero(ch == code)[0]
        buyer[at] = _hex(rng, len(at), prefix)
    pick = people[["member_id", "phone_hash", "unionid"]].to_numpy(dtype=object)[person]
    return pd.DataFrame({
        "record_id": [f"r{i:08d}" for i in range(m)],
        "channel": np.array(CHANNELS, dtype=object)[ch],
        "created_ts": created,
        "is_member": member,
        "member_id": _junk(rng, np.where(member & (ch <= APP), pick[:, 0], none)),
        "phone_hash": _junk(rng, np.where(rng.random(m) < p_phone, pick[:, 1], none)),
        "unionid": _junk(rng, np.where(rng.random(m) < _P_UNIONID[ch], pick[:, 2], none)),
        "buyer_id": _junk(rng, buyer),
        "person": person,
        "channel_code": ch,
    })


def make_account_devices(rng: np.random.Generator, accounts: pd.DataFrame, device_ids: pd.DataFrame,
                         device_person: np.ndarray, device_rank: np.ndarray) -> pd.DataFrame:
    """Device IDs the app SDK (every ID of the devices it runs on) and Douyin attribution know."""
    devices = pd.DataFrame({"device_key": np.arange(len(device_person)), "person": device_person,
                            "rank": device_rank})
    app = accounts.loc[accounts["channel_code"] == APP, ["record_id", "person"]].merge(devices, on="person")
    app = app[(app["rank"] == 0) | (rng.random(len(app)) < 0.6)]
    dy = accounts.loc[accounts["channel_code"] == DOUYIN, ["record_id", "person"]]
    dy = dy[rng.random(len(dy)) < 0.4].merge(devices[devices["rank"] == 0], on="person")
    ids = device_ids[["device_key", "id_type", "value_md5"]]
    known = pd.concat([
        app.merge(ids, on="device_key"),
        dy.merge(ids[ids["id_type"].isin([pb.OAID, pb.IDFA, pb.CAID])], on="device_key"),
    ], ignore_index=True)
    known = known.sort_values(["record_id", "id_type", "value_md5"], ignore_index=True)
    return known[["record_id", "id_type", "value_md5"]]


def make_orders(rng: np.random.Generator, people: pd.DataFrame, accounts: pd.DataFrame) -> pd.DataFrame:
    """Orders placed through the person's accounts; a buyer's last order is at last_active_ts."""
    n = len(people)
    k = rng.poisson(people["activity"].to_numpy())
    op = np.repeat(np.arange(n), k)
    person = accounts["person"].to_numpy()
    starts = np.searchsorted(person, np.arange(n))
    counts = np.bincount(person, minlength=n)
    acc = starts[op] + (rng.random(len(op)) * counts[op]).astype(np.int64)
    created = accounts["created_ts"].to_numpy()[acc]
    last = people["last_active_ts"].to_numpy()[op]
    ts = created + (rng.random(len(op)) * (last - created)).astype(np.int64)
    first = np.r_[True, op[1:] != op[:-1]] if len(op) else np.zeros(0, dtype=bool)
    ts[first] = last[first]
    channel = accounts["channel_code"].to_numpy()[acc]
    store = np.array([f"s{s:04d}" for s in people["home_store"].to_numpy()[op]], dtype=object)
    orders = pd.DataFrame({
        "record_id": accounts["record_id"].to_numpy()[acc],
        "channel": np.array(CHANNELS, dtype=object)[channel],
        "store_id": np.where(channel == STORE, store, None),
        "ts": ts,
        "amount_fen": np.maximum(100, np.exp(rng.normal(np.log(25000), 0.8, len(op)))).astype(np.int64),
        "category": np.array(CATEGORIES, dtype=object)[rng.integers(0, len(CATEGORIES), len(op))],
        "person": op,
    }).sort_values(["ts", "record_id"], kind="stable", ignore_index=True)
    orders.insert(0, "order_id", [f"o{i:09d}" for i in range(len(orders))])
    return orders


def make_wecom(rng: np.random.Generator, people: pd.DataFrame, member: np.ndarray, cutoff: int) -> pd.DataFrame:
    """WeCom friendships with store guides; removed_ts 0 means still friends."""
    n = len(people)
    fp = np.nonzero(rng.random(n) < 0.12 + 0.25 * member)[0]
    fp = np.sort(np.r_[fp, fp[rng.random(len(fp)) < 0.1]])  # some re-added a guide
    m = len(fp)
    first = people["first_seen_ts"].to_numpy()[fp]
    added = first + (rng.random(m) * (cutoff - first)).astype(np.int64)
    removed = np.where(rng.random(m) < 0.2, added + (rng.random(m) * (cutoff - added)).astype(np.int64), 0)
    store = people["home_store"].to_numpy()[fp]
    pick = people[["external_userid", "unionid", "phone_hash"]].to_numpy(dtype=object)[fp]
    none = np.full(m, None, dtype=object)
    return pd.DataFrame({
        "friendship_id": [f"w{i:08d}" for i in range(m)],
        "external_userid": _junk(rng, pick[:, 0]),
        "unionid": _junk(rng, np.where(rng.random(m) < 0.85, pick[:, 1], none)),
        "phone_hash": _junk(rng, np.where(rng.random(m) < 0.3, pick[:, 2], none)),
        "guide_id": [f"g{s:04d}-{g}" for s, g in zip(store, rng.integers(0, 4, m), strict=True)],
        "store_id": [f"s{s:04d}" for s in store],
        "added_ts": added,
        "removed_ts": removed.astype(np.int64),
        "person": fp,
    })
