"""Attribution rules and the point-in-time training set, on the Ibis engine."""

from __future__ import annotations

import math

import ibis
import pandas as pd
import pytest

from cdp.engine import connect
from rta.v1 import decision_pb2 as pb
from rta_service.features import N_FEATURES
from training import conversions as conv
from training.attribution import DEVICE, ONE_ID, TRACE, attribute
from training.examples import LeakError, build, check_point_in_time, profile_asof

H = 3600.0
DEV_A, DEV_B = "a" * 32, "b" * 32


def _decisions(rows) -> pd.DataFrame:
    out = []
    for n, (rid, ts, ids, one_id, decision) in enumerate(rows):
        out.append({"entry_id": f"{n + 1}-0", "entry_index": 0, "request_id": rid, "ts": ts,
                    "ids": [f"{pb.OAID}:{i}" for i in ids], "one_id": one_id,
                    "decision": decision, "degraded": False, "features": [0.5] * N_FEATURES, "score": 0.1,
                    "model_version": "m", "holdout": False, "os": 1, "platform": 1})
    return pd.DataFrame(out)


def _conversions(rows) -> pd.DataFrame:
    return conv.validate(pd.DataFrame([
        {"conversion_id": cid, "ts": ts, "type": typ, "value_fen": 100, "trace_id": trace,
         "id_type": pb.OAID if md5 else 0, "md5": md5, "one_id": one_id}
        for cid, ts, typ, trace, md5, one_id in rows]))


DECISIONS = _decisions([
    ("r1", 1 * H, [DEV_A], "p1", pb.BID),
    ("r2", 2 * H, [DEV_A], "p1", pb.BID),
    ("r3", 3 * H, [DEV_B], "p2", pb.NO_BID),  # not a touch: the ad could not have been shown
    ("r4", 4 * H, [DEV_B], "p2", pb.BID),
    ("r5", 5 * H, [], "p3", pb.BID),
])
CONVERSIONS = _conversions([
    ("c-trace", 2.5 * H, "paid_order", "r1", DEV_A, "p1"),  # the trace wins over the later device touch r2
    ("c-device", 2.5 * H, "first_order", "", DEV_A, ""),  # last touch by device: r2
    ("c-oneid", 6 * H, "wecom_friend_add", "", "", "p3"),  # by OneID: r5
    ("c-before", 3.5 * H, "repurchase", "", DEV_B, ""),  # before r4; r3 was a no-bid: unattributed
    ("c-late", 60 * H, "repurchase", "", "", "p3"),  # outside a 24 h window
    ("c-unknown-trace", 4.5 * H, "paid_order", "nope", DEV_B, ""),  # no such trace: falls back to device, r4
])


@pytest.fixture(scope="module")
def con():
    return connect()


def test_attribution_rules(con):
    got = attribute(ibis.memtable(DECISIONS), ibis.memtable(CONVERSIONS), window_s=24 * H)
    got = con.execute(got).set_index("conversion_id")
    assert got.loc["c-trace", "request_id"] == "r1" and got.loc["c-trace", "rule"] == TRACE
    assert got.loc["c-device", "request_id"] == "r2" and got.loc["c-device", "rule"] == DEVICE
    assert got.loc["c-oneid", "request_id"] == "r5" and got.loc["c-oneid", "rule"] == ONE_ID
    assert got.loc["c-unknown-trace", "request_id"] == "r4" and got.loc["c-unknown-trace", "rule"] == DEVICE
    assert "c-before" not in got.index and "c-late" not in got.index
    assert got.index.is_unique


def test_examples_are_labelled_by_attribution_and_only_when_the_window_is_over(con):
    ex = build(ibis.memtable(DECISIONS), ibis.memtable(CONVERSIONS), observed_until=28.5 * H, window_s=24 * H)
    assert list(ex["request_id"]) == ["r1", "r2", "r4"]  # r5's window ends after observed_until
    assert dict(zip(ex["request_id"], ex["label"], strict=True)) == {"r1": 1, "r2": 1, "r4": 1}
    ex = build(ibis.memtable(DECISIONS), ibis.memtable(CONVERSIONS), observed_until=100 * H, window_s=24 * H,
               label_types=("paid_order",))
    assert dict(zip(ex["request_id"], ex["label"], strict=True)) == {"r1": 1, "r2": 0, "r4": 1, "r5": 0}
    assert ex.shape[1] > N_FEATURES and math.isclose(ex["known"].iloc[0], 0.5)


