"""Stage 3: profile + request -> feature vector. Training imports this module too, so the features a
model was trained on and the features it is served cannot drift apart. Pure functions.

A missing value is NaN (LightGBM and its ONNX export treat NaN as missing). The model artifact records
FEATURE_NAMES; model.py refuses an artifact whose list differs.
"""

from __future__ import annotations

import math

from rta.v1 import decision_pb2 as pb
from rta.v1 import profile_pb2

FEATURE_NAMES: tuple[str, ...] = (
    "known",  # a profile was found for the device
    "is_member",
    "order_count",
    "days_since_last_order",  # NaN when never ordered or unknown
    "days_since_first_seen",  # NaN when unknown
    "monetary_yuan",
    "wecom_friend",
    "channel_count",
    "device_count",
    "os_ios",  # 1 iOS, 0 Android/Harmony, NaN unknown
    "matched_id_type",  # rta.v1.IdType of the matched ID, 0 when none
    "hour_of_day",  # local hour (UTC+8) of the decision
)
N_FEATURES = len(FEATURE_NAMES)
NAN = math.nan
_DAY = 86400.0
_TZ_OFFSET = 8 * 3600  # China Standard Time, where the platforms' traffic is


def build_features(profile: profile_pb2.Profile | None, os: int, matched_id_type: int, now_s: float) -> list[float]:
    """One row of FEATURE_NAMES for a decision made at `now_s` (unix seconds)."""
    os_ios = 1.0 if os == pb.IOS else 0.0 if os in (pb.ANDROID, pb.HARMONY) else NAN
    hour = float(int((now_s + _TZ_OFFSET) // 3600) % 24)
    if profile is None:
        return [0.0, 0.0, 0.0, NAN, NAN, 0.0, 0.0, 0.0, 0.0, os_ios, 0.0, hour]
    last = profile.last_order_ts
    first = profile.first_seen_ts
    return [
        1.0,
        1.0 if profile.is_member else 0.0,
        float(profile.order_count),
        max(0.0, (now_s - last) / _DAY) if last else NAN,
        max(0.0, (now_s - first) / _DAY) if first else NAN,
        profile.monetary_fen / 100.0,
        1.0 if profile.wecom_friend else 0.0,
        float(profile.channel_count),
        float(profile.device_count),
        os_ios,
        float(matched_id_type),
        hour,
    ]


def profile_fields(profile: profile_pb2.Profile | None, now_s: float) -> dict[str, float | bool]:
    """The named values audience rules may test (policy.AUDIENCE_FIELDS), derived the same way."""
    if profile is None:
        return {"known": False}
    return {
        "known": True,
        "is_member": profile.is_member,
        "order_count": profile.order_count,
        "days_since_last_order": max(0.0, (now_s - profile.last_order_ts) / _DAY) if profile.last_order_ts else NAN,
        "days_since_first_seen": max(0.0, (now_s - profile.first_seen_ts) / _DAY) if profile.first_seen_ts else NAN,
        "monetary_yuan": profile.monetary_fen / 100.0,
        "wecom_friend": profile.wecom_friend,
        "channel_count": profile.channel_count,
    }
