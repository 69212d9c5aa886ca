"""Input tables onto an engine: Parquet files of a world directory, or in-memory frames (tests, training).

Identifier columns reach the engine normalised (cdp.schema.normalize): `register` normalises frames itself,
`read_parquet` expects files cdp.validate wrote (or that are already clean, as simulated worlds are).

Optional inputs (cdp.schema.OPTIONAL_TABLES and OPTIONAL_COLUMNS) that are absent are supplied empty
or as null columns, so every expression downstream sees the full schema.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa

from .schema import NORMALIZED_COLUMNS, OPTIONAL_COLUMNS, OPTIONAL_TABLES, SCHEMAS, normalize

CDP_TABLES = ("memberships", "membership_devices", "orders", "wecom", "wecom_interactions", "stores")
_names = itertools.count()


def _table_name(name: str) -> str:
    return f"rta_{name}_{next(_names)}"


def register(con: ibis.BaseBackend, frames: dict[str, pd.DataFrame]) -> dict[str, ir.Table]:
    """{name: Ibis table on `con`} for in-memory frames (each becomes a view over a memtable); absent
    optional tables are registered empty."""
    frames = {**{name: _empty(name) for name in OPTIONAL_TABLES}, **frames}
    return {name: con.create_view(_table_name(name), _memtable(name, frame), overwrite=True)
            for name, frame in frames.items()}


def _empty(name: str) -> pd.DataFrame:
    return pd.DataFrame(columns=list(SCHEMAS[name].names))


def _memtable(name: str, frame: pd.DataFrame) -> ibis.Table:
    schema = SCHEMAS.get(name)
    if schema is None:
        return ibis.memtable(frame)
    frame = frame.assign(**{c: None for c in OPTIONAL_COLUMNS.get(name, ()) if c not in frame.columns})
    frame = frame.assign(**{c: normalize(name, c, pa.array(frame[c], pa.string(), from_pandas=True)).to_numpy(
        zero_copy_only=False) for c in NORMALIZED_COLUMNS.get(name, ())})
    frame = frame[list(schema.names)].astype({c: object for c, t in schema.items() if t.is_string()})
    return ibis.memtable(frame.where(frame.notna(), None), schema=schema)


def _conform(name: str, table: ir.Table) -> ir.Table:
    """`table` with the absent optional columns of its schema added as typed nulls."""
    schema = SCHEMAS[name]
    absent = {c: ibis.null(schema[c]) for c in OPTIONAL_COLUMNS.get(name, ()) if c not in table.columns}
    return table.mutate(**absent).select(*schema.names) if absent else table


def read_parquet(con: ibis.BaseBackend, input_dir: Path, names: tuple[str, ...] = CDP_TABLES) -> dict[str, ir.Table]:
    """{name: Ibis table on `con`} reading `{input_dir}/{name}.parquet` lazily (the engine scans it);
    an absent optional table is an empty one."""
    input_dir = Path(input_dir)
    present = {n for n in names if (input_dir / f"{n}.parquet").exists()}
    missing = [n for n in names if n not in present and n not in OPTIONAL_TABLES]
    if missing:
        raise FileNotFoundError(f"{input_dir}: missing {', '.join(f'{n}.parquet' for n in missing)}")
    tables = {}
    for n in names:
        if n in present:
            tables[n] = _conform(n, con.read_parquet(str(input_dir / f"{n}.parquet"), table_name=_table_name(n)))
        else:
            tables[n] = con.create_view(_table_name(n), _memtable(n, _empty(n)), overwrite=True)
    return tables
