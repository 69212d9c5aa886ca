"""The simulated world: deterministic, shaped like the spec says (docs/specs/simulated-world.md)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from cdp.profiles import cutoff_ts
from rta.v1 import decision_pb2 as pb
from rta_service.ids import BUILTIN_DOUBTFUL, hash_raw
from simulate.devices import CAID_VERSIONS
from simulate.history import JUNK_VALUES
from simulate.world import simulate

AS_OF = dt.date(2025, 6, 1)
CUTOFF = cutoff_ts(AS_OF)
TABLES = ("memberships", "membership_devices", "orders", "wecom", "wecom_interactions", "stores", "devices", "traffic",
          "conversions",
          "truth_people", "truth_memberships", "truth_wecom", "truth_devices", "truth_exposures")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("world")
    return path, simulate(path, people=3000, seed=11, as_of=AS_OF)


def read(path, name: str) -> pd.DataFrame:
    return pd.read_parquet(path / f"{name}.parquet")


def test_cutoff_is_midnight_china_time():
    assert CUTOFF == int(dt.datetime(2025, 5, 31, 16, 0, tzinfo=dt.UTC).timestamp())


def test_same_seed_same_world_other_seed_other_world(world, tmp_path):
    path, summary = world
    assert simulate(tmp_path / "again", people=3000, seed=11, as_of=AS_OF) == summary
    for name in TABLES:
        pd.testing.assert_frame_equal(read(path, name), read(tmp_path / "again", name))
    simulate(tmp_path / "other", people=3000, seed=12, as_of=AS_OF)
    assert not read(path, "devices")["value_md5"].equals(read(tmp_path / "other", "devices")["value_md5"])


def test_summary_counts_rows_and_meta_records_as_of(world):
    path, summary = world
    assert summary["rows"] == {name: len(read(path, name)) for name in TABLES}
    assert summary["rows"]["traffic"] == 5 * 3000
    assert json.loads((path / "meta.json").read_text())["as_of"] == "2025-06-01"


@pytest.mark.parametrize("share", [0.7, 0.2])
def test_unknown_share_of_traffic(world, tmp_path, share):
    path = world[0]
    if share != 0.7:
        path = tmp_path
        simulate(path, people=500, seed=3, as_of=AS_OF, unknown_share=share, traffic=4000)
    owner = read(path, "truth_devices").set_index("device_key")["truth_person"]
    unknown = owner.reindex(read(path, "traffic")["device_key"]).to_numpy() < 0
    assert unknown.mean() == pytest.approx(share, abs=0.001)


def test_device_ids_follow_platform_rules(world):
    ids = read(world[0], "devices")
    assert (ids["value_md5"] == [hash_raw(t, r) for t, r in zip(ids["id_type"], ids["raw"], strict=True)]).all()
    by_os = ids.groupby("os")["id_type"].agg(set)
    assert by_os[pb.ANDROID] == {pb.IMEI, pb.OAID, pb.ANDROID_ID}
    assert by_os[pb.IOS] == {pb.IDFA, pb.CAID}
    caid = ids["id_type"] == pb.CAID
    assert set(ids.loc[caid, "caid_version"]) == set(CAID_VERSIONS)
    assert (ids.loc[~caid, "caid_version"] == "").all()
    raw = ids["hash_kind"] == pb.RAW
    assert raw.any() and (ids.loc[raw, "value"] == ids.loc[raw, "raw"]).all()
    assert (ids.loc[~raw, "value"] == ids.loc[~raw, "value_md5"]).all()
    imei = ids[ids["id_type"] == pb.IMEI]
    assert imei["raw"].str.fullmatch(r"\d{15}").all()


def test_doubtful_ids_are_present(world):
    ids = read(world[0], "devices")
    zero_idfa = ids[(ids["id_type"] == pb.IDFA) & ids["value_md5"].isin(BUILTIN_DOUBTFUL)]
    assert 0.5 < len(zero_idfa) / (ids["id_type"] == pb.IDFA).sum() < 0.8  # most iOS users did not opt in
    assert (ids.loc[ids["id_type"] == pb.ANDROID_ID, "raw"] == "").any()
    assert ids["doubtful"].any()
    # and the CDP side holds them too: app SDKs report whatever the device gives
    assert read(world[0], "membership_devices")["value_md5"].isin(BUILTIN_DOUBTFUL).any()


def test_people_have_one_to_three_devices(world):
    owners = read(world[0], "truth_devices")
    counts = owners[owners["truth_person"] >= 0].groupby("truth_person").size()
    assert set(counts.unique()) == {1, 2, 3} and len(counts) == 3000


def test_history_before_cutoff_traffic_after(world):
    path = world[0]
    assert (read(path, "memberships")["created_ts"] < CUTOFF).all()
    assert (read(path, "orders")["ts"] < CUTOFF).all()
    wecom = read(path, "wecom")
    assert (wecom["added_ts"] < CUTOFF).all() and (wecom["removed_ts"] < CUTOFF).all()
    assert (read(path, "wecom_interactions")["ts"] < CUTOFF).all()
    assert (read(path, "stores")["opened_ts"] < CUTOFF).all()
    removed = wecom[wecom["removed_ts"] > 0]
    assert len(removed) and (removed["removed_ts"] >= removed["added_ts"]).all()
    ts = read(path, "traffic")["ts"]
    assert ts.min() >= CUTOFF and ts.max() < CUTOFF + 7 * 86400
    conv = read(path, "conversions").merge(read(path, "traffic"), on="exposure_id", suffixes=("", "_exp"))
    delay = conv["ts"] - conv["ts_exp"]
    assert len(conv) > 50 and (delay >= 0).all() and (delay < 7 * 86400).all()


def test_identity_resolution_is_not_trivial(world):
    path = world[0]
    m = read(path, "memberships").merge(read(path, "truth_memberships"), on="record_id")
    assert m.groupby("truth_person")["channel"].nunique().max() >= 4
    ident = ["member_id", "phone_hash", "unionid", "buyer_id"]
    with_devices = m["record_id"].isin(read(path, "membership_devices")["record_id"])
    only_phone = m["phone_hash"].notna() & m[["member_id", "unionid", "buyer_id"]].isna().all(axis=1) & ~with_devices
    only_device = m[ident].isna().all(axis=1) & with_devices
    assert only_phone.sum() > 20 and only_device.sum() > 20
    assert m[ident].isin(JUNK_VALUES).to_numpy().sum() > 20
    buyers = m.dropna(subset=["buyer_id"])
    assert buyers[~buyers["buyer_id"].isin(JUNK_VALUES)].groupby("buyer_id")["channel"].nunique().max() == 1


def test_propensity_follows_the_story(world):
    path = world[0]
    exp = read(path, "truth_exposures").merge(read(path, "traffic"), on="exposure_id")
    exp = exp.merge(read(path, "truth_devices")[["device_key", "audience"]], on="device_key")
    exp["converted"] = exp["exposure_id"].isin(read(path, "conversions")["exposure_id"])
    by = exp.groupby("audience")[["propensity", "converted"]].mean()
    assert set(by.index) == {"unknown", "known_non_member", "member", "lapsed"}
    assert by.loc["member", "propensity"] > 3 * by.loc["unknown", "propensity"]
    assert by.loc["member", "converted"] > 2 * by.loc["unknown", "converted"]
    assert np.corrcoef(exp["propensity"], exp["converted"])[0, 1] > 0.1


def test_stores_old_and_new_and_every_store_reference_is_known(world):
    path = world[0]
    stores = read(path, "stores")
    assert stores["store_id"].is_unique and stores["lat"].between(18, 54).all() and stores["lon"].between(73, 135).all()
    age_days = (CUTOFF - stores["opened_ts"]) / 86400
    new = stores[age_days < 60]
    assert len(new) >= 1 and (age_days > 1500).sum() >= 5  # established stores and recent openings
    assert set(new["city"]) <= set(stores.loc[age_days > 1500, "city"])  # new stores open where people live
    orders, members = read(path, "orders"), read(path, "memberships")
    for ids in (orders["store_id"], members["store_id"], read(path, "wecom")["store_id"]):
        assert set(ids.dropna()) <= set(stores["store_id"])
    # Nobody ordered in a store before it opened.
    at = orders.dropna(subset=["store_id"]).merge(stores, on="store_id")
    assert len(at) > 100 and (at["ts"] >= at["opened_ts"]).all()


def test_wecom_interactions_follow_the_friendships(world):
    path = world[0]
    wecom, events = read(path, "wecom"), read(path, "wecom_interactions")
    people = read(path, "truth_wecom").merge(wecom, on="friendship_id")
    counts = events["type"].value_counts()
    assert counts["friend_add"] == len(wecom) and counts["friend_remove"] == (wecom["removed_ts"] > 0).sum()
    assert counts["chat"] > len(wecom) and counts["group_join"] > counts["group_leave"] > 0
    assert events["event_id"].is_unique and events["ts"].is_monotonic_increasing
    grouped = events["type"].isin(["group_join", "group_leave"])
    assert events.loc[grouped, "group_id"].notna().all() and events.loc[~grouped, "group_id"].isna().all()
    recent_chats = events[(events["type"] == "chat") & (events["ts"] >= CUTOFF - 30 * 86400)]
    assert len(recent_chats) > 50
    # Events carry WeCom's own external_userid, the one friendships of the same person carry when not junk.
    clean = people[~people["external_userid"].isin(JUNK_VALUES)]
    assert set(events["external_userid"]) >= set(clean["external_userid"])
    assert set(events["guide_id"]) <= set(wecom["guide_id"])


def test_members_carry_openids_per_app_and_some_wecom_links(world):
    path = world[0]
    m = read(path, "memberships")
    mini, app = m[m["channel"] == "miniprogram"], m[m["channel"] == "app"]
    assert mini["openid"].notna().all() and mini["openid"].str.startswith("oMP").mean() > 0.95
    assert (app["openid"].notna() == app["unionid"].notna()).all()  # WeChat login gives both
    assert m.loc[~m["channel"].isin(["miniprogram", "app"]), "openid"].isna().all()
    assert m["external_userid"].notna().sum() > 50
    linked = set(m["external_userid"].dropna()) - set(JUNK_VALUES)
    assert linked <= set(read(path, "wecom_interactions")["external_userid"])
    store = m["channel"] == "store"
    assert m.loc[store, "store_id"].notna().all() and m.loc[~store, "store_id"].isna().all()


def test_a_world_in_parts_is_one_world_of_strangers_with_consistent_ids(world, tmp_path):
    from simulate.parts import simulate_in_parts  # noqa: PLC0415

    summary = simulate_in_parts(tmp_path, people=3000, seed=11, as_of=AS_OF, part=1000)
    assert summary["parts"] == 3
    assert summary["rows"] == {name: len(read(tmp_path, name)) for name in TABLES}
    assert summary["rows"]["traffic"] == 5 * 3000
    m, o, w = read(tmp_path, "memberships"), read(tmp_path, "orders"), read(tmp_path, "wecom")
    devices, traffic = read(tmp_path, "devices"), read(tmp_path, "traffic")
    stores, events = read(tmp_path, "stores"), read(tmp_path, "wecom_interactions")
    for frame, column in ((m, "record_id"), (o, "order_id"), (w, "friendship_id"), (traffic, "exposure_id"),
                          (stores, "store_id"), (events, "event_id")):
        assert frame[column].is_unique, column
    for ids in (o["store_id"], m["store_id"], w["store_id"], "s" + events["group_id"].dropna().str.split("-s").str[1]):
        assert set(ids.dropna()) <= set(stores["store_id"])  # every part's stores, none shared
    assert set(events["guide_id"]) <= set(w["guide_id"])
    assert (devices.groupby("device_key")["os"].nunique() == 1).all()  # a device key is one device
    assert set(read(tmp_path, "membership_devices")["record_id"]) <= set(m["record_id"])
    assert set(o["record_id"]) <= set(m["record_id"])
    assert set(read(tmp_path, "truth_memberships")["record_id"]) == set(m["record_id"])
    people = read(tmp_path, "truth_people")["truth_person"]
    assert people.is_unique and len(people) == 3000
    assert set(traffic["device_key"]) <= set(read(tmp_path, "truth_devices")["device_key"])
    assert w["guide_id"].str.split("-").str[0].str[1:].astype(int).eq(w["store_id"].str[1:].astype(int)).all()
    # Each part is a world of the same statistics as one simulated whole.
    whole = read(world[0], "memberships")
    assert len(m) / 3000 == pytest.approx(len(whole) / 3000, rel=0.1)
    assert m["channel"].value_counts(normalize=True).to_dict() == pytest.approx(
        whole["channel"].value_counts(normalize=True).to_dict(), abs=0.05)
    assert o["store_id"].nunique() > read(world[0], "orders")["store_id"].nunique()  # stores of each part
