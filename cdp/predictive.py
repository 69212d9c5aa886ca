"""Predictive tags: the probability of a first purchase (non-buyers) and of a repurchase within N days
(buyers), from two LightGBM models trained on a time split.

    T0 = as_of - N days. Features of the OneIDs as of T0 come from the same profile and tag expressions
    the pipeline builds as of as_of (cdp.profiles.profile_tables with as_of=T0: the inputs before T0,
    resolved into OneIDs as they were at T0), so nothing after T0 reaches a feature. At scale only a
    sample of whole people goes through that pass (sample_people, people_share): as many as training
    needs. The label of a
    T0 OneID is whether the person (its records' OneIDs as of as_of) placed an order in
    [T0 00:00, T0 + N days 00:00) (UTC+8), which lies wholly before as_of: every label is observed.

    Per population (non-buyers at T0 -> first purchase, buyers at T0 -> repurchase), OneIDs are split
    at random (fixed seed) into train 60% / valid 20% / test 20%. A small LightGBM (PARAMS) fits on train
    with the rare positives weighted up (scale_pos_weight); a Platt calibration fitted
    on valid maps the weighted raw scores back to probabilities (training.retrain.calibration_table);
    AUC, log loss, Brier and a calibration table (10 quantile bins: mean predicted vs observed rate) are
    measured on test (training.evaluate.metrics). Then every OneID is scored with its features as of
    as_of, the current state: `p_first_purchase` for non-buyers, `p_repurchase_{N}d` for buyers.

Feature extraction is Ibis (DuckDB or Spark); training and scoring run in this process on the collected
features (pandas + LightGBM): the training set is sampled in the engine to at most max_train_rows
OneIDs per population (by OneID hash, so both engines pick the same ones), and scoring reads the
features in batches (`batches`), so memory holds one batch's features at a time.
With fewer than min_positives positives a model is not trained and its score is not produced.

Models are retrained less often than scores are made: with a state_dir, a run saves its models there
(`save_models`: each booster as LightGBM's text, its calibration and its test metrics in a JSON manifest,
as pending files put in place with the rest of the state once the export succeeded), and the runs after
it score with them (`saved_models`) until as_of is retrain_days past the training run's as_of, or a
training setting differs (horizon_days, FEATURES, seed, min_positives, max_train_rows, MODEL_FORMAT).
Scoring then costs no T0 pass and no training, and the same person with the same features keeps the
same score, so an incremental export rewrites only the people whose features moved.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ibis
import ibis.expr.types as ir
import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

from training.evaluate import metrics

from . import engine
from .engine import materialize, release
from .identity import Resolution
from .profiles import DAY, SCORE_PREFIX, before, cutoff_ts, profile_tables
from .state import pending
from .tags import FIRST_PURCHASE, repurchase_name, score_tags
from .validate import CHANNELS

FIRST = FIRST_PURCHASE  # the score tags' names are the tags' contract (cdp.tags.score_tags)
FEATURES = ("order_count", "monetary_fen", "avg_order_fen", "days_since_last_order", "days_since_first_seen",
            "days_since_latest_record", "channel_count", "device_count", "is_member", "wecom_friend", "has_guide",
            "r_score", "f_score", "m_score", "top_hour", "top_weekday", "top_channel")
# A one-feature rule per population (buyer or not) the model should beat: the more recently seen, the likelier.
BASELINE = {False: "days_since_latest_record", True: "days_since_last_order"}
SPLIT = (0.6, 0.8)  # OneIDs: train below 0.6 of a random draw, valid below 0.8, test the rest
# Small and fixed: with a few hundred positives, early stopping on the valid AUC stopped at 1-40 trees
# depending on noise; 150 trees of 7 leaves ranked as well or better and gave lower log loss on
# three simulated worlds and two seeds each (AUC within +-0.02, see docs/cdp.md).
PARAMS = {
    "objective": "binary", "n_estimators": 150, "learning_rate": 0.05, "num_leaves": 7, "min_child_samples": 100,
    "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.9, "reg_lambda": 1.0,
    # One thread: on this shared 2-core machine two took 0.9-8.5 s against 0.24 s for 11k rows and 18.5 s
    # against 7 s for 300k (OpenMP threads waiting for a busy core); the model is the same either way.
    "n_jobs": 1, "deterministic": True, "force_row_wise": True, "verbose": -1,
}
SCORE_BATCH = 500_000
# The T0 pass resolves and profiles only as many people as training needs: each population's share of
# people as of now is sized to offer SAMPLE_MARGIN x max_train_rows OneIDs (fewer people existed at T0).
SAMPLE_MARGIN = 1.5
# Saved models (state_dir/MODELS_DIR): bump MODEL_FORMAT when the files or what a model computes from FEATURES
# change, so that older saved models are retrained rather than misread.
MODEL_FORMAT = 1
MODELS_DIR = "models"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Model:
    """One population's trained model: LightGBM's model text plus the Platt calibration table (x, y knots). It
    predicts with the booster read from `text`, in the run that trains it as in a run that reuses the saved
    text, so a reused model scores exactly as it did when fresh."""

    name: str  # the score it produces
    text: str  # lgb.Booster.model_to_string()
    calibration: tuple[list[float], list[float]]
    booster: lgb.Booster = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "booster", lgb.Booster(model_str=self.text))

    def raw(self, X: np.ndarray) -> np.ndarray:
        """The class-weighted probability before calibration."""
        return self.booster.predict(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.interp(self.raw(X), *self.calibration)


# --- features and labels (Ibis) -----------------------------------------------------------------------------

def latest_record(tables: dict[str, ir.Table], res: Resolution, cutoff: int) -> ir.Table:
    """[one_id, latest_record_ts]: when the person's newest channel account was opened or WeCom
    friendship added, before cutoff."""
    t = before(tables, cutoff)
    recs = res.records
    m = t["memberships"].select(table=ibis.literal("memberships"), record_id="record_id", ts="created_ts")
    w = t["wecom"].select(table=ibis.literal("wecom"), record_id="friendship_id", ts="added_ts")
    joined = m.union(w, distinct=False).join(recs, ["table", "record_id"])
    return joined.group_by("one_id").agg(latest_record_ts=joined.ts.max())


def feature_table(profiles: ir.Table, tags: ir.Table, latest: ir.Table, cutoff: int) -> ir.Table:
    """[one_id, buyer, *FEATURES] from the profiles and tags built as of `cutoff` (float64 features)."""
    p = profiles.select("one_id", "first_seen_ts", "channel_count", "device_count")
    j = tags.join(p, "one_id").left_join(latest, "one_id")
    buyer = j.order_count > 0
    days = lambda ts: ((cutoff - ts) / DAY).cast("float64")  # noqa: E731
    channel = j.top_channel.cases(*((c, i) for i, c in enumerate(CHANNELS)), else_=-1)
    cols = {
        "order_count": j.order_count, "monetary_fen": j.monetary_fen,
        "avg_order_fen": ibis.cases((buyer, j.monetary_fen / j.order_count), else_=ibis.null("float64")),
        "days_since_last_order": j.days_since_last_order, "days_since_first_seen": days(j.first_seen_ts),
        "days_since_latest_record": days(j.latest_record_ts), "channel_count": j.channel_count,
        "device_count": j.device_count, "is_member": j.is_member.cast("int64"),
        "wecom_friend": j.wecom_friend.cast("int64"), "has_guide": j.guide_id.notnull().cast("int64"),
        "r_score": j.r_score, "f_score": j.f_score, "m_score": j.m_score, "top_hour": j.top_hour,
        "top_weekday": j.top_weekday, "top_channel": ibis.cases((j.top_channel.isnull(), ibis.null("int64")),
                                                                else_=channel),
    }
    return j.select("one_id", buyer=buyer, **{k: v.cast("float64") for k, v in cols.items()})


def features_as_of(tables: dict[str, ir.Table], res: Resolution, profiles: ir.Table, cutoff: int) -> ir.Table:
    """feature_table of a resolution whose tags (res.tags) and profiles were built as of cutoff."""
    return feature_table(profiles, res.tags, latest_record(tables, res, cutoff), cutoff)


def labels(tables: dict[str, ir.Table], res_t0: Resolution, res_now: Resolution, start: int, end: int) -> ir.Table:
    """[one_id] of the OneIDs as of T0 whose person ordered in [start, end): each T0 record is followed to
    its OneID as of now, and an order counts for every T0 OneID whose records are now in the orderer's."""
    now = res_now.records
    ordered = (tables["orders"].filter((ibis._.ts >= start) & (ibis._.ts < end))
               .join(now.filter(now.table == "memberships"), "record_id")
               .select(now_id="one_id").distinct())
    moved = res_t0.records.join(now.select("table", "record_id", now_id="one_id"), ["table", "record_id"])
    return moved.join(ordered, "now_id", how="semi").select("one_id").distinct()


