"""CDP: identity resolution, profiles as of a date, and the generation-switching Redis export."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import ibis
import numpy as np
import pandas as pd
import pytest
import redis

from cdp import engine, identity, ingest, pipeline, tags, validate
from cdp.config import CdpConfig, load_config
from cdp.export import RedisUnavailable, export
from cdp.pipeline import read_tables, report, run, run_config
from cdp.profiles import build_profiles, cutoff_ts, profile_tables, to_messages
from cdp.schema import OPTIONAL_COLUMNS, SCHEMAS
from rta.v1 import decision_pb2 as pb
from rta_service import cli, keyspace
from rta_service.embedded_redis import free_port
from rta_service.ids import hash_raw
from rta_service.settings import SettingsError
from simulate.world import simulate
from tests.service_handle import read_profiles

AS_OF = dt.date(2025, 6, 1)
CUTOFF = cutoff_ts(AS_OF)
DAY = 86400
ORDER_COLUMNS = ["order_id", "record_id", "channel", "store_id", "ts", "amount_fen", "category"]
MEMBER_COLUMNS = ["record_id", "channel", "created_ts", "is_member", "member_id", "phone_hash", "unionid", "buyer_id"]
WECOM_COLUMNS = ["friendship_id", "external_userid", "unionid", "phone_hash", "guide_id", "store_id", "added_ts",
                 "removed_ts"]
OAID = hash_raw(pb.OAID, "9a7f6a1e-1111-2222-3333-444455556666")
IMEI = hash_raw(pb.IMEI, "861234567890123")
ZERO_IDFA = hash_raw(pb.IDFA, "00000000-0000-0000-0000-000000000000")


def account(record_id, channel="store", days_ago=300, member=True, member_id=None, phone=None, unionid=None,
            buyer=None):
    return [record_id, channel, CUTOFF - days_ago * DAY, member, member_id, phone, unionid, buyer]


def friendship(fid, days_ago=30, removed_days_ago=None, unionid=None, phone=None, external="wm-x"):
    removed = 0 if removed_days_ago is None else CUTOFF - removed_days_ago * DAY
    return [fid, external, unionid, phone, "g1", "s1", CUTOFF - days_ago * DAY, removed]


def world_tables(accounts=(), devices=(), orders=(), wecom=()) -> dict[str, pd.DataFrame]:
    return {
        "memberships": pd.DataFrame(list(accounts), columns=MEMBER_COLUMNS).astype({"created_ts": np.int64}),
        "membership_devices": pd.DataFrame(list(devices), columns=["record_id", "id_type", "value_md5"]),
        "orders": pd.DataFrame([[f"o{i}", r, ch, None, CUTOFF - d * DAY, fen, "tops"]
                                for i, (r, ch, d, fen) in enumerate(orders)],
                               columns=ORDER_COLUMNS),
        "wecom": pd.DataFrame(list(wecom), columns=WECOM_COLUMNS).astype({"added_ts": np.int64,
                                                                          "removed_ts": np.int64}),
    }


def one_ids(tables) -> dict[str, str]:
    records, _ = identity.resolve_frames(tables)
    return dict(zip(records["record_id"], records["one_id"], strict=True))


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    path = tmp_path_factory.mktemp("cdp-world")
    simulate(path, people=3000, seed=5, as_of=AS_OF)
    return path


# --- identity ---------------------------------------------------------------------------------------------

def test_resolution_matches_ground_truth(small_world):
    tables = read_tables(small_world)
    records, identifiers = identity.resolve_frames(tables)
    wecom_truth = pd.read_parquet(small_world / "truth_wecom.parquet").rename(columns={"friendship_id": "record_id"})
    truth = pd.concat([pd.read_parquet(small_world / "truth_memberships.parquet"), wecom_truth])
    joined = records.merge(truth, on="record_id", validate="one_to_one")

    def pairs(keys: pd.Series) -> int:
        sizes = keys.value_counts()
        return int((sizes * (sizes - 1) // 2).sum())

    same_both = pairs(joined["one_id"] + "|" + joined["truth_person"].astype(str))
    precision, recall = same_both / pairs(joined["one_id"]), same_both / pairs(joined["truth_person"])
    assert precision >= 0.999
    assert 0.3 < recall < 1.0  # marketplace accounts without a phone hash cannot be linked: realistic splits
    assert joined["one_id"].nunique() < len(joined)
    values = identifiers["key"].str.rsplit(":", n=1).str[-1].str.lower()
    assert not values.isin(identity.BLOCKED_VALUES).any()
    assert not values.str.fullmatch(r"[0\-]*").any()


@pytest.mark.parametrize("junk", ["", "0", "-1", "null", "NULL", " null ", "d41d8cd98f00b204e9800998ecf8427e",
                                  "00000000-0000-0000-0000-000000000000", "0000"])
def test_records_sharing_only_a_blocked_value_stay_split(junk):
    tables = world_tables(
        accounts=[account("a", phone=junk, member_id=junk), account("b", channel="app", phone=junk, member_id=junk),
                  account("c", channel="miniprogram", unionid=junk)],
        wecom=[friendship("w", unionid=junk, phone=junk, external="wm-w")])
    assert len(set(one_ids(tables).values())) == 4


def test_junk_device_ids_never_link():
    tables = world_tables(accounts=[account("a", channel="app"), account("b", channel="app")],
                          devices=[["a", pb.IDFA, ZERO_IDFA], ["b", pb.IDFA, ZERO_IDFA.upper()],
                                   ["a", pb.ANDROID_ID, hashlib.md5(b"").hexdigest()],
                                   ["b", pb.ANDROID_ID, hashlib.md5(b"").hexdigest()],
                                   ["a", pb.OAID, "not-an-md5"], ["b", pb.OAID, "not-an-md5"]])
    ids = one_ids(tables)
    assert ids["a"] != ids["b"]
    _, index = build_profiles(tables, AS_OF)
    assert index.empty


def test_shared_identifiers_link_transitively():
    tables = world_tables(
        accounts=[account("store", phone="P1", member_id="M1"),
                  account("mini", channel="miniprogram", phone="p1", unionid="U1"),  # phone hashes are case-folded
                  account("app", channel="app", member_id="M1"),
                  account("tm", channel="tmall", buyer="B1"),
                  account("other", channel="jd", phone="P2")],
        devices=[["app", pb.OAID, OAID]],
        wecom=[friendship("w1", unionid="U1")])
    ids = one_ids(tables)
    assert ids["store"] == ids["mini"] == ids["app"] == ids["w1"]
    assert len({ids["store"], ids["tm"], ids["other"]}) == 3


def test_buyer_ids_only_link_within_their_marketplace():
    tables = world_tables(accounts=[account("t1", "tmall", buyer="X"), account("t2", "tmall", buyer="X"),
                                    account("j1", "jd", buyer="X")])
    ids = one_ids(tables)
    assert ids["t1"] == ids["t2"] != ids["j1"]


def test_one_id_is_a_hash_of_the_earliest_identifier_and_stable():
    base = [account("old", days_ago=500, phone="P1"), account("new", "app", days_ago=10, phone="P1", member_id="M9")]
    ids = one_ids(world_tables(accounts=base))
    assert ids["old"] == ids["new"] == identity.one_id("phone:p1")
    shuffled = one_ids(world_tables(accounts=base[::-1]))
    later = one_ids(world_tables(accounts=base + [account("later", "tmall", days_ago=1, buyer="B", phone="P1")]))
    assert shuffled["old"] == later["later"] == ids["old"]
    assert re.fullmatch(r"[0-9a-f]{24}", ids["old"])


def test_a_record_is_named_after_its_earliest_identifier_not_after_itself():
    # A lone WeCom friendship has identifiers, so it is named after the earliest of them (here its
    # external_userid); only a record with no usable identifier at all is named after itself.
    tables = world_tables(accounts=[account("a", phone="P1"), account("bare", phone="0")],
                          wecom=[friendship("w1", external="wm-x"),
                                 friendship("w2", days_ago=5, unionid="U7", external="wm-y")])
    ids = one_ids(tables)
    assert ids["w1"] == identity.one_id("wecom:wm-x")
    assert ids["w2"] == identity.one_id("unionid:U7")  # earliest by time, then the smallest key
    assert ids["a"] == identity.one_id("phone:p1")
    assert ids["bare"] == identity.one_id("record:memberships:bare")


def test_label_propagation_handles_long_chains_and_separate_components():
    # integer node ids, as cdp.identity numbers records; keys are anything comparable
    chain = [(i, f"k{i}") for i in range(20)] + [(i + 1, f"k{i}") for i in range(19)]
    pair = [(101, "shared"), (100, "shared"), (100, "own")]
    con = engine.connect()
    graph = con.create_view("g", ibis.memtable(pd.DataFrame(chain + pair, columns=["node", "key"])))
    labels, rounds = identity.propagate(graph)
    got = dict(zip(*labels.to_pandas()[["node", "label"]].T.to_numpy(), strict=True))
    assert got == {**{i: 0 for i in range(20)}, 100: 100, 101: 100}
    assert rounds <= 8  # pointer jumping: a chain of 20 does not take 20 rounds


# --- profiles ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("days", "lapsed"), [(89.9, False), (90, True), (150, True), (179.9, True), (180, False)])
def test_lapsed_segment_is_last_order_90_to_180_days_ago(days, lapsed):
    tables = world_tables(accounts=[account("a", days_ago=400)], orders=[("a", "store", days, 1000)])
    profiles, _ = build_profiles(tables, AS_OF)
    assert ("lapsed_90_180" in profiles.loc[0, "segments"]) is lapsed


def test_profile_fields_on_a_hand_built_person():
    tables = world_tables(
        accounts=[account("st", "store", days_ago=400, member=True, phone="P1"),
                  account("tm", "tmall", days_ago=200, member=False, phone="P1", buyer="B1"),
                  account("ap", "app", days_ago=120, member=False, phone="P1"),
                  account("future", "jd", days_ago=-2, member=True, phone="P1"),
                  account("y", "jd", days_ago=300, member=False, buyer="BY")]
        + [account(f"n{i}", "tmall", days_ago=300, member=False, buyer=f"BN{i}") for i in range(8)],
        devices=[["ap", pb.OAID, OAID], ["ap", pb.IMEI, IMEI], ["ap", pb.IDFA, ZERO_IDFA]],
        orders=[("st", "store", 100, 10_000), ("tm", "tmall", 150, 5_000), ("st", "store", -1, 99_999),
                ("y", "jd", 200, 700)] + [(f"n{i}", "tmall", 250, 100 * (i + 1)) for i in range(8)],
        wecom=[friendship("w1", days_ago=50, phone="P1", external="wm-1"),
               friendship("w2", days_ago=60, removed_days_ago=10, external="wm-2"),
               friendship("w3", days_ago=60, removed_days_ago=-3, external="wm-3")])
    profiles, index = build_profiles(tables, AS_OF, built_ts=123)
    ids = one_ids(tables)
    p = profiles.set_index("one_id")
    x = p.loc[ids["st"]]
    assert x["is_member"] and x["order_count"] == 2 and x["monetary_fen"] == 15_000
    assert x["last_order_ts"] == CUTOFF - 100 * DAY and x["first_seen_ts"] == CUTOFF - 400 * DAY
    assert x["channel_count"] == 4 and x["device_count"] == 2 and x["wecom_friend"] and x["updated_ts"] == 123
    assert set(x["segments"]) == {"member", "buyer", "lapsed_90_180", "wecom_friend", "vip"}
    y = p.loc[one_ids(tables)["y"]]
    assert not y["is_member"] and y["segments"] == ("buyer",) and y["channel_count"] == 1 and y["device_count"] == 0
    assert not p.loc[ids["w2"], "wecom_friend"]  # removed before as_of
    assert p.loc[ids["w3"], "wecom_friend"]  # removed after as_of: still a friend as of that date
    assert sorted(zip(index["id_type"], index["md5"], strict=True)) == sorted([(pb.IMEI, IMEI), (pb.OAID, OAID)])
    assert set(index["one_id"]) == {ids["st"]}
    message = to_messages(profiles)[ids["st"]]
    assert message.version == keyspace.PROFILE_VERSION and message.monetary_fen == 15_000
    assert list(message.segments) == list(x["segments"])


# --- export -------------------------------------------------------------------------------------------------

def test_pipeline_exports_decodable_profiles_per_device(small_world, redis_url):
    summary = run(small_world, redis_url, namespace="t")
    client = redis.Redis.from_url(redis_url)
    profiles, index = build_profiles(read_tables(small_world), AS_OF)
    bits = summary["export"]["bucket_bits"]
    assert client.get("t:gen") == f"1:{bits}".encode() and bits == keyspace.bucket_bits_for(len(index))
    keys = sorted(client.scan_iter(match="t:1:*", count=1000))
    assert all(re.fullmatch(rb"t:1:[0-9a-f]+", k) for k in keys) and len(keys) == summary["export"]["buckets"]
    assert sum(client.hlen(k) for k in keys) == len(index) == summary["export"]["keys_written"] > 100
    expected = profiles.set_index("one_id")
    stored = read_profiles(redis_url, "t", list(zip(index["id_type"], index["md5"], strict=True)))
    for s, one_id in zip(stored, index["one_id"], strict=True):
        assert s.one_id == one_id
        assert s.order_count == expected.loc[one_id, "order_count"]
        assert s.is_member == expected.loc[one_id, "is_member"]
        assert list(s.segments) == list(expected.loc[one_id, "segments"])
    raw_values = {v.encode() for v in pd.read_parquet(small_world / "devices.parquet")["raw"]} - {b""}
    assert not any(f in raw_values for k in keys for f in client.hkeys(k))
    assert all(len(f) == keyspace.FIELD_BYTES for f in client.hkeys(keys[0]))
    assert 0 < summary["export"]["bytes_per_key"] < 150 and summary["profiles"] == len(profiles)
    assert summary["export"]["layout_warnings"] == [] and set(summary["export"]["encodings"]) <= {"ziplist", "listpack"}


def test_generation_switch_is_one_set_then_old_keys_go(redis_url):
    tables = world_tables(accounts=[account("a", "app", phone="P1"), account("b", "app", phone="P2")],
                          devices=[["a", pb.OAID, OAID], ["b", pb.IMEI, IMEI]],
                          orders=[("a", "app", 10, 500)])
    profiles, index = build_profiles(tables, AS_OF)
    client = redis.Redis.from_url(redis_url)
    slept = []
    first = export(client, profiles, index, ns="rta", grace_s=5, sleep=slept.append)
    assert not slept  # the first export: nobody can be reading an older generation, so no grace to wait
    assert first["generation"] == 1 and first["keys_written"] == 2 and client.get("rta:gen") == b"1:0"
    stale = keyspace.bucket_key("rta", 2, 0)  # left by a crashed run of generation 2
    client.hset(stale, b"junk", b"junk")
    client.set("other:1:o:" + OAID, b"x")  # another namespace: not ours to delete
    client.set("rta:0:o:" + OAID, b"x")  # a format-1 key of an older generation: deleted with the old ones
    seen = {}

    def during_grace(seconds: float) -> None:
        seen["grace"] = seconds
        seen["gen"] = client.get("rta:gen")
        seen["old"], seen["new"] = client.hlen("rta:1:0"), client.hlen("rta:2:0")

    second = export(client, profiles, index, ns="rta", grace_s=5, sleep=during_grace)
    assert seen["grace"] == 5 and seen["gen"] == b"2:0"
    assert seen["old"] == seen["new"] == 2  # readers of generation 1 still find everything
    assert second["stale_keys_cleared"] == 1 and b"junk" not in client.hkeys("rta:2:0")
    assert second["generation"] == 2 and second["previous_generation"] == 1
    assert second["keys_deleted"] == 2  # generation 1's one bucket and the format-1 key
    assert client.get("rta:gen") == b"2:0" and not list(client.scan_iter(match="rta:[01]:*"))
    assert client.get("other:1:o:" + OAID) == b"x"
    record = read_profiles(redis_url, "rta", [(pb.OAID, OAID)])[0]
    assert record.order_count == 1 and record.last_order_ts == CUTOFF - 10 * DAY


# --- configuration and CLI ----------------------------------------------------------------------------------

def test_every_cdp_setting_is_documented_and_bad_ones_are_all_reported(tmp_path):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "cdp.md").read_text()
    table = doc.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = {name for row in re.findall(r"^\| (`[^|]+) \|", table, flags=re.M)
                  for name in re.findall(r"`([a-z_]+)`", row)}
    assert documented == set(CdpConfig.model_fields)
    bad = tmp_path / "cdp.yaml"
    bad.write_text("input: /x\nengine: spark\nmax_cluster_size: 1\nbogus: 3\n")
    with pytest.raises(SettingsError) as err:
        load_config(bad)
    for field in ("engine", "max_cluster_size", "bogus"):
        assert field in str(err.value)


def test_cdp_run_and_report_commands(small_world, redis_url, tmp_path, capsys):
    config = tmp_path / "cdp.yaml"
    config.write_text(f"input: {small_world}\nredis_url: {redis_url}\nnamespace: cli\ngrace_s: 0\n")
    assert cli.main(["cdp", "run", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["export"]["generation"] == 1 and summary["segments"]["profiles"] == summary["profiles"]
    assert "[cdp] ingest" in err and "[cdp] export" in err and "[cdp] predictive" in err
    assert set(summary["predictive"]["models"]) == {"p_first_purchase", "p_repurchase_30d"}
    assert summary["tags"]["file"] is None  # no work_dir: the file went with the run's temp dir
    assert cli.main(["cdp", "report", "--input", str(small_world)]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert f"OneIDs; pairwise precision {report['identity']['pairwise_precision']}, recall" in err
    assert report["identity"]["pairwise_precision"] >= 0.999 and report["identity"]["true_persons"] == 3000
    assert report["identity"]["one_ids"] == summary["profiles"]
    assert report["predictive"]["models"] == summary["predictive"]["models"]  # same data, same seed
    # real data has no truth files: the report still counts records, OneIDs and the largest cluster
    world = tmp_path / "no-truth"
    shutil.copytree(small_world, world, ignore=shutil.ignore_patterns("truth_*"))
    plain = pipeline.report(load_config(input=world, predictive={"enabled": False}))["identity"]
    assert "pairwise_precision" not in plain and plain["accuracy"].startswith("not measured: no truth")
    assert (plain["records"], plain["one_ids"]) == (report["identity"]["records"], report["identity"]["one_ids"])
    assert 1 < plain["largest_cluster"] <= 200 and 0 < plain["one_ids_with_several_records"] < plain["one_ids"]


def test_paths_in_a_config_file_are_relative_to_it_and_the_redis_url_scheme_is_checked(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "segments.yaml").write_text("segments:\n  buyers: [[order_count, '>=', 1]]\n")
    (folder / "cdp.yaml").write_text("input: world\nsegments_file: segments.yaml\nstate_dir: ../state\n")
    monkeypatch.chdir(tmp_path)  # anywhere but the file's folder
    cfg = load_config(folder / "cdp.yaml", work_dir=Path("work"))
    assert (cfg.input, cfg.segments_file, cfg.state_dir) == (folder / "world", folder / "segments.yaml",
                                                             folder / ".." / "state")
    assert cfg.work_dir == Path("work")  # a flag's path is the working directory's
    with pytest.raises(SettingsError, match="redis_url"):
        load_config(None, input=tmp_path, redis_url="http://127.0.0.1:6379")


def test_a_table_mostly_rejected_fails_the_run_and_a_wrong_input_is_said_before_redis(small_world, tmp_path):
    world = tmp_path / "ms-world"
    shutil.copytree(small_world, world)
    orders = pd.read_parquet(world / "orders.parquet")
    orders["ts"] = orders["ts"] * 1000  # milliseconds: every row rejected
    orders.to_parquet(world / "orders.parquet", index=False)
    cfg = load_config(input=world, predictive={"enabled": False})
    with pytest.raises(validate.InputError, match=r"max_reject_share 0.2: orders [\d,]+ of [\d,]+ rows \(100%\)"):
        report(cfg)
    allowed = report(load_config(input=world, predictive={"enabled": False}, max_reject_share=1))
    assert allowed["ingest"]["tables"]["orders"]["out"] == 0 < allowed["ingest"]["tables"]["orders"]["rejected"]
    down = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(validate.InputError, match="no such directory"):  # not RedisUnavailable
        run_config(load_config(input=tmp_path / "nope", redis_url=down))


def test_options_before_the_subcommand_are_kept_and_after_it_win():
    parse = cli.build_parser().parse_args
    before = parse(["cdp", "--redis-url", "redis://h:1/0", "--namespace", "t9", "--allow-shrink",
                    "run", "--input", "w"])
    assert (before.redis_url, before.namespace, before.allow_shrink, str(before.input)) == (
        "redis://h:1/0", "t9", True, "w")
    after = parse(["cdp", "--namespace", "a", "run", "--namespace", "b", "--input", "w"])
    assert after.namespace == "b" and after.redis_url == os.environ.get("RTA_REDIS_URL")
    assert str(parse(["cdp", "--input", "w", "report"]).input) == "w"


def test_cdp_run_incremental_from_the_command_line(small_world, redis_url, tmp_path, capsys):
    base = ["cdp", "run", "--input", str(small_world), "--redis-url", redis_url, "--namespace", "inc", "--grace-s", "0"]
    with pytest.raises(SettingsError, match="state_dir"):
        load_config(input=small_world, export_mode="incremental")
    incremental = [*base, "--state-dir", str(tmp_path / "state"), "--export-mode", "incremental",
                   "--write-rate", "1000000"]
    assert cli.main(incremental) == 0
    first = json.loads(capsys.readouterr().out)["export"]
    assert first["mode"] == "full" and first["generation"] == 1  # nothing to compare with yet
    assert cli.main(incremental) == 0
    out, err = capsys.readouterr()
    second = json.loads(out)["export"]
    assert second["mode"] == "incremental" and second["generation"] == 1
    assert second["keys_written"] == second["keys_deleted"] == 0 and second["unchanged"] == first["keys_written"]
    assert err.count("0 device entries written (0 new, 0 changed)") == 1  # one line per stage, not two
    assert (tmp_path / "state" / "identifiers.parquet").exists()


def test_a_cluster_past_the_size_limit_fails_the_run_naming_the_shared_value_and_blocking_it_passes():
    accounts = [account(f"a{i}", phone="shared", member_id=f"M{i}") for i in range(5)]
    tables = world_tables(accounts=accounts + [account("a5", "app", member_id="M0")])
    with pytest.raises(identity.ClusterTooLarge, match="6 records") as err:
        identity.resolve_frames(tables, guardrails=identity.Guardrails(max_cluster_size=4))
    # the values held by the most records first (those held by one link nothing): kind and value, as
    # blocked_identifiers takes them
    assert "values: 'phone:shared' (held by 5 records), 'member:M0' (held by 2 records); " in str(err.value)
    assert str(err.value).endswith("add it to blocked_identifiers")
    assert len(set(identity.resolve_frames(tables, guardrails=identity.Guardrails(6))[0]["one_id"])) == 1
    blocked = identity.Guardrails(max_cluster_size=4, blocked=("phone:shared",))
    records, identifiers = identity.resolve_frames(tables, guardrails=blocked)
    assert records.groupby("one_id").size().sort_values().tolist() == [1, 1, 1, 1, 2]  # a0 and a5 share M0
    assert "phone:shared" not in set(identifiers["key"])


def test_blocked_identifiers_are_validated_and_reach_the_oneid_stage(tmp_path):
    cfg = CdpConfig(input=tmp_path, blocked_identifiers=["phone:abc", "buyer:tmall:b1", "dev:1:" + "a" * 32])
    assert cfg.blocked_identifiers == ["phone:abc", "buyer:tmall:b1", "dev:1:" + "a" * 32]
    # hex digests are matched in lower case, as ingest normalises them; other values exactly as given
    upper = CdpConfig(input=tmp_path, blocked_identifiers=["phone:ABC", "dev:1:" + "A" * 32, "member:M1"])
    assert upper.blocked_identifiers == ["phone:abc", "dev:1:" + "a" * 32, "member:M1"]
    with pytest.raises(SettingsError) as err:
        load_config(None, input=tmp_path, blocked_identifiers=["abc", "phone:", "buyer:b1", "email:x"])
    assert [f"blocked_identifiers.{i}" in str(err.value) for i in range(4)] == [True] * 4
    # a run fails on the junk value's cluster, names it, and passes once it is blocked
    world = tmp_path / "world"
    world.mkdir()
    accounts = [account(f"a{i}", phone="5d41402abc4b2a76b9719d911017c592") for i in range(5)]
    for name, frame in world_tables(accounts=accounts).items():
        frame.to_parquet(world / f"{name}.parquet")
    settings = {"input": world, "as_of": AS_OF, "max_cluster_size": 4, "predictive": {"enabled": False}}
    with pytest.raises(identity.ClusterTooLarge, match="'phone:5d41402abc4b2a76b9719d911017c592' "):
        report(load_config(None, **settings))
    out = report(load_config(None, **settings, blocked_identifiers=["phone:5d41402abc4b2a76b9719d911017c592"]))
    assert out["tags"]["lifecycle"] == {"0": 5}  # five people without orders, not one


def identifiers_of(accounts, previous=None) -> pd.DataFrame:
    return identity.resolve_frames(world_tables(accounts=accounts), previous=previous)[1]


def test_oneids_are_stable_and_merges_and_splits_are_counted():
    def identifiers(accounts):
        return ibis.memtable(identifiers_of(accounts))

    run1 = [account("a", days_ago=300, phone="P1"), account("b", "app", days_ago=200, phone="P2", member_id="M2"),
            account("c", "app", days_ago=100, phone="P3", member_id="M3")]
    run2 = run1 + [account("d", "tmall", days_ago=5, phone="P1", buyer="B1"),
                   account("e", "jd", days_ago=4, phone="P2", buyer="J1")]  # new accounts of a and b: no change
    unchanged = {"kept": 3, "merged": 0, "split": 0, "renamed": 0, "new": 0}
    assert identity.compare(identifiers(run1), identifiers(run2))[0] == unchanged
    run3 = run2 + [account("f", "miniprogram", days_ago=1, phone="P1", member_id="M2")]  # joins a and b
    moved = identity.compare(identifiers(run2), identifiers(run3))[0]
    assert moved == {"kept": 2, "merged": 1, "split": 0, "renamed": 0, "new": 0}  # b's OneID goes into a's
    assert one_ids(world_tables(accounts=run3))["b"] == one_ids(world_tables(accounts=run1))["a"]
    run4 = [account("a", days_ago=300, phone="P1"), account("b", "app", days_ago=200, phone="P9", member_id="M2")]
    run4_before = [account("a", days_ago=300, phone="P1"), account("b", "app", days_ago=200, phone="P1",
                                                                   member_id="M2")]
    assert identity.compare(identifiers(run4_before), identifiers(run4))[0] == {
        "kept": 1, "merged": 0, "split": 1, "renamed": 0, "new": 1}
    # Each merge and split is logged as a (change, old OneID, new OneID) row, the losing or departing side only.
    a, b = one_ids(world_tables(accounts=run2))["a"], one_ids(world_tables(accounts=run2))["b"]
    merged = identity.compare(identifiers(run2), identifiers(run3))[1]
    assert sorted(map(tuple, merged.to_numpy())) == [("merge", b, a)]
    split = identity.compare(identifiers(run4_before), identifiers(run4))[1]
    after = one_ids(world_tables(accounts=run4))
    assert sorted(map(tuple, split.to_numpy())) == [("split", after["a"], after["b"])]
    assert len(identity.compare(identifiers(run1), identifiers(run2))[1]) == 0


def test_a_backfilled_earlier_account_keeps_the_persons_oneid_with_the_last_runs_map():
    run1 = [account("a", days_ago=300, phone="p1", member_id="M1"), account("b", "app", days_ago=200, phone="p2")]
    before = identifiers_of(run1)
    run2 = run1 + [account("z", "tmall", days_ago=900, phone="p1", buyer="Z1")]  # older than a: a new earliest key
    derived = identifiers_of(run2)
    carried = identifiers_of(run2, previous=before)
    old_a = before.set_index("key")["one_id"]["phone:p1"]
    # Without the map the person is renamed after the backfilled key; the log shows it as a rename.
    assert derived.set_index("key")["one_id"]["phone:p1"] == identity.one_id("buyer:tmall:Z1") != old_a
    renamed = identity.compare(ibis.memtable(before), ibis.memtable(derived))
    assert renamed[0] == {"kept": 1, "merged": 0, "split": 0, "renamed": 1, "new": 1}
    assert list(map(tuple, renamed[1].to_numpy())) == [("rename", old_a, identity.one_id("buyer:tmall:Z1"))]
    # With it every identifier of the person, the new one included, keeps the old OneID, and nothing is logged.
    assert set(carried[carried["key"].isin(["phone:p1", "member:M1", "buyer:tmall:Z1"])]["one_id"]) == {old_a}
    counts, log = identity.compare(ibis.memtable(before), ibis.memtable(carried))
    assert counts == {"kept": 2, "merged": 0, "split": 0, "renamed": 0, "new": 0} and log.empty
    records, _ = identity.resolve_frames(world_tables(accounts=run2), previous=before)
    assert dict(zip(records["record_id"], records["one_id"], strict=True))["z"] == old_a  # records carry it too


def test_a_merge_keeps_the_id_of_the_previous_person_with_most_identifiers_and_logs_the_other():
    # b holds more identifiers than a, though a is earlier (and so names the merged cluster without the map)
    run1 = [account("a", days_ago=300, phone="p1"),
            account("b", "app", days_ago=200, phone="p2", member_id="M2", unionid="U2")]
    before = identifiers_of(run1)
    old = before.set_index("key")["one_id"]
    run2 = run1 + [account("f", "miniprogram", days_ago=1, phone="p1", member_id="M2")]
    assert set(identifiers_of(run2)["one_id"]) == {old["phone:p1"]}
    carried = identifiers_of(run2, previous=before)
    assert set(carried["one_id"]) == {old["phone:p2"]}
    counts, log = identity.compare(ibis.memtable(before), ibis.memtable(carried))
    assert counts == {"kept": 1, "merged": 1, "split": 0, "renamed": 0, "new": 0}
    assert list(map(tuple, log.to_numpy())) == [("merge", old["phone:p1"], old["phone:p2"])]


def test_a_split_gives_the_id_to_the_part_with_most_identifiers_and_logs_the_other_part():
    # one person by the shared phone P1; b's part holds most of the identifiers
    run1 = [account("a", days_ago=300, phone="p1"),
            account("b", "app", days_ago=200, phone="p1", member_id="M2", unionid="U2")]
    before = identifiers_of(run1)
    person = identity.one_id("phone:p1")
    assert set(before["one_id"]) == {person}
    run2 = [account("a", days_ago=300, phone="p1"),
            account("b", "app", days_ago=200, phone="p9", member_id="M2", unionid="U2")]  # b's phone corrected
    carried = identifiers_of(run2, previous=before).set_index("key")["one_id"]
    assert carried["member:M2"] == carried["phone:p9"] == person
    # a's derived id is the id b's part inherited, so it is rehashed: no two people share a OneID
    assert carried["phone:p1"] == identity.one_id("phone:p1#1")
    counts, log = identity.compare(ibis.memtable(before), ibis.memtable(carried.reset_index()))
    assert counts == {"kept": 1, "merged": 0, "split": 1, "renamed": 0, "new": 1}
    assert list(map(tuple, log.to_numpy())) == [("split", person, identity.one_id("phone:p1#1"))]


def test_oneids_without_a_previous_map_are_derived_from_the_earliest_identifier_whatever_the_map_would_say():
    run1 = [account("a", days_ago=300, phone="p1"), account("b", "app", days_ago=200, phone="p2")]
    previous = pd.DataFrame({"key": ["phone:p1", "phone:p2"], "one_id": ["x" * 24, "y" * 24]})
    plain = identifiers_of(run1).set_index("key")["one_id"]
    assert plain.to_dict() == {"phone:p1": identity.one_id("phone:p1"), "phone:p2": identity.one_id("phone:p2")}
    assert identifiers_of(run1, previous).set_index("key")["one_id"].to_dict() == {"phone:p1": "x" * 24,
                                                                                   "phone:p2": "y" * 24}


def test_a_run_with_state_dir_writes_its_merges_and_splits_and_a_report_only_reads(small_world, tmp_path, capsys,
                                                                                     redis_url, monkeypatch):
    config = tmp_path / "cdp.yaml"
    state = tmp_path / "state"
    config.write_text(f"input: {small_world}\nstate_dir: {state}\nredis_url: {redis_url}\nnamespace: sd\n"
                      "grace_s: 0\npredictive: {enabled: false}\n")
    assert cli.main(["cdp", "report", "--config", str(config)]) == 0
    assert not state.exists()  # a report reads the state, never writes it
    assert cli.main(["cdp", "run", "--config", str(config)]) == 0
    assert "OneIDs vs last run" not in capsys.readouterr().err  # the first run has nothing to compare with
    saved = (state / "identifiers.parquet").read_bytes()
    assert cli.main(["cdp", "report", "--config", str(config)]) == 0
    assert "OneIDs vs last run" in capsys.readouterr().err
    assert not (state / "oneid_changes").exists() and (state / "identifiers.parquet").read_bytes() == saved
    assert cli.main(["cdp", "run", "--config", str(config)]) == 0
    assert "OneIDs vs last run: {'kept': " in capsys.readouterr().err
    assert not (state / "oneid_changes").exists()  # nothing changed: the counts, but no empty log
    # a run whose export fails leaves the state as the last published run wrote it
    saved = (state / "identifiers.parquet").read_bytes()
    down = load_config(config, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(RedisUnavailable):  # found before any work
        run_config(down)
    assert not list(state.rglob("*.pending"))
    monkeypatch.setattr(pipeline, "check_redis", lambda *_a, **_k: {})  # as if Redis went away during the run
    with pytest.raises(redis.ConnectionError):
        run_config(down)
    assert (state / "identifiers.parquet").read_bytes() == saved
    assert not (state / "oneid_changes").exists()
    assert not list(state.rglob("*.pending"))  # this run's pending files went with it


def test_a_backfilled_account_keeps_its_persons_oneid_through_a_run_with_state_dir(small_world, tmp_path, redis_url):
    """The new-user review's case end to end: an account older than any of a person's, carrying their phone
    hash, used to rename the person with nothing logged."""
    world = tmp_path / "world"
    shutil.copytree(small_world, world)
    cfg = load_config(None, input=world, state_dir=tmp_path / "state", work_dir=tmp_path / "work",
                      redis_url=redis_url, namespace="bf", grace_s=0, predictive={"enabled": False})
    run_config(cfg)
    before = pd.read_parquet(tmp_path / "state" / "identifiers.parquet").set_index("key")["one_id"]
    members = pd.read_parquet(world / "memberships.parquet")
    person = members[members["phone_hash"].notna()].iloc[0]
    key = f"phone:{person['phone_hash']}"
    backfill = {**{c: None for c in members.columns}, "record_id": "r-backfill", "channel": "store",
                "created_ts": int(members["created_ts"].min()) - 86400, "is_member": True,
                "phone_hash": person["phone_hash"]}
    pd.concat([members, pd.DataFrame([backfill])], ignore_index=True).to_parquet(world / "memberships.parquet")
    assert identity.one_id(key) != before[key]  # without the last run's map the person would be renamed
    summary = run_config(cfg)
    assert summary["oneid_changes"] == {"kept": before.nunique(), "merged": 0, "split": 0, "renamed": 0, "new": 0}
    after = pd.read_parquet(tmp_path / "state" / "identifiers.parquet").set_index("key")["one_id"]
    assert after[key] == before[key] and after.loc[before.index].equals(before)
    tagged = pd.read_parquet(tmp_path / "work" / "tags.parquet")  # what the export reads carries the kept id
    assert before[key] in set(tagged["one_id"]) and identity.one_id(key) not in set(tagged["one_id"])
    assert not (tmp_path / "state" / "oneid_changes").exists()


# --- tags and segments ----------------------------------------------------------------------------------------

def test_tags_and_yaml_segments_on_a_hand_built_person(tmp_path):
    tables = world_tables(
        accounts=[account("st", "store", days_ago=400, phone="P1"), account("tm", "tmall", days_ago=300, phone="P1"),
                  account("lone", "jd", days_ago=50, member=False, buyer="J")],
        orders=[("st", "store", 100, 1000), ("st", "store", 70, 2000), ("tm", "tmall", 65, 500)],
        wecom=[friendship("w1", days_ago=90, phone="P1", external="wm-1"),
               friendship("w2", days_ago=20, phone="P1", external="wm-2", removed_days_ago=5)])
    tables["orders"]["store_id"] = ["s7", "s7", None]
    tables["wecom"]["guide_id"] = ["g-old", "g-new"]
    con = engine.connect()
    _, _, res = profile_tables(ingest.register(con, tables), AS_OF, built_ts=1, tags=True)
    segments_file = tmp_path / "segments.yaml"
    segments_file.write_text("segments:\n  lapsing_repeat: [[lifecycle, in, ['2', '3+']], "
                             "[days_since_last_order, between, [60, 180]]]\n  never_bought: [[lifecycle, '==', '0']]\n")
    tagged = tags.apply_segments(res.tags, tags.load_segments(segments_file)).to_pandas().set_index("one_id")
    ids = one_ids(tables)
    person, lone = tagged.loc[ids["st"]], tagged.loc[ids["lone"]]
    assert person["lifecycle"] == "3+" and person["days_since_last_order"] == 65
    assert person["top_channel"] == "store" and person["top_category"] == "tops"
    assert person["best_store_id"] == "s7" and person["guide_id"] == "g-old"  # g-new's friendship was removed
    assert person["r_score"] >= 1 and person["segment_lapsing_repeat"] and not person["segment_never_bought"]
    assert lone["lifecycle"] == "0" and pd.isna(lone["days_since_last_order"]) and lone["r_score"] == 0
    assert lone["segment_never_bought"] and tags.segment_sizes(
        tags.apply_segments(res.tags, tags.load_segments(segments_file))) == {"lapsing_repeat": 1, "never_bought": 1}
    bad = tmp_path / "bad.yaml"
    bad.write_text("segments:\n  x: [[lifecycle, like, '3+']]\n")
    with pytest.raises(SettingsError, match="segment x, condition 1 .*: unknown operator 'like'"):
        tags.load_segments(bad)
    # the contracts the segments file is checked against at config time are those of the real expressions
    assert res.tags.schema() == tags.tag_schema()
    assert res.records.schema() == identity.RECORDS_SCHEMA and res.identifiers.schema() == identity.IDENTIFIERS_SCHEMA


def _segments_config(tmp_path, segments: str, **settings):
    """A cdp.yaml naming a segments file with `segments` under `segments:`; its input does not exist, so a
    config that loads was checked without reading any data."""
    (tmp_path / "segments.yaml").write_text("segments:\n" + segments)
    config = tmp_path / "cdp.yaml"
    config.write_text(f"input: {tmp_path / 'no-such-world'}\nsegments_file: {tmp_path / 'segments.yaml'}\n"
                      + "".join(f"{k}: {v}\n" for k, v in settings.items()))
    return config


@pytest.mark.parametrize(("condition", "problem"), [
    ('[lifecycle, "==", 2]', 'lifecycle is a string tag: write the value as a string, "2"'),
    ('[wecom_friend, "==", "true"]', 'wecom_friend is a boolean tag: write true or false (without quotes), not "true"'),
    ('[lifecycle, in, "2"]', 'in needs a non-empty list of values, e.g. ["2"]'),
    ("[lifecycle, not_in, []]", "not_in needs a non-empty list of values"),
    ("[lifecycle, in, ['2', 3]]", 'lifecycle is a string tag: write the value as a string, "3"'),
    ("[days_since_last_order, between, 60]", "between needs a list of two values [low, high], got 60"),
    ("[days_since_last_order, between, [60, 180, 365]]", "between needs a list of two values"),
    ("[days_since_last_order, between, [180, 60]]", "the low bound is above the high one"),
    ("[m_score, '>=', '4']", 'm_score is a number tag (int64): write a number (without quotes), not "4"'),
    ("[m_score, '>=', true]", "m_score is a number tag (int64)"),
    ('[m_score, ">="]', "'>=' needs a value"),
    ("[m_score, '==', null]", "needs a value, not null (for missing values use is_null or not_null)"),
    ("[m_score, '==', [4, 5]]", "'==' needs one value, not a list"),
    ("[guide_id, is_null, x]", "is_null takes no value"),
    ("[m_score, like, 5]", "unknown operator 'like'"),
    ("[m_scor, '>=', 5]", "unknown tag 'm_scor' (did you mean m_score?"),
    ("[p_repurchase_7d, '>=', 0.1]", "unknown tag 'p_repurchase_7d' (did you mean p_repurchase_30d?"),
    ("[lifecycle]", "expected [tag, op, value]"),
])
def test_a_bad_segment_condition_fails_the_config_naming_file_segment_and_condition(tmp_path, condition, problem):
    config = _segments_config(tmp_path, f"  s1: [{condition}]\n")
    with pytest.raises(SettingsError) as err:
        load_config(config)
    lines = str(err.value).splitlines()
    assert lines[0] == f"invalid settings (file {config}):" and len(lines) == 2
    assert lines[1].startswith(f"  {tmp_path / 'segments.yaml'}: segment s1, condition 1 [")
    assert problem in lines[1]


def test_every_segment_problem_is_reported_together_with_the_other_settings_and_the_cli_exits_cleanly(
        tmp_path, capsys):
    config = _segments_config(tmp_path, "  s1: [[lifecycle, '==', '2'], [lifecycle, '==', 2]]\n"
                              "  vip: [[nope, '==', 1]]\n  s3: [[m_score, '>=']]\n  s4: []\n", engine="spark")
    with pytest.raises(SettingsError) as err:
        load_config(config)
    lines = str(err.value).splitlines()[1:]
    assert [line.split(": ", 2)[1] if "segments.yaml" in line else line.split(":")[0].strip() for line in lines] == [
        "engine", "segment s1, condition 2 [\"lifecycle\", \"==\", 2]", "segment vip",
        "segment vip, condition 1 [\"nope\", \"==\", 1]", "segment s3, condition 1 [\"m_score\", \">=\"]", "segment s4"]
    assert "the name of a built-in segment" in lines[2] and "expected a list of [tag, op, value]" in lines[5]
    assert cli.main(["cdp", "run", "--config", str(config)]) == 1
    err_text = capsys.readouterr().err
    assert "rta cdp: SettingsError: invalid settings" in err_text and "Traceback" not in err_text
    assert "segment s1, condition 2" in err_text and "segment vip" in err_text


def test_a_valid_segments_file_loads_with_the_score_tags_of_the_configured_horizon(tmp_path):
    segments = ("  lapsing: [[lifecycle, in, ['2', '3+']], [days_since_last_order, between, [60, 180]]]\n"
                "  friends: [[wecom_friend, '==', true], [m_score, '>=', 4.5], [guide_id, not_null]]\n"
                "  likely: [[p_repurchase_60d, '>=', 0.1], [p_first_purchase, is_null]]\n")
    cfg = load_config(_segments_config(tmp_path, segments, predictive="{horizon_days: 60}"))
    assert cfg.segments() == {
        "lapsing": [["lifecycle", "in", ["2", "3+"]], ["days_since_last_order", "between", [60, 180]]],
        "friends": [["wecom_friend", "==", True], ["m_score", ">=", 4.5], ["guide_id", "not_null"]],
        "likely": [["p_repurchase_60d", ">=", 0.1], ["p_first_purchase", "is_null"]]}
    with pytest.raises(SettingsError, match="unknown tag 'p_repurchase_60d'"):  # the default horizon is 30
        load_config(_segments_config(tmp_path, segments))
    with pytest.raises(SettingsError, match="unknown tag 'p_first_purchase' .*need predictive.enabled"):
        load_config(_segments_config(tmp_path, segments, predictive="{enabled: false, horizon_days: 60}"))
    # an invalid predictive setting is reported alone: the score tags are not blamed for it
    with pytest.raises(SettingsError) as err:
        load_config(_segments_config(tmp_path, segments, predictive="{horizon_days: 0}"))
    assert str(err.value).splitlines()[1:] == ["  predictive.horizon_days: Input should be greater than or equal to 1 "
                                               "(got 0)"]


def test_identifier_values_past_the_per_person_cap_stop_linking():
    # A member id shared by three records joins three phones into one person. With a cap of 2 phones the
    # phone held by fewest records stops linking; with a cap of 1, only the oldest of the two-record phones stays.
    accounts = [account("a", days_ago=400, phone="P1", member_id="M"), account("a2", "app", days_ago=390, phone="P1"),
                account("b", "app", days_ago=300, phone="P2", member_id="M"),
                account("c", "tmall", days_ago=200, member=False, phone="P3", member_id="M"),
                account("c2", "tmall", days_ago=100, member=False, phone="P3")]
    tables = world_tables(accounts=accounts)
    uncapped = identity.resolve_frames(tables, guardrails=identity.Guardrails(caps=()))[0]
    assert uncapped["one_id"].nunique() == 1
    records, identifiers = identity.resolve_frames(tables, guardrails=identity.Guardrails(caps=(("phone", 2),)))
    ids = dict(zip(records["record_id"], records["one_id"], strict=True))
    assert ids["a"] == ids["a2"] == ids["b"] == ids["c"] == ids["c2"]  # still one: P1 (2 records) and P3 (2) kept
    assert "phone:p2" not in set(identifiers["key"])  # P2, held by one record, is the excess value
    records, _ = identity.resolve_frames(tables, guardrails=identity.Guardrails(caps=(("phone", 1),)))
    ids = dict(zip(records["record_id"], records["one_id"], strict=True))
    assert ids["a"] == ids["a2"] == ids["b"] == ids["c"]  # member id M still joins them ...
    assert ids["c2"] != ids["a"]  # ... but c2 was linked only through P3, now dropped (P1 is older)
    con = engine.connect()
    needed = {name: tables[name] for name in ("memberships", "membership_devices", "wecom")}
    res = identity.resolve(ingest.register(con, needed), identity.Guardrails(caps=(("phone", 1),)))
    assert res.capped == 2  # P2 and P3, counted for the oneid stage's line


def test_a_repeated_input_row_does_not_count_as_another_record_holding_its_values():
    # P2 is held by one record listed twice: still the value held by fewest records, so the one capped
    # (counting rows, it would tie with P1 at two and win as the oldest).
    accounts = [account("a", days_ago=400, phone="P1", member_id="M"), account("a2", "app", days_ago=390, phone="P1"),
                account("b", "app", days_ago=500, phone="P2", member_id="M")]  # P2 is the oldest phone
    tables = world_tables(accounts=accounts + accounts[2:])
    _, identifiers = identity.resolve_frames(tables, guardrails=identity.Guardrails(caps=(("phone", 1),)))
    assert "phone:p1" in set(identifiers["key"]) and "phone:p2" not in set(identifiers["key"])


def test_capped_values_end_up_as_if_they_were_never_there(small_world):
    # Only the clusters holding a capped value are clustered again; the result must be that of a world
    # without those values at all.
    tables = read_tables(small_world)
    tight = identity.Guardrails(caps=(("dev", 1), ("unionid", 1), ("member", 1)))
    records, identifiers = identity.resolve_frames(tables, guardrails=tight)
    dropped = set(identity.resolve_frames(tables, guardrails=identity.Guardrails(caps=()))[1]["key"])
    dropped -= set(identifiers["key"])
    assert dropped
    m, d = tables["memberships"].copy(), tables["membership_devices"]
    for column, kind in (("unionid", "unionid"), ("member_id", "member")):
        m.loc[(kind + ":" + m[column].fillna("").str.strip()).isin(dropped), column] = None
    w = tables["wecom"].copy()
    w.loc[("unionid:" + w["unionid"].fillna("").str.strip()).isin(dropped), "unionid"] = None
    codes = d["id_type"].map(keyspace.TYPE_CODES).fillna("?")
    d = d[~("dev:" + codes + ":" + d["value_md5"].str.strip().str.lower()).isin(dropped)]
    without = identity.resolve_frames({**tables, "memberships": m, "wecom": w, "membership_devices": d},
                                      guardrails=identity.Guardrails(caps=()))[0]
    pd.testing.assert_frame_equal(records.sort_values(["table", "record_id"], ignore_index=True),
                                  without.sort_values(["table", "record_id"], ignore_index=True))


def test_the_device_cap_counts_each_id_type_separately():
    oaids = [hash_raw(pb.OAID, f"9a7f6a1e-1111-2222-3333-44445555666{i}") for i in range(3)]
    tables = world_tables(accounts=[account(f"a{i}", "app", days_ago=300 - i, phone="P1") for i in range(3)],
                          devices=[[f"a{i}", pb.OAID, oaids[i]] for i in range(3)] + [["a0", pb.IMEI, IMEI]])
    _, identifiers = identity.resolve_frames(tables, guardrails=identity.Guardrails(caps=(("dev", 2),)))
    kept = {k for k in identifiers["key"] if k.startswith("dev:")}
    assert kept == {f"dev:o:{oaids[0]}", f"dev:o:{oaids[1]}", f"dev:i:{IMEI}"}  # the latest OAID is the excess


def test_openid_links_within_its_channel_and_a_members_external_userid_links_the_friendship():
    tables = world_tables(
        accounts=[account("mp1", "miniprogram"), account("mp2", "miniprogram", days_ago=200),
                  account("ap", "app", days_ago=100), account("st", "store", member_id="M1")],
        wecom=[friendship("w", external="wm-9")])
    tables["memberships"]["openid"] = ["o1", "o1", "o1", None]
    tables["memberships"]["external_userid"] = [None, None, None, "wm-9"]
    ids = one_ids(tables)
    assert ids["mp1"] == ids["mp2"] != ids["ap"]  # an openid belongs to one app (channel)
    assert ids["st"] == ids["w"]
    assert ids["st"] != ids["mp1"]


def test_wecom_activity_and_store_tags_on_hand_built_people():
    tables = world_tables(
        accounts=[account("a", "miniprogram", phone="PA"), account("b", "store", days_ago=200, phone="PB"),
                  account("b-old", "store", days_ago=900, phone="PB"), account("d", "store", phone="PD"),
                  account("e", "tmall", member=False, buyer="E")],
        orders=[("d", "store", 10, 100), ("d", "store", 20, 100)],
        wecom=[friendship("wa", days_ago=200, phone="PA", external="wm-a")])
    tables["memberships"]["store_id"] = [None, "s3", "s2", "s1", None]
    tables["orders"]["store_id"] = ["s7", "s7"]  # a store missing from the store master
    tables["wecom"]["store_id"] = ["s2"]

    def event(type_, days_ago, external="wm-a", group=None):
        return {"event_id": f"e{type_}{days_ago}", "external_userid": external, "guide_id": "g1", "type": type_,
                "ts": CUTOFF - int(days_ago * DAY), "group_id": group}

    tables["wecom_interactions"] = pd.DataFrame([
        event("friend_add", 200), event("chat", 5), event("chat", 10), event("chat", 40),
        event("chat", -2),  # after the cutoff: not known yet
        event("chat", 1, external="0"), event("chat", 1, external="wm-unknown"),  # junk / nobody's: attach to no one
        event("group_join", 100, group="grp-a"), event("group_leave", 50, group="grp-a"),
        event("group_join", 20, group="grp-b")])
    opened = {"s1": ("Shanghai", 3000), "s2": ("Shanghai", 2000), "s3": ("Hangzhou", 2500), "s4": ("Hangzhou", 30),
              "s5": ("Hangzhou", 80), "s6": ("Hangzhou", -2)}
    tables["stores"] = pd.DataFrame([[s, "east", city, 30.0, 120.0, CUTOFF - days * DAY]
                                     for s, (city, days) in opened.items()],
                                    columns=["store_id", "region", "city", "lat", "lon", "opened_ts"])
    registered = ingest.register(engine.connect(), tables)
    _, _, res = profile_tables(registered, AS_OF, built_ts=1, tags=True)
    got = res.tags.to_pandas().set_index("one_id")
    ids = one_ids(tables)
    a, b, d, e = (got.loc[ids[r]] for r in ("a", "b", "d", "e"))
    assert a["wecom_chats_30d"] == 2 and a["days_since_last_chat"] == 5 and a["in_wecom_group"]  # left a, in b
    assert (a["best_store_id"], a["best_store_source"], a["best_store_city"]) == ("s2", "wecom", "Shanghai")
    assert not a["new_store_nearby"] and pd.isna(a["new_store_id"])
    # b: no orders, no WeCom: the latest registration store; a store opened 30 days ago in its city (s5
    # opened 80 days ago is not new; s6 opens after the cutoff and is not known yet).
    assert (b["best_store_id"], b["best_store_source"], b["best_store_region"]) == ("s3", "registration", "east")
    assert b["new_store_nearby"] and b["new_store_id"] == "s4"
    assert b["wecom_chats_30d"] == 0 and pd.isna(b["days_since_last_chat"]) and not b["in_wecom_group"]
    assert (d["best_store_id"], d["best_store_source"]) == ("s7", "orders") and pd.isna(d["best_store_city"])
    assert pd.isna(e["best_store_id"]) and pd.isna(e["best_store_source"]) and not e["new_store_nearby"]
    assert int(got["wecom_chats_30d"].sum()) == 2  # the junk and unknown external_userids attached to nobody ...
    assert tags.unattached_events(registered["wecom_interactions"], res.identifiers, CUTOFF) == 2  # ... and counted


def test_tags_without_the_optional_tables_are_empty_not_missing():
    tables = world_tables(accounts=[account("a", "store", phone="P")], wecom=[friendship("w", phone="P")])
    _, _, res = profile_tables(ingest.register(engine.connect(), tables), AS_OF, built_ts=1, tags=True)
    row = res.tags.to_pandas().iloc[0]
    assert row["wecom_chats_30d"] == 0 and not row["in_wecom_group"] and not row["new_store_nearby"]
    assert (row["best_store_id"], row["best_store_source"]) == ("s1", "wecom") and pd.isna(row["best_store_city"])


def test_a_yaml_segment_reaches_the_redis_profile_and_a_policy_audience_over_it_changes_the_decision(
        service, redis_url, tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    tables = world_tables(accounts=[account("a", "app", phone="PA"), account("b", "app", phone="PB")],
                          devices=[["a", pb.OAID, OAID], ["b", pb.IMEI, IMEI]],
                          orders=[("a", "app", 10, 500), ("a", "app", 40, 700), ("b", "app", 5, 900)])
    for name, frame in tables.items():
        frame.to_parquet(world / f"{name}.parquet", index=False)
    segments = tmp_path / "segments.yaml"
    segments.write_text("segments:\n  repeat_buyers: [[lifecycle, in, ['2', '3+']]]\n")
    summary = run_config(CdpConfig(input=world, as_of=AS_OF, redis_url=redis_url, grace_s=0,
                                   segments_file=segments, work_dir=tmp_path / "work"))
    assert summary["tags"]["segments"] == {"repeat_buyers": 1}
    assert list(pd.read_parquet(tmp_path / "work" / "tags.parquet").columns) == [
        *tags.tag_schema().names, *tags.score_tags(30), "segment_repeat_buyers"]
    oaid, imei = read_profiles(redis_url, "rta", [(pb.OAID, OAID), (pb.IMEI, IMEI)])
    stored = {pb.OAID: oaid, pb.IMEI: imei}
    assert list(stored[pb.OAID].segments) == ["member", "buyer", "vip", "repeat_buyers"]  # fixed ones first
    assert list(stored[pb.IMEI].segments) == ["member", "buyer"]

    policy = tmp_path / "policy.yaml"
    policy.write_text("cache_ttl_seconds: {bid: 3600, no_bid: 1800, degraded: 60}\nstrategies:\n"
                      "  - id: repeat\n    audience: {include_segments: [repeat_buyers]}\n    threshold: 0.0\n"
                      "    weight: {reference_score: 0.1}\n    fallback: {decision: NO_BID}\n")
    svc = service(policy_path=policy)
    svc.refresh()

    def decide(id_type, md5):
        resp = svc.stub.Decide(pb.DecideRequest(request_id="t", device_ids=[pb.DeviceId(type=id_type, value=md5)]),
                               timeout=5)
        return resp.internal.one_id, [(r.strategy_id, r.decision, r.reason) for r in resp.results]

    one_a, results_a = decide(pb.OAID, OAID)
    one_b, results_b = decide(pb.IMEI, IMEI)
    assert one_a == stored[pb.OAID].one_id and one_b == stored[pb.IMEI].one_id
    assert results_a == [("repeat", pb.BID, pb.SCORED)]
    assert results_b == [("repeat", pb.NO_BID, pb.AUDIENCE_EXCLUDED)]


def test_a_yaml_segment_may_not_reuse_a_built_in_segment_name(tmp_path):
    path = tmp_path / "segments.yaml"
    path.write_text("segments:\n  vip: [[m_score, '>=', 5]]\n")
    with pytest.raises(ValueError, match="segment vip: the name of a built-in segment"):
        tags.load_segments(path)


def test_every_input_column_and_tag_is_documented(small_world):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "cdp.md").read_text()
    inputs = doc.split("## Input and validation", 1)[1].split("\n## ", 1)[0]
    rows = {m[0]: set(re.findall(r"`([a-z_0-9]+)`", m[1]))
            for m in re.findall(r"^\| `([a-z_]+)`\\?\*? \| (.+) \|$", inputs, flags=re.M)}
    assert set(rows) == set(SCHEMAS)
    for table, schema in SCHEMAS.items():
        assert set(schema.names) <= rows[table], table
    tag_doc = doc.split("## Tags and segments", 1)[1].split("\n## ", 1)[0]
    _, _, res = profile_tables(ingest.read_parquet(engine.connect(), small_world), AS_OF, built_ts=1, tags=True)
    assert {c for c in res.tags.columns if f"`{c}`" not in tag_doc} == {"one_id"}


def test_a_world_from_before_stores_and_interactions_still_runs(small_world, tmp_path):
    for name in ("memberships", "membership_devices", "orders", "wecom"):
        frame = pd.read_parquet(small_world / f"{name}.parquet")
        frame.drop(columns=list(OPTIONAL_COLUMNS.get(name, ()))).to_parquet(tmp_path / f"{name}.parquet")
    assert set(read_tables(tmp_path)) == {"memberships", "membership_devices", "orders", "wecom"}
    tables = ingest.read_parquet(engine.connect(), tmp_path)
    assert tables["memberships"].columns == tuple(SCHEMAS["memberships"].names)
    assert tables["stores"].count().to_pyarrow().as_py() == 0
    _, _, res = profile_tables(tables, AS_OF, built_ts=1, tags=True)
    tagged = res.tags.to_pandas()
    assert tagged["order_count"].sum() > 0 and tagged["wecom_friend"].any()
    assert set(tagged["best_store_source"].dropna()) == {"orders", "wecom"}  # no registration stores in old worlds
    assert tagged["best_store_city"].isna().all() and not tagged["new_store_nearby"].any()
    assert tagged["wecom_chats_30d"].sum() == 0 and not tagged["in_wecom_group"].any()


def test_cdp_run_refuses_an_empty_extract_over_a_live_store(small_world, redis_url, tmp_path, capsys):
    """The review's incident: a devices file with only a header published 0 entries and deleted the live ones."""
    base = ["cdp", "run", "--redis-url", redis_url, "--namespace", "guard", "--grace-s", "0"]
    assert cli.main([*base, "--input", str(small_world)]) == 0
    live = json.loads(capsys.readouterr().out)["export"]
    empty = tmp_path / "world"
    empty.mkdir()
    for f in small_world.iterdir():
        (empty / f.name).symlink_to(f)
    (empty / "membership_devices.parquet").unlink()
    pd.read_parquet(small_world / "membership_devices.parquet").iloc[:0].to_parquet(
        empty / "membership_devices.parquet")
    client = redis.Redis.from_url(redis_url)
    keys = sorted(client.scan_iter(match="guard:*"))
    assert cli.main([*base, "--input", str(empty)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert f"no device entries while the live one has {live['keys_written']:,}" in err and "--allow-shrink" in err
    assert client.get("guard:gen") == f"1:{live['bucket_bits']}".encode()
    assert sorted(client.scan_iter(match="guard:*")) == keys
    assert cli.main([*base, "--input", str(empty), "--allow-shrink"]) == 0  # a deliberate emptying
    emptied = json.loads(capsys.readouterr().out)["export"]
    assert emptied["generation"] == 2 and emptied["keys_written"] == 0 and emptied["previous_entries"] > 0


def test_cdp_run_checks_redis_before_any_work(small_world, tmp_path, capsys):
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"  # nobody listens there
    assert cli.main(["cdp", "run", "--input", str(small_world), "--redis-url", url]) == 1
    err = capsys.readouterr().err
    assert "does not answer" in err and "before reading any input" in err and "[cdp] ingest" not in err
    assert "secret" not in err and "Traceback" not in err
    with pytest.raises(RedisUnavailable, match="does not answer"):  # a Cluster client fails with its own errors
        pipeline.preflight(f"redis+cluster://127.0.0.1:{free_port()}", "rta")


def test_cdp_run_says_the_live_export_and_its_layout_before_ingest(small_world, redis_url, capsys):
    base = ["cdp", "run", "--input", str(small_world), "--redis-url", redis_url, "--namespace", "pre"]
    assert cli.main(base) == 0
    assert "nothing live in namespace 'pre' yet" in capsys.readouterr().err
    client = redis.Redis.from_url(redis_url)
    before = client.config_get("hash-max-ziplist-value")["hash-max-ziplist-value"]
    client.config_set("hash-max-ziplist-value", 16)
    try:
        assert cli.main([*base, "--grace-s", "0"]) == 0
    finally:
        client.config_set("hash-max-ziplist-value", before)
    err = capsys.readouterr().err
    head = err.split("[cdp] ingest", 1)[0]  # said before the first stage
    assert "live generation 1 of namespace 'pre'" in head and "(recorded)" in head
    assert "WARNING" in head and "hash-max-listpack-value >=" in head


def test_a_cdp_settings_error_does_not_blame_the_environment(tmp_path):
    with pytest.raises(SettingsError) as err:
        load_config(input=tmp_path, export_mode="incremental")
    assert "RTA_" not in str(err.value) and "(command-line flags)" in str(err.value)
    assert "--state-dir" in str(err.value) and "Value error" not in str(err.value)
    config = tmp_path / "cdp.yaml"
    config.write_text("input: /x\nmax_shrink: 2\npredictive: {export_resolution: -1}\n")
    with pytest.raises(SettingsError) as err:
        load_config(config)
    text = str(err.value)
    assert f"(file {config}):" in text and "RTA_" not in text
    assert "max_shrink" in text and "predictive.export_resolution" in text
