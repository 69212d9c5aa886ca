"""`rta simulate loop` on a tiny world: two days of traffic through the real service, the log exported,
a model retrained, promoted and picked up by the running service."""

from __future__ import annotations

import pyarrow.parquet as pq

from simulate.loop import run_loop
from training.log_export import read_log


def test_two_days_of_the_loop(tmp_path):
    lines: list[str] = []
    results = run_loop(2, people=1500, seed=3, traffic=30000, workdir=tmp_path, say=lines.append)
    assert len(results) == 2 and sum(line.startswith("day ") for line in lines) == 2
    for r in results:
        assert r.requests > 1000 and 0 < r.bids <= r.requests
        assert r.conversions > 0 and 0.9 * r.conversions <= r.attributed <= r.conversions
        assert r.holdout[1] > 0 and r.treatment[1] > 0
        assert r.ceiling_auc is not None and "conversions per 1,000 bids" in r.line() and "95% CI" in r.line()
    log = read_log(tmp_path / "log")
    assert log.num_rows == sum(r.requests for r in results)  # every decision logged and exported once
    assert len(set(log.column("request_id").to_pylist())) == log.num_rows
    day1, day2 = results
    if day1.retrained.startswith("lgbm-") and "not promoted" not in day1.retrained:
        # retrained and promoted after day 1: day 2 is answered by that model
        assert day2.model_version == day1.retrained.split()[0]
        assert set(log.column("model_version").to_pylist()) == {day1.model_version, day2.model_version}
    else:
        assert day1.retrained.startswith("kept the model") or "not promoted" in day1.retrained
        assert day2.model_version == day1.model_version
    reports = list(tmp_path.glob("model-day*/report.json"))
    assert reports or not day1.retrained.startswith("lgbm-")
    assert pq.read_table(sorted(tmp_path.glob("log/hour=*/part-*.parquet"))[0]).num_rows > 0
