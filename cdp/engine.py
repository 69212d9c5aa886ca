"""Where the CDP's Ibis expressions run: DuckDB in-process by default, Spark by configuration.

    con = connect()                                   # DuckDB, in memory, spills to a temp directory
    con = connect("duckdb", memory_limit="4GB", temp_directory="/data/tmp", threads=2)
    con = connect("pyspark", master="local[2]")       # or a cluster's master URL; needs Java 17+

Everything downstream (cdp.ingest, cdp.identity, cdp.tags, ...) takes the returned Ibis backend and
builds expressions on it, so there is one copy of the logic. docs/cdp.md says why Ibis, DuckDB and
Spark, and what each option means.
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
from typing import Any

import ibis
import ibis.expr.types as ir

ENGINES = ("duckdb", "pyspark")


def scratch_dir(prefix: str) -> str:
    """A fresh temporary directory, removed when the process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def connect(engine: str = "duckdb", **opts: Any) -> ibis.BaseBackend:
    """An Ibis backend for `engine`.

    duckdb options: database (default ":memory:"), memory_limit (e.g. "4GB"; DuckDB's default is 80% of
    RAM), temp_directory (where operators spill when over the limit; default: a fresh directory under
    the system temp dir), threads, and any other DuckDB setting.
    pyspark options: master (default "local[2]"), app_name, conf (dict of Spark settings), or
    session (an existing SparkSession, used as is).
    """
    if engine == "duckdb":
        return _duckdb(**opts)
    if engine == "pyspark":
        return _pyspark(**opts)
    raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")


def _duckdb(database: str = ":memory:", temp_directory: str | None = None, **settings: Any) -> ibis.BaseBackend:
    temp_directory = temp_directory or scratch_dir("rta-cdp-duckdb-")
    config = {"temp_directory": str(temp_directory), "preserve_insertion_order": False}
    config.update({k: v for k, v in settings.items() if v is not None})
    con = ibis.duckdb.connect(database, **config)
    con.raw_sql("SET enable_progress_bar = false")  # a batch job's stderr is for its own progress lines
    return con


SPARK_DEFAULTS = {
    "spark.sql.shuffle.partitions": "4",  # the default 200 is for clusters; tiny tasks dominate locally
    "spark.ui.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.memory": "2g",
    "spark.sql.ansi.enabled": "false",
    "spark.sql.catalogImplementation": "in-memory",  # no Hive metastore_db/ in the working directory
}


def spark_session(master: str = "local[2]", app_name: str = "rta-cdp", conf: dict[str, str] | None = None):
    """A SparkSession (getOrCreate: one per process). Requires the `spark` extra and Java 17+."""
    if shutil.which("java") is None:
        raise RuntimeError("the pyspark engine needs a Java 17+ runtime on PATH (java not found)")
    from pyspark.sql import SparkSession  # noqa: PLC0415 - the spark extra

    builder = SparkSession.builder.master(master).appName(app_name)
    settings = {**SPARK_DEFAULTS, "spark.sql.warehouse.dir": scratch_dir("rta-cdp-spark-"),
                "spark.local.dir": tempfile.gettempdir(), **(conf or {})}
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def _pyspark(session=None, master: str = "local[2]", app_name: str = "rta-cdp",
             conf: dict[str, str] | None = None) -> ibis.BaseBackend:
    return ibis.pyspark.connect(session or spark_session(master, app_name, conf))


def name_of(con: ibis.BaseBackend) -> str:
    """"duckdb" or "pyspark": the engine a backend belongs to."""
    return con.name


def duckdb_batches(expr: ir.Table, rows: int):
    """The record batches (about `rows` each) of a DuckDB expression, streamed from one query. (Ibis 12's
    to_pyarrow_batches calls fetch_record_batch, which DuckDB 2 no longer has.)"""
    con = expr._find_backend()
    relation = con.con.sql(con.compile(expr))  # the DuckDB connection under Ibis; a relation streams
    yield from relation.to_arrow_reader(rows) if hasattr(relation, "to_arrow_reader") else \
        relation.fetch_arrow_reader(rows)


_checkpoints: dict[str, Any] = {}
_checkpoint_ids = itertools.count()


def materialize(expr: ir.Table) -> ir.Table:
    """Compute `expr` once and return a table over the result, for steps that reuse it or loop.

    DuckDB: a temporary table (Table.cache). Spark: a local checkpoint, which also cuts the lineage,
    so an iterative job's plans stay small (Spark's cache keeps the whole lineage to analyse each round).
    An unbound expression (built on `ibis.table(schema)` to learn its columns, e.g. cdp.tags.tag_schema) has
    nothing to compute and is returned as it is.
    """
    if expr._find_backends()[1]:  # an unbound table somewhere: nothing to compute
        return expr
    con = expr._find_backend(use_default=True)  # memtables only (tests): ibis's default DuckDB
    if con.name != "pyspark":
        return expr.cache()
    name = f"rta_checkpoint_{next(_checkpoint_ids)}"
    frame = con._session.sql(con.compile(expr)).localCheckpoint(eager=True)
    frame.createOrReplaceTempView(name)
    _checkpoints[name] = frame
    return con.table(name)


def release(table: ir.Table) -> None:
    """Free what materialize() holds for `table`."""
    con = table._find_backend(use_default=True)
    if con.name != "pyspark":
        table.release()
        return
    name = table.op().name
    frame = _checkpoints.pop(name, None)
    if frame is not None:
        con._session.catalog.dropTempView(name)
        frame.unpersist()
