"""The loop's training set: one example per logged BID decision, with the features the model saw at
decision time and a label from attributed conversions (docs/specs/attribution.md).

Point in time: features come from the decision log (the row built from the profile as Redis held it
at `ts`), or, for decisions logged without features, from the latest profile snapshot taken at or
before `ts` (an as-of join). Labels count only conversions attributed to the decision, at or after
it and within the window, and only decisions whose whole window lies before `observed_until` are
kept, so a label is never "no conversion yet". `check_point_in_time` verifies all of this on the
built set and refuses it otherwise.
"""

from __future__ import annotations

from pathlib import Path

import ibis
import numpy as np
import pandas as pd

from rta.v1 import decision_pb2 as pb
from rta_service.features import FEATURE_NAMES

from .attribution import DEFAULT_WINDOW_S, attribute, touch_id
from .conversions import TYPES


class LeakError(AssertionError):
    """A training example uses information from after its decision, or a label that is not complete."""


LOG_COLUMNS = ("entry_id", "entry_index", "request_id", "ts", "ids", "one_id", "decision", "degraded", "features",
               "score", "model_version", "holdout", "os", "platform")


def read_decisions(con, log_dir: Path) -> ibis.Table:
    """The exported decision log (rta logs export) as a table of the backend; a clear error when the
    directory holds no export or its files lack a column the training set needs."""
    pattern = Path(log_dir) / "hour=*" / "part-*.parquet"
    if not any(Path(log_dir).glob("hour=*/part-*.parquet")):
        raise FileNotFoundError(f"{log_dir}: no exported decision log ({pattern.relative_to(log_dir)}); "
                                "run `rta logs export --out DIR` first")
    table = con.read_parquet(str(pattern), hive_partitioning=False)
    missing = [c for c in LOG_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{pattern}: missing column(s) {', '.join(missing)}; is this an `rta logs export` output?")
    return table


def build(decisions: ibis.Table, conversions: ibis.Table, observed_until: float,
          window_s: float = DEFAULT_WINDOW_S, label_types: tuple[str, ...] = TYPES) -> pd.DataFrame:
    """Examples: request_id, ts, feature_ts, FEATURE_NAMES columns, label, first_conv_ts, conversions,
    value_fen, score, model_version, holdout, one_id. Checked with check_point_in_time."""
    d = decisions
    scored = d.filter((d.decision == pb.BID) & ~d.degraded & d.features.notnull())
    scored = scored.mutate(touch_id=touch_id(scored))
    attributed = attribute(decisions, conversions, window_s)
    attributed = attributed.filter(attributed.type.isin(list(label_types)))
    per_touch = attributed.group_by("touch_id").aggregate(
        first_conv_ts=attributed.conv_ts.min(), conversions=attributed.count(), value_fen=attributed.value_fen.sum())
    ex = scored.left_join(per_touch, scored.touch_id == per_touch.touch_id)
    ex = ex.filter(ex.ts + window_s <= observed_until)
    ex = ex.select("touch_id", "request_id", "ts", "features", "first_conv_ts", "conversions", "value_fen", "score",
                   "model_version", "holdout", "one_id", "os", "platform")
    df = ex.execute()
    if df.empty:
        raise ValueError(f"no scored BID decision in the log is older than the attribution window ({window_s:g} s) "
                         "at observed_until; wait for the window to pass or give a shorter --window-s")
    df = df.sort_values(["ts", "request_id", "touch_id"], ignore_index=True)
    matrix = np.array([[np.nan if v is None else v for v in row] for row in df["features"]], dtype=np.float64)
    matrix = matrix.reshape(len(df), len(FEATURE_NAMES))
    df = pd.concat([df.drop(columns=["features"]), pd.DataFrame(matrix, columns=list(FEATURE_NAMES))], axis=1)
    df["feature_ts"] = df["ts"]  # the log holds the row as built at decision time
    df["label"] = df["first_conv_ts"].notna().astype(np.int8)
    df["conversions"] = df["conversions"].fillna(0).astype(np.int64)
    df["value_fen"] = df["value_fen"].fillna(0).astype(np.int64)
    check_point_in_time(df, observed_until, window_s)
    return df


def profile_asof(decisions: ibis.Table, snapshots: ibis.Table) -> ibis.Table:
    """Each decision with the latest profile snapshot of its OneID taken at or before it (snapshot_ts).
    snapshots: one_id, snapshot_ts and profile columns (the CDP's export of each generation)."""
    return decisions.asof_join(snapshots, on=decisions.ts >= snapshots.snapshot_ts, predicates="one_id")


def check_point_in_time(df: pd.DataFrame, observed_until: float, window_s: float) -> None:
    """Raise LeakError if any example saw the future or carries an incomplete label."""
    checks = [
        ("features built after the decision", df["feature_ts"] > df["ts"]),
        ("a conversion before the decision counted", df["first_conv_ts"] < df["ts"]),
        ("a conversion outside the window counted", df["first_conv_ts"] - df["ts"] > window_s),
        ("a label whose window is not over yet", df["ts"] + window_s > observed_until),
    ]
    if "snapshot_ts" in df.columns:
        checks.append(("a profile snapshot taken after the decision", df["snapshot_ts"] > df["ts"]))
    for what, bad in checks:
        bad = bad.fillna(False).to_numpy(dtype=bool)
        if bad.any():
            first = df.loc[bad, "request_id"].iloc[0] if "request_id" in df.columns else int(np.argmax(bad))
            raise LeakError(f"{int(bad.sum())} example(s) with {what} (first: {first})")
