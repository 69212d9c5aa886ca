"""Input validation: every row of every input file is either passed on, cleaned, or rejected with a reason.

Reads `{input}/{table}.parquet` or `{input}/{table}.csv` in record batches (never the whole file in
memory), checks each field against cdp.schema.SCHEMAS and the rules below, writes the good rows to
`{work}/{table}.parquet` for the engine, and every bad row to `{work}/rejects.csv` as
(file, row, field, reason). Row numbers are 1-based data rows (a CSV's header is not counted).
Rejected values are not copied to the reject file: they may be personal data (a raw phone number).
rows in = rows out + rows rejected, per table, always. A row repeating the key (KEYS) of an earlier
row of its table is rejected after the batch pass (one DuckDB query per table over the clean Parquet).

Phone numbers: a `phone_hash` that is a raw phone number (digits, optional +, 11-15 long, once spaces,
dashes and brackets are removed) is refused unless a `phone_salt` is given, in which case it is
replaced by md5(salt + digits) before anything else sees it; a Chinese mobile number loses its country
code (+86, 0086, 86) first, so every way of writing one number hashes alike.

Optional inputs (cdp.schema.OPTIONAL_TABLES, OPTIONAL_COLUMNS) may be absent: an absent table is
written empty and an absent column as nulls, and the result lists both. References to stores
(`store_id` of orders, memberships and friendships) are checked against the stores table when there
is one: a row naming an unknown store is kept (an order is revenue whether or not the store master
is complete) and written to `{work}/warnings.csv` (file, row, field, reason), and counted.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rta_service import keyspace

from .schema import INTERACTION_TYPES, NORMALIZED_COLUMNS, OPTIONAL_COLUMNS, OPTIONAL_TABLES, SCHEMAS, normalize

CHANNELS = ("store", "miniprogram", "app", "tmall", "jd", "douyin")
REQUIRED = {
    "memberships": ("record_id", "channel", "created_ts", "is_member"),
    "membership_devices": ("record_id", "id_type", "value_md5"),
    "orders": ("order_id", "record_id", "channel", "ts", "amount_fen"),
    "wecom": ("friendship_id", "external_userid", "guide_id", "store_id", "added_ts", "removed_ts"),
    "wecom_interactions": ("event_id", "external_userid", "guide_id", "type", "ts"),
    "stores": ("store_id", "city", "opened_ts"),
}
# Each table's key: a repeat of it after its first row is rejected (the whole row for device IDs: one account
# may carry several IDs of a type, but the same ID twice is one fact written twice).
KEYS = {
    "memberships": ("record_id",), "membership_devices": ("record_id", "id_type", "value_md5"),
    "orders": ("order_id",), "wecom": ("friendship_id",), "wecom_interactions": ("event_id",),
    "stores": ("store_id",),
}
DUCKDB_MEMORY = "2GB"  # per table being checked for repeats; DuckDB spills the rest to {work_dir}/.duckdb
DUCKDB_THREADS = 1  # tables are checked two at a time already (validate's threads)
STORE_REFERENCES = ("memberships", "orders", "wecom")  # tables whose store_id should name a known store
RANGES = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0)}
# 11-15 digits, an optional + and any spaces, dashes and brackets (PHONE_SEPARATORS) between them
RAW_PHONE = r"^[\s\-()]*\+?([\s\-()]*[0-9]){11,15}[\s\-()]*$"
PHONE_SEPARATORS = r"[\s\-()+]"
# A Chinese mobile number (1 and 10 digits) with its country code, +86, 0086 or 86, is salted without it.
CN_MOBILE = r"^\+(86|0086)(1[0-9]{10})$"  # matched with a + in front of the bare digits
INT_TEXT = r"^\s*-?[0-9]+\s*$"
FLOAT_TEXT = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"
BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "t": True, "f": False}
BATCH_ROWS = 1 << 16
NOT_UTF8 = "is not UTF-8 text (save the file as UTF-8; GBK is not read)"
# Timestamps are Unix seconds. An event (an account's creation, an order, a friendship, a WeCom event) must
# fall in [2000-01-01, 2100-01-01): a value past 2100 is almost always milliseconds (or microseconds), which
# would put every event after the cutoff and silently count nothing. A store may have opened before 2000;
# `removed_ts` 0 means "still friends".
TS_2000, TS_2100 = 946_684_800, 4_102_444_800
TIMESTAMPS = {"created_ts": TS_2000, "ts": TS_2000, "added_ts": TS_2000, "removed_ts": TS_2000, "opened_ts": 1}
TS_REASON = "not Unix seconds between {low} and 2100-01-01 (milliseconds?)"


class InputError(ValueError):
    """An input file that cannot be read at all (missing, wrong columns)."""


def _source(input_dir: Path, table: str) -> Path | None:
    """The table's file; None for an absent optional table."""
    found = [path for path in (Path(input_dir) / f"{table}.{ext}" for ext in ("parquet", "csv")) if path.exists()]
    if len(found) > 1:
        raise InputError(f"{input_dir}: both {found[0].name} and {found[1].name}; keep only the one to read")
    if found:
        return found[0]
    if table in OPTIONAL_TABLES:
        return None
    raise InputError(f"{input_dir}: missing {table}.parquet or {table}.csv")


