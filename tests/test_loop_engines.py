"""The learning loop's training set on DuckDB and on Spark: the same decisions and conversions give
the same attributions and examples on both engines (the CDP's engine layer, cdp/engine.py)."""

from __future__ import annotations

import shutil

import ibis
import pandas as pd
import pytest

from cdp import engine
from tests.test_attribution import CONVERSIONS, DECISIONS, H
from training.attribution import attribute
from training.examples import build, read_decisions

pytestmark = pytest.mark.skipif(shutil.which("java") is None,
                                reason="the Spark engine needs a Java 17+ runtime on PATH; java not found")


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    """DECISIONS laid out as `rta logs export` writes them: hour=*/part-*.parquet."""
    root = tmp_path_factory.mktemp("log")
    for hour, part in DECISIONS.groupby(DECISIONS["ts"] // (2 * H)):
        d = root / f"hour={int(hour):04d}"
        d.mkdir()
        part.to_parquet(d / "part-0.parquet", index=False)
    return root


def run_on(con, log_dir):
    decisions = read_decisions(con, log_dir)
    conversions = con.create_view("conversions_t", ibis.memtable(CONVERSIONS), overwrite=True)
    attributed = con.execute(attribute(decisions, conversions, window_s=24 * H))
    examples = build(decisions, conversions, observed_until=100 * H, window_s=24 * H)
    return (attributed.sort_values("conversion_id", ignore_index=True),
            examples.sort_values("touch_id", ignore_index=True))


def test_duckdb_and_spark_attribute_and_label_alike(spark, log_dir):
    duck, sprk = run_on(engine.connect("duckdb"), log_dir), run_on(spark, log_dir)
    for name, a, b in zip(("attributed", "examples"), duck, sprk, strict=True):
        assert len(a) >= 3, name
        pd.testing.assert_frame_equal(a, b, check_dtype=False, obj=name)
    assert duck[1]["label"].sum() >= 3
