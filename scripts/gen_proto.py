"""Regenerate the committed Python code for proto/ with the pinned grpcio-tools.

Usage: python scripts/gen_proto.py          # rewrite proto/rta/v1/*_pb2*.py(i)
       python scripts/gen_proto.py --check  # exit 1 if the committed code is stale

The pinned version lives in pyproject.toml (the `dev` extra); tests/test_proto.py runs --check.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
SOURCES = sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / "rta" / "v1").glob("*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc  # imported here: only the dev extra installs grpcio-tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(s) for s in SOURCES],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(base: Path) -> list[Path]:
    return sorted(p.relative_to(base) for p in (base / "rta" / "v1").glob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code differs")
    opts = parser.parse_args()
    if not opts.check:
        generate(PROTO_ROOT)
        print("\n".join(str(p) for p in generated_files(PROTO_ROOT)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = generated_files(fresh), generated_files(PROTO_ROOT)
        stale = [str(p) for p in want if p not in have or not filecmp.cmp(fresh / p, PROTO_ROOT / p, shallow=False)]
        stale += [str(p) for p in have if p not in want]
    if stale:
        print("stale generated code (run python scripts/gen_proto.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
