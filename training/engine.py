"""The engine the learning loop's joins run on: an Ibis backend, DuckDB in-process by default.

The CDP grows the same layer (an Ibis backend, DuckDB by default, PySpark by configuration); this one
function is where the loop picks its backend, so pointing it at the CDP's `connect` is a one-line
change. Everything else in training/ takes the backend as a parameter and builds Ibis expressions.
"""

from __future__ import annotations


def connect(engine: str = "duckdb", **opts):
    """An Ibis backend: `duckdb` (in-process; opts go to ibis.duckdb.connect) or `pyspark` (opts: session)."""
    import ibis

    if engine == "duckdb":
        return ibis.duckdb.connect(**opts)
    if engine == "pyspark":
        return ibis.pyspark.connect(**opts)
    raise ValueError(f"unknown engine {engine!r}; expected duckdb or pyspark")
