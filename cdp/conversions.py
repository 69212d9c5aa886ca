"""Conversion events from the CDP's own tables: what the learning loop labels its bids with.

    wecom_friend_add  a WeCom friendship added in the window (value 0)
    first_order       the person's (OneID's) first order ever, if it falls in the window (value: its amount)
    repurchase        any later order of the person in the window (value: its amount)

Every order is exactly one event, so a label never counts an order twice. An event carries the
person's OneID, and an order also the hashed device ID of the ordering account that ranks first in
the service's precedence (IMEI, OAID, IDFA, ...; usable IDs only), so attribution can match it by
device, else by OneID (docs/specs/attribution.md). The CDP's tables carry no click trace id, so
`trace_id` is empty. The result has the columns of training.conversions and is validated there.
Ibis expressions: the same on DuckDB and Spark.
"""

from __future__ import annotations

from pathlib import Path

import ibis
import ibis.expr.types as ir

from rta.v1 import decision_pb2 as pb
from rta_service.ids import DEFAULT_PRECEDENCE

from .identity import HEX32, Resolution, usable

PRECEDENCE = {pb.IdType.Value(name): rank for rank, name in enumerate(DEFAULT_PRECEDENCE)}


def _best_device(devices: ir.Table) -> ir.Table:
    """[record_id, id_type, md5]: each account's usable device ID that ranks first in PRECEDENCE."""
    md5 = devices.value_md5  # normalized at ingest (cdp.identity.normalize)
    rank = devices.id_type.cases(*PRECEDENCE.items())
    d = devices.filter(usable(devices.value_md5), md5.re_search(HEX32), rank.notnull())
    d = d.select("record_id", id_type=d.id_type.cast("int32"), md5=md5, rank=rank)
    first = ibis.row_number().over(group_by="record_id", order_by=["rank", "md5"])
    return d.mutate(r=first).filter(ibis._.r == 0).select("record_id", "id_type", "md5")


def events(tables: dict[str, ir.Table], res: Resolution, since_ts: int, until_ts: int) -> ir.Table:
    """Conversion events with since_ts <= ts < until_ts, from the CDP inputs and their OneID resolution.

    `tables` must hold every order before until_ts (earlier ones decide which order is a first order)."""
    recs = res.records
    m_one = recs.filter(recs.table == "memberships").select("record_id", "one_id")
    w_one = recs.filter(recs.table == "wecom").select(friendship_id="record_id", one_id="one_id")
    o = tables["orders"].filter(ibis._.ts < until_ts).join(m_one, "record_id")
    nth = ibis.row_number().over(group_by="one_id", order_by=["ts", "order_id"])
    o = o.mutate(nth=nth).filter(ibis._.ts >= since_ts)
    o = o.left_join(_best_device(tables["membership_devices"]), "record_id")
    orders = o.select(
        conversion_id="order:" + o.order_id, ts=o.ts.cast("float64"),
        type=ibis.cases((o.nth == 0, "first_order"), else_="repurchase"),
        value_fen=o.amount_fen.cast("int64"), trace_id=ibis.literal(""),
        id_type=o.id_type.fill_null(0).cast("int32"), md5=o.md5.fill_null(""), one_id=o.one_id)
    w = tables["wecom"].filter((ibis._.added_ts >= since_ts) & (ibis._.added_ts < until_ts))
    w = w.join(w_one, "friendship_id")
    friends = w.select(
        conversion_id="wecom:" + w.friendship_id, ts=w.added_ts.cast("float64"),
        type=ibis.literal("wecom_friend_add"), value_fen=ibis.literal(0, type="int64"), trace_id=ibis.literal(""),
        id_type=ibis.literal(0, type="int32"), md5=ibis.literal(""), one_id=w.one_id)
    return orders.union(friends, distinct=False)


def from_config(cfg, since, out: Path, progress=None) -> dict:
    """`rta cdp conversions`: build OneIDs as configured (no export, the OneID state left alone) and
    write the events from `since` (a date, 00:00 UTC+8) up to the run's as_of to `out` (Parquet)."""
    from training.conversions import validate  # noqa: PLC0415 - training imports cdp, not the reverse

    from . import engine, ingest  # noqa: PLC0415
    from .pipeline import build  # noqa: PLC0415 - pipeline imports this module's neighbours
    from .profiles import cutoff_ts  # noqa: PLC0415

    cfg = cfg.model_copy(update={"work_dir": cfg.work_dir or Path(engine.scratch_dir("rta-cdp-conv-")),
                                 "state_dir": None,  # and no predictive tags: events need OneIDs only
                                 "predictive": cfg.predictive.model_copy(update={"enabled": False})})
    con, stages, _profiles, _index, res, as_of = build(cfg, progress)
    since_ts, until_ts = cutoff_ts(since), cutoff_ts(as_of)
    if since_ts >= until_ts:
        raise ValueError(f"--since {since} is not before the run's as_of {as_of}")
    frame = events(ingest.read_parquet(con, cfg.work_dir), res, since_ts, until_ts).to_pandas()
    frame = validate(frame.sort_values(["ts", "conversion_id"], ignore_index=True), "cdp conversion events")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    stages.done("events", f"{len(frame):,} conversion events -> {out}")
    return {"since": since.isoformat(), "as_of": as_of.isoformat(), "events": len(frame),
            "by_type": {k: int(v) for k, v in frame["type"].value_counts().sort_index().items()},
            "out": str(out)}
