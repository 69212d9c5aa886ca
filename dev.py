#!/usr/bin/env python3
"""The two commands of the README, with their set-up:

    python3 dev.py demo   # the end-to-end demo on embedded defaults
    python3 dev.py test   # lint, then the whole test suite

Each creates ./.venv on first use and installs the project with every extra into it (again only when
pyproject.toml changes), so a fresh machine needs nothing but Python 3.11+ and pip. Arguments after
the command go to `rta demo` or to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".rta-installed"


def ensure_env() -> None:
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing the project and its dependencies into .venv (first run takes a minute or two) ...", flush=True)
    run([BIN / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade", "pip"])
    run([BIN / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f"{ROOT}[dev]"])
    STAMP.write_text(want)


def run(cmd, check: bool = True) -> int:
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT)
    if check and code != 0:
        sys.exit(code)
    return code


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be started by an older python3
        print("Python 3.11 or newer is needed", file=sys.stderr)
        return 2
    ensure_env()
    if command == "demo":
        return run([BIN / "rta", "demo", *rest], check=False)
    run([BIN / "ruff", "check", "."])
    return run([BIN / "python", "-m", "pytest", *rest], check=False)


if __name__ == "__main__":
    sys.exit(main())
