"""Unit tests of the pure stages: ids, bucketing, features, policy."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pydantic
import pytest

from rta.v1 import decision_pb2 as pb
from rta.v1 import profile_pb2
from rta_service import bucketing, features, keyspace
from rta_service import policy as pol
from rta_service.ids import IdNormalizer, NormalizedId, hash_raw

VECTORS = json.loads((Path(__file__).parent / "vectors" / "bucketing.json").read_text())


# -- ids ----------------------------------------------------------------------------------------
def test_platform_hash_rules():
    assert hash_raw(pb.IMEI, "86ABC") == hashlib.md5(b"86abc").hexdigest()
    assert hash_raw(pb.IDFA, "6d92078a-8246") == hashlib.md5(b"6D92078A-8246").hexdigest()
    assert hash_raw(pb.OAID, "AbC") == hashlib.md5(b"AbC").hexdigest()


def test_all_zero_idfa_hashes_to_the_doubtful_value():
    assert hash_raw(pb.IDFA, "00000000-0000-0000-0000-000000000000") == "9f89c84a559f573636a47ff8daed0d33"


def test_precedence_and_lower_casing():
    n = IdNormalizer()
    ids, ignored = n.normalize([pb.DeviceId(type=pb.ANDROID_ID, value="A" * 32),
                                pb.DeviceId(type=pb.IMEI, value="B" * 32),
                                pb.DeviceId(type=pb.OAID, value="c" * 32)])
    assert [(i.id_type, i.value, i.index) for i in ids] == [
        (pb.IMEI, "b" * 32, 1), (pb.OAID, "c" * 32, 2), (pb.ANDROID_ID, "a" * 32, 0)]
    assert ignored == []


def test_types_outside_the_precedence_are_not_looked_up():
    ids, ignored = IdNormalizer(("OAID",)).normalize([pb.DeviceId(type=pb.IMEI, value="b" * 32)])
    assert ids == [] and ignored == [(0, pb.UNSUPPORTED_ID_TYPE)]


def test_configured_extra_doubtful_value():
    bad = "e" * 32
    ids, ignored = IdNormalizer(extra_doubtful=(bad.upper(),)).normalize([pb.DeviceId(type=pb.OAID, value=bad)])
    assert ids == [] and ignored == [(0, pb.DOUBTFUL_ID)]


@pytest.mark.parametrize("did, reason", [
    (pb.DeviceId(type=pb.OAID, value=""), pb.MALFORMED_ID),
    (pb.DeviceId(type=pb.OAID, value="g" * 32), pb.MALFORMED_ID),
    (pb.DeviceId(type=pb.OAID, hash=pb.RAW, value="x" * 129), pb.MALFORMED_ID),
    (pb.DeviceId(type=pb.OAID, hash=pb.RAW, value="ü"), pb.MALFORMED_ID),
    (pb.DeviceId(type=pb.ID_TYPE_UNSPECIFIED, value="a" * 32), pb.UNSUPPORTED_ID_TYPE),
    (pb.DeviceId(type=pb.OAID, value="d41d8cd98f00b204e9800998ecf8427e"), pb.DOUBTFUL_ID),
    (pb.DeviceId(type=pb.IDFA, hash=pb.RAW, value="00000000-0000-0000-0000-000000000000"), pb.DOUBTFUL_ID),
])
def test_ignored_ids(did, reason):
    ids, ignored = IdNormalizer().normalize([did])
    assert ids == [] and ignored == [(0, reason)]


# -- bucketing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: f"{v['salt']}:{v['key']}")
def test_bucketing_vectors(vector):
    assert bucketing.bucket(vector["salt"], vector["key"]) == vector["bucket"]


def test_holdout_share_is_respected_over_many_keys():
    share = sum(bucketing.in_holdout(bucketing.bucket("s", f"p{i}"), 0.1) for i in range(20000)) / 20000
    assert 0.09 < share < 0.11


# -- features -----------------------------------------------------------------------------------
def test_features_of_a_known_profile():
    now = 1_800_000_000.0
    p = profile_pb2.Profile(is_member=True, order_count=3, last_order_ts=int(now - 10 * 86400),
                            monetary_fen=12345, wecom_friend=True, channel_count=2, device_count=3)
    row = dict(zip(features.FEATURE_NAMES, features.build_features(p, pb.IOS, pb.IDFA, now), strict=True))
    assert row["known"] == 1 and row["is_member"] == 1 and row["order_count"] == 3
    assert row["days_since_last_order"] == pytest.approx(10)
    assert math.isnan(row["days_since_first_seen"])
    assert row["monetary_yuan"] == pytest.approx(123.45)
    assert row["os_ios"] == 1 and row["matched_id_type"] == pb.IDFA
    assert row["hour_of_day"] == ((now + 8 * 3600) // 3600) % 24


def test_features_of_an_unknown_device():
    row = features.build_features(None, pb.OS_UNKNOWN, 0, 0.0)
    assert len(row) == features.N_FEATURES
    assert row[0] == 0 and math.isnan(row[features.FEATURE_NAMES.index("os_ios")])


# -- keyspace -----------------------------------------------------------------------------------
def test_profile_round_trip_and_version_check():
    raw = keyspace.encode_profile(profile_pb2.Profile(one_id="x"))
    assert keyspace.decode_profile(raw).version == keyspace.PROFILE_VERSION
    with pytest.raises(keyspace.BadRecord):
        keyspace.decode_profile(profile_pb2.Profile(version=keyspace.PROFILE_VERSION + 1).SerializeToString())
    with pytest.raises(keyspace.BadRecord):
        keyspace.decode_profile(b"\xff\xff\xff")


def test_keyspace_buckets_fields_and_pointer():
    md5 = "c0535cfbee4c09086c42fa39f120250f"
    live = keyspace.Live(3, 12)
    assert keyspace.locate("rta", live, pb.OAID, md5) == ("rta:3:c05", b"o" + bytes.fromhex(md5))
    assert keyspace.bucket_of(md5, 0) == 0 and keyspace.bucket_of(md5, 4) == 0xC
    assert keyspace.bucket_of(md5, 24) == 0xC0535C
    raw = keyspace.md5_bytes([md5, "f" * 32])
    assert keyspace.buckets_of(raw, 12).tolist() == [0xC05, 0xFFF]  # the vectorised form agrees
    assert keyspace.device_fields([pb.OAID, pb.IMEI], raw)[0].tobytes() == keyspace.device_field(pb.OAID, md5)
    with pytest.raises(ValueError):
        keyspace.md5_bytes(["C0535CFBEE4C09086C42FA39F120250F"])  # readers lower-case; writers must too
    assert keyspace.parse_pointer(keyspace.pointer_value(7, 14)) == (7, 14)
    assert keyspace.parse_pointer(None) == (0, 0)
    assert keyspace.parse_pointer(b"7") == (7, None)  # format 1: not read by this version
    for bad in (b"x", b"-1:3", b"3:25"):
        with pytest.raises(ValueError):
            keyspace.parse_pointer(bad)
    assert [keyspace.bucket_bits_for(n) for n in (0, 64, 65, 1_100_000)] == [0, 0, 1, 15]
    assert keyspace.is_generation_key("rta", b"rta:3:c05") == 3
    assert keyspace.is_generation_key("rta", b"rta:2:o:" + md5.encode()) == 2  # format 1 keys are cleaned up too
    for other in (b"rta:gen", b"rta:decisions", b"rtax:3:1"):
        assert keyspace.is_generation_key("rta", other) is None
    same_bucket = "c05" + "0" * 29
    ids = [NormalizedId(pb.OAID, md5, 0), NormalizedId(pb.IMEI, same_bucket, 1), NormalizedId(pb.IDFA, "f" * 32, 2)]
    groups = keyspace.group_by_bucket("rta", live, ids)  # the request path's inlined locate
    assert groups == {"rta:3:c05": [(0, keyspace.device_field(pb.OAID, md5)),
                                    (1, keyspace.device_field(pb.IMEI, same_bucket))],
                      "rta:3:fff": [(2, keyspace.device_field(pb.IDFA, "f" * 32))]}
    assert all(keyspace.locate("rta", live, i.id_type, i.value)[0] in groups for i in ids)
    assert keyspace.pack_hmgets({"k": [(0, b"ab")]}) == b"*3\r\n$5\r\nHMGET\r\n$1\r\nk\r\n$2\r\nab\r\n"


# -- policy -------------------------------------------------------------------------------------
STRATEGY = {"id": "s1", "weight": {"reference_score": 0.1}, "fallback": {"decision": "NO_BID"}}


def test_policy_reports_every_problem_at_once():
    bad = {"strategies": [
        {**STRATEGY, "id": "has space"},
        {**STRATEGY, "weight": {"reference_score": 0.1, "max": 9}},
        {**STRATEGY, "audience": {"where": [{"field": "shoe_size", "min": 40}]}},
        {**STRATEGY, "colour": "red"},
    ]}
    with pytest.raises(pydantic.ValidationError) as info:
        pol.Policy.model_validate(bad)
    locs = {e["loc"][:3] for e in info.value.errors()}
    assert ("strategies", 0, "id") in locs
    assert ("strategies", 1, "weight") in locs
    assert ("strategies", 2, "audience") in locs
    assert ("strategies", 3, "colour") in locs


def test_duplicate_strategy_ids_refused():
    with pytest.raises(pydantic.ValidationError, match="duplicate strategy ids"):
        pol.Policy.model_validate({"strategies": [STRATEGY, STRATEGY]})


def test_weight_factor_clamped_to_platform_range():
    w = pol.Weight(reference_score=0.1)
    assert pol.weight_factor(w, 0.0) == 0.2 and pol.weight_factor(w, 0.9) == 5.0
    assert pol.weight_factor(w, 0.15) == pytest.approx(1.5)


def test_audience_rules():
    aud = pol.Audience(devices="known", exclude_segments=("vip",),
                       where=(pol.Condition(field="days_since_last_order", min=90, max=180),))
    fields = {"known": True, "days_since_last_order": 120.0}
    assert pol.audience_admits(aud, fields, {"member"})
    assert not pol.audience_admits(aud, fields, {"vip"})
    assert not pol.audience_admits(aud, {"known": True, "days_since_last_order": 60.0}, set())
    assert not pol.audience_admits(aud, {"known": True, "days_since_last_order": math.nan}, set())
    assert not pol.audience_admits(aud, {"known": False}, set())
    assert pol.audience_admits(pol.Audience(devices="unknown"), {"known": False}, set())


def test_shipped_policy_is_valid():
    from rta_service.settings import DEFAULTS_DIR

    assert {s.id for s in pol.load_policy(DEFAULTS_DIR / "policy.yaml").strategies} == {"acq_new", "winback_lapsed"}


# -- core ---------------------------------------------------------------------------------------
def test_a_call_out_of_time_does_not_hold_back_its_batch(redis_url, golden_model_path):
    """Two calls in one micro-batch: the one with no time left gets DEADLINE_EXCEEDED fallbacks, the
    other is looked up and scored."""
    import asyncio
    import time

    import redis

    from rta_service.core import DecisionCore
    from rta_service.model import OnnxModel
    from rta_service.store import ProfileStore
    from tests.conftest import TEST_POLICY
    from tests.service_handle import make_live

    make_live(redis.Redis.from_url(redis_url))

    async def run():
        store = ProfileStore(redis_url, "rta")
        await store.refresh()
        core = DecisionCore(store, OnnxModel.load(golden_model_path), pol.load_policy(TEST_POLICY), IdNormalizer(),
                            deadline_margin_s=0.002, min_lookup_s=0.0005)
        req = pb.DecideRequest(request_id="x", device_ids=[pb.DeviceId(type=pb.OAID, value="c" * 32)])
        now = time.monotonic()
        out = await core.decide_batch([req, req], [now + 0.001, now + 1.0])
        await store.close()
        return out

    late, fine = asyncio.run(run())
    assert late.internal.degraded and late.internal.reasons[0] == pb.DEADLINE_EXCEEDED
    assert not fine.internal.degraded and fine.internal.reasons[0] == pb.SCORED


def test_golden_model_scores_are_the_documented_formula(golden_model_path):
    """The golden cases' expected numbers are worked out by hand from golden_model.expected_score;
    the ONNX graph must compute exactly that, NaN inputs included."""
    import numpy as np

    from rta_service.model import OnnxModel
    from tests import golden_model

    now = 1_800_000_000.0
    member = profile_pb2.Profile(is_member=True, order_count=4, wecom_friend=True, last_order_ts=int(now - 120 * 86400))
    rows = [features.build_features(None, pb.IOS, 0, now), features.build_features(member, pb.ANDROID, pb.OAID, now)]
    scores = OnnxModel.load(golden_model_path).predict(np.asarray(rows, dtype=np.float32))
    assert scores.tolist() == pytest.approx([golden_model.expected_score(r) for r in rows], abs=1e-6)
    assert scores[0] == pytest.approx(1 / (1 + math.exp(3)), abs=1e-6)  # sigmoid(BIAS) for an unknown device
