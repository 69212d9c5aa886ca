"""Input validation: every row of every input file is either passed on, cleaned, or rejected with a reason.

Reads `{input}/{table}.parquet` or `{input}/{table}.csv` in record batches (never the whole file in
memory), checks each field against cdp.schema.SCHEMAS and the rules below, writes the good rows to
`{work}/{table}.parquet` for the engine, and every bad row to `{work}/rejects.csv` as
(file, row, field, reason). Row numbers are 1-based data rows (a CSV's header is not counted).
Rejected values are not copied to the reject file: they may be personal data (a raw phone number).
rows in = rows out + rows rejected, per table, always.

Phone numbers: a `phone_hash` that is a raw phone number (digits, optional +, 11-15 long) is refused
unless a `phone_salt` is given, in which case it is replaced by md5(salt + digits) before anything
else sees it.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rta_service import keyspace

from .schema import SCHEMAS

CHANNELS = ("store", "miniprogram", "app", "tmall", "jd", "douyin")
REQUIRED = {
    "memberships": ("record_id", "channel", "created_ts", "is_member"),
    "membership_devices": ("record_id", "id_type", "value_md5"),
    "orders": ("order_id", "record_id", "channel", "ts", "amount_fen"),
    "wecom": ("friendship_id", "external_userid", "guide_id", "store_id", "added_ts", "removed_ts"),
}
RAW_PHONE = r"^\s*\+?[0-9]{11,15}\s*$"
INT_TEXT = r"^\s*-?[0-9]+\s*$"
BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "t": True, "f": False}
BATCH_ROWS = 1 << 16


class InputError(ValueError):
    """An input file that cannot be read at all (missing, wrong columns)."""


def _source(input_dir: Path, table: str) -> Path:
    for ext in ("parquet", "csv"):
        path = Path(input_dir) / f"{table}.{ext}"
        if path.exists():
            return path
    raise InputError(f"{input_dir}: missing {table}.parquet or {table}.csv")


def _batches(path: Path, table: str):
    schema = SCHEMAS[table]
    if path.suffix == ".csv":
        types = {name: pa.string() for name in schema.names}
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=8 << 20),
                                convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))
        yield from reader
        return
    file = pq.ParquetFile(path)
    missing = [n for n in schema.names if n not in file.schema_arrow.names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    yield from file.iter_batches(batch_size=BATCH_ROWS, columns=list(schema.names))


def _check_column(table: str, name: str, col: pa.Array,
                  salt: str | None) -> tuple[pa.Array, list[tuple[np.ndarray, str]]]:
    """(the column cast to its schema type, [(bad-row mask, reason)])."""
    want = SCHEMAS[table][name].to_pyarrow()
    problems: list[tuple[np.ndarray, str]] = []
    present = pc.is_valid(col)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = col
        if pa.types.is_integer(want):
            ok = pc.fill_null(pc.match_substring_regex(text, INT_TEXT), True)
            problems.append((~ok.to_numpy(zero_copy_only=False), "not an integer"))
            col = pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(text), None), want)
        elif pa.types.is_boolean(want):
            lowered = pc.utf8_lower(pc.utf8_trim_whitespace(text))
            ok = pc.fill_null(pc.is_in(lowered, pa.array(list(BOOL_TEXT))), True)
            problems.append((~ok.to_numpy(zero_copy_only=False), "not a boolean (true/false/1/0)"))
            col = pa.array([BOOL_TEXT.get(v) if v is not None else None for v in lowered.to_pylist()], pa.bool_())
    if name in REQUIRED[table]:
        blank = pc.equal(pc.utf8_trim_whitespace(col), "") if pa.types.is_string(col.type) else pc.is_null(col)
        problems.append((~present.to_numpy(zero_copy_only=False) | pc.fill_null(blank, False).to_numpy(
            zero_copy_only=False), "required"))
    if name == "channel":
        problems.append((~pc.fill_null(pc.is_in(col, pa.array(CHANNELS)), True).to_numpy(zero_copy_only=False),
                         f"unknown channel (expected one of {', '.join(CHANNELS)})"))
    if name == "id_type":
        known = pa.array(sorted(keyspace.TYPE_CODES), pa.int64())
        problems.append((~pc.fill_null(pc.is_in(pc.cast(col, pa.int64()), known), True).to_numpy(zero_copy_only=False),
                         "unknown device id type"))
    if name in ("created_ts", "ts", "added_ts"):
        problems.append((pc.fill_null(pc.less_equal(col, 0), False).to_numpy(zero_copy_only=False),
                         "timestamp must be > 0 (unix seconds)"))
    if name in ("amount_fen", "removed_ts"):
        problems.append((pc.fill_null(pc.less(col, 0), False).to_numpy(zero_copy_only=False), "must be >= 0"))
    if name == "phone_hash":
        raw = pc.fill_null(pc.match_substring_regex(col, RAW_PHONE), False)
        if salt is None:
            problems.append((raw.to_numpy(zero_copy_only=False),
                             "raw phone number refused; give phone_salt to have it salted and hashed"))
        elif pc.any(raw).as_py():
            col = pa.array([hashlib.md5((salt + "".join(c for c in v if c.isdigit())).encode()).hexdigest()
                            if r else v for v, r in zip(col.to_pylist(), raw.to_pylist(), strict=True)], pa.string())
    return pc.cast(col, want), problems


def validate(input_dir: Path, work_dir: Path, phone_salt: str | None = None,
             tables: tuple[str, ...] = tuple(SCHEMAS)) -> dict:
    """Write clean Parquet for `tables` to work_dir and bad rows to work_dir/rejects.csv; returns counts."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    with open(work_dir / "rejects.csv", "w", newline="", encoding="utf-8") as rejects_file:
        rejects = csv.writer(rejects_file)
        rejects.writerow(["file", "row", "field", "reason"])
        for table in tables:
            path = _source(input_dir, table)
            schema = SCHEMAS[table].to_pyarrow()
            seen = kept = 0
            with pq.ParquetWriter(work_dir / f"{table}.parquet", schema) as writer:
                for batch in _batches(path, table):
                    bad = np.zeros(batch.num_rows, dtype=bool)
                    columns = []
                    for name in schema.names:
                        col, problems = _check_column(table, name, batch.column(name), phone_salt)
                        columns.append(col)
                        for mask, reason in problems:
                            for row in np.flatnonzero(mask & ~bad):
                                rejects.writerow([str(path), seen + int(row) + 1, name, reason])
                            bad |= mask
                    good = pa.RecordBatch.from_arrays(columns, schema=schema).filter(pa.array(~bad))
                    writer.write_batch(good)
                    seen += batch.num_rows
                    kept += good.num_rows
            counts[table] = {"in": seen, "out": kept, "rejected": seen - kept}
    return {"tables": counts, "rejects_file": str(work_dir / "rejects.csv")}