def _open(path: Path, table: str) -> tuple[list[str], object, list[tuple[int, int, int]]]:
    """(the schema's columns the file lacks, an iterator of its record batches, the data rows of a CSV skipped
    for a wrong number of fields, filled in as the batches are read). Only columns of OPTIONAL_COLUMNS may be
    lacking; any other is an InputError, and so is a file that cannot be read (never a raw Arrow message, which
    may quote the file's values)."""
    schema = SCHEMAS[table]
    skipped: list[tuple[int, int, int]] = []  # (data row, fields expected, fields found)
    if path.suffix == ".csv":
        def skip(row: pacsv.InvalidRow) -> str:  # row.number is the 1-based record, header included
            skipped.append((row.number - 1, row.expected_columns, row.actual_columns))
            return "skip"

        types = {name: pa.string() for name in schema.names}
        try:  # use_threads=False: InvalidRow.number is known only to a serial reader
            reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=8 << 20, use_threads=False),
                                    parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
                                    convert_options=pacsv.ConvertOptions(
                                        column_types=types, null_values=[""], strings_can_be_null=True,
                                        quoted_strings_can_be_null=False))
            names = reader.schema.names  # decoded here: a header row that is not UTF-8 fails now
        except pa.ArrowInvalid as e:
            raise _csv_error(path, e, None) from None
        except UnicodeDecodeError:
            raise InputError(f"{path}: the header row {NOT_UTF8}") from None
        batches = _csv_batches(path, reader)
    else:
        try:
            file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None
        names = file.schema_arrow.names
        batches = file.iter_batches(batch_size=BATCH_ROWS, columns=[n for n in schema.names if n in names])
    absent = [n for n in schema.names if n not in names]
    missing = [n for n in absent if n not in OPTIONAL_COLUMNS.get(table, ())]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    return absent, batches, skipped


def _csv_batches(path: Path, reader):
    """The reader's batches; an undecodable or unparsable file is an InputError naming the file and row."""
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            raise _csv_error(path, e, reader.schema.names) from None
        yield batch


def _csv_error(path: Path, error: pa.ArrowInvalid, names: list[str] | None) -> InputError:
    text = str(error)
    if "Empty CSV file" in text:
        return InputError(f"{path}: empty file (a CSV needs a header row)")
    if "UTF8" in text or "UTF-8" in text:
        line, field = _first_non_utf8(path)
        if names is None and line > 1:  # the reader failed while opening: take the names from the header
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                names = next(csv.reader(f), [])
        where = "the header row" if line <= 1 else f"row {line - 1}"
        if names and line > 1 and field < len(names):
            where += f", field {names[field]}"
        return InputError(f"{path}: {where} {NOT_UTF8}")
    return InputError(f"{path}: not a readable CSV file (a quote left open?)")  # Arrow's text quotes the values


