"""A synthetic private-domain world as Parquet files: what a brand's CDP and an ad platform would hold.

Layout and column meanings: docs/specs/simulated-world.md. Deterministic for (seed, as_of, sizes).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cdp.identity import str_isin
from cdp.profiles import cutoff_ts
from rta.v1 import decision_pb2 as pb
from rta_service.ids import BUILTIN_DOUBTFUL

from . import history
from . import traffic as traffic_mod
from .devices import make_device_ids

DAY = 86400
META_FILE = "meta.json"


def _person_devices(rng: np.random.Generator, people: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(person, rank within person, is_ios) of each person's 1-3 devices."""
    n_dev = rng.choice([1, 2, 3], people, p=[0.55, 0.3, 0.15])
    person = np.repeat(np.arange(people), n_dev)
    rank = np.arange(len(person)) - np.repeat(np.cumsum(n_dev) - n_dev, n_dev)
    primary_ios = rng.random(people) < 0.35
    ios = np.where(rng.random(len(person)) < 0.85, primary_ios[person], ~primary_ios[person])
    return person, rank, ios


def _audience(member: np.ndarray, order_count: np.ndarray, last_order_ts: np.ndarray, cutoff: int) -> np.ndarray:
    days = (cutoff - last_order_ts) / DAY
    lapsed = (order_count > 0) & (days >= 90) & (days < 180)
    return np.where(lapsed, "lapsed", np.where(member, "member", "known_non_member")).astype(object)


def simulate(out_dir: Path, people: int = 20000, seed: int = 7, as_of: dt.date | None = None,
             unknown_share: float = 0.7, traffic: int | None = None) -> dict:
    """Write the world to out_dir and return row counts. traffic defaults to 5 exposures per person."""
    if people < 1 or not 0.0 <= unknown_share < 1.0 or (traffic is not None and traffic < 1):
        raise ValueError("people >= 1, 0 <= unknown_share < 1 and traffic >= 1 are required")
    as_of = as_of or dt.datetime.now(dt.UTC).date()
    cutoff = cutoff_ts(as_of)
    rows = traffic if traffic is not None else 5 * people
    rng = np.random.default_rng(seed)

    ppl = history.make_people(rng, people, cutoff)
    device_person, device_rank, device_ios = _person_devices(rng, people)
    exposures, n_unknown = traffic_mod.make_traffic(rng, rows, unknown_share, len(device_person), cutoff)
    is_ios = np.r_[device_ios, rng.random(n_unknown) < 0.3]
    os = np.where(is_ios, pb.IOS, pb.ANDROID).astype(np.int8)
    devices = make_device_ids(rng, os)
    accounts = history.make_accounts(rng, ppl)
    account_devices = history.make_account_devices(rng, accounts, devices, device_person, device_rank)
    orders = history.make_orders(rng, ppl, accounts)
    member = np.zeros(people, dtype=bool)
    member[accounts.loc[accounts["is_member"], "person"].to_numpy()] = True
    wecom = history.make_wecom(rng, ppl, member, cutoff)

    order_count = np.bincount(orders["person"], minlength=people)
    last_order = np.zeros(people, dtype=np.int64)
    np.maximum.at(last_order, orders["person"].to_numpy(), orders["ts"].to_numpy())
    friend = np.zeros(people, dtype=bool)
    friend[wecom.loc[wecom["removed_ts"] == 0, "person"].to_numpy()] = True
    logit = traffic_mod.person_logit(rng, member, friend, order_count, last_order, cutoff)
    propensity = traffic_mod.exposure_propensity(rng, exposures, device_person, os, logit)
    conversions = traffic_mod.make_conversions(rng, exposures, propensity)

    # Stores, WeCom interactions and the newer membership columns draw from their own stream, so the
    # tables above stay as they were before these were added.
    extra = np.random.default_rng([seed, 1])
    stores = history.make_stores(extra, history.store_count(people), cutoff)
    accounts = history.add_member_wechat_wecom(extra, accounts, ppl, wecom)
    interactions = history.make_wecom_interactions(extra, ppl, wecom, cutoff)

    audience = _audience(member, order_count, last_order, cutoff)
    owner = np.r_[device_person, np.full(n_unknown, -1)]
    known_md5 = account_devices.loc[~account_devices["value_md5"].isin(BUILTIN_DOUBTFUL), "value_md5"]
    reachable_keys = devices.loc[str_isin(devices["value_md5"], known_md5), "device_key"].unique()
    tables = {
        "memberships": accounts.drop(columns=["person", "channel_code"]),
        "membership_devices": account_devices,
        "orders": orders.drop(columns=["person"]),
        "wecom": wecom.drop(columns=["person"]),
        "wecom_interactions": interactions,
        "stores": stores,
        "devices": devices,
        "traffic": exposures,
        "conversions": conversions,
        "truth_people": pd.DataFrame({
            "truth_person": ppl["person"], "audience": audience, "is_member": member,
            "order_count": order_count, "last_order_ts": last_order, "wecom_friend": friend, "logit": logit}),
        "truth_memberships": pd.DataFrame({"record_id": accounts["record_id"], "truth_person": accounts["person"]}),
        "truth_wecom": pd.DataFrame({"friendship_id": wecom["friendship_id"], "truth_person": wecom["person"]}),
        "truth_devices": pd.DataFrame({
            "device_key": np.arange(len(os), dtype=np.int64), "truth_person": owner, "os": os,
            "audience": np.where(owner >= 0, audience[np.maximum(owner, 0)], "unknown").astype(object),
            "reachable": np.isin(np.arange(len(os)), reachable_keys)}),
        "truth_exposures": pd.DataFrame({
            "exposure_id": exposures["exposure_id"], "truth_person": owner[exposures["device_key"].to_numpy()],
            "propensity": propensity}),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_parquet(out_dir / f"{name}.parquet", index=False)
    summary = {"as_of": as_of.isoformat(), "cutoff_ts": cutoff, "seed": seed, "unknown_share": unknown_share,
               "rows": {name: len(frame) for name, frame in tables.items()},
               "devices": len(os), "unknown_devices": n_unknown}
    (out_dir / META_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
