"""`rta` command line: wires modules together, nothing more. Subcommands import their modules lazily
so the serving install does not need the offline extras."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _serve(opts) -> int:
    from .server import serve
    from .settings import SettingsError, load_settings

    try:
        settings = load_settings(opts.config)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except Exception as exc:  # a bad model or policy: say what and exit non-zero before serving
        logging.getLogger("rta").error("cannot serve: %s", exc)
        return 1
    return 0


def _simulate(opts) -> int:
    if opts.mode == "loop":
        from simulate.loop import run_loop

        run_loop(opts.days, people=opts.people, seed=opts.seed, traffic=opts.traffic,
                 requests_per_day=opts.requests_per_day, workdir=opts.out)
        return 0
    if opts.out is None:
        raise ValueError("rta simulate needs --out DIR")
    from simulate.world import simulate

    summary = simulate(opts.out, people=opts.people, seed=opts.seed, as_of=opts.as_of,
                       unknown_share=opts.unknown_share, traffic=opts.traffic)
    print(json.dumps(summary, indent=2))
    return 0


def _train(opts) -> int:
    if opts.log:
        return _retrain(opts)
    if opts.input is None:
        raise ValueError("rta train needs --input DIR (a simulated world) or --log DIR (an exported decision log)")
    from training.train import train

    print(json.dumps(train(opts.input, opts.out, seed=opts.seed, as_of=opts.as_of), indent=2))
    return 0


def _retrain(opts) -> int:
    """Train on the exported decision log and the conversions (training/retrain.py)."""
    import time

    import ibis

    from cdp.engine import connect
    from training import conversions, examples, retrain

    if not opts.conversions:
        raise ValueError("--log needs --conversions (a Parquet file of conversion events)")
    con = connect(opts.engine, **({"master": opts.spark_master} if opts.engine == "pyspark" else {}))
    decisions = examples.read_decisions(con, opts.log)
    conv = con.create_view("conversions", ibis.memtable(conversions.read(opts.conversions)), overwrite=True)
    observed = opts.observed_until if opts.observed_until is not None else time.time()
    ex = examples.build(decisions, conv, observed_until=observed, window_s=opts.window_s)
    previous = None
    if opts.registry and (opts.registry / "CURRENT").exists():
        from .registry import current_model_path

        previous = current_model_path(opts.registry)
    out = opts.out if opts.out.suffix != ".onnx" else opts.out.parent
    print(json.dumps(retrain.retrain(ex, out, seed=opts.seed, previous=previous, registry=opts.registry,
                                     promote=opts.promote), indent=2))
    return 0


def _demo(opts) -> int:
    from .demo import run_demo

    return run_demo(people=opts.people, requests=opts.requests, concurrency=opts.concurrency, seed=opts.seed,
                    keep=opts.keep)


def _bench(opts) -> int:
    import tempfile

    from loadtest import bench
    from loadtest.server_process import ServerProcess
    from loadtest.traffic import load_requests

    from .demo import prepare, redis_for_demo, say

    with redis_for_demo() as redis_url, tempfile.TemporaryDirectory(prefix="rta-bench-") as tmp:
        art = prepare(Path(tmp), redis_url, opts.people, opts.seed)
        requests = load_requests(art.world, opts.distinct, ping_share=0.0, seed=opts.seed)[0]
        settings = dict(kv.split("=", 1) for kv in opts.set)
        with ServerProcess(redis_url=redis_url, model_path=art.model, **settings) as server:
            say(f"[bench]    rta serve on {server.target}; echo vs decide, {opts.rounds} rounds")
            result = bench.measure(server.target, requests, opts.calls, opts.concurrency, opts.rounds,
                                   server_pid=server.proc.pid)
    say(bench.report(result))
    if opts.json:
        bench.write_json(result, opts.json)
    return 0


def _logs_export(opts) -> int:
    from training.log_export import export

    print(json.dumps(export(opts.redis_url, opts.out, opts.namespace, batch=opts.batch), indent=2))
    return 0


def _model(opts) -> int:
    from . import registry

    if opts.action == "list":
        if not opts.registry.is_dir():
            raise FileNotFoundError(f"{opts.registry}: no such model registry (set --registry or RTA_MODEL_REGISTRY)")
        rows = registry.list_versions(opts.registry)
        for r in rows:
            m = r["metrics"]["model"] if isinstance(r["metrics"].get("model"), dict) else r["metrics"]
            headline = {k: v for k, v in m.items() if isinstance(v, int | float)}  # not the calibration bins
            print(f"{'*' if r['current'] else ' '} {r['version']}  {json.dumps(headline)}")
        if not rows:
            print(f"{opts.registry}: no published versions")
        return 0
    if opts.action == "publish":
        if not opts.version_or_file:
            raise ValueError("rta model publish needs an ONNX artifact")
        print(registry.publish(opts.registry, Path(opts.version_or_file)))
        return 0
    if opts.action == "promote":
        if not opts.version_or_file:
            raise ValueError("rta model promote needs a version (see rta model list)")
        pointer = registry.promote(opts.registry, opts.version_or_file)
    else:
        pointer = registry.rollback(opts.registry)
    print(f"current: {pointer['version']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cdp import cli as cdp_cli  # stdlib-only module; the CDP itself is imported when a cdp command runs

    parser = argparse.ArgumentParser(prog="rta", description="RTA decision system")
    sub = parser.add_subparsers(dest="command", required=True)
    date = dt.date.fromisoformat

    p = sub.add_parser("serve", help="run the gRPC decision service")
    p.add_argument("--config", type=Path, help="YAML settings file (RTA_* environment variables override it)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("simulate", help="write a synthetic private-domain world as Parquet; `loop`: the learning loop")
    p.add_argument("mode", nargs="?", choices=["world", "loop"], default="world",
                   help="world (default): write the world to --out; loop: run the learning loop for --days")
    p.add_argument("--out", type=Path, help="world: the directory to write; loop: keep the work files here")
    p.add_argument("--days", type=int, default=3, help="loop: simulated days (1-7)")
    p.add_argument("--requests-per-day", type=int, help="loop: sample this many of each day's exposures")
    p.add_argument("--people", type=int, default=20000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--as-of", type=date, help="the world's today, YYYY-MM-DD (default: today)")
    p.add_argument("--unknown-share", type=float, default=0.7, help="share of traffic from unknown devices")
    p.add_argument("--traffic", type=int, help="ad exposures to simulate (default: 5 per person)")
    p.set_defaults(func=_simulate)

    cdp_cli.add_parser(sub)  # rta cdp [run|report]: cdp/cli.py

    p = sub.add_parser("train", help="train LightGBM, export ONNX with a parity check")
    p.add_argument("--input", type=Path, help="a simulated world directory (required unless --log)")
    p.add_argument("--out", type=Path, default=Path("model.onnx"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--as-of", type=date)
    p.add_argument("--log", type=Path, help="train on this exported decision log (rta logs export) instead")
    p.add_argument("--conversions", type=Path, help="with --log: conversion events (docs/specs/attribution.md)")
    p.add_argument("--window-s", type=float, default=7 * 86400.0, help="with --log: attribution window")
    p.add_argument("--observed-until", type=float, help="with --log: conversions known up to (default: now)")
    p.add_argument("--engine", choices=["duckdb", "pyspark"], default="duckdb",
                   help="with --log: where attribution and the training set are computed (cdp/engine.py)")
    p.add_argument("--spark-master", default="local[2]", help="with --engine pyspark: the Spark master URL")
    p.add_argument("--registry", type=Path, help="with --log: publish into this model registry")
    p.add_argument("--promote", action="store_true", help="with --registry: make the new model current")
    p.set_defaults(func=_train)

    p = sub.add_parser("demo", help="end to end on embedded defaults: simulate, cdp, train, serve, traffic")
    p.add_argument("--people", type=int, default=20000, help="people in the simulated world (default 20000)")
    p.add_argument("--requests", type=int, default=3000, help="Decide calls sent through gRPC (default 3000)")
    p.add_argument("--concurrency", type=int, default=4, help="calls in flight (default 4)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the world and the traffic (default 7)")
    p.add_argument("--keep", type=Path, help="keep the world and model in this directory")
    p.set_defaults(func=_demo)

    p = sub.add_parser("bench", help="Decide versus a bare Echo on the same server, in one run")
    p.add_argument("--people", type=int, default=5000)
    p.add_argument("--distinct", type=int, default=5000, help="distinct requests drawn from the world")
    p.add_argument("--calls", type=int, default=3000, help="calls per phase")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                   help="a service setting for this run, e.g. --set max_batch=1 (repeatable)")
    p.set_defaults(func=_bench)

    p = sub.add_parser("logs", help="the decision log")
    p.add_argument("action", choices=["export"])
    p.add_argument("--out", type=Path, required=True, help="directory of hour=... Parquet partitions")
    p.add_argument("--redis-url", default=os.environ.get("RTA_REDIS_URL", DEFAULT_REDIS))
    p.add_argument("--namespace", default=os.environ.get("RTA_REDIS_NAMESPACE", "rta"))
    p.add_argument("--batch", type=int, default=200,
                   help="stream entries (each ~decision_log_batch records) per Parquet file and acknowledgement")
    p.set_defaults(func=_logs_export)

    p = sub.add_parser("model", help="the model registry: list, publish, promote, rollback")
    p.add_argument("action", choices=["list", "publish", "promote", "rollback"])
    p.add_argument("version_or_file", nargs="?", help="promote: a version; publish: an ONNX artifact")
    p.add_argument("--registry", type=Path, default=Path(os.environ.get("RTA_MODEL_REGISTRY", "models")))
    p.set_defaults(func=_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    if opts.command == "serve":
        return opts.func(opts)
    from redis.exceptions import RedisError

    try:
        return opts.func(opts)
    except (OSError, ValueError, RuntimeError, RedisError) as exc:  # bad input or an unreachable Redis
        print(f"rta {opts.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
