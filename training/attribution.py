"""Attribution of conversions to logged decisions, as Ibis expressions (rules: docs/specs/attribution.md).

A touch is a logged decision that answered BID: only then could the platform show the ad. A
conversion is attributed to at most one touch that happened at or before it, within `window_s`:

1. trace: the touch whose request_id equals the conversion's trace_id;
2. else device: the latest touch whose usable device IDs include the conversion's device ID;
3. else OneID: the latest touch of the same OneID.

Rule 1 wins over 2 and 2 over 3; within a rule the latest touch wins (last touch). A conversion
matching no touch is unattributed (organic, or a touch the log dropped).
"""

from __future__ import annotations

import ibis

from rta.v1 import decision_pb2 as pb

TRACE, DEVICE, ONE_ID = 1, 2, 3
RULES = {TRACE: "trace", DEVICE: "device", ONE_ID: "one_id"}
DEFAULT_WINDOW_S = 7 * 86400.0


def touch_id(decisions: ibis.Table) -> ibis.Value:
    """A logged decision's own key: its stream entry and position there. Not the request_id, which the
    platform may repeat (retries, a trace id sampled twice)."""
    return decisions.entry_id + ":" + decisions.entry_index.cast("string")


def touches(decisions: ibis.Table) -> ibis.Table:
    """Logged decisions that bid: touch_id, request_id, touch_ts, one_id, ids."""
    d = decisions.filter(decisions.decision == pb.BID)
    return d.select(touch_id=touch_id(d), request_id=d.request_id, touch_ts=d.ts, touch_one_id=d.one_id, ids=d.ids)


def attribute(decisions: ibis.Table, conversions: ibis.Table, window_s: float = DEFAULT_WINDOW_S) -> ibis.Table:
    """One row per attributed conversion: conversion_id, type, value_fen, conv_ts, touch_id, request_id,
    touch_ts, rule. A trace id logged more than once (a retried request) credits its latest touch at or
    before the conversion, like the other rules."""
    t = touches(decisions)
    c = conversions.select(conversion_id=conversions.conversion_id, conv_ts=conversions.ts,
                           type=conversions.type, value_fen=conversions.value_fen, trace_id=conversions.trace_id,
                           dev=conversions.id_type.cast("string") + ":" + conversions.md5,
                           md5=conversions.md5, conv_one_id=conversions.one_id)

    def in_window(j):
        return j.filter((j.conv_ts >= j.touch_ts) & (j.conv_ts - j.touch_ts <= window_s))

    out = ("conversion_id", "type", "value_fen", "conv_ts", "touch_id", "request_id", "touch_ts")
    by_trace = in_window(c.filter(c.trace_id != "").join(t, c.trace_id == t.request_id))
    by_trace = by_trace.select(*out, rule=ibis.literal(TRACE))
    devices = t.select(t.touch_id, t.request_id, t.touch_ts, dev=t.ids.unnest())
    by_device = in_window(c.filter(c.md5 != "").join(devices, "dev")).select(*out, rule=ibis.literal(DEVICE))
    by_one_id = in_window(c.filter(c.conv_one_id != "").join(t.filter(t.touch_one_id != ""),
                                                              c.conv_one_id == t.touch_one_id))
    by_one_id = by_one_id.select(*out, rule=ibis.literal(ONE_ID))
    candidates = ibis.union(by_trace, by_device, by_one_id)
    best = ibis.window(group_by="conversion_id", order_by=[candidates.rule, ibis.desc(candidates.touch_ts),
                                                           candidates.touch_id])
    ranked = candidates.mutate(rank=ibis.row_number().over(best))
    return ranked.filter(ranked.rank == 0).drop("rank")
