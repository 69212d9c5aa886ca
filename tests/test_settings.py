"""Settings: defaults < file < RTA_* environment < overrides, and every error reported at once."""

from __future__ import annotations

import pytest

from rta_service.cli import main
from rta_service.settings import SettingsError, load_settings


def test_file_then_environment(tmp_path, monkeypatch):
    cfg = tmp_path / "rta.yaml"
    cfg.write_text("listen: 127.0.0.1:7000\nmax_batch: 16\nid_precedence: [OAID, IMEI]\n")
    monkeypatch.setenv("RTA_MAX_BATCH", "32")
    s = load_settings(cfg)
    assert s.listen == "127.0.0.1:7000" and s.max_batch == 32 and s.id_precedence == ("OAID", "IMEI")


def test_every_error_is_reported(tmp_path, monkeypatch):
    cfg = tmp_path / "rta.yaml"
    cfg.write_text("listen: nowhere\nid_precedence: [IMEI, PHONE]\nno_such_setting: 1\n")
    monkeypatch.setenv("RTA_REDIS_TIMEOUT_MS", "-3")
    with pytest.raises(SettingsError) as info:
        load_settings(cfg)
    text = str(info.value)
    for field in ("listen", "id_precedence", "no_such_setting", "redis_timeout_ms"):
        assert f"  {field}:" in text, text


def test_serve_exits_non_zero_before_serving_on_bad_settings(monkeypatch, capsys):
    monkeypatch.setenv("RTA_MAX_IN_FLIGHT", "zero")
    assert main(["serve"]) == 2
    assert "max_in_flight" in capsys.readouterr().err


def test_serve_refuses_a_missing_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RTA_MODEL_PATH", str(tmp_path / "absent.onnx"))
    monkeypatch.setenv("RTA_LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("RTA_ADMIN_LISTEN", "")
    assert main(["serve"]) == 1
