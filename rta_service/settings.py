"""The service's one settings object: defaults < YAML file < `RTA_*` environment variables < explicit
overrides. Validated once at start-up; every invalid field is reported together (docs in README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from .ids import DEFAULT_PRECEDENCE

DEFAULTS_DIR = Path(__file__).parent / "defaults"
Ms = Annotated[float, Field(gt=0, le=60_000)]


class SettingsError(ValueError):
    """Every problem found in the configuration, one per line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RTA_", extra="forbid", frozen=True)

    listen: str = "0.0.0.0:50051"  # host:port of the gRPC server; port 0 picks a free one
    admin_listen: str = "127.0.0.1:9464"  # Prometheus /metrics; empty disables
    redis_url: str = "redis://127.0.0.1:6379/0"  # rediss:// for TLS; redis+cluster://host:port for a Cluster
    redis_namespace: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "rta"
    redis_pool_size: Annotated[int, Field(ge=1, le=1024)] = 32
    redis_timeout_ms: Ms = 8.0  # the most one lookup may take, even with a generous caller deadline
    redis_connect_timeout_ms: Ms = 200.0
    redis_retry_after_ms: Ms = 250.0  # after a Redis failure, answer the fallback at once for this long
    generation_refresh_ms: Ms = 1000.0  # how often the live keyspace generation is re-read
    default_deadline_ms: Ms = 50.0  # when the caller set no deadline
    deadline_margin_ms: Annotated[float, Field(ge=0, le=1000)] = 2.0  # kept back to answer in time
    min_lookup_ms: Annotated[float, Field(ge=0, le=1000)] = 0.5  # below this left, do not try Redis
    model_path: Path = Path("model.onnx")
    policy_path: Path = DEFAULTS_DIR / "policy.yaml"
    id_precedence: tuple[str, ...] = DEFAULT_PRECEDENCE
    extra_doubtful_ids: tuple[str, ...] = ()
    max_device_ids: Annotated[int, Field(ge=1, le=256)] = 32
    max_strategy_ids: Annotated[int, Field(ge=1, le=1024)] = 64
    max_in_flight: Annotated[int, Field(ge=1, le=100_000)] = 512  # past it: RESOURCE_EXHAUSTED at once
    max_batch: Annotated[int, Field(ge=1, le=4096)] = 128  # requests decided together (micro-batching)
    batch_concurrency: Annotated[int, Field(ge=1, le=64)] = 2  # micro-batches in flight at once
    batch_window_us: Annotated[int, Field(ge=0, le=5000)] = 1000  # wait for company while other calls are under way
    max_message_bytes: Annotated[int, Field(ge=1024, le=16 << 20)] = 64 << 10
    shutdown_drain_s: Annotated[float, Field(ge=0, le=300)] = 1.0  # on SIGTERM: NOT_SERVING but answering
    shutdown_grace_s: Annotated[float, Field(ge=0, le=300)] = 5.0
    log_level: str = "INFO"
    # The decision log (docs/specs/decision-log.md): every decision into the Redis Stream {ns}:decisions.
    decision_log: bool = True
    decision_log_url: str = ""  # its own Redis connection; empty: redis_url
    decision_log_buffer: Annotated[int, Field(ge=1, le=10_000_000)] = 50_000  # records held; past it, dropped
    decision_log_batch: Annotated[int, Field(ge=1, le=100_000)] = 500  # records per stream entry (one XADD)
    decision_log_flush_ms: Ms = 50.0
    decision_log_maxlen: Annotated[int, Field(ge=100)] = 100_000  # stream entries kept (MAXLEN ~), each <= batch
    # A model registry directory (docs/specs/model-registry.md): serve its current model instead of
    # model_path, and follow promotions and rollbacks without a restart.
    model_registry: Path | None = None
    model_watch_ms: Ms = 1000.0  # how often the registry's current pointer is read (off the request path)

    @field_validator("listen", "admin_listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if v == "":
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError("expected host:port, e.g. 0.0.0.0:50051")
        return v

    @field_validator("id_precedence")
    @classmethod
    def _id_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        known = set(DEFAULT_PRECEDENCE)
        bad = [n for n in v if n not in known]
        if bad or not v or len(set(v)) != len(v):
            raise ValueError(f"a non-empty list of distinct ID types from {sorted(known)}; bad: {bad}")
        return v

    @field_validator("extra_doubtful_ids")
    @classmethod
    def _md5s(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [x for x in v if len(x) != 32 or any(c not in "0123456789abcdefABCDEF" for c in x)]
        if bad:
            raise ValueError(f"expected 32-hex MD5 values, got {bad}")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("one of DEBUG, INFO, WARNING, ERROR")
        return v.upper()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Defaults < YAML file < RTA_* environment < overrides. Raises SettingsError listing every problem."""
    file_values: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, encoding="utf-8") as f:
                file_values = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"{config_file}: {exc}") from exc
        if not isinstance(file_values, dict):
            raise SettingsError(f"{config_file}: expected a mapping of settings")
    try:
        merged = {**file_values, **_env_only(), **overrides}
        return Settings(**merged)
    except ValidationError as exc:
        raise SettingsError(format_errors(exc, config_file)) from None


def _env_only() -> dict[str, Any]:
    """RTA_* variables as pydantic-settings reads them (lists may be JSON), not yet validated, so that
    their errors are reported together with the file's."""
    return EnvSettingsSource(Settings)()


def format_errors(exc: ValidationError, source: str | Path | None, where: str | None = None) -> str:
    """One line per error, headed by where the values came from: `where` when given (another program's
    settings, e.g. the CDP's file and flags), else the service's file and RTA_* environment."""
    if where is None:
        where = f"file {source} and RTA_* environment" if source else "RTA_* environment"
    lines = [f"invalid settings ({where}):"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        problems = (err.get("ctx") or {}).get("problems")
        if problems:  # a list of problems that name their own place (e.g. a segments file's), one line each
            lines.extend(f"  {line}" for line in str(problems).splitlines())
            continue
        msg = err["msg"].removeprefix("Value error, ")
        # a check across fields has the whole mapping as its input: not worth repeating (and it may hold a salt)
        lines.append(f"  {field}: {msg} (got {err.get('input')!r})" if field else f"  {msg}")
    return "\n".join(lines)
