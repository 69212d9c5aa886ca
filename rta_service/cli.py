"""`rta` command line: wires modules together, nothing more. Subcommands import their modules lazily
so the serving install does not need the offline extras."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
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
    from simulate.world import simulate

    summary = simulate(opts.out, people=opts.people, seed=opts.seed, as_of=opts.as_of,
                       unknown_share=opts.unknown_share, traffic=opts.traffic)
    print(json.dumps(summary, indent=2))
    return 0


def _train(opts) -> int:
    from training.train import train

    print(json.dumps(train(opts.input, opts.out, seed=opts.seed, as_of=opts.as_of), indent=2))
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
            result = bench.measure(server.target, requests, opts.calls, opts.concurrency, opts.rounds)
    say(bench.report(result))
    if opts.json:
        bench.write_json(result, opts.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cdp import cli as cdp_cli  # stdlib-only module; the CDP itself is imported when a cdp command runs

    parser = argparse.ArgumentParser(prog="rta", description="RTA decision system")
    sub = parser.add_subparsers(dest="command", required=True)
    date = dt.date.fromisoformat

    p = sub.add_parser("serve", help="run the gRPC decision service")
    p.add_argument("--config", type=Path, help="YAML settings file (RTA_* environment variables override it)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("simulate", help="write a synthetic private-domain world as Parquet")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--people", type=int, default=20000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--as-of", type=date, help="the world's today, YYYY-MM-DD (default: today)")
    p.add_argument("--unknown-share", type=float, default=0.7, help="share of traffic from unknown devices")
    p.add_argument("--traffic", type=int, help="ad exposures to simulate (default: 5 per person)")
    p.set_defaults(func=_simulate)

    cdp_cli.add_parser(sub)  # rta cdp [run|report]: cdp/cli.py

    p = sub.add_parser("train", help="train LightGBM, export ONNX with a parity check")
    p.add_argument("--input", type=Path, required=True, help="a simulated world directory")
    p.add_argument("--out", type=Path, default=Path("model.onnx"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--as-of", type=date)
    p.set_defaults(func=_train)

    p = sub.add_parser("demo", help="end to end on embedded defaults: simulate, cdp, train, serve, traffic")
    p.add_argument("--people", type=int, default=20000)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    p.add_argument("--seed", type=int, default=7)
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
