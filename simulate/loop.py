"""`rta simulate loop --days N`: the learning loop end to end, one simulated day at a time.

Set-up: a world (simulate/world.py), its profiles in Redis (the CDP), a bootstrap model trained on
another world of the same kind (different seed, so no person's outcome leaks in), published and
promoted in a registry, and `rta serve` in its own process following that registry.

Each day: the day's ad opportunities go to the service over gRPC; every BID is an exposure, and it
converts with the simulator's hidden propensity of that exposure. Conversion events carry a trace id
(60%), else the device's hashed ID (25%), else the OneID the service matched (docs/specs/attribution.md).
The decision log is exported, the training set rebuilt from it (attribution + point-in-time
features), a model retrained and published, and promoted unless its test log loss is worse than the
serving model's on the same rows; the service hot-reloads it for the next day.

Times: the service decides on the real clock; a conversion follows its decision by 1-60 s, and the
attribution window is WINDOW_S, so every conversion of a day is known when the day ends (the
simulator emits them all at once): labels are complete for every decision of the day.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from rta.v1 import decision_pb2 as pb
from rta.v1 import decision_pb2_grpc as pb_grpc
from rta_service.ids import BUILTIN_DOUBTFUL

DAY = 86400
WINDOW_S = 3600.0
TYPES = ("paid_order", "first_order", "repurchase", "wecom_friend_add")
TYPE_P = (0.5, 0.2, 0.15, 0.15)


@dataclass
class DayResult:
    day: int
    requests: int
    bids: int
    conversions: int
    attributed: int
    model_version: str
    auc: float | None
    ceiling_auc: float | None
    treatment: tuple[int, int]  # (conversions, bids)
    holdout: tuple[int, int]
    retrained: str

    @property
    def bid_rate(self) -> float:
        return self.bids / self.requests if self.requests else float("nan")

    @property
    def per_1000_bids(self) -> float:
        return 1000 * self.conversions / self.bids if self.bids else float("nan")

    def lift(self) -> tuple[float, float, float]:
        """Treatment minus holdout conversion rate per bid, with a 95% normal-approximation interval."""
        (ct, nt), (ch, nh) = self.treatment, self.holdout
        if not nt or not nh:
            return float("nan"), float("nan"), float("nan")
        pt, ph = ct / nt, ch / nh
        se = math.sqrt(pt * (1 - pt) / nt + ph * (1 - ph) / nh)
        return pt - ph, pt - ph - 1.96 * se, pt - ph + 1.96 * se

    def line(self) -> str:
        (ct, nt), (ch, nh) = self.treatment, self.holdout
        d, lo, hi = self.lift()
        auc = "-" if self.auc is None else f"{self.auc:.3f}"
        ceiling = "-" if self.ceiling_auc is None else f"{self.ceiling_auc:.3f}"
        rate = lambda c, n: f"{c / n:.2%}" if n else "-"  # noqa: E731
        return (f"day {self.day}: {self.requests:,} requests, bid rate {self.bid_rate:.1%}, "
                f"{self.per_1000_bids:.1f} conversions per 1,000 bids ({self.attributed}/{self.conversions} "
                f"attributed), model {self.model_version} AUC {auc} vs ceiling {ceiling}; treatment "
                f"{rate(ct, nt)} of {nt:,} bids vs holdout {rate(ch, nh)} of {nh:,}: "
                f"diff {d:+.2%} [95% CI {lo:+.2%}, {hi:+.2%}]; retrained: {self.retrained}")


def day_requests(world: Path, day: int, cutoff: int, limit: int | None, rng) -> pd.DataFrame:
    """The day's exposures with their request, true propensity and the device's best hashed ID."""
    traffic = pd.read_parquet(world / "traffic.parquet")
    traffic = traffic[(traffic["ts"] >= cutoff + day * DAY) & (traffic["ts"] < cutoff + (day + 1) * DAY)]
    if limit is not None and limit < len(traffic):
        traffic = traffic.iloc[np.sort(rng.choice(len(traffic), limit, replace=False))]
    truth = pd.read_parquet(world / "truth_exposures.parquet", columns=["exposure_id", "propensity"])
    traffic = traffic.merge(truth, on="exposure_id")
    devices = pd.read_parquet(world / "devices.parquet")
    devices = devices[devices["device_key"].isin(traffic["device_key"])]
    ids: dict[int, list] = {}
    best: dict[int, tuple[int, str]] = {}
    os_of: dict[int, int] = {}
    for row in devices.itertuples(index=False):
        ids.setdefault(row.device_key, []).append(pb.DeviceId(type=row.id_type, hash=row.hash_kind, value=row.value,
                                                              caid_version=row.caid_version, doubtful=row.doubtful))
        os_of[row.device_key] = row.os
        if not row.doubtful and row.value_md5 not in BUILTIN_DOUBTFUL and row.device_key not in best:
            best[row.device_key] = (int(row.id_type), row.value_md5)
    traffic["request"] = [pb.DecideRequest(request_id=f"sim-{e}", platform=p, os=os_of.get(k, 0),
                                           device_ids=ids.get(k, []))
                          for e, k, p in zip(traffic["exposure_id"], traffic["device_key"], traffic["platform"],
                                             strict=True)]
    traffic["best_id"] = [best.get(k, (0, "")) for k in traffic["device_key"]]
    return traffic.reset_index(drop=True)


def decide(target: str, requests: list, concurrency: int = 8) -> list:
    from loadtest.client import closed_loop

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RtaServiceStub(channel)
        answers = closed_loop(stub.Decide, requests, len(requests), concurrency, 2.0)
    return [a for a, _ in answers]


def outcomes(day: pd.DataFrame, answers: list, rng, start_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-request outcomes, conversion events) of a day's answers."""
    now = time.time()
    rows, events = [], []
    for i, (req, resp) in enumerate(zip(day["request"], answers, strict=True)):
        if isinstance(resp, grpc.StatusCode):
            rows.append({"bid": False, "holdout": False, "score": np.nan, "converted": False, "error": resp.name})
            continue
        bid = resp.decision == pb.BID
        converted = bool(bid and rng.random() < day["propensity"].iat[i])
        rows.append({"bid": bid, "holdout": resp.internal.holdout, "score": resp.internal.score,
                     "converted": converted, "error": "", "model_version": resp.internal.model_version})
        if converted:
            carrier = rng.random()
            id_type, md5 = day["best_id"].iat[i]
            one_id = resp.internal.one_id
            kind = TYPES[rng.choice(len(TYPES), p=TYPE_P)]
            events.append({
                "conversion_id": f"c{start_id + len(events)}", "ts": now + rng.uniform(1, 60), "type": kind,
                "value_fen": 0 if kind == "wecom_friend_add" else int(np.exp(rng.normal(np.log(25000), 0.8))),
                "trace_id": req.request_id if carrier < 0.6 else "",
                "id_type": id_type if carrier < 0.85 or not one_id else 0,
                "md5": md5 if carrier < 0.85 or not one_id else "",
                "one_id": one_id if carrier >= 0.85 else ""})
    return pd.DataFrame(rows), pd.DataFrame(events, columns=["conversion_id", "ts", "type", "value_fen", "trace_id",
                                                             "id_type", "md5", "one_id"])


