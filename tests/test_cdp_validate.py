"""Input validation: bad rows go to rejects.csv with file, row, field and reason; nothing is lost."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from cdp.validate import CHANNELS, InputError, validate

MEMBERS_CSV = """record_id,channel,created_ts,is_member,member_id,phone_hash,unionid,buyer_id
r1,store,1700000000,true,M1,0123456789abcdef0123456789abcdef,,
r2,moon,1700000000,true,M2,,,
r3,app,yesterday,false,,,,
,app,1700000000,false,,,,
r5,tmall,1700000000,false,,+8613812345678,,tb_1
r6,jd,1700000000,1,, 13812345678 ,,jd_1
"""
EMPTY = {
    "membership_devices.csv": "record_id,id_type,value_md5\nr1,2,0123456789abcdef0123456789abcdef\nr1,99,x\n",
    "orders.csv": "order_id,record_id,channel,store_id,ts,amount_fen,category\no1,r1,store,s1,1700000001,-5,tops\n",
    "wecom.csv": "friendship_id,external_userid,unionid,phone_hash,guide_id,store_id,added_ts,removed_ts\n",
}


@pytest.fixture
def world(tmp_path):
    (tmp_path / "memberships.csv").write_text(MEMBERS_CSV)
    for name, text in EMPTY.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def rejects(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bad_rows_are_rejected_with_file_row_field_and_reason(world, tmp_path):
    out = validate(world, tmp_path / "work")
    got = {(r["file"].rsplit("/", 1)[-1], int(r["row"]), r["field"]): r["reason"] for r in rejects(out["rejects_file"])}
    assert got == {
        ("memberships.csv", 2, "channel"): f"unknown channel (expected one of {', '.join(CHANNELS)})",
        ("memberships.csv", 3, "created_ts"): "not an integer",
        ("memberships.csv", 4, "record_id"): "required",
        ("memberships.csv", 5, "phone_hash"): "raw phone number refused; give phone_salt to have it salted and hashed",
        ("memberships.csv", 6, "phone_hash"): "raw phone number refused; give phone_salt to have it salted and hashed",
        ("membership_devices.csv", 2, "id_type"): "unknown device id type",
        ("orders.csv", 1, "amount_fen"): "must be >= 0",
    }
    for table, c in out["tables"].items():
        assert c["in"] == c["out"] + c["rejected"], table
    # rows of a table in file order, whichever field failed (fields are checked one column at a time)
    listed = [(r["file"], int(r["row"])) for r in rejects(out["rejects_file"]) if r["file"].endswith("memberships.csv")]
    assert listed == sorted(listed)
    assert out["tables"]["memberships"] == {"in": 6, "out": 1, "rejected": 5}
    assert out["tables"]["wecom"] == {"in": 0, "out": 0, "rejected": 0}
    assert "13812345678" not in (tmp_path / "work" / "rejects.csv").read_text()  # no personal data copied
    clean = pd.read_parquet(tmp_path / "work" / "memberships.parquet")
    assert clean["record_id"].tolist() == ["r1"] and clean["created_ts"].dtype == "int64"


def test_with_a_salt_raw_phones_are_hashed_and_kept(world, tmp_path):
    out = validate(world, tmp_path / "work", phone_salt="s3cret")
    assert out["tables"]["memberships"] == {"in": 6, "out": 3, "rejected": 3}
    clean = pd.read_parquet(tmp_path / "work" / "memberships.parquet").set_index("record_id")
    expected = hashlib.md5(b"s3cret13812345678").hexdigest()  # +86 dropped: the same number as r6's
    assert clean.loc["r5", "phone_hash"] == expected
    assert clean.loc["r6", "phone_hash"] == expected
    assert bool(clean.loc["r6", "is_member"]) is True
    assert "13812345678" not in "".join(clean["phone_hash"].dropna())


def test_a_missing_table_is_a_clear_error(world, tmp_path):
    (world / "wecom.csv").unlink()
    with pytest.raises(InputError, match="missing wecom.parquet or wecom.csv"):
        validate(world, tmp_path / "work")


def test_older_inputs_without_the_optional_tables_and_columns_still_validate(world, tmp_path):
    out = validate(world, tmp_path / "work")
    assert sorted(out["absent_tables"]) == ["stores", "wecom_interactions"]
    assert out["absent_columns"] == {"memberships": ["openid", "external_userid", "store_id"]}
    clean = pd.read_parquet(tmp_path / "work" / "memberships.parquet")
    assert clean[["openid", "external_userid", "store_id"]].isna().all().all()
    for table in ("stores", "wecom_interactions"):
        assert out["tables"][table] == {"in": 0, "out": 0, "rejected": 0}
        assert len(pd.read_parquet(tmp_path / "work" / f"{table}.parquet")) == 0
    assert out["warnings"] == {}  # without a store master, store ids are not checked


def test_a_misspelt_column_is_an_error_not_a_column_of_nulls(world, tmp_path):
    (world / "orders.csv").write_text("order_id,record_id,channel,store,ts,amount_fen,category\n")
    with pytest.raises(InputError, match="orders.csv: missing column\\(s\\) store_id"):
        validate(world, tmp_path / "work")


STORES_CSV = """store_id,region,city,lat,lon,opened_ts
s1,east,Shanghai,31.2,121.5,1600000000
s2,east,Shanghai,91.0,121.5,1600000000
s3,north,Beijing,39.9,north,1600000000
s1,east,Hangzhou,30.3,120.1,1600000000
s4,west,,30.6,104.1,1600000000
s5,west,Chengdu,,,1700000000
"""
INTERACTIONS_CSV = """event_id,external_userid,guide_id,type,ts,group_id
e1,wm-1,g1,chat,1700000000,
e2,wm-1,g1,poke,1700000000,
e3,wm-1,g1,group_join,1700000000,grp-1
e4,,g1,chat,1700000000,
"""


def test_stores_and_interactions_are_validated_and_unknown_store_references_kept_with_a_warning(world, tmp_path):
    (world / "stores.csv").write_text(STORES_CSV)
    (world / "wecom_interactions.csv").write_text(INTERACTIONS_CSV)
    (world / "orders.csv").write_text("order_id,record_id,channel,store_id,ts,amount_fen,category\n"
                                      "o1,r1,store,s1,1700000001,100,tops\no2,r1,store,s9,1700000002,100,tops\n"
                                      "o3,r1,tmall,,1700000003,100,tops\no4,r1,store,s2,1700000004,100,tops\n")
    out = validate(world, tmp_path / "work")
    got = {(r["file"].rsplit("/", 1)[-1], int(r["row"]), r["field"]): r["reason"] for r in rejects(out["rejects_file"])}
    assert {k: v for k, v in got.items() if k[0] in ("stores.csv", "wecom_interactions.csv")} == {
        ("stores.csv", 2, "lat"): "out of range [-90, 90]",
        ("stores.csv", 3, "lon"): "not a number",
        ("stores.csv", 4, "store_id"): "duplicate store_id (first at row 1)",
        ("stores.csv", 5, "city"): "required",
        ("wecom_interactions.csv", 2, "type"):
            "unknown type (expected one of friend_add, friend_remove, chat, group_join, group_leave)",
        ("wecom_interactions.csv", 4, "external_userid"): "required",
    }
    assert out["tables"]["stores"] == {"in": 6, "out": 2, "rejected": 4}
    assert out["tables"]["wecom_interactions"] == {"in": 4, "out": 2, "rejected": 2}
    stores = pd.read_parquet(tmp_path / "work" / "stores.parquet")
    assert stores["store_id"].tolist() == ["s1", "s5"] and stores["lat"].tolist()[0] == 31.2
    # An order at a store missing from the master (s9) or rejected from it (s2) is kept and listed.
    assert out["tables"]["orders"] == {"in": 4, "out": 4, "rejected": 0}
    assert out["warnings"] == {"orders.store_id": 2}
    assert [(int(r["row"]), r["field"]) for r in rejects(out["warnings_file"])] == [(2, "store_id"), (4, "store_id")]


def test_timestamps_in_milliseconds_or_out_of_range_are_rejected_not_silently_dropped(world, tmp_path):
    (world / "orders.csv").write_text("order_id,record_id,channel,store_id,ts,amount_fen,category\n"
                                      "o1,r1,store,s1,1700000001000,100,tops\no2,r1,store,s1,1700000002,100,tops\n"
                                      "o3,r1,store,s1,86400,100,tops\n")
    (world / "wecom.csv").write_text("friendship_id,external_userid,unionid,phone_hash,guide_id,store_id,added_ts,"
                                     "removed_ts\nf1,wm1,,,g1,s1,1700000000,0\nf2,wm2,,,g1,s1,1700000000,1700000000000\n"
                                     "f3,wm3,,,g1,s1,1700000000,1710000000\n")
    (world / "stores.csv").write_text("store_id,region,city,lat,lon,opened_ts\ns1,east,Shanghai,,,631152000\n"
                                      "s2,east,Shanghai,,,1600000000000\n")
    out = validate(world, tmp_path / "work")
    got = {(r["file"].rsplit("/", 1)[-1], int(r["row"]), r["field"]): r["reason"] for r in rejects(out["rejects_file"])}
    assert got[("orders.csv", 1, "ts")] == "not Unix seconds between 2000-01-01 and 2100-01-01 (milliseconds?)"
    assert got[("orders.csv", 3, "ts")] == "not Unix seconds between 2000-01-01 and 2100-01-01 (milliseconds?)"
    assert got[("wecom.csv", 2, "removed_ts")] == \
        "0 (still friends) or not Unix seconds between 2000-01-01 and 2100-01-01 (milliseconds?)"
    assert got[("stores.csv", 2, "opened_ts")] == "not Unix seconds between 1970-01-01 and 2100-01-01 (milliseconds?)"
    assert out["tables"]["orders"] == {"in": 3, "out": 1, "rejected": 2}
    assert out["tables"]["wecom"] == {"in": 3, "out": 2, "rejected": 1}  # removed_ts 0 = still friends
    assert out["tables"]["stores"] == {"in": 2, "out": 1, "rejected": 1}  # a store opened in 1990 is fine


def test_csv_rows_with_a_wrong_number_of_fields_are_rejected_by_row_and_later_rows_keep_their_numbers(world, tmp_path):
    (world / "orders.csv").write_text("order_id,record_id,channel,store_id,ts,amount_fen,category\n"
                                      "o1,r1,store,s1,1700000001,100,tops\n"
                                      "obad9,r1,store,s1,1700000002,100,tops,13812345678\n"
                                      "o3,r1,store,s1,1700000003,-1,tops\n"
                                      "o4,r1,store\n"
                                      "o5,r1,store,s1,1700000005,100,tops\n")
    out = validate(world, tmp_path / "work")
    got = [(int(r["row"]), r["field"], r["reason"]) for r in rejects(out["rejects_file"])
           if r["file"].endswith("orders.csv")]
    assert got == [(2, "", "wrong number of fields (expected 7, got 8)"), (3, "amount_fen", "must be >= 0"),
                   (4, "", "wrong number of fields (expected 7, got 3)")]
    assert out["tables"]["orders"] == {"in": 5, "out": 2, "rejected": 3}
    assert "13812345678" not in (tmp_path / "work" / "rejects.csv").read_text()
    assert pd.read_parquet(tmp_path / "work" / "orders.parquet")["order_id"].tolist() == ["o1", "o5"]


def test_a_file_that_is_not_utf8_or_empty_is_an_input_error_naming_it_without_its_values(world, tmp_path):
    (world / "orders.csv").write_bytes("order_id,record_id,channel,store_id,ts,amount_fen,category\n"
                                       "o1,r1,store,s1,1700000001,100,上衣\n".encode("gbk"))
    with pytest.raises(InputError) as error:
        validate(world, tmp_path / "work")
    assert str(error.value) == f"{world / 'orders.csv'}: row 1, field category is not UTF-8 text " \
                               "(save the file as UTF-8; GBK is not read)"
    (world / "orders.csv").write_bytes("order_id,record_id,channel,store_id,ts,amount_fen,类别\n"
                                       "o1,r1,store,s1,1700000001,100,tops\n".encode("gbk"))
    with pytest.raises(InputError) as error:  # a header in GBK: decoded as the file is opened
        validate(world, tmp_path / "work")
    assert str(error.value) == f"{world / 'orders.csv'}: the header row is not UTF-8 text " \
                               "(save the file as UTF-8; GBK is not read)"
    (world / "orders.csv").write_text("")
    with pytest.raises(InputError, match="orders.csv: empty file"):
        validate(world, tmp_path / "work")


def test_csv_and_parquet_of_the_same_world_validate_alike(tmp_path):
    from simulate.world import simulate  # noqa: PLC0415

    simulate(tmp_path / "pq", people=3000, seed=3)
    (tmp_path / "csv").mkdir()
    for table in ("memberships", "membership_devices", "orders", "wecom", "wecom_interactions", "stores"):
        frame = pq.read_table(tmp_path / "pq" / f"{table}.parquet")
        pacsv.write_csv(frame, tmp_path / "csv" / f"{table}.csv")
    from_parquet = validate(tmp_path / "pq", tmp_path / "w1")
    from_csv = validate(tmp_path / "csv", tmp_path / "w2")
    assert from_csv["tables"] == from_parquet["tables"]
    assert from_csv["warnings"] == from_parquet["warnings"]
    wecom = pq.read_table(tmp_path / "w2" / "wecom.parquet")
    assert wecom.equals(pq.read_table(tmp_path / "w1" / "wecom.parquet"))  # "null", "" and nulls as they were


def test_repeated_keys_are_rejected_after_their_first_row_and_the_first_kept(world, tmp_path):
    (world / "orders.csv").write_text("order_id,record_id,channel,store_id,ts,amount_fen,category\n"
                                      "o1,r1,store,s9,1700000001,100,tops\no2,r1,store,,1700000002,100,tops\n"
                                      "o1,r1,store,s9,1700000001,100,tops\no3,r1,store,,1700000003,-1,tops\n"
                                      "o1,r1,store,,1700000009,300,tops\no2,r1,app,,1700000002,100,tops\n")
    (world / "membership_devices.csv").write_text("record_id,id_type,value_md5\nr1,2,aa\nr1,2,bb\nr1,2,AA\n"
                                                  "r1,3,aa\n")
    (world / "stores.csv").write_text("store_id,region,city,lat,lon,opened_ts\ns1,east,Shanghai,,,1600000000\n")
    out = validate(world, tmp_path / "work")
    orders = [(int(r["row"]), r["field"], r["reason"]) for r in rejects(out["rejects_file"])
              if r["file"].endswith("orders.csv")]
    assert orders == [(3, "order_id", "duplicate order_id (first at row 1)"), (4, "amount_fen", "must be >= 0"),
                      (5, "order_id", "duplicate order_id (first at row 1)"),
                      (6, "order_id", "duplicate order_id (first at row 2)")]
    assert out["tables"]["orders"] == {"in": 6, "out": 2, "rejected": 4}
    clean = pd.read_parquet(tmp_path / "work" / "orders.parquet")
    assert clean["order_id"].tolist() == ["o1", "o2"] and clean["amount_fen"].tolist() == [100, 100]
    # the repeat of o1 at the unknown store s9 is rejected, so only its first row is kept with a warning
    assert out["warnings"] == {"orders.store_id": 1}
    assert [int(r["row"]) for r in rejects(out["warnings_file"])] == [1]
    # device IDs: the same (record, type, value) twice, after value_md5 is lower-cased, is one fact
    devices = [(int(r["row"]), r["field"], r["reason"]) for r in rejects(out["rejects_file"])
               if r["file"].endswith("membership_devices.csv")]
    assert devices == [(3, "record_id+id_type+value_md5",
                        "duplicate row (same record_id, id_type, value_md5) (first at row 1)")]
    assert out["tables"]["membership_devices"] == {"in": 4, "out": 3, "rejected": 1}
    for table, c in out["tables"].items():
        assert c["in"] == c["out"] + c["rejected"], table


def test_without_a_work_dir_rejects_and_warnings_are_moved_where_they_outlive_the_run(world, tmp_path):
    import shutil  # noqa: PLC0415

    from cdp.pipeline import _keep_rejects  # noqa: PLC0415

    (world / "stores.csv").write_text("store_id,region,city,lat,lon,opened_ts\ns2,east,Shanghai,,,1600000000\n")
    (world / "orders.csv").write_text(EMPTY["orders.csv"].replace(",-5,", ",500,"))  # kept, at an unknown store
    checked = _keep_rejects(validate(world, tmp_path / "scratch"))
    shutil.rmtree(tmp_path / "scratch")  # what the end of a run without work_dir does
    try:
        assert "rta-cdp-rejects-" in checked["rejects_file"]
        assert len(rejects(checked["rejects_file"])) == 6 and len(rejects(checked["warnings_file"])) == 1
    finally:
        shutil.rmtree(Path(checked["rejects_file"]).parent)
    (world / "memberships.csv").write_text(MEMBERS_CSV.splitlines()[0] + "\n" + MEMBERS_CSV.splitlines()[1] + "\n")
    (world / "stores.csv").unlink()
    for name in ("membership_devices.csv", "orders.csv"):
        (world / name).write_text(EMPTY[name].splitlines()[0] + "\n")
    clean = _keep_rejects(validate(world, tmp_path / "scratch2"))
    assert clean["rejects_file"] is None and clean["warnings_file"] is None  # nothing to keep: no path printed


@pytest.mark.parametrize("written", ["13812345678", "+8613812345678", "008613812345678", "8613812345678",
                                     "+86 138 1234 5678", "138-1234-5678", " +86-138-1234-5678 ", "(+86) 13812345678"])
def test_a_chinese_mobile_number_hashes_alike_however_it_is_written(world, tmp_path, written):
    (world / "memberships.csv").write_text(MEMBERS_CSV.splitlines()[0] + f"\nr1,store,1700000000,true,,{written},,\n")
    out = validate(world, tmp_path / "work", phone_salt="s3cret")
    assert out["tables"]["memberships"] == {"in": 1, "out": 1, "rejected": 0}
    hashed = pd.read_parquet(tmp_path / "work" / "memberships.parquet")["phone_hash"].tolist()
    assert hashed == [hashlib.md5(b"s3cret13812345678").hexdigest()]
    # without a salt every one of these is a raw number and refused
    out = validate(world, tmp_path / "unsalted")
    assert out["tables"]["memberships"] == {"in": 1, "out": 0, "rejected": 1}


def test_a_foreign_number_keeps_its_country_code(world, tmp_path):
    header = MEMBERS_CSV.splitlines()[0]
    (world / "memberships.csv").write_text(header + "\nr1,store,1700000000,true,,+44 7911 123456,,\n")
    validate(world, tmp_path / "work", phone_salt="s")
    hashed = pd.read_parquet(tmp_path / "work" / "memberships.parquet")["phone_hash"].tolist()
    assert hashed == [hashlib.md5(b"s447911123456").hexdigest()]


def test_a_missing_input_directory_and_a_table_given_twice_are_clear_errors(world, tmp_path):
    with pytest.raises(InputError, match="nowhere: no such directory"):
        validate(tmp_path / "nowhere", tmp_path / "work")
    pq.write_table(pacsv.read_csv(world / "orders.csv"), world / "orders.parquet")
    with pytest.raises(InputError, match="both orders.parquet and orders.csv; keep only the one to read"):
        validate(world, tmp_path / "work")


def test_a_repeated_record_id_is_rejected_and_a_corrupt_parquet_file_is_a_clear_error(world, tmp_path):
    lines = MEMBERS_CSV.splitlines()
    (world / "memberships.csv").write_text("\n".join([lines[0], lines[1], lines[1].replace("M1", "M9")]) + "\n")
    out = validate(world, tmp_path / "work")
    assert [(int(r["row"]), r["field"], r["reason"]) for r in rejects(out["rejects_file"])
            if r["file"].endswith("memberships.csv")] == [(2, "record_id", "duplicate record_id (first at row 1)")]
    assert pd.read_parquet(tmp_path / "work" / "memberships.parquet")["member_id"].tolist() == ["M1"]
    (world / "orders.csv").unlink()
    (world / "orders.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="orders.parquet: not a readable Parquet file"):
        validate(world, tmp_path / "work2")
