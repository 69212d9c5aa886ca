"""`rta cdp run|report|conversions|bench` (and the older `rta cdp --input DIR`): argument parsing only."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path


def _common(p: argparse.ArgumentParser, legacy: bool = False) -> None:
    """The shared options. The top-level `rta cdp` parser (legacy) holds their defaults; a subcommand's copies
    default to SUPPRESS, so an option given before the subcommand (`rta cdp --namespace x run`) is kept, not
    silently reset by the subcommand's default, and one given after it wins."""
    def add(*flags, **kw):
        if not legacy:
            kw["default"] = argparse.SUPPRESS
        p.add_argument(*flags, **kw)

    add("--config", type=Path, help="YAML CdpConfig file (docs/cdp.md); flags override it")
    add("--input", type=Path, help="directory of the input tables ({table}.parquet or {table}.csv)")
    add("--engine", choices=["duckdb", "pyspark"])
    add("--as-of", type=dt.date.fromisoformat)
    add("--state-dir", type=Path, help="keeps the last run's OneID map and export digests (state_dir)")
    add("--work-dir", type=Path, help="keep validated tables, rejects.csv and tags.parquet here")
    if legacy or p.prog.endswith("run"):
        add("--redis-url", default=os.environ.get("RTA_REDIS_URL"))
        add("--namespace", default=os.environ.get("RTA_REDIS_NAMESPACE"))
        add("--grace-s", type=float, help="wait before deleting the old generation (default 5)")
        add("--export-mode", choices=["full", "incremental"],
            help="full: a new generation; incremental: only changed entries (needs state_dir)")
        add("--write-rate", type=float, help="device entries per second written to Redis (0 = unlimited)")
        add("--max-shrink", type=float,
            help="refuse an export with this fraction fewer device entries than the live one (default 0.5)")
        add("--allow-shrink", action="store_true", default=None,
            help="publish even if the export empties the live store or shrinks it past max_shrink")


def add_parser(sub) -> None:
    p = sub.add_parser("cdp", help="OneID, profiles and segments from the private-domain tables, out to Redis")
    _common(p, legacy=True)
    p.set_defaults(func=_run)
    cdp_sub = p.add_subparsers(dest="cdp_command")
    run = cdp_sub.add_parser("run", help="build profiles and export them as a new Redis generation")
    _common(run)
    run.set_defaults(func=_run)
    rep = cdp_sub.add_parser("report", help="OneID accuracy vs the world's truth, segment sizes")
    _common(rep)
    rep.set_defaults(func=_report)
    conv = cdp_sub.add_parser("conversions", help="conversion events (friend adds, first orders, repurchases) "
                              "for rta train --log")
    _common(conv)
    conv.add_argument("--since", type=dt.date.fromisoformat, required=True, help="first day of events (UTC+8)")
    conv.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    conv.set_defaults(func=_conversions)
    bench = cdp_sub.add_parser("bench", help="the CDP at scale: time and memory per stage, Splink and redis-cli ratios",
                               description="Simulates a world of --people (seed 7, as of 2025-06-01; reused from "
                               "--workdir), runs rta cdp run on it into a throw-away redis-server and prints each "
                               "stage's time and peak memory, and the Splink and redis-cli --pipe baselines.")
    bench.add_argument("--people", type=int, default=100_000)
    bench.add_argument("--engine", choices=["duckdb", "pyspark"], default="duckdb")
    bench.add_argument("--memory-limit", help="DuckDB memory_limit, e.g. 8GB (default: DuckDB's, 80%% of RAM)")
    bench.add_argument("--workdir", type=Path, help="keep the world and outputs here (a world there is reused)")
    bench.add_argument("--no-baselines", action="store_true", help="skip Splink and redis-cli --pipe")
    bench.add_argument("--json", type=Path, help="also write the figures here")
    bench.set_defaults(func=_bench)


def _config(opts):
    from .config import load_config  # noqa: PLC0415

    overrides = {k: getattr(opts, k, None) for k in ("input", "engine", "as_of", "state_dir", "work_dir", "redis_url",
                                                    "namespace", "grace_s", "export_mode", "write_rate",
                                                    "max_shrink", "allow_shrink")}
    if opts.config is None and overrides["input"] is None:
        raise ValueError("give --config FILE or --input DIR")
    return load_config(opts.config, **overrides)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(opts) -> int:
    from .pipeline import run_config  # noqa: PLC0415

    print(json.dumps(run_config(_config(opts), progress=_say), indent=2))
    return 0


def _report(opts) -> int:
    from .pipeline import report  # noqa: PLC0415

    print(json.dumps(report(_config(opts), progress=_say), indent=2))
    return 0


def _conversions(opts) -> int:
    from .conversions import from_config  # noqa: PLC0415

    print(json.dumps(from_config(_config(opts), opts.since, opts.out, progress=_say), indent=2))
    return 0


def _bench(opts) -> int:
    from .bench import run_bench  # noqa: PLC0415

    result = run_bench(opts.people, opts.engine, workdir=opts.workdir, memory_limit=opts.memory_limit,
                       baselines=not opts.no_baselines, say=_say)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if opts.json:
        opts.json.write_text(text + "\n")
    return 0
