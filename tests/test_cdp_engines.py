"""The golden pipeline: one tiny world through the CDP on DuckDB and on Spark gives identical output."""

from __future__ import annotations

import datetime as dt
import shutil

import pandas as pd
import pytest

from cdp import engine, ingest
from cdp.profiles import index_frame, profile_tables, to_frame
from simulate.world import simulate

AS_OF = dt.date(2025, 6, 1)
BUILT_TS = 1_700_000_000

pytestmark = pytest.mark.skipif(shutil.which("java") is None,
                                reason="the Spark engine needs a Java 17+ runtime on PATH; java not found")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("golden-world")
    simulate(path, people=200, seed=3, as_of=AS_OF)
    return path


def run_on(con, world) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]:
    profiles, index, res = profile_tables(ingest.read_parquet(con, world), AS_OF, built_ts=BUILT_TS, tags=True)
    records = res.records.to_pandas().sort_values(["table", "record_id"], ignore_index=True)
    tagged = res.tags.to_pandas().sort_values("one_id", ignore_index=True)
    return to_frame(profiles), index_frame(index), records, tagged, res.rounds


def test_duckdb_and_spark_produce_the_same_profiles(world, spark):
    duck = run_on(engine.connect("duckdb"), world)
    sprk = run_on(spark, world)
    names = ("profiles", "index", "records", "tags")
    for name, a, b in zip(names, duck[:4], sprk[:4], strict=True):
        assert len(a) > 50, name
        pd.testing.assert_frame_equal(a, b, check_dtype=False, obj=name)
    assert duck[4] == sprk[4]  # the same number of label-propagation rounds
    profiles = duck[0]
    assert profiles["order_count"].sum() > 0 and profiles["wecom_friend"].any() and profiles["is_member"].any()
    assert profiles["one_id"].is_unique and len(profiles) < len(duck[2])  # records were merged into people
    tagged = duck[3]  # the comparison covers the tags from stores and WeCom interactions too
    assert set(tagged["best_store_source"].dropna()) == {"orders", "wecom", "registration"}
    assert tagged["new_store_nearby"].any() and tagged["in_wecom_group"].any() and tagged["wecom_chats_30d"].sum() > 0
