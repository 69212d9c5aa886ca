"""Golden decision cases: tests/cases/*.json, each a request, the Redis state and the expected answer,
run through the real server, Redis and a model with hand-computable scores (tests/golden_model.py).

Case format: {"description", "store": [{"id_type", "md5", "profile" | "raw_text"}], "request",
"expect"}. Profile timestamps may be written "@now-120d". "expect" is a partial DecideResponse in
proto JSON (field names as in the .proto): dicts match on the keys given, lists element by element
with the same length, floats to 1e-4.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from google.protobuf import json_format

from rta.v1 import decision_pb2 as pb
from rta.v1 import profile_pb2
from tests.service_handle import make_live

CASES = sorted((Path(__file__).parent / "cases").glob("*.json"))


def _resolve_now(value, now: float):
    if isinstance(value, str) and value.startswith("@now-") and value.endswith("d"):
        return str(int(now - float(value[5:-1]) * 86400))
    if isinstance(value, dict):
        return {k: _resolve_now(v, now) for k, v in value.items()}
    return value


def assert_subset(expected, actual, path="response"):
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, want in expected.items():
            assert key in actual or want in ([], False, 0, ""), f"{path}.{key} missing in {actual}"
            assert_subset(want, actual.get(key, type(want)()), f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for i, (w, a) in enumerate(zip(expected, actual, strict=True)):
            assert_subset(w, a, f"{path}[{i}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert actual == pytest.approx(expected, abs=1e-4), f"{path}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("case_file", CASES, ids=[c.stem for c in CASES])
def test_golden_case(case_file, service):
    case = json.loads(case_file.read_text())
    svc = service()
    now = time.time()
    r = svc.redis
    make_live(r)  # an export is live, even if none of its keys is in the case
    svc.refresh()
    for entry in case["store"]:
        id_type = pb.IdType.Value(entry["id_type"])
        if "raw_text" in entry:
            svc.put_profile(id_type, entry["md5"], entry["raw_text"].encode())
        else:
            profile = json_format.ParseDict(_resolve_now(entry["profile"], now), profile_pb2.Profile())
            svc.put_profile(id_type, entry["md5"], profile)
    request = json_format.ParseDict(case["request"], pb.DecideRequest())
    response = svc.stub.Decide(request, timeout=5)
    actual = json_format.MessageToDict(response, preserving_proto_field_name=True)
    assert_subset(case["expect"], actual)
    assert response.processing_time_us > 0