def _first_non_utf8(path: Path) -> tuple[int, int]:
    """(1-based line, 0-based field counting commas) of the file's first byte sequence that is not UTF-8."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return line_no, line[:e.start].count(b",")
    return 0, 0


def _file_rows(index: np.ndarray, skipped: np.ndarray) -> np.ndarray:
    """1-based data rows of the file of the read rows at `index` (0-based among the rows read), given the
    sorted data rows the reader skipped."""
    before = skipped - np.arange(len(skipped)) - 1  # rows read before each skipped row
    return index + 1 + np.searchsorted(before, index, side="right")


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
    index = batch.schema.get_field_index(name)
    return batch.column(index) if index >= 0 else pa.nulls(batch.num_rows, pa.string())


def _check_column(table: str, name: str, col: pa.Array,
                  salt: str | None) -> tuple[pa.Array, list[tuple[np.ndarray, str]]]:
    """(the column cast to its schema type, [(bad-row mask, reason)])."""
    want = SCHEMAS[table][name].to_pyarrow()
    problems: list[tuple[np.ndarray, str]] = []
    present = pc.is_valid(col)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = col
        if not pa.types.is_string(want):  # an empty field of a number, like a null: checked as required or not
            text = pc.if_else(pc.equal(text, ""), pa.scalar(None, col.type), text)
        if pa.types.is_integer(want):
            ok = pc.fill_null(pc.match_substring_regex(text, INT_TEXT), True)
            problems.append((~ok.to_numpy(zero_copy_only=False), "not an integer"))
            col = pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(text), None), want)
        elif pa.types.is_floating(want):
            ok = pc.fill_null(pc.match_substring_regex(text, FLOAT_TEXT), True)
            problems.append((~ok.to_numpy(zero_copy_only=False), "not a number"))
            col = pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(text), None), want)
        elif pa.types.is_boolean(want):
            lowered = pc.utf8_lower(pc.utf8_trim_whitespace(text))
            ok = pc.fill_null(pc.is_in(lowered, pa.array(list(BOOL_TEXT))), True)
            problems.append((~ok.to_numpy(zero_copy_only=False), "not a boolean (true/false/1/0)"))
            col = pa.array([BOOL_TEXT.get(v) if v is not None else None for v in lowered.to_pylist()], pa.bool_())
    if name in REQUIRED[table]:
        # Present, and not blank unless an identifier: a junk identifier ("", "null", ...) links nobody (OneID
        # blocks it) but the row stays, e.g. a friendship whose external_userid the CRM lost.
        text_type = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
        blank = pc.equal(pc.utf8_trim_whitespace(col), "") if text_type and name not in NORMALIZED_COLUMNS.get(
            table, ()) else pc.is_null(col)
        problems.append((~present.to_numpy(zero_copy_only=False) | pc.fill_null(blank, False).to_numpy(
            zero_copy_only=False), "required"))
    if name == "channel":
        problems.append((~pc.fill_null(pc.is_in(col, pa.array(CHANNELS)), True).to_numpy(zero_copy_only=False),
                         f"unknown channel (expected one of {', '.join(CHANNELS)})"))
    if name == "id_type":
        known = pa.array(sorted(keyspace.TYPE_CODES), pa.int64())
        problems.append((~pc.fill_null(pc.is_in(pc.cast(col, pa.int64()), known), True).to_numpy(zero_copy_only=False),
                         "unknown device id type"))
    if name == "type" and table == "wecom_interactions":
        problems.append((~pc.fill_null(pc.is_in(col, pa.array(INTERACTION_TYPES)), True).to_numpy(
            zero_copy_only=False), f"unknown type (expected one of {', '.join(INTERACTION_TYPES)})"))
    if name in RANGES:
        low, high = RANGES[name]
        value = pc.cast(col, pa.float64())
        out = pc.or_(pc.or_(pc.less(value, low), pc.greater(value, high)), pc.is_nan(value))
        problems.append((pc.fill_null(out, False).to_numpy(zero_copy_only=False), f"out of range [{low:g}, {high:g}]"))
    if name in TIMESTAMPS:
        low = TIMESTAMPS[name]
        out = pc.or_(pc.less(col, low), pc.greater_equal(col, TS_2100))
        if name == "removed_ts":
            out = pc.and_(out, pc.not_equal(col, 0))
        reason = TS_REASON.format(low="1970-01-01" if low == 1 else "2000-01-01")
        problems.append((pc.fill_null(out, False).to_numpy(zero_copy_only=False),
                         "0 (still friends) or " + reason if name == "removed_ts" else reason))
    if name == "amount_fen":
        problems.append((pc.fill_null(pc.less(col, 0), False).to_numpy(zero_copy_only=False), "must be >= 0"))
    if name == "phone_hash":
        raw = pc.fill_null(pc.match_substring_regex(col, RAW_PHONE), False)
        if salt is None:
            problems.append((raw.to_numpy(zero_copy_only=False),
                             "raw phone number refused; give phone_salt to have it salted and hashed"))
        elif pc.any(raw).as_py():  # the few raw numbers only: the separators go, then a Chinese country code
            at = np.flatnonzero(raw.to_numpy(zero_copy_only=False))
            bare = pc.replace_substring_regex(pc.take(col, at), PHONE_SEPARATORS, "")
            digits = pc.replace_substring_regex(pc.utf8_replace_slice(bare, 0, 0, "+"), CN_MOBILE, r"\2")
            hashed = np.array(col.to_pylist(), dtype=object)
            hashed[at] = [hashlib.md5((salt + d.lstrip("+")).encode()).hexdigest() for d in digits.to_pylist()]
            col = pa.array(hashed, pa.string())
    return normalize(table, name, pc.cast(col, want)), problems


def _store_ids(work_dir: Path) -> pa.Array:
    return pc.unique(pq.read_table(work_dir / "stores.parquet", columns=["store_id"]).column("store_id"))


def _validate_table(table: str, path: Path | None, work_dir: Path, phone_salt: str | None,
                    known_stores: pa.Array | None) -> dict:
    """One table: clean rows to `{work_dir}/{table}.parquet`, its rejects and warnings to part files of their
    own (validate() joins them in table order, so the files do not depend on which thread ran first)."""
    schema = SCHEMAS[table].to_pyarrow()
    seen = kept = 0
    absent, batches, skipped = _open(path, table) if path is not None else ([], (), [])
    check_store = known_stores is not None and table in STORE_REFERENCES
    warned = listed = 0  # listed: rows of `skipped` written to the rejects so far
    gone: list[np.ndarray] = []  # file rows rejected, batch by batch
    parts = {kind: work_dir / f".{kind}.{table}.csv" for kind in ("rejects", "warnings")}
    with open(parts["rejects"], "w", newline="", encoding="utf-8") as rejects_file, \
            open(parts["warnings"], "w", newline="", encoding="utf-8") as warnings_file, \
            pq.ParquetWriter(work_dir / f"{table}.parquet", schema) as writer:
        rejects, warnings = csv.writer(rejects_file), csv.writer(warnings_file)
        for batch in batches:
            bad = np.zeros(batch.num_rows, dtype=bool)
            columns, rejected = [], []  # rejected: (row in the batch, field, reason), written in row order
            for name in schema.names:
                col, problems = _check_column(table, name, _column(batch, name), phone_salt)
                columns.append(col)
                for mask, reason in problems:
                    rejected.extend((int(row), name, reason) for row in np.flatnonzero(mask & ~bad))
                    bad |= mask
            # file rows of the batch's rows: a CSV row skipped for its number of fields shifts those after it
            gaps = np.array([row for row, _, _ in skipped], dtype=np.int64)
            rows = _file_rows(seen + np.arange(batch.num_rows), gaps) if len(gaps) else None
            listing = [(int(rows[r]) if rows is not None else seen + r + 1, name, reason)
                       for r, name, reason in rejected]
            listing += [(row, "", f"wrong number of fields (expected {want}, got {got})")
                        for row, want, got in skipped[listed:]]
            listed = len(skipped)
            gone.append(np.array([row for row, _, _ in listing], dtype=np.int64))
            rejects.writerows([str(path), row, name, reason] for row, name, reason in sorted(listing))
            good = pa.RecordBatch.from_arrays(columns, schema=schema)
            if check_store:
                store = good.column(schema.get_field_index("store_id"))
                unknown = pc.and_(pc.is_valid(store), pc.invert(pc.is_in(store, known_stores)))
                unknown = unknown.to_numpy(zero_copy_only=False) & ~bad
                for row in np.flatnonzero(unknown):
                    warnings.writerow([str(path), int(rows[row]) if rows is not None else seen + int(row) + 1,
                                       "store_id", "unknown store (not in stores); row kept"])
                warned += int(unknown.sum())
            good = good.filter(pa.array(~bad))
            writer.write_batch(good)
            seen += batch.num_rows
            kept += good.num_rows
        # skipped rows after the last batch (a file whose last rows, or only rows, have the wrong field count)
        rejects.writerows([str(path), row, "", f"wrong number of fields (expected {want}, got {got})"]
                          for row, want, got in skipped[listed:])
    gone.append(np.array([row for row, _, _ in skipped[listed:]], dtype=np.int64))
    seen += len(skipped)
    if kept:
        repeats = _drop_repeats(table, path, work_dir, np.sort(np.concatenate(gone)), parts)
        kept -= repeats["rows"]
        warned -= repeats["warned"]
    return {"counts": {"in": seen, "out": kept, "rejected": seen - kept}, "absent": absent, "warned": warned,
            "parts": parts}


def _repeats(parquet: Path, keys: tuple[str, ...], work_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(0-based rows of `parquet` repeating an earlier row's key, the row of that key's first occurrence),
    by row. One DuckDB aggregation over the keys (it spills to disk past DUCKDB_MEMORY); the rows themselves
    are only looked for when some key repeats."""
    cols = ", ".join(f'"{k}"' for k in keys)
    config = {"threads": DUCKDB_THREADS, "memory_limit": DUCKDB_MEMORY, "preserve_insertion_order": False,
              "temp_directory": str(work_dir / ".duckdb")}
    with duckdb.connect(config=config) as con:
        quoted = str(parquet).replace("'", "''")
        # hashes: a collision costs only the exact query below, which then finds nothing
        hashes = f"SELECT count(*) - count(DISTINCT hash({cols})) FROM read_parquet('{quoted}')"
        if not con.execute(hashes).fetchone()[0]:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        scan = f"read_parquet('{quoted}', file_row_number = true)"
        repeated = f"SELECT {cols}, min(file_row_number) AS first FROM {scan} GROUP BY ALL HAVING count(*) > 1"
        rows = con.execute(f"SELECT file_row_number AS n, first FROM {scan} JOIN ({repeated}) USING ({cols}) "
                           "WHERE file_row_number > first ORDER BY n").fetchnumpy()
    return rows["n"].astype(np.int64), rows["first"].astype(np.int64)


