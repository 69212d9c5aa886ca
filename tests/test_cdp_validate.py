"""Input validation: bad rows go to rejects.csv with file, row, field and reason; nothing is lost."""

from __future__ import annotations

import csv
import hashlib

import pandas as pd
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
    assert out["tables"]["memberships"] == {"in": 6, "out": 1, "rejected": 5}
    assert out["tables"]["wecom"] == {"in": 0, "out": 0, "rejected": 0}
    assert "13812345678" not in (tmp_path / "work" / "rejects.csv").read_text()  # no personal data copied
    clean = pd.read_parquet(tmp_path / "work" / "memberships.parquet")
    assert clean["record_id"].tolist() == ["r1"] and clean["created_ts"].dtype == "int64"


def test_with_a_salt_raw_phones_are_hashed_and_kept(world, tmp_path):
    out = validate(world, tmp_path / "work", phone_salt="s3cret")
    assert out["tables"]["memberships"] == {"in": 6, "out": 3, "rejected": 3}
    clean = pd.read_parquet(tmp_path / "work" / "memberships.parquet").set_index("record_id")
    expected = hashlib.md5(b"s3cret8613812345678").hexdigest()
    assert clean.loc["r5", "phone_hash"] == expected
    assert clean.loc["r6", "phone_hash"] == hashlib.md5(b"s3cret13812345678").hexdigest()
    assert bool(clean.loc["r6", "is_member"]) is True
    assert "13812345678" not in "".join(clean["phone_hash"].dropna())


def test_a_missing_table_is_a_clear_error(world, tmp_path):
    (world / "wecom.csv").unlink()
    with pytest.raises(InputError, match="missing wecom.parquet or wecom.csv"):
        validate(world, tmp_path / "work")
