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
        "home_store": rng.integers(0, store_count(n), n),
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


# Stores: (region, city, latitude, longitude of the city centre). A store lies within a few km of it.
CITIES = (("east", "Shanghai", 31.23, 121.47), ("east", "Hangzhou", 30.27, 120.15), ("east", "Nanjing", 32.06, 118.80),
          ("north", "Beijing", 39.90, 116.41), ("north", "Tianjin", 39.13, 117.20),
          ("south", "Guangzhou", 23.13, 113.26), ("south", "Shenzhen", 22.54, 114.06),
          ("west", "Chengdu", 30.57, 104.07), ("west", "Chongqing", 29.56, 106.55))
_P_CITY = np.array([0.2, 0.1, 0.08, 0.18, 0.06, 0.12, 0.12, 0.08, 0.06])
NEW_STORE_DAYS = 120  # new stores opened within this many days before the cutoff


def store_count(people: int) -> int:
    """Stores that are someone's home store (ids s0000 ..); make_people draws home stores among them."""
    return max(5, people // 400)


def make_stores(rng: np.random.Generator, homes: int, cutoff: int) -> pd.DataFrame:
    """The store master: `homes` established stores (opened 4.5 to 14 years ago, before any history) and
    about one new store per five, opened in the last NEW_STORE_DAYS days (the first in the last 45) in the
    established stores' cities."""
    new = max(2, homes // 5)
    city = rng.choice(len(CITIES), homes, p=_P_CITY)
    city = np.r_[city, rng.choice(city, new)]
    days = np.r_[rng.uniform(1650, 5000, homes), rng.uniform(1, 45), rng.uniform(1, NEW_STORE_DAYS, new - 1)]
    region, name, lat, lon = (np.array([c[i] for c in CITIES], dtype=object) for i in range(4))
    return pd.DataFrame({
        "store_id": [f"s{s:04d}" for s in range(homes + new)],
        "region": region[city], "city": name[city],
        "lat": np.round(lat[city].astype(float) + rng.normal(0, 0.05, len(city)), 5),
        "lon": np.round(lon[city].astype(float) + rng.normal(0, 0.05, len(city)), 5),
        "opened_ts": cutoff - (days * DAY).astype(np.int64),
    })


def add_member_wechat_wecom(rng: np.random.Generator, accounts: pd.DataFrame, people: pd.DataFrame,
                            wecom: pd.DataFrame) -> pd.DataFrame:
    """accounts plus `openid` (the WeChat openid of the mini-program, and of the app for WeChat logins;
    one per person and app), `external_userid` (60% of the store and mini-program accounts of people with
    a WeCom friendship: the CRM recorded the link) and `store_id` (store accounts: the registration store)."""
    m = len(accounts)
    ch, person = accounts["channel_code"].to_numpy(), accounts["person"].to_numpy()
    none = np.full(m, None, dtype=object)
    wechat = (ch == MINIPROGRAM) | ((ch == APP) & pd.notna(accounts["unionid"]).to_numpy())
    openid = np.where(wechat, _hex(rng, m, "oMP"), none)
    openid[ch == APP] = np.where(wechat[ch == APP], _hex(rng, int((ch == APP).sum()), "oAP"), None)
    friend = np.isin(person, wecom["person"].to_numpy())
    linked = friend & ((ch == STORE) | (ch == MINIPROGRAM)) & (rng.random(m) < 0.6)
    external = people["external_userid"].to_numpy(dtype=object)[person]
    home = np.array([f"s{s:04d}" for s in people["home_store"].to_numpy()[person]], dtype=object)
    return accounts.assign(openid=_junk(rng, openid), external_userid=_junk(rng, np.where(linked, external, none)),
                           store_id=np.where(ch == STORE, home, none))


def make_wecom_interactions(rng: np.random.Generator, people: pd.DataFrame, wecom: pd.DataFrame,
                            cutoff: int) -> pd.DataFrame:
    """What WeCom's API reports per friendship, all before the cutoff: friend_add and friend_remove at the
    friendship's times, chats (more for more active people, most of them recent) while friends, and for
    35% a join of the store's customer group, left again by a quarter of them."""
    added, removed = wecom["added_ts"].to_numpy(), wecom["removed_ts"].to_numpy()
    end = np.where(removed > 0, removed, cutoff)
    person = wecom["person"].to_numpy()
    external = people["external_userid"].to_numpy(dtype=object)[person]
    guide, store = wecom["guide_id"].to_numpy(dtype=object), wecom["store_id"].to_numpy(dtype=object)
    parts = [(np.arange(len(wecom)), added, "friend_add")]
    gone = np.nonzero(removed > 0)[0]
    parts.append((gone, removed[gone], "friend_remove"))
    chats = rng.poisson(1 + 2 * people["activity"].to_numpy()[person])
    f = np.repeat(np.arange(len(wecom)), chats)
    ago = rng.exponential(60 * DAY, len(f)).astype(np.int64)
    keep = end[f] - 1 - ago > added[f]
    f, ago = f[keep], ago[keep]
    parts.append((f, end[f] - 1 - ago, "chat"))
    joined = np.nonzero(rng.random(len(wecom)) < 0.35)[0]
    join_ts = added[joined] + (rng.random(len(joined)) * (end[joined] - added[joined])).astype(np.int64)
    parts.append((joined, join_ts, "group_join"))
    left = rng.random(len(joined)) < 0.25
    leave_ts = join_ts[left] + (rng.random(int(left.sum())) * (end[joined][left] - join_ts[left])).astype(np.int64)
    parts.append((joined[left], leave_ts, "group_leave"))
    rows = np.concatenate([p[0] for p in parts])
    kind = np.concatenate([np.full(len(p[0]), p[2], dtype=object) for p in parts])
    group = np.where(np.isin(kind, ["group_join", "group_leave"]), "grp-" + store[rows], None)
    events = pd.DataFrame({
        "external_userid": external[rows], "guide_id": guide[rows], "type": kind,
        "ts": np.concatenate([p[1] for p in parts]).astype(np.int64), "group_id": group,
    }).sort_values(["ts", "external_userid", "type"], kind="stable", ignore_index=True)
    events.insert(0, "event_id", [f"e{i:09d}" for i in range(len(events))])
    return events
