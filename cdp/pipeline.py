"""`rta cdp`: read the private-domain tables, build profiles as of a date, publish them to Redis."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pandas as pd
import redis

from . import engine, ingest
from .export import export
from .ingest import CDP_TABLES
from .profiles import cutoff_ts, index_frame, profile_tables, to_frame

META_FILE = "meta.json"  # written by simulate; carries the world's as_of


def read_tables(input_dir: Path, names: tuple[str, ...] = CDP_TABLES) -> dict[str, pd.DataFrame]:
    """{name: DataFrame} from `{input_dir}/{name}.parquet`."""
    input_dir = Path(input_dir)
    missing = [n for n in names if not (input_dir / f"{n}.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"{input_dir}: missing {', '.join(f'{n}.parquet' for n in missing)}")
    return {n: pd.read_parquet(input_dir / f"{n}.parquet") for n in names}


def world_as_of(input_dir: Path, as_of: dt.date | None = None) -> dt.date:
    """as_of if given, else the as_of in the world's meta.json, else today (UTC)."""
    if as_of is not None:
        return as_of
    meta = Path(input_dir) / META_FILE
    if meta.exists():
        return dt.date.fromisoformat(json.loads(meta.read_text())["as_of"])
    return dt.datetime.now(dt.UTC).date()


def run(input_dir: Path, redis_url: str, namespace: str = "rta", as_of: dt.date | None = None,
        grace_s: float = 0.0, engine_name: str = "duckdb", engine_opts: dict | None = None) -> dict:
    """Build profiles from input_dir as of `as_of` and export them as a new generation; returns a summary."""
    started = time.perf_counter()
    as_of = world_as_of(input_dir, as_of)
    con = engine.connect(engine_name, **(engine_opts or {}))
    tables = ingest.read_parquet(con, input_dir)
    profile_t, index_t, res = profile_tables(tables, as_of)
    profiles, index = to_frame(profile_t), index_frame(index_t)
    n_records = res.records.count().to_pyarrow().as_py()
    built = time.perf_counter()
    client = redis.Redis.from_url(redis_url, socket_timeout=60, socket_connect_timeout=10)
    try:
        exported = export(client, profiles, index, ns=namespace, grace_s=grace_s)
    finally:
        client.close()
    return {
        "as_of": as_of.isoformat(),
        "cutoff_ts": cutoff_ts(as_of),
        "namespace": namespace,
        "engine": engine_name,
        "records": n_records,
        "oneid_rounds": res.rounds,
        "profiles": len(profiles),
        "members": int(profiles["is_member"].sum()),
        "profiles_with_devices": int((profiles["device_count"] > 0).sum()),
        "build_seconds": round(built - started, 3),
        "export": exported,
    }
