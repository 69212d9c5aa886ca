"""Profiles as of a date: one rta.v1.Profile per OneID, and the device index that finds it.

Only data before as_of 00:00 UTC+8 is used (records created, orders placed, friendships added
before it; a friendship removed at or after it still counts), so a profile built "as of" a day is
what the CDP could have known that day. Only hashed identifiers appear in the output.

The logic is Ibis expressions (`profile_tables`) that run on whichever engine holds the inputs;
`build_profiles` is the in-memory convenience for pandas frames (tests, the training job).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from rta.v1 import profile_pb2
from rta_service import keyspace

from . import engine, ingest
from .engine import materialize, release
from .identity import DEFAULT_GUARDRAILS, Guardrails, Resolution, resolve

TZ = dt.timezone(dt.timedelta(hours=8))
DAY = 86400
SEGMENTS = ("member", "buyer", "lapsed_90_180", "wecom_friend", "vip")
VIP_QUANTILE = 0.9  # "vip" = buyers whose total spend is at or above the 90th percentile (linear interpolation)
COLUMNS = ("one_id", "is_member", "segments", "order_count", "last_order_ts", "first_seen_ts", "monetary_fen",
           "wecom_friend", "channel_count", "device_count", "updated_ts")
FLAGS = tuple(f"seg_{name}" for name in SEGMENTS)


def cutoff_ts(as_of: dt.date) -> int:
    """Unix seconds of as_of 00:00 UTC+8: what happened before it is known as of that date."""
    return int(dt.datetime.combine(as_of, dt.time(0), TZ).timestamp())


def before(tables: dict[str, ir.Table], cutoff: int) -> dict[str, ir.Table]:
    """The inputs as known at `cutoff`: records created, orders placed and friendships added before it."""
    members = tables["memberships"].filter(ibis._.created_ts < cutoff)
    ids = members.select("record_id")
    return {
        "memberships": members,
        "membership_devices": tables["membership_devices"].join(ids, "record_id", how="semi"),
        "orders": tables["orders"].filter(ibis._.ts < cutoff).join(ids, "record_id", how="semi"),
        "wecom": tables["wecom"].filter(ibis._.added_ts < cutoff),
        "wecom_interactions": tables["wecom_interactions"].filter(ibis._.ts < cutoff),
        "stores": tables["stores"].filter(ibis._.opened_ts < cutoff),
    }


def device_index(identifiers: ir.Table) -> ir.Table:
    """[id_type, md5, one_id] for every usable device identifier (keys `dev:{code}:{md5}`)."""
    dev = identifiers.filter(identifiers.key.startswith("dev:"))
    id_type = dev.key.substr(4, 1).cases(*((c, t) for c, t in keyspace.CODE_TYPES.items()))
    return dev.select(id_type=id_type.cast("int8"), md5=dev.key.substr(6), one_id="one_id")


ONE_ID_TABLES = ("memberships", "wecom", "orders")  # the inputs with_one_ids gives a one_id column


def with_one_ids(t: dict[str, ir.Table], res: Resolution) -> dict[str, ir.Table]:
    """t with each row's OneID on memberships, wecom and orders, joined once and materialised: profiles and
    tags read them a dozen times. Release the three (ONE_ID_TABLES) when done."""
    recs = res.records
    m_one = recs.filter(recs.table == "memberships").select("record_id", "one_id")
    w_one = recs.filter(recs.table == "wecom").select(friendship_id="record_id", one_id="one_id")
    return {**t, "memberships": t["memberships"].join(m_one, "record_id").pipe(materialize),
            "wecom": t["wecom"].join(w_one, "friendship_id").pipe(materialize),
            "orders": t["orders"].join(m_one, "record_id").pipe(materialize)}


def profile_table(t: dict[str, ir.Table], res: Resolution, index: ir.Table, cutoff: int, built_ts: int) -> ir.Table:
    """One row per OneID: the COLUMNS except `segments`, plus a boolean column per FLAGS (t: with_one_ids)."""
    recs = res.records
    m, w, o = (t[name] for name in ONE_ID_TABLES)
    base = recs.select("one_id").distinct()
    member = m.group_by("one_id").agg(is_member=m.is_member.any())
    orders = o.group_by("one_id").agg(order_count=o.count(), last_order_ts=o.ts.max(),
                                      monetary_fen=o.amount_fen.sum())
    seen = (m.select("one_id", ts=m.created_ts.cast("int64"))
            .union(w.select("one_id", ts=w.added_ts.cast("int64")), distinct=False)
            .union(o.select("one_id", ts=o.ts.cast("int64")), distinct=False))
    seen = seen.group_by("one_id").agg(first_seen_ts=ibis._.ts.min())
    removed = w.removed_ts.fill_null(0)
    friend = w.group_by("one_id").agg(wecom_friend=((removed == 0) | (removed >= cutoff)).any())
    channels = (m.select("one_id", "channel")
                .union(w.select("one_id", channel=ibis.literal("wecom")), distinct=False)
                .group_by("one_id").agg(channel_count=ibis._.channel.nunique()))
    devices = index.group_by("one_id").agg(device_count=ibis._.count())
    p = base
    for part in (member, orders, seen, friend, channels, devices):
        p = p.left_join(part, "one_id")
    p = p.select(
        "one_id",
        is_member=p.is_member.fill_null(False),
        order_count=p.order_count.fill_null(0).cast("int64"),
        last_order_ts=p.last_order_ts.fill_null(0).cast("int64"),
        first_seen_ts=p.first_seen_ts.cast("int64"),
        monetary_fen=p.monetary_fen.fill_null(0).cast("int64"),
        wecom_friend=p.wecom_friend.fill_null(False),
        channel_count=p.channel_count.fill_null(0).cast("int64"),
        device_count=p.device_count.fill_null(0).cast("int64"),
        updated_ts=ibis.literal(built_ts, type="int64"),
    ).pipe(materialize)
    buyer = p.order_count > 0
    days = (cutoff - p.last_order_ts) / DAY
    vip_floor = p.filter(buyer).monetary_fen.quantile(VIP_QUANTILE).as_scalar()
    return p.mutate(
        seg_member=p.is_member,
        seg_buyer=buyer,
        seg_lapsed_90_180=buyer & (days >= 90) & (days < 180),
        seg_wecom_friend=p.wecom_friend,
        seg_vip=buyer & (p.monetary_fen >= vip_floor).fill_null(False),
    )


def profile_tables(tables: dict[str, ir.Table], as_of: dt.date, built_ts: int | None = None,
                   guardrails: Guardrails = DEFAULT_GUARDRAILS, tags: bool = False,
                   stage: Callable[[str, str], None] | None = None,
                   previous: ir.Table | None = None) -> tuple[ir.Table, ir.Table, Resolution]:
    """(profiles, device index [id_type, md5, one_id], resolution) as Ibis tables, from data before as_of;
    with tags=True, resolution.tags holds cdp.tags.tag_table. `previous`: the last run's [key, one_id] map,
    whose OneIDs the clusters inherit (cdp.identity.inherit). `stage(name, detail)` is called as each step
    ends: load (the inputs as of the cutoff into the engine), oneid, profiles, tags."""
    stage = stage or (lambda _name, _detail: None)
    cutoff = cutoff_ts(as_of)
    t = {name: table.pipe(materialize) for name, table in before(tables, cutoff).items()}
    stage("load", f"the inputs before {as_of} 00:00 UTC+8")
    res = resolve(t, guardrails, previous)
    stage("oneid", f"{res.rounds} label-propagation rounds" + (
        f"; {res.capped:,} identifier values past their kind's per-person cap no longer link" if res.capped else ""))
    index = device_index(res.identifiers).pipe(materialize)
    built = int(time.time()) if built_ts is None else built_ts
    joined = with_one_ids(t, res)
    profiles = profile_table(joined, res, index, cutoff, built).pipe(materialize)
    stage("profiles", "")
    if tags:
        from .tags import tag_table  # noqa: PLC0415 - tags imports this module

        res.tags = tag_table(joined, res, profiles, cutoff)
        stage("tags", "")
    for table in (*t.values(), *(joined[name] for name in ONE_ID_TABLES)):
        release(table)
    return profiles, index, res


def segments_of(frame: pd.DataFrame) -> list[tuple[str, ...]]:
    """The `segments` tuple of each row of a frame with FLAGS columns, in SEGMENTS order."""
    flags = frame[list(FLAGS)].to_numpy(dtype=bool)
    # Each row's flags as one number; there are 2**len(SEGMENTS) tuples to build, not one per row.
    codes = flags.astype(np.int64) @ (1 << np.arange(len(SEGMENTS), dtype=np.int64))
    tuples = np.empty(1 << len(SEGMENTS), dtype=object)
    tuples[:] = [tuple(name for bit, name in enumerate(SEGMENTS) if code >> bit & 1) for code in range(len(tuples))]
    return list(tuples[codes])


def to_frame(profiles: ir.Table, ordered: bool = True) -> pd.DataFrame:
    """Profiles with COLUMNS (segments as tuples) and any `score_{name}` columns, sorted by one_id (by the
    engine: faster than pandas) unless not `ordered`."""
    p = (profiles.order_by("one_id") if ordered else profiles).to_pandas()
    p["segments"] = segments_of(p)
    return p[list(COLUMNS) + score_columns(p.columns)]


def index_frame(index: ir.Table, ordered: bool = True) -> pd.DataFrame:
    """The device index [id_type, md5, one_id], sorted by one_id, id_type, md5 unless not `ordered`."""
    i = (index.order_by(["one_id", "id_type", "md5"]) if ordered else index).to_pandas()
    return i.astype({"id_type": np.int8}).reset_index(drop=True)


def build_profiles(tables: dict[str, pd.DataFrame], as_of: dt.date, built_ts: int | None = None,
                   con: ibis.BaseBackend | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(profiles with COLUMNS, device index [id_type, md5, one_id]) from in-memory frames, on `con`
    (default: a fresh in-process DuckDB)."""
    con = con or engine.connect()
    needed = {name: tables[name] for name in ingest.CDP_TABLES if name in tables}
    profiles, index, res = profile_tables(ingest.register(con, needed), as_of, built_ts)
    out = to_frame(profiles), index_frame(index)
    res.release()
    return out


