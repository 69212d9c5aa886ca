"""Conversion events from the CDP's tables: types, values, devices and OneIDs of each event."""

from __future__ import annotations

import pytest

from cdp import conversions, engine, ingest
from cdp.identity import resolve
from cdp.profiles import before
from rta.v1 import decision_pb2 as pb
from simulate.world import simulate
from tests.test_cdp import AS_OF, CUTOFF, DAY, IMEI, OAID, account, friendship, world_tables
from training.conversions import validate


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    path = tmp_path_factory.mktemp("conv-world")
    simulate(path, people=2000, seed=3, as_of=AS_OF)
    return path


def test_orders_and_friend_adds_become_typed_events_with_device_and_oneid():
    tables = world_tables(
        accounts=[account("a", "store", days_ago=300, phone="P1"), account("b", "app", days_ago=200, phone="P1"),
                  account("c", "jd", days_ago=100, buyer="J1")],
        devices=[("a", pb.OAID, OAID), ("a", pb.IMEI, IMEI), ("b", pb.OAID, OAID),
                 ("c", pb.IDFA, "0" * 32)],  # c's only device ID is junk: its event carries none
        orders=[("a", "store", 100, 5000), ("b", "app", 10, 2500), ("a", "store", 5, 990), ("c", "jd", 15, 12000),
                ("a", "store", -1, 100)],  # the last is after the cutoff
        wecom=[friendship("w1", days_ago=3, phone="P1"), friendship("w2", days_ago=40, phone="P1")])
    con = engine.connect()
    t = before(ingest.register(con, tables), CUTOFF)
    res = resolve(t)
    got = validate(conversions.events(t, res, since_ts=CUTOFF - 20 * DAY, until_ts=CUTOFF).to_pandas())
    got = got.sort_values("ts", ignore_index=True)
    one = dict(zip(res.records.to_pandas()["record_id"], res.records.to_pandas()["one_id"], strict=True))
    assert got["type"].tolist() == ["first_order", "repurchase", "repurchase", "wecom_friend_add"]
    assert got["value_fen"].tolist() == [12000, 2500, 990, 0]
    assert got["one_id"].tolist() == [one["c"], one["a"], one["a"], one["w1"]]
    assert one["a"] == one["b"] == one["w1"]
    # The ordering account's first usable ID in precedence order: a has IMEI and OAID, so IMEI.
    assert list(zip(got["id_type"], got["md5"], strict=True)) == [(0, ""), (pb.OAID, OAID), (pb.IMEI, IMEI), (0, "")]
    assert got["conversion_id"].is_unique and (got["trace_id"] == "").all()
    assert got["ts"].between(CUTOFF - 20 * DAY, CUTOFF - 1).all()


def test_cdp_conversions_command_writes_every_order_and_friend_add_of_the_window(small_world, tmp_path, capsys):
    import json

    import pandas as pd

    from cdp.profiles import cutoff_ts
    from rta_service import cli

    out = tmp_path / "conv.parquet"
    since = AS_OF.replace(month=AS_OF.month - 2)
    assert cli.main(["cdp", "conversions", "--input", str(small_world), "--since", since.isoformat(),
                     "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    got = validate(pd.read_parquet(out))
    lo, hi = cutoff_ts(since), cutoff_ts(AS_OF)
    orders = pd.read_parquet(small_world / "orders.parquet")
    wecom = pd.read_parquet(small_world / "wecom.parquet")
    n_orders = int(orders["ts"].between(lo, hi - 1).sum())
    n_friends = int(wecom["added_ts"].between(lo, hi - 1).sum())
    assert n_orders > 0 and n_friends > 0
    assert summary["events"] == len(got) == n_orders + n_friends
    assert summary["by_type"]["wecom_friend_add"] == n_friends
    assert summary["by_type"]["first_order"] + summary["by_type"]["repurchase"] == n_orders
    assert got.loc[got["type"] != "wecom_friend_add", "value_fen"].sum() == \
        orders.loc[orders["ts"].between(lo, hi - 1), "amount_fen"].sum()
    assert (got["one_id"] != "").all() and (got.loc[got["md5"] != "", "md5"].str.fullmatch("[0-9a-f]{32}")).all()