def _drop_repeats(table: str, path: Path | None, work_dir: Path, gone: np.ndarray, parts: dict[str, Path]) -> dict:
    """Rejects every row of `{work_dir}/{table}.parquet` whose key (KEYS) an earlier row has: rewrites the
    file without them, lists them in the table's rejects part (in row order, naming the first occurrence's
    row) and drops their store warnings. `gone`: the sorted file rows already rejected, which map the
    clean file's rows back to the input's. {rows: repeats rejected, warned: warnings dropped}."""
    out = work_dir / f"{table}.parquet"
    repeat, first = _repeats(out, KEYS[table], work_dir)
    if not len(repeat):
        return {"rows": 0, "warned": 0}
    keep = np.ones(pq.ParquetFile(out).metadata.num_rows, dtype=bool)
    keep[repeat] = False
    rewritten = out.with_name(f".{table}.dedup.parquet")
    with pq.ParquetWriter(rewritten, SCHEMAS[table].to_pyarrow()) as writer:
        at = 0
        for batch in pq.ParquetFile(out).iter_batches(batch_size=BATCH_ROWS):
            writer.write_batch(batch.filter(pa.array(keep[at:at + batch.num_rows])))
            at += batch.num_rows
    rewritten.replace(out)
    rows, firsts = _file_rows(repeat, gone), _file_rows(first, gone)
    field = KEYS[table][0] if len(KEYS[table]) == 1 else "+".join(KEYS[table])
    what = f"duplicate {field}" if len(KEYS[table]) == 1 else "duplicate row (same record_id, id_type, value_md5)"
    listed = [[str(path), int(r), field, f"{what} (first at row {int(f)})"] for r, f in zip(rows, firsts, strict=True)]
    with open(parts["rejects"], newline="", encoding="utf-8") as f:
        listed += [[name, int(row), field_, reason] for name, row, field_, reason in csv.reader(f)]
    with open(parts["rejects"], "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(sorted(listed, key=lambda r: r[1]))
    dropped = set(rows.tolist())
    with open(parts["warnings"], newline="", encoding="utf-8") as f:
        warnings = list(csv.reader(f))
    kept = [w for w in warnings if int(w[1]) not in dropped]
    with open(parts["warnings"], "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(kept)
    return {"rows": len(repeat), "warned": len(warnings) - len(kept)}


def find_sources(input_dir: Path, tables: tuple[str, ...] = tuple(SCHEMAS)) -> dict[str, Path | None]:
    """Each table's file (None for an absent optional table); an InputError for a missing directory or
    required table, or a table given both as CSV and as Parquet. Cheap: `rta cdp run` calls it first."""
    if not Path(input_dir).is_dir():
        raise InputError(f"{input_dir}: no such directory" if not Path(input_dir).exists() else
                         f"{input_dir}: not a directory (input is a directory of tables)")
    return {table: _source(input_dir, table) for table in tables}


def check_reject_share(counts: dict[str, dict], max_share: float, rejects_file: str | None) -> None:
    """An InputError when some table lost more than `max_share` of its rows to rejects: a wrong extract
    (milliseconds for seconds, another file's columns) must not become a run that exports people with
    their orders missing."""
    over = [f"{table} {c['rejected']:,} of {c['in']:,} rows ({c['rejected'] / c['in']:.0%})"
            for table, c in counts.items() if c["in"] and c["rejected"] > max_share * c["in"]]
    if over:
        raise InputError(f"rejected rows above max_reject_share {max_share:g}: {'; '.join(over)}; the reasons are "
                         f"in {rejects_file}; nothing was exported (raise max_reject_share to go on regardless)")


def validate(input_dir: Path, work_dir: Path, phone_salt: str | None = None,
             tables: tuple[str, ...] = tuple(SCHEMAS), threads: int = 2) -> dict:
    """Write clean Parquet for `tables` to work_dir, bad rows to work_dir/rejects.csv and kept rows that
    name an unknown store to work_dir/warnings.csv; returns counts per table, absent optional tables and
    columns, and warning counts per `table.field`. Tables are checked `threads` at a time (Arrow's
    kernels and Parquet I/O release the GIL), stores first: the others refer to it."""
    sources = find_sources(input_dir, tables)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    if "stores" in sources:
        done["stores"] = _validate_table("stores", sources["stores"], work_dir, phone_salt, None)
    known_stores = _store_ids(work_dir) if sources.get("stores") is not None else None
    rest = [t for t in tables if t != "stores"]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = {t: pool.submit(_validate_table, t, sources[t], work_dir, phone_salt, known_stores) for t in rest}
        done.update({t: f.result() for t, f in futures.items()})
    order = sorted(tables, key=lambda t: t != "stores")
    for kind in ("rejects", "warnings"):
        with open(work_dir / f"{kind}.csv", "w", newline="", encoding="utf-8") as out:
            csv.writer(out).writerow(["file", "row", "field", "reason"])
            for table in order:
                part = done[table]["parts"][kind]
                with open(part, encoding="utf-8", newline="") as f:
                    shutil.copyfileobj(f, out)
                part.unlink()
    return {"tables": {t: done[t]["counts"] for t in order}, "rejects_file": str(work_dir / "rejects.csv"),
            "absent_tables": [t for t in order if sources[t] is None],
            "absent_columns": {t: done[t]["absent"] for t in order if done[t]["absent"]},
            "warnings": {f"{t}.store_id": done[t]["warned"] for t in order if done[t]["warned"]},
            "warnings_file": str(work_dir / "warnings.csv")}