SCORE_PREFIX = "score_"  # float columns `score_{name}` (NaN = none) are the profile's `scores` map


def score_columns(columns) -> list[str]:
    """The `score_{name}` columns among `columns`, sorted by name (the order they are encoded in)."""
    return sorted(c for c in columns if c.startswith(SCORE_PREFIX))


def to_message(row) -> profile_pb2.Profile:
    """One profiles row (a namedtuple or mapping with COLUMNS, and optionally `score_{name}` columns,
    cdp.predictive.attach) as an rta.v1.Profile."""
    fields = row if isinstance(row, dict) else row._asdict()
    get = fields.__getitem__
    scores = {c[len(SCORE_PREFIX):]: float(get(c)) for c in score_columns(fields) if not math.isnan(get(c))}
    return profile_pb2.Profile(scores=scores,
        version=keyspace.PROFILE_VERSION, one_id=get("one_id"), is_member=bool(get("is_member")),
        segments=list(get("segments")), order_count=int(get("order_count")), last_order_ts=int(get("last_order_ts")),
        first_seen_ts=int(get("first_seen_ts")), monetary_fen=int(get("monetary_fen")),
        wecom_friend=bool(get("wecom_friend")), channel_count=int(get("channel_count")),
        device_count=int(get("device_count")), updated_ts=int(get("updated_ts")))


def to_messages(profiles: pd.DataFrame) -> dict[str, profile_pb2.Profile]:
    """one_id -> rta.v1.Profile for every row of `profiles`."""
    return {row.one_id: to_message(row) for row in profiles.itertuples(index=False)}