def _hash_prefix(share: float) -> str:
    """The 8-hex-digit prefix below which `share` of uniformly hashed OneIDs fall."""
    return f"{min(int(share * 16**8), 16**8 - 1):08x}"


def sample(t: ir.Table, max_rows: int, within: float = 1.0) -> ir.Table:
    """At most ~max_rows rows of t, chosen by OneID (a hex hash): the same rows on every engine. `within`:
    the share of the hash range t's OneIDs were already drawn from (sample_people), about."""
    n = int(t.count().to_pyarrow().as_py())
    return t if n <= max_rows else t.filter(t.one_id.substr(0, 8) < _hash_prefix(within * max_rows / n))


def chunks(t: ir.Table, batch_rows: int):
    """t in about batch_rows-row parts, split by OneID hash (t should be materialised: each part is a query)."""
    n = int(t.count().to_pyarrow().as_py())
    parts = max(1, -(-n // batch_rows))
    bounds = [None] + [_hash_prefix(i / parts) for i in range(1, parts)] + [None]
    prefix = t.one_id.substr(0, 8)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        cond = ibis.literal(True)
        cond = cond & (prefix >= lo) if lo is not None else cond
        cond = cond & (prefix < hi) if hi is not None else cond
        yield t.filter(cond)


def batches(t: ir.Table, batch_rows: int):
    """t as pandas frames of about batch_rows rows. DuckDB streams them from one query; elsewhere each part is
    a query by OneID hash (`chunks`), since Spark's to_pyarrow_batches collects the whole table first."""
    if engine.name_of(t._find_backend()) == "duckdb":
        for batch in engine.duckdb_batches(t, batch_rows):
            yield batch.to_pandas()
        return
    for part in chunks(t, batch_rows):
        yield part.to_pandas()


# --- training and scoring (in process) -----------------------------------------------------------------------

def _split(n: int, seed: int) -> np.ndarray:
    """A random draw in [0, 1) per row (rows sorted by OneID, so the split does not depend on engine order)."""
    return np.random.default_rng(seed).random(n)


def fit(frame: pd.DataFrame, name: str, seed: int, min_positives: int,
        baseline: str | None = None) -> tuple[Model | None, dict]:
    """Train one population's model on frame [one_id, label, *FEATURES] sorted by one_id (LightGBM's bagging
    depends on row order); (None, info with the reason under "skipped") when too few positives."""
    y = frame["label"].to_numpy(dtype=np.int8)
    info = {"rows": len(frame), "positives": int(y.sum()), "base_rate": round(float(y.mean()), 5) if len(y) else None}
    if info["positives"] < min_positives or info["positives"] == len(y):
        info["skipped"] = (f"{info['positives']} positives among {len(y):,} OneIDs in the training window, "
                           f"fewer than min_positives={min_positives}" if info["positives"] < min_positives
                           else "every OneID is positive")
        return None, info
    from training.retrain import calibration_table  # noqa: PLC0415 - training imports cdp

    X = frame[list(FEATURES)].to_numpy(dtype=np.float64)
    draw = _split(len(frame), seed)
    train, valid, test = draw < SPLIT[0], (draw >= SPLIT[0]) & (draw < SPLIT[1]), draw >= SPLIT[1]
    for part, mask in (("train", train), ("valid", valid), ("test", test)):
        if y[mask].min() == y[mask].max():
            info["skipped"] = f"the {part} OneIDs hold a single class"
            return None, info
    pos = int(y[train].sum())
    clf = lgb.LGBMClassifier(**{**PARAMS, "scale_pos_weight": (int(train.sum()) - pos) / pos, "random_state": seed})
    clf.fit(X[train], y[train])
    text = clf.booster_.model_to_string()
    model = Model(name, text, calibration_table(lgb.Booster(model_str=text).predict(X[valid]), y[valid]))
    raw = model.raw(X[test])
    info.update({"split": {"train": int(train.sum()), "valid": int(valid.sum()), "test": int(test.sum())},
                 "scale_pos_weight": round(clf.get_params()["scale_pos_weight"], 3),
                 "test": metrics(y[test], model.predict(X[test])),
                 "test_uncalibrated_logloss": metrics(y[test], raw)["logloss"],
                 "baseline": None if baseline is None else {
                     "rule": f"the smaller {baseline}, the likelier",
                     "auc": round(float(roc_auc_score(y[test], -frame[baseline].fillna(1e9).to_numpy()[test])), 4)},
                 "importance": dict(sorted(zip(FEATURES, model.booster.feature_importance("gain").round(1).tolist(),
                                               strict=True), key=lambda kv: -kv[1])[:5])})
    return model, info


def score(features: ir.Table, models: dict[bool, Model], path: Path, names: tuple[str, ...],
          batch_rows: int = SCORE_BATCH) -> int:
    """Score every OneID of `features` (as of now) with the model of its population (buyer or not) and
    write [one_id, FIRST, repurchase] to a Parquet file at `path`, batch by batch; returns rows written."""
    schema = pa.schema([("one_id", pa.string())] + [(n, pa.float64()) for n in names])
    written = 0
    features = materialize(features)
    with pq.ParquetWriter(path, schema) as out:
        for frame in batches(features, batch_rows):
            if frame.empty:
                continue
            cols = {n: np.full(len(frame), np.nan) for n in names}
            X = frame[list(FEATURES)].to_numpy(dtype=np.float64)
            for is_buyer, model in models.items():
                rows = frame["buyer"].to_numpy(dtype=bool) == is_buyer
                if rows.any():
                    cols[model.name][rows] = model.predict(X[rows])
            # null, not NaN: in SQL NaN >= x is true, so a segment over a score would take in everyone
            nulls = {n: pa.array(v, mask=np.isnan(v)) for n, v in cols.items()}
            out.write_table(pa.table({"one_id": frame["one_id"].astype(object), **nulls}, schema=schema))
            written += len(frame)
    release(features)
    return written


# --- the stage ------------------------------------------------------------------------------------------------

def people_share(res_now: Resolution, max_train_rows: int) -> float:
    """The share of people the T0 pass needs so that each population (buyers and non-buyers, counted as of
    now) still offers about SAMPLE_MARGIN x max_train_rows OneIDs; 1.0 when the world is that small."""
    tags = res_now.tags
    row = tags.aggregate(buyers=(tags.order_count > 0).cast("int64").sum(), n=tags.count()).to_pyarrow()
    row = row.to_pylist()[0]
    smaller = min(int(row["buyers"] or 0), int(row["n"]) - int(row["buyers"] or 0))
    return 1.0 if smaller == 0 else min(1.0, SAMPLE_MARGIN * max_train_rows / smaller)


def sample_people(tables: dict[str, ir.Table], res_now: Resolution,
                  share: float) -> tuple[dict[str, ir.Table], ir.Table | None]:
    """(the inputs restricted to about `share` of the people as of now, the materialised [table, record_id]
    of the records kept, None when share >= 1 keeps everyone): the records of the OneIDs whose hash
    falls below `share`, together with every record of their connected components (Resolution.records), so
    that resolving the sample at an earlier cutoff gives exactly the OneIDs the whole input would give
    those records (a person's past records can only join records of the same component)."""
    if share >= 1.0:
        return tables, None
    recs = res_now.records
    picked = recs.filter(recs.one_id.substr(0, 8) < _hash_prefix(share))
    components = picked.filter(picked.component.notnull()).select("component").distinct()
    chosen = picked.filter(picked.component.isnull()).select("table", "record_id").union(
        recs.join(components, "component", how="semi").select("table", "record_id"), distinct=False)
    chosen = chosen.pipe(materialize)
    members = chosen.filter(chosen.table == "memberships").select("record_id")
    friends = chosen.filter(chosen.table == "wecom").select(friendship_id="record_id")
    return {**tables,
            "memberships": tables["memberships"].join(members, "record_id", how="semi"),
            "membership_devices": tables["membership_devices"].join(members, "record_id", how="semi"),
            "orders": tables["orders"].join(members, "record_id", how="semi"),
            "wecom": tables["wecom"].join(friends, "friendship_id", how="semi")}, chosen


def training_set(tables: dict[str, ir.Table], res_now: Resolution, as_of: dt.date, horizon_days: int,
                 guardrails=None, share: float = 1.0) -> tuple[ir.Table, Callable[[], None]]:
    """([one_id, buyer, *FEATURES, label] of every OneID as of T0 = as_of - horizon_days among `share` of
    the people (sample_people; all of them by default), a function that frees the T0 tables once the result
    has been read)."""
    t0 = as_of - dt.timedelta(days=horizon_days)
    start, end = cutoff_ts(t0), cutoff_ts(as_of)
    kwargs = {"guardrails": guardrails} if guardrails is not None else {}
    tables, chosen = sample_people(tables, res_now, share)
    profiles_t0, index_t0, res_t0 = profile_tables(tables, t0, built_ts=0, tags=True, **kwargs)
    positive = labels(tables, res_t0, res_now, start, end).mutate(label=ibis.literal(1, "int8"))
    past = features_as_of(tables, res_t0, profiles_t0, start).left_join(positive, "one_id")
    past = past.mutate(label=past.label.fill_null(0).cast("int8")).pipe(materialize)  # read twice per population

    def release_all() -> None:
        for done in (past, profiles_t0, index_t0, res_t0.tags, *(() if chosen is None else (chosen,))):
            release(done)
        res_t0.release()

    return past, release_all


def training_settings(horizon_days: int, min_positives: int, max_train_rows: int, seed: int) -> dict:
    """What saved models must have been trained with for a run to reuse them (recorded in their manifest)."""
    return {"format": MODEL_FORMAT, "features": list(FEATURES), "horizon_days": horizon_days, "seed": seed,
            "min_positives": min_positives, "max_train_rows": max_train_rows}


class Unusable(Exception):
    """Saved models a run cannot reuse; the message says why."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_models(directory: Path, summary: dict, models: dict[bool, Model], settings: dict, as_of: dt.date) -> None:
    """The run's models into `directory` as pending files (cdp.state; put in place once the export succeeded):
    per trained model its LightGBM text `{name}.txt`, and MANIFEST with the training settings, trained_as_of,
    T0 and per model the summary's info (test metrics, or why it was skipped), its calibration and its text's
    sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    trained = {m.name: m for m in models.values()}
    entries = {}
    for name, info in summary["models"].items():
        entries[name] = {"info": info}
        if name in trained:
            file = f"{name}.txt"
            pending(directory / file).write_text(trained[name].text, encoding="utf-8")
            entries[name].update(file=file, sha256=_sha256(trained[name].text),
                                 calibration=[list(k) for k in trained[name].calibration])
    manifest = {**settings, "trained_as_of": as_of.isoformat(), "t0": summary["t0"],
                "label_window": summary["label_window"], "people_share": summary["people_share"],
                "models": entries}
    pending(directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def load_models(directory: Path, settings: dict) -> tuple[dict, dict[bool, Model]]:
    """(manifest, {buyer: Model} of the trained ones) saved in `directory` by save_models; raises Unusable,
    saying why, when they were trained with other settings or a file is missing, altered or unreadable."""
    names = {FIRST: False, repurchase_name(settings["horizon_days"]): True}
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        differs = [f"{key} {manifest.get(key)!r} (this run: {value!r})" for key, value in settings.items()
                   if manifest.get(key) != value]
        if differs:
            raise Unusable(f"they were trained with {', '.join(differs)}")
        if set(manifest["models"]) != set(names):
            raise Unusable(f"{MANIFEST} lists models {sorted(manifest['models'])}, expected {sorted(names)}")
        dt.date.fromisoformat(manifest["trained_as_of"])
        models = {}
        for name, entry in manifest["models"].items():
            if "skipped" in entry["info"]:  # not trained in the training run: no score until the next one
                continue
            text = (directory / entry["file"]).read_text(encoding="utf-8")
            if _sha256(text) != entry["sha256"]:
                raise Unusable(f"{entry['file']} is not the file {MANIFEST} describes (its sha256 differs)")
            xs, ys = entry["calibration"]
            model = Model(name, text, ([float(x) for x in xs], [float(y) for y in ys]))
            if model.booster.num_feature() != len(FEATURES) or len(xs) != len(ys):
                raise Unusable(f"{entry['file']} has {model.booster.num_feature()} features, expected {len(FEATURES)}")
            models[names[name]] = model
    except (OSError, ValueError, KeyError, TypeError, lgb.basic.LightGBMError) as exc:
        raise Unusable(f"they could not be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return manifest, models


def saved_models(state_dir: Path, as_of: dt.date, settings: dict,
                 retrain_days: int) -> tuple[dict | None, dict[bool, Model], str]:
    """(manifest, models, note) of the models the last published run saved in state_dir when this run may
    reuse them: trained with `settings`, fewer than retrain_days days before as_of; else (None, {}, why not)."""
    directory = Path(state_dir) / MODELS_DIR
    if retrain_days == 0:
        return None, {}, "retrain_days is 0: the models are trained every run"
    if not (directory / MANIFEST).exists():
        return None, {}, f"no saved models in {directory} yet"
    try:
        manifest, models = load_models(directory, settings)
    except Unusable as exc:
        return None, {}, f"the saved models in {directory} are not reused: {exc}"
    trained = dt.date.fromisoformat(manifest["trained_as_of"])
    age = (as_of - trained).days
    if age < 0:
        return None, {}, f"the saved models were trained as of {trained}, after this run's as_of {as_of}"
    if age >= retrain_days:
        return None, {}, f"the saved models were trained as of {trained}, {age} days ago (retrain_days {retrain_days})"
    return manifest, models, f"reused, trained as of {trained}, {age} of {retrain_days} days"


def train(tables: dict[str, ir.Table], res_now: Resolution, as_of: dt.date, horizon_days: int, min_positives: int,
          max_train_rows: int, seed: int, guardrails, say: Callable[[str], None],
          lap: Callable[[str], float]) -> tuple[dict, dict[bool, Model]]:
    """(summary, {buyer: Model}): the T0 pass over a sample of people and one model per population."""
    t0 = as_of - dt.timedelta(days=horizon_days)
    share = people_share(res_now, max_train_rows)
    past, release_past = training_set(tables, res_now, as_of, horizon_days, guardrails, share)
    say(f"[cdp]   training set as of T0 {t0} (OneIDs, profiles, tags, labels) of {share:.1%} of the people: "
        f"{lap('training_set'):.1f}s")
    summary: dict = {"t0": t0.isoformat(), "label_window": [t0.isoformat(), as_of.isoformat()],
                     "horizon_days": horizon_days, "people_share": round(share, 6), "models": {}}
    models: dict[bool, Model] = {}
    for is_buyer, name in ((False, FIRST), (True, repurchase_name(horizon_days))):
        rows = sample(past.filter(past.buyer == is_buyer), max_train_rows, within=share)
        frame = rows.to_pandas().sort_values("one_id", ignore_index=True)
        model, info = fit(frame, name, seed, min_positives, BASELINE[is_buyer])
        took = lap(name)
        summary["models"][name] = info
        if model is None:
            say(f"[cdp]   {name}: not trained: {info['skipped']}")
            continue
        models[is_buyer] = model
        say(f"[cdp]   {name}: {describe(info)} ({took:.1f}s)")
    release_past()
    return summary, models


def run(tables: dict[str, ir.Table], res_now: Resolution, profiles_now: ir.Table, as_of: dt.date, work: Path,
        horizon_days: int = 30, min_positives: int = 50, max_train_rows: int = 500_000, seed: int = 7,
        guardrails=None, progress: Callable[[str], None] | None = None, state_dir: Path | None = None,
        retrain_days: int = 7, save: bool = True) -> dict:
    """Train on (features as of T0, labels in [T0, as_of)), or reuse the models saved in state_dir
    (saved_models), and score everyone as of as_of. With state_dir and `save`, trained models are saved there
    as pending files (save_models).

    res_now must carry tags (profile_tables(..., tags=True)). Returns the summary: per model its counts and
    test metrics (the training run's when reused), or why it was skipped; `training` says whether the models
    were trained or reused; `file` is the Parquet of scores (absent when no model was trained).
    """
    say = progress or (lambda _msg: None)
    clock = time.perf_counter()
    seconds = {}

    def lap(step: str) -> float:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 3)
        clock = now
        return seconds[step]

    settings = training_settings(horizon_days, min_positives, max_train_rows, seed)
    manifest, models, note = (None, {}, None) if state_dir is None else saved_models(state_dir, as_of, settings,
                                                                                     retrain_days)
    if manifest is not None:
        trained_as_of = dt.date.fromisoformat(manifest["trained_as_of"])
        summary = {"t0": manifest["t0"], "label_window": manifest["label_window"], "horizon_days": horizon_days,
                   "people_share": manifest["people_share"],
                   "models": {name: entry["info"] for name, entry in manifest["models"].items()},
                   "training": {"models": "reused", "note": note, "trained_as_of": trained_as_of.isoformat(),
                                "age_days": (as_of - trained_as_of).days, "retrain_days": retrain_days,
                                "from": str(Path(state_dir) / MODELS_DIR),
                                "metrics": f"test metrics of the training run as of {trained_as_of}"}}
        say(f"[cdp]   models {note} ({Path(state_dir) / MODELS_DIR}; T0 {manifest['t0']}; the test metrics are "
            f"that run's): {lap('load_models'):.1f}s")
        for name, info in summary["models"].items():
            say(f"[cdp]   {name}: " + (f"not trained in that run: {info['skipped']}" if "skipped" in info
                                       else f"{describe(info)} (training run as of {trained_as_of})"))
    else:
        if note:
            say(f"[cdp]   training the models: {note}")
        summary, models = train(tables, res_now, as_of, horizon_days, min_positives, max_train_rows, seed,
                                guardrails, say, lap)
        summary["training"] = {"models": "trained", "trained_as_of": as_of.isoformat()}
        if state_dir is not None:
            summary["training"].update(note=note, retrain_days=retrain_days)
            if save:
                save_models(Path(state_dir) / MODELS_DIR, summary, models, settings, as_of)
                summary["training"]["saved"] = str(Path(state_dir) / MODELS_DIR)  # once the export succeeded
    summary["seconds"] = seconds
    if not models:
        return summary
    path = Path(work) / "scores.parquet"
    now = features_as_of(tables, res_now, profiles_now, cutoff_ts(as_of))
    summary["scored"] = score(now, models, path, (FIRST, repurchase_name(horizon_days)))
    summary["file"] = str(path)
    lap("scoring")
    return summary


def describe(info: dict) -> str:
    """One line: counts, AUC (and the one-feature rule's), log loss and the calibration in a few bins."""
    m = info["test"]
    bins = m["calibration"]
    cal = ", ".join(f"{b['predicted']:.3f}->{b['observed']:.3f}" for b in (bins[0], bins[len(bins) // 2], bins[-1]))
    return (f"{info['rows']:,} OneIDs, {info['positives']:,} positives ({info['base_rate']:.2%}); test AUC "
            f"{m['auc']} (one-feature rule {info['baseline']['auc']}), log loss {m['logloss']} "
            f"(uncalibrated {info['test_uncalibrated_logloss']}), calibration predicted->observed "
            f"lowest/middle/highest bin {cal}")


def stage(cfg, tables: dict[str, ir.Table], res: Resolution, profiles: ir.Table, as_of: dt.date, work: Path,
          guardrails=None, progress: Callable[[str], None] | None = None, state_dir: Path | None = None,
          save: bool = True) -> tuple[dict, ir.Table]:
    """The pipeline's `predictive` stage (cfg: cdp.config.PredictiveConfig): (summary, res.tags with the
    score columns added, null where a OneID has no score). With state_dir, models saved there are reused
    while young enough (cfg.retrain_days), and trained ones are saved there unless `save` is False."""
    summary = run(tables, res, profiles, as_of, work, cfg.horizon_days, cfg.min_positives, cfg.max_train_rows,
                  cfg.seed, guardrails, progress, state_dir, cfg.retrain_days, save)
    names = score_tags(cfg.horizon_days)
    if "file" in summary:
        scores = res.tags._find_backend().read_parquet(summary["file"])
        # the join's own copy of the key (one_id_right) is not a tag
        tags = res.tags.left_join(scores, "one_id").select(*res.tags.columns, *names)
    else:
        tags = res.tags.mutate(**{n: ibis.null("float64") for n in names})
    return summary, tags


def headline(summary: dict) -> str:
    """The stage's progress line: trained or reused, AUC per model (the training run's), or why it was skipped."""
    training = summary.get("training", {})
    reused = training.get("models") == "reused"
    parts = [f"models {training['note']}" if reused else "models trained" + (", saved" if "saved" in training else ""),
             f"T0 {summary['t0']}, labels {summary['label_window'][0]}..{summary['label_window'][1]}"]
    for name, info in summary["models"].items():
        parts.append(f"{name}: skipped" if "skipped" in info else
                     f"{name}: test AUC {info['test']['auc']}" + (" (training run)" if reused else ""))
    if "scored" in summary:
        parts.append(f"{summary['scored']:,} OneIDs scored")
    return "; ".join(parts)


def with_scores(profiles: ir.Table, summary: dict) -> ir.Table:
    """profiles plus a float column `score_{name}` per score (null where the person has none), joined in the
    engine; `cdp.profiles.to_frame` keeps them and the exporter (`cdp.wire`) puts them into the Redis
    profile's `scores` map."""
    if "file" not in summary:
        return profiles
    scores = profiles._find_backend().read_parquet(summary["file"])
    scores = scores.rename({SCORE_PREFIX + n: n for n in scores.columns if n != "one_id"})
    return profiles.left_join(scores, "one_id").select(*profiles.columns, *(c for c in scores.columns if c != "one_id"))
