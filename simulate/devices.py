"""Synthetic device identifiers as ad platforms send them (docs/specs/simulated-world.md#devices).

Android devices carry an IMEI (older devices only), an OAID (sometimes the all-zero value of a
device with ad tracking limited) and an ANDROID_ID (rarely empty); iOS devices carry an IDFA
(all-zero when the user did not opt in) and usually a CAID with its algorithm version.
MD5 values follow Tencent's rules through rta_service.ids.hash_raw, so the service hashes RAW
values exactly as the simulator did.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rta.v1 import decision_pb2 as pb
from rta_service.ids import hash_raw

ZERO_UUID = "00000000-0000-0000-0000-000000000000"
CAID_VERSIONS = ("20230330", "20220111")


def _hex(rng: np.random.Generator, n: int, width: int) -> list[str]:
    """n random lower-case hex strings of `width` characters (width a multiple of 13 or less)."""
    parts = [rng.integers(0, 16**13, n, dtype=np.int64) for _ in range(-(-width // 13))]
    return [("".join(f"{p:013x}" for p in row))[:width] for row in zip(*parts, strict=True)]


def _uuid(rng: np.random.Generator, n: int) -> list[str]:
    return [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in _hex(rng, n, 32)]


def _frame(device: np.ndarray, id_type: int, raw: list[str], caid_version: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({
        "device_key": device,
        "id_type": np.full(len(device), id_type, dtype=np.int8),
        "raw": raw,
        "caid_version": caid_version if caid_version is not None else [""] * len(device),
    })


def make_device_ids(rng: np.random.Generator, os: np.ndarray) -> pd.DataFrame:
    """One row per (device, ID) for devices 0..len(os)-1 with rta.v1.Os values `os`."""
    n = len(os)
    keys = np.arange(n, dtype=np.int64)
    android, ios = os == pb.ANDROID, os == pb.IOS
    old = android & (rng.random(n) < 0.3)
    frames = []

    imei = keys[old]
    frames.append(_frame(imei, pb.IMEI, [f"86{x:013d}" for x in rng.integers(0, 10**13, len(imei))]))

    has_oaid = android & (rng.random(n) < np.where(old, 0.4, 0.92))
    oaid = keys[has_oaid]
    raw = _uuid(rng, len(oaid))
    for i in np.nonzero(rng.random(len(oaid)) < 0.05)[0]:  # limited ad tracking
        raw[i] = ZERO_UUID
    frames.append(_frame(oaid, pb.OAID, raw))

    aid = keys[android & (rng.random(n) < 0.95)]
    raw = _hex(rng, len(aid), 16)
    for i in np.nonzero(rng.random(len(aid)) < 0.02)[0]:  # an SDK that read nothing
        raw[i] = ""
    frames.append(_frame(aid, pb.ANDROID_ID, raw))

    idfa = keys[ios]
    opted_in = rng.random(len(idfa)) < 0.35
    frames.append(_frame(idfa, pb.IDFA, [u.upper() if ok else ZERO_UUID for u, ok in
                                         zip(_uuid(rng, len(idfa)), opted_in, strict=True)]))

    caid = keys[ios & (rng.random(n) < 0.9)]
    versions = np.where(rng.random(len(caid)) < 0.7, CAID_VERSIONS[0], CAID_VERSIONS[1]).tolist()
    frames.append(_frame(caid, pb.CAID, _hex(rng, len(caid), 32), versions))

    ids = pd.concat(frames, ignore_index=True)
    ids["value_md5"] = [hash_raw(t, r) for t, r in zip(ids["id_type"].tolist(), ids["raw"].tolist(), strict=True)]
    raw_sent = (ids["id_type"] == pb.OAID).to_numpy() & (rng.random(len(ids)) < 0.3)
    ids["hash_kind"] = np.where(raw_sent, pb.RAW, pb.MD5).astype(np.int8)
    ids["value"] = np.where(raw_sent, ids["raw"], ids["value_md5"])
    ids["doubtful"] = rng.random(len(ids)) < 0.01  # the platform's own doubtful_ids_list
    ids["os"] = os[ids["device_key"].to_numpy()].astype(np.int8)
    ids = ids.sort_values(["device_key", "id_type"], kind="stable", ignore_index=True)
    return ids[["device_key", "os", "id_type", "hash_kind", "value", "value_md5", "raw", "caid_version", "doubtful"]]
