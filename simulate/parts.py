"""A large world generated in parts: independent worlds of at most `part` people, written as one.

`simulate()` holds the whole world in memory as pandas frames (about 1.7 GiB per million people, so
17 GiB at 10M). For the 10M-person benchmark the world is made of parts of 1M people instead, each
simulated on its own (two at a time, in worker processes) and appended to one Parquet file per table
with its identifiers shifted past the previous parts' (records, orders, friendships, WeCom events,
stores, guides, groups, devices, exposures, people), so no two parts share a record, store or
device. Each part is a world of the same statistics; people of different parts are strangers, as they
are in one world. Memory is that of one part per worker plus the writers' buffers.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from .world import META_FILE, simulate

PART = 1_000_000
BATCH = 1 << 18


def _shift(fmt: str, column: str, offset: str) -> str:
    """SQL: the id `column` (a letter then digits, e.g. r00000012) with `offset` added, printed with `fmt`."""
    return f"printf('{fmt}', CAST(substr({column}, 2) AS BIGINT) + {offset})"


def _person(column: str) -> str:
    return f"CASE WHEN {column} >= 0 THEN {column} + $person ELSE {column} END"


_GUIDE = ("printf('g%04d-%s', CAST(split_part(substr(guide_id, 2), '-', 1) AS BIGINT) + $store, "
          "split_part(guide_id, '-', 2))")  # a guide is g{store number}-{n}

# (table, column) -> SQL over one part's column with that part's offsets ($record, $order, ...); columns
# not listed are copied as they are.
SHIFTS = {
    ("memberships", "record_id"): _shift("r%08d", "record_id", "$record"),
    ("membership_devices", "record_id"): _shift("r%08d", "record_id", "$record"),
    ("orders", "order_id"): _shift("o%09d", "order_id", "$order"),
    ("orders", "record_id"): _shift("r%08d", "record_id", "$record"),
    ("orders", "store_id"): _shift("s%04d", "store_id", "$store"),
    ("wecom", "friendship_id"): _shift("w%08d", "friendship_id", "$friendship"),
    ("wecom", "store_id"): _shift("s%04d", "store_id", "$store"),
    ("wecom", "guide_id"): _GUIDE,
    ("memberships", "store_id"): _shift("s%04d", "store_id", "$store"),
    ("stores", "store_id"): _shift("s%04d", "store_id", "$store"),
    ("wecom_interactions", "event_id"): _shift("e%09d", "event_id", "$event"),
    ("wecom_interactions", "guide_id"): _GUIDE,
    ("wecom_interactions", "group_id"): "printf('grp-s%04d', CAST(substr(group_id, 6) AS BIGINT) + $store)",
    ("truth_memberships", "record_id"): _shift("r%08d", "record_id", "$record"),
    ("truth_wecom", "friendship_id"): _shift("w%08d", "friendship_id", "$friendship"),
    ("devices", "device_key"): "device_key + $device",
    ("truth_devices", "device_key"): "device_key + $device",
    ("traffic", "device_key"): "device_key + $device",
    ("conversions", "device_key"): "device_key + $device",
    ("traffic", "exposure_id"): "exposure_id + $exposure",
    ("conversions", "exposure_id"): "exposure_id + $exposure",
    ("truth_exposures", "exposure_id"): "exposure_id + $exposure",
    **{(t, "truth_person"): _person("truth_person")
       for t in ("truth_people", "truth_memberships", "truth_wecom", "truth_devices", "truth_exposures")},
}


def _sizes(people: int, part: int) -> list[int]:
    n = -(-people // part)
    return [people // n + (1 if k < people % n else 0) for k in range(n)]


def _one(args) -> dict:
    path, people, seed, as_of, unknown_share, traffic = args
    return simulate(Path(path), people=people, seed=seed, as_of=as_of, unknown_share=unknown_share,
                    traffic=traffic)


def simulate_in_parts(out_dir: Path, people: int, seed: int = 7, as_of: dt.date | None = None,
                      unknown_share: float = 0.7, traffic: int | None = None, part: int = PART,
                      workers: int = 2) -> dict:
    """Like simulate(), for worlds too big to hold in memory; a world of <= part people is simulate()'s."""
    as_of = as_of or dt.datetime.now(dt.UTC).date()
    if people <= part:
        return simulate(out_dir, people=people, seed=seed, as_of=as_of, unknown_share=unknown_share, traffic=traffic)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = _sizes(people, part)
    rows = traffic if traffic is not None else 5 * people
    scratch = Path(tempfile.mkdtemp(prefix="rta-sim-parts-", dir=out_dir))
    jobs = [(str(scratch / f"part{k}"), n, seed * 100_003 + k, as_of, unknown_share, max(1, rows * n // people))
            for k, n in enumerate(sizes)]
    writers: dict[str, pq.ParquetWriter] = {}
    offsets = dict.fromkeys(("record", "order", "friendship", "event", "store", "device", "exposure", "person"), 0)
    total: dict[str, int] = {}
    devices = unknown = 0
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for (path, n, *_), summary in zip(jobs, pool.map(_one, jobs), strict=True):
                for table in summary["rows"]:
                    _append(con, writers, out_dir, Path(path), table, offsets)
                    total[table] = total.get(table, 0) + summary["rows"][table]
                r = summary["rows"]
                offsets["record"] += r["memberships"]
                offsets["order"] += r["orders"]
                offsets["friendship"] += r["wecom"]
                offsets["store"] += r["stores"]
                offsets["event"] += r["wecom_interactions"]
                offsets["device"] += summary["devices"]
                offsets["exposure"] += r["traffic"]
                offsets["person"] += n
                devices += summary["devices"]
                unknown += summary["unknown_devices"]
                shutil.rmtree(path)
    finally:
        for writer in writers.values():
            writer.close()
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {"as_of": as_of.isoformat(), "cutoff_ts": summary["cutoff_ts"], "seed": seed,
               "unknown_share": unknown_share, "rows": total, "devices": devices, "unknown_devices": unknown,
               "parts": len(sizes)}
    (out_dir / META_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _append(con, writers: dict, out_dir: Path, part_dir: Path, table: str, offsets: dict[str, int]) -> None:
    source = part_dir / f"{table}.parquet"
    columns = pq.read_schema(source).names
    select = ", ".join(f"{SHIFTS.get((table, c), c)} AS {c}" for c in columns)
    used = {k: v for k, v in offsets.items() if f"${k}" in select}
    query = con.sql(f"SELECT {select} FROM read_parquet($path)", params={"path": str(source), **used})
    batches = query.to_arrow_reader(BATCH)
    if table not in writers:
        writers[table] = pq.ParquetWriter(out_dir / f"{table}.parquet", batches.schema)
    writer = writers[table]
    for batch in batches:
        writer.write_batch(batch.cast(writer.schema) if batch.schema != writer.schema else batch)
