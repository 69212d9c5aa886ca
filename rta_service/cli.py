"""`rta` command line: wires modules together, nothing more. Subcommands import their modules lazily
so the serving install does not need the offline extras."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path


def _serve(opts) -> int:
    from .server import serve  # noqa: PLC0415
    from .settings import SettingsError, load_settings  # noqa: PLC0415

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rta", description="RTA decision system")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gRPC decision service")
    p.add_argument("--config", type=Path, help="YAML settings file (RTA_* environment variables override it)")
    p.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    return opts.func(opts)


if __name__ == "__main__":
    sys.exit(main())
