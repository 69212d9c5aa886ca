"""Ad traffic in the 7 days after the cutoff and the conversions a hidden propensity drives.

The propensity is the ground truth the model tries to learn: a logit per person from recency,
frequency, WeCom friendship and membership plus noise the CDP cannot see, a small evening and iOS
lift per exposure, and a low base rate for devices that belong to no one the brand knows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rta.v1 import decision_pb2 as pb

DAY = 86400
WINDOW_DAYS = 7  # traffic spans WINDOW_DAYS after the cutoff; conversions follow within WINDOW_DAYS
_TZ_OFFSET = 8 * 3600
# Share of traffic per local hour (UTC+8): quiet at night, peaks in the evening.
_HOUR_WEIGHTS = np.array([3, 2, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6, 5, 5, 5, 5, 6, 7, 8, 9, 9, 7, 5], dtype=float)
UNKNOWN_LOGIT = -5.3


def make_traffic(rng: np.random.Generator, rows: int, unknown_share: float, n_known_devices: int,
                 cutoff: int) -> tuple[pd.DataFrame, int]:
    """Exposures (ts, device_key); unknown devices get keys after the known ones. Returns (traffic, n_unknown)."""
    n_unknown_rows = round(rows * unknown_share)
    n_unknown = max(1, n_unknown_rows // 2)  # an unknown device is seen about twice
    device = np.r_[rng.integers(0, n_known_devices, rows - n_unknown_rows),
                   n_known_devices + rng.integers(0, n_unknown, n_unknown_rows)]
    hour = rng.choice(24, rows, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    ts = cutoff + rng.integers(0, WINDOW_DAYS, rows) * DAY + hour * 3600 + rng.integers(0, 3600, rows)
    platform = np.where(rng.random(rows) < 0.6, pb.TENCENT, pb.OCEANENGINE).astype(np.int8)
    order = np.argsort(ts, kind="stable")
    traffic = pd.DataFrame({"exposure_id": np.arange(rows, dtype=np.int64), "ts": ts[order].astype(np.int64),
                            "device_key": device[order].astype(np.int64), "platform": platform})
    return traffic, n_unknown


def person_logit(rng: np.random.Generator, member: np.ndarray, wecom: np.ndarray, order_count: np.ndarray,
                 last_order_ts: np.ndarray, cutoff: int) -> np.ndarray:
    """The hidden per-person conversion logit as of the cutoff."""
    days = np.where(order_count > 0, (cutoff - last_order_ts) / DAY, np.inf)
    recency = np.select([days <= 30, days <= 90, days <= 180], [1.3, 0.9, 0.5], 0.0)
    return (-4.9 + 0.9 * member + 0.7 * wecom + 0.35 * np.log1p(order_count) + recency
            + rng.normal(0.0, 0.6, len(member)))


def exposure_propensity(rng: np.random.Generator, traffic: pd.DataFrame, device_person: np.ndarray,
                        device_os: np.ndarray, logit_by_person: np.ndarray) -> np.ndarray:
    """True conversion probability of every exposure."""
    device = traffic["device_key"].to_numpy()
    n_known = len(device_person)
    unknown_logit = UNKNOWN_LOGIT + rng.normal(0.0, 0.4, len(device_os) - n_known)
    known = device < n_known
    base = np.empty(len(device))
    base[known] = logit_by_person[device_person[device[known]]]
    base[~known] = unknown_logit[device[~known] - n_known]
    hour = ((traffic["ts"].to_numpy() + _TZ_OFFSET) // 3600) % 24
    logit = base + np.where(hour >= 19, 0.35, 0.0) + np.where(device_os[device] == pb.IOS, 0.15, 0.0)
    return 1.0 / (1.0 + np.exp(-logit))


def make_conversions(rng: np.random.Generator, traffic: pd.DataFrame, propensity: np.ndarray) -> pd.DataFrame:
    """A conversion follows an exposure with the exposure's propensity, within WINDOW_DAYS."""
    hit = np.nonzero(rng.random(len(traffic)) < propensity)[0]
    delay = np.minimum(rng.exponential(1.5 * DAY, len(hit)), WINDOW_DAYS * DAY - 1).astype(np.int64)
    conv = pd.DataFrame({
        "exposure_id": traffic["exposure_id"].to_numpy()[hit],
        "device_key": traffic["device_key"].to_numpy()[hit],
        "ts": traffic["ts"].to_numpy()[hit] + delay,
    }).sort_values(["ts", "exposure_id"], ignore_index=True)
    conv.insert(0, "conversion_id", np.arange(len(conv), dtype=np.int64))
    return conv
