"""The committed generated code must match what the pinned grpcio-tools makes from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stale_code_is_detected(tmp_path):
    """Copy the tree, change a .proto, and the check must fail."""
    import shutil

    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    proto = tmp_path / "proto" / "rta" / "v1" / "decision.proto"
    proto.write_text(proto.read_text().replace("bytes payload = 1;", "bytes payload = 1;\n  string extra = 2;", 1))
    result = subprocess.run([sys.executable, str(tmp_path / "scripts" / "gen_proto.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "decision_pb2.py" in result.stderr
