"""`rta logs export`: drain the decision log stream to Parquet, partitioned by hour, exactly once.

Reads with a consumer group (`XREADGROUP`), writes each batch's records to
`{out}/hour=YYYY-MM-DDTHH/part-{first}_{last}.parquet` (UTC hour of the decision; `first`/`last` are
the batch's first and last stream entry IDs), durably (temporary file, fsync, rename, fsync the
directory), and only then acknowledges the batch (`XACK`).

After a crash, the entries that were read but not acknowledged are read again first (the pending
list of the same consumer). An entry whose ID lies inside the range of a file already written for
its hour was written by the crashed run, so it is skipped: a replay neither loses nor duplicates a
record whatever the batch size. This holds because one consumer reads the stream in order, so a
batch is every entry between its first and last ID. Run one exporter per stream at a time.

Records that cannot be decoded are written to `{out}/_rejected/part-{first}_{last}.jsonl` with
their entry ID and the error, then acknowledged: never silently lost.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from rta_service.decision_log import FIELD, BadLogRecord, decode_entry, stream_key, to_dict

GROUP = "export"
CONSUMER = "exporter"

SCHEMA = pa.schema([
    ("entry_id", pa.string()),
    ("entry_index", pa.int32()),  # position of the record in its stream entry
    ("ts", pa.float64()),
    ("request_id", pa.string()),
    ("platform", pa.int32()),
    ("os", pa.int32()),
    ("is_test", pa.bool_()),
    ("decision", pa.int32()),
    ("reasons", pa.list_(pa.int32())),
    ("ids", pa.list_(pa.string())),  # "{id_type}:{md5}", best first
    ("matched_id_type", pa.int32()),
    ("matched_id", pa.string()),
    ("one_id", pa.string()),
    ("known", pa.bool_()),
    ("degraded", pa.bool_()),
    ("score", pa.float64()),
    ("experiment_bucket", pa.int32()),
    ("holdout", pa.bool_()),
    ("model_version", pa.string()),
    ("strategy_ids", pa.list_(pa.string())),
    ("strategy_decisions", pa.list_(pa.int32())),
    ("strategy_reasons", pa.list_(pa.int32())),
    ("weight_factors", pa.list_(pa.float64())),
    ("features", pa.list_(pa.float64())),
])


def _eid(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _fname(entry_id: str) -> str:
    return entry_id.replace("-", ".")  # file-name form of a stream ID: "1733212345678.0"


def _parse_fname(name: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(first, last) entry IDs of a part file name, or None when it is not one."""
    if not name.startswith("part-"):
        return None
    stem = name[5:].rsplit(".", 1)[0]
    first, sep, last = stem.partition("_")
    try:
        return tuple(map(int, first.split("."))), tuple(map(int, last.split(".")))  # type: ignore[return-value]
    except ValueError:
        return None


def hour_dir(ts: float) -> str:
    return "hour=" + dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H")


def row(entry_id: str, index: int, rec) -> dict:
    return {"entry_id": entry_id, "entry_index": index, **to_dict(rec)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _written_ranges(d: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(first, last) entry IDs of the part files already in directory d."""
    if not d.exists():
        return []
    return [r for r in (_parse_fname(p.name) for p in d.glob("part-*")) if r is not None]


def _unwritten(rows: list[dict], d: Path) -> list[dict]:
    ranges = _written_ranges(d)
    return [r for r in rows if not any(a <= _eid(r["entry_id"]) <= b for a, b in ranges)]


def write_batch(out: Path, entries: list[tuple[str, dict]]) -> dict:
    """Write one batch (stream order) to its hour files, skipping entries a previous run already wrote."""
    first, last = entries[0][0], entries[-1][0]
    name = f"part-{_fname(first)}_{_fname(last)}"
    good: dict[str, list[dict]] = {}
    rejected: list[dict] = []
    for entry_id, fields in entries:
        raw = fields.get(FIELD.encode()) or fields.get(FIELD)
        try:
            records = decode_entry(raw)
        except BadLogRecord as exc:
            rejected.append({"entry_id": entry_id, "entry_index": None, "error": str(exc),
                             "raw_base64": base64.b64encode(raw or b"").decode()})
            continue
        for index, rec in enumerate(records):
            try:
                r = row(entry_id, index, rec)
                good.setdefault(hour_dir(r["ts"]), []).append(r)
            except (BadLogRecord, ValueError, OverflowError, OSError) as exc:
                rejected.append({"entry_id": entry_id, "entry_index": index, "error": str(exc),
                                 "raw_base64": base64.b64encode(rec.SerializeToString()).decode()})
    written = skipped = 0
    for hour, rows in sorted(good.items()):
        fresh = _unwritten(rows, out / hour)
        skipped += len(rows) - len(fresh)
        if fresh:
            table = pa.Table.from_pylist(fresh, schema=SCHEMA)
            _write_durably(out / hour / f"{name}.parquet", lambda f, t=table: pq.write_table(t, f))
            written += len(fresh)
    rejected = _unwritten(rejected, out / "_rejected")
    if rejected:
        path = out / "_rejected" / f"{name}.jsonl"
        if not path.exists():
            lines = "".join(json.dumps(r) + "\n" for r in rejected).encode()
            _write_durably(path, lambda f: f.write(lines))
    return {"written": written, "skipped": skipped, "rejected": len(rejected)}


def export(redis_url: str, out_dir: Path, namespace: str = "rta", batch: int = 200, group: str = GROUP,
           consumer: str = CONSUMER, max_batches: int | None = None) -> dict:
    """Drain the stream to out_dir until it is empty (or max_batches); returns counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = stream_key(namespace)
    client = redis.Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5)
    totals = {"batches": 0, "written": 0, "skipped": 0, "rejected": 0}
    try:
        try:
            client.xgroup_create(key, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        start = "0"  # first our own pending entries (a crashed run's), then new ones
        while max_batches is None or totals["batches"] < max_batches:
            reply = client.xreadgroup(group, consumer, {key: start}, count=batch)
            entries = [(eid.decode(), fields) for eid, fields in (reply[0][1] if reply else []) if fields]
            stale = [eid for eid, fields in (reply[0][1] if reply else []) if not fields]  # trimmed away
            if stale:
                client.xack(key, group, *stale)
            if not entries:
                if start == "0" and not stale:
                    start = ">"
                    continue
                if start == ">":
                    break
                continue
            counts = write_batch(out, entries)
            client.xack(key, group, *[eid for eid, _ in entries])
            totals["batches"] += 1
            for k in ("written", "skipped", "rejected"):
                totals[k] += counts[k]
    finally:
        client.close()
    return totals


def read_log(out_dir: Path) -> pa.Table:
    """Every exported record (all hours) as one table."""
    files = sorted(Path(out_dir).glob("hour=*/part-*.parquet"))
    if not files:
        return SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=SCHEMA) for f in files])
