"""Input tables onto an engine: Parquet files of a world directory, or in-memory frames (tests, training)."""

from __future__ import annotations

import itertools
from pathlib import Path

import ibis
import ibis.expr.types as ir
import pandas as pd

from .schema import SCHEMAS

CDP_TABLES = ("memberships", "membership_devices", "orders", "wecom")
_names = itertools.count()


def _table_name(name: str) -> str:
    return f"rta_{name}_{next(_names)}"


def register(con: ibis.BaseBackend, frames: dict[str, pd.DataFrame]) -> dict[str, ir.Table]:
    """{name: Ibis table on `con`} for in-memory frames (each becomes a view over a memtable)."""
    return {name: con.create_view(_table_name(name), _memtable(name, frame), overwrite=True)
            for name, frame in frames.items()}


def _memtable(name: str, frame: pd.DataFrame) -> ibis.Table:
    schema = SCHEMAS.get(name)
    if schema is None:
        return ibis.memtable(frame)
    frame = frame[list(schema.names)].astype({c: object for c, t in schema.items() if t.is_string()})
    return ibis.memtable(frame.where(frame.notna(), None), schema=schema)


def read_parquet(con: ibis.BaseBackend, input_dir: Path, names: tuple[str, ...] = CDP_TABLES) -> dict[str, ir.Table]:
    """{name: Ibis table on `con`} reading `{input_dir}/{name}.parquet` lazily (the engine scans it)."""
    input_dir = Path(input_dir)
    missing = [n for n in names if not (input_dir / f"{n}.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"{input_dir}: missing {', '.join(f'{n}.parquet' for n in missing)}")
    return {n: con.read_parquet(str(input_dir / f"{n}.parquet"), table_name=_table_name(n)) for n in names}