def _auc(y, p) -> float | None:
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    ok = ~np.isnan(p)
    return round(float(roc_auc_score(y[ok], p[ok])), 4) if ok.any() and 0 < y[ok].sum() < ok.sum() else None


def _current_version(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        resp = pb_grpc.RtaServiceStub(channel).Decide(pb.DecideRequest(request_id="version", is_ping=True), timeout=5)
    return resp.internal.model_version


def _await_version(target: str, version: str, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _current_version(target) == version:
            return True
        time.sleep(0.1)
    return False


def run_loop(days: int, people: int = 20000, seed: int = 7, traffic: int | None = None,
             requests_per_day: int | None = None, workdir: Path | None = None, say=print) -> list[DayResult]:
    """The loop for `days` simulated days, one DayResult (and one printed line) per day. Its files go to
    `workdir` if given, else to a temporary directory removed at the end."""
    if workdir is not None:
        return _run_loop(days, people, seed, traffic, requests_per_day, Path(workdir), say)
    with tempfile.TemporaryDirectory(prefix="rta-loop-") as tmp:
        return _run_loop(days, people, seed, traffic, requests_per_day, Path(tmp), say)


def _run_loop(days: int, people: int, seed: int, traffic: int | None, requests_per_day: int | None,
              workdir: Path, say) -> list[DayResult]:
    from cdp.engine import connect
    from cdp.pipeline import run as run_cdp
    from loadtest.server_process import ServerProcess
    from rta_service import registry
    from rta_service.demo import redis_for_demo
    from simulate.world import simulate
    from training import examples, log_export, retrain
    from training.conversions import validate
    from training.train import ParityError, train

    if not 1 <= days <= 7:
        raise ValueError("--days must be 1..7 (the simulated traffic spans 7 days)")
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    results: list[DayResult] = []
    with redis_for_demo() as redis_url:
        world, boot = workdir / "world", workdir / "bootstrap-world"
        meta = simulate(world, people=people, seed=seed, traffic=traffic)
        simulate(boot, people=people, seed=seed + 1000, traffic=traffic)
        cdp = run_cdp(world, redis_url, allow_shrink=True)  # a new world replaces an earlier run's (RTA_REDIS_URL)
        reg = workdir / "registry"
        first = train(boot, workdir / "bootstrap.onnx", seed=seed)
        registry.publish(reg, workdir / "bootstrap.onnx")
        registry.promote(reg, first["model_version"])
        say(f"[loop] world of {people:,} people ({meta['rows']['traffic']:,} exposures over 7 days), "
            f"{cdp['profiles']:,} profiles in Redis; bootstrap model {first['model_version']} (AUC {first['auc']} "
            f"on another world); work directory {workdir} (removed at the end unless given with --out)")
        con = connect()
        conversions = pd.DataFrame()
        truth: dict[str, float] = {}  # request_id -> true propensity, for the reports' ceiling
        with ServerProcess(redis_url=redis_url, model_registry=reg, model_watch_ms=100,
                           decision_log_flush_ms=20) as server:
            for day in range(days):
                batch = day_requests(world, day, meta["cutoff_ts"], requests_per_day, rng)
                answers = decide(server.target, batch["request"].tolist())
                served = _current_version(server.target)
                out, events = outcomes(batch, answers, rng, len(conversions))
                truth.update(zip([r.request_id for r in batch["request"]], batch["propensity"], strict=True))
                conversions = validate(pd.concat([conversions, events], ignore_index=True), "simulated conversions")
                conversions.to_parquet(workdir / "conversions.parquet", index=False)  # for `rta train --log`
                time.sleep(0.3)  # the service's log writer flushes every 20 ms
                log_export.export(redis_url, workdir / "log")
                decisions = examples.read_decisions(con, workdir / "log")
                conv_t = con.create_table("conversions", conversions, overwrite=True)
                last_ts = float(decisions.ts.max().execute())
                attributed_ids = con.execute(_attributed(decisions, conv_t))
                ex = examples.build(decisions, conv_t, observed_until=last_ts + WINDOW_S, window_s=WINDOW_S)
                ex["propensity"] = ex["request_id"].map(truth)
                try:
                    s = retrain.retrain(ex, workdir / f"model-day{day}", seed=seed,
                                        previous=registry.current_model_path(reg), registry=reg, promote=True)
                    retrained = (f"{s['model_version']} on {len(ex):,} examples, test AUC {s['auc']} vs ceiling "
                                 f"{s['ceiling_auc'] or '-'} (previous {s['previous_auc'] or '-'})")
                    if not s["promoted"]:
                        retrained += f", not promoted: {s['not_promoted']}"
                    elif _await_version(server.target, s["model_version"]):
                        retrained += ", promoted and now serving"
                    else:
                        retrained += ", promoted but NOT picked up by the service"
                except (ValueError, ParityError) as exc:
                    retrained = f"kept the model ({exc})"
                bids = out[out["bid"]]
                res = DayResult(
                    day=day + 1, requests=len(out), bids=len(bids), conversions=int(bids["converted"].sum()),
                    attributed=int(attributed_ids["conversion_id"].isin(events["conversion_id"]).sum()),
                    model_version=served, auc=_auc(bids["converted"], bids["score"]),
                    ceiling_auc=_auc(bids["converted"], batch.loc[bids.index, "propensity"]),
                    treatment=(int(bids.loc[~bids["holdout"], "converted"].sum()), int((~bids["holdout"]).sum())),
                    holdout=(int(bids.loc[bids["holdout"], "converted"].sum()), int(bids["holdout"].sum())),
                    retrained=retrained)
                results.append(res)
                say(res.line())
                failed = out.loc[out["error"] != "", "error"]
                if len(failed):
                    say(f"        {len(failed)} calls failed: {failed.value_counts().to_dict()}")
    return results


def _attributed(decisions, conversions):
    from training.attribution import attribute

    return attribute(decisions, conversions, WINDOW_S).select("conversion_id")
