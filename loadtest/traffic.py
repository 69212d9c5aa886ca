"""Decide requests drawn from a simulated world's ad traffic (docs/specs/simulated-world.md), with the
world's own mix of known and unknown devices and ID types, plus a share of pings. Shared by the
demo, `rta bench` and the Locust file so that all three send the same kind of traffic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rta.v1 import decision_pb2 as pb


def load_requests(world_dir: str | Path, n: int | None = None, ping_share: float = 0.02,
                  seed: int = 1) -> tuple[list[pb.DecideRequest], list[str]]:
    """(requests, audience of each). Audiences are the simulator's ground truth as the CDP can see it:
    'member', 'lapsed', 'known_non_member'; 'unreachable' for a known person's device that no channel
    ever recorded (the service rightly sees it as unknown); 'unknown'; 'ping'."""
    world = Path(world_dir)
    traffic = pd.read_parquet(world / "traffic.parquet", columns=["exposure_id", "device_key", "platform"])
    devices = pd.read_parquet(world / "devices.parquet",
                              columns=["device_key", "os", "id_type", "hash_kind", "value", "caid_version", "doubtful"])
    truth = pd.read_parquet(world / "truth_devices.parquet", columns=["device_key", "audience", "reachable"])
    rng = np.random.default_rng(seed)
    if n is not None and n < len(traffic):
        traffic = traffic.iloc[np.sort(rng.choice(len(traffic), n, replace=False))]
    wanted = set(traffic["device_key"].tolist())
    ids_of: dict[int, list[pb.DeviceId]] = {}
    os_of: dict[int, int] = {}
    for key, os, t, h, v, cv, doubtful in devices[devices["device_key"].isin(wanted)].itertuples(index=False):
        ids_of.setdefault(key, []).append(pb.DeviceId(type=t, hash=h, value=v, caid_version=cv, doubtful=doubtful))
        os_of[key] = os
    seen = truth["audience"].where(truth["reachable"] | (truth["audience"] == "unknown"), "unreachable")
    audience_of = dict(zip(truth["device_key"].tolist(), seen.tolist(), strict=True))
    pings = rng.random(len(traffic)) < ping_share
    requests, audiences = [], []
    for (exposure_id, key, platform), ping in zip(traffic.itertuples(index=False), pings, strict=True):
        rid = f"sim-{exposure_id}"
        if ping:
            requests.append(pb.DecideRequest(request_id=rid, platform=platform, is_ping=True))
            audiences.append("ping")
            continue
        requests.append(pb.DecideRequest(request_id=rid, platform=platform, os=os_of.get(key, pb.OS_UNKNOWN),
                                         device_ids=ids_of.get(key, [])))
        audiences.append(audience_of.get(key, "unknown"))
    return requests, audiences