def test_a_repeated_request_id_credits_only_its_latest_touch(con):
    """Platforms retry, and trace ids can repeat: each logged decision is its own touch (stream entry
    and position), so a conversion labels one of them, never an earlier or later namesake."""
    decisions = _decisions([("dup", 1 * H, [DEV_A], "p1", pb.BID), ("dup", 3 * H, [DEV_A], "p1", pb.BID),
                            ("dup", 9 * H, [DEV_A], "p1", pb.BID)])
    conversions = _conversions([("c1", 4 * H, "paid_order", "dup", DEV_A, "p1")])
    got = con.execute(attribute(ibis.memtable(decisions), ibis.memtable(conversions), window_s=24 * H))
    assert list(got["touch_id"]) == ["2-0:0"]
    ex = build(ibis.memtable(decisions), ibis.memtable(conversions), observed_until=100 * H, window_s=24 * H)
    assert list(zip(ex["ts"], ex["label"], strict=True)) == [(1 * H, 0), (3 * H, 1), (9 * H, 0)]


def test_a_profile_from_after_the_decision_is_caught(con):
    """The as-of join takes the snapshot known at decision time; a join that takes the newest snapshot
    (a leak: the profile already shows the order the label counts) is refused by the check."""
    snaps = ibis.memtable(pd.DataFrame({"one_id": ["p1", "p1", "p1"], "snapshot_ts": [0.0, 1.5 * H, 10 * H],
                                        "order_count": [0, 1, 2]}))
    d = ibis.memtable(DECISIONS[DECISIONS["one_id"] == "p1"][["request_id", "ts", "one_id"]])
    good = con.execute(profile_asof(d, snaps)).assign(feature_ts=lambda x: x["ts"], first_conv_ts=float("nan"))
    assert dict(zip(good["request_id"], good["order_count"], strict=True)) == {"r1": 0, "r2": 1}
    check_point_in_time(good, observed_until=100 * H, window_s=24 * H)

    latest = snaps.filter(snaps.snapshot_ts == snaps.snapshot_ts.max())
    leaky = con.execute(d.join(latest, "one_id")).assign(feature_ts=lambda x: x["ts"], first_conv_ts=float("nan"))
    with pytest.raises(LeakError, match="profile snapshot taken after the decision"):
        check_point_in_time(leaky, observed_until=100 * H, window_s=24 * H)


def test_the_check_refuses_future_features_and_open_labels():
    row = {"request_id": "r", "ts": 10.0, "feature_ts": 10.0, "first_conv_ts": 20.0}
    check_point_in_time(pd.DataFrame([row]), observed_until=100.0, window_s=50.0)
    for change, what in [({"feature_ts": 11.0}, "features built after"), ({"first_conv_ts": 5.0}, "before the"),
                         ({"first_conv_ts": 70.0}, "outside the window")]:
        with pytest.raises(LeakError, match=what):
            check_point_in_time(pd.DataFrame([{**row, **change}]), observed_until=100.0, window_s=50.0)
    with pytest.raises(LeakError, match="not over yet"):
        check_point_in_time(pd.DataFrame([row]), observed_until=40.0, window_s=50.0)


def test_bad_conversions_name_the_row_and_field():
    good = CONVERSIONS.copy()
    with pytest.raises(ValueError, match=r"row 3, field type"):
        conv.validate(good.assign(type=["paid_order", "paid_order", "refund", "paid_order", "paid_order",
                                        "paid_order"]))
    with pytest.raises(ValueError, match=r"row 1, field md5"):
        conv.validate(good.assign(md5=["XYZ"] + [""] * 5))
    with pytest.raises(ValueError, match=r"field ts: not a number"):
        conv.validate(good.assign(ts=["soon"] * 6))
    for field, values, want in [("id_type", [99] * 6, "IdType"), ("value_fen", [12.75] * 6, "whole number"),
                                ("conversion_id", ["a", "", "c", "d", "e", "f"], "non-empty"),
                                ("ts", [1.7e12] * 6, "milliseconds")]:
        with pytest.raises(ValueError, match=rf"row \d+, field {field}: expected .*{want}"):
            conv.validate(good.assign(**{field: values}))


def test_conversions_read_csv_and_name_the_file(tmp_path):
    path = tmp_path / "conv.csv"
    CONVERSIONS.to_csv(path, index=False)
    assert conv.read(path)["conversion_id"].tolist() == CONVERSIONS["conversion_id"].tolist()
    path.write_text(path.read_text().replace("first_order", "refund"))
    with pytest.raises(ValueError, match=rf"{path}: row 2, field type"):
        conv.read(path)
    with pytest.raises(FileNotFoundError, match="no such conversions file"):
        conv.read(tmp_path / "nope.parquet")


def test_the_simulators_conversions_adapt_to_events(tmp_path):
    import datetime as dt

    from simulate.world import simulate

    simulate(tmp_path, people=300, seed=5, as_of=dt.date(2025, 6, 1))
    events = conv.from_world(tmp_path)
    world = pd.read_parquet(tmp_path / "conversions.parquet")
    assert len(events) == len(world) > 0
    assert (events["trace_id"] == "sim-" + world["exposure_id"].astype(str)).all()
    assert (events["md5"] != "").mean() > 0.9 and set(events["type"]) == {"paid_order"}
