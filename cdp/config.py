"""`rta cdp`'s one settings object: defaults < YAML file (`--config`) < command-line overrides.

Validated once before any work; every invalid field is reported together (pydantic, extra="forbid").
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rta_service.settings import SettingsError, format_errors

from . import tags
from .identity import DEFAULT_CAPS

IdentifierKind = Literal["phone", "unionid", "member", "wecom", "buyer", "openid", "dev"]
# `kind:value`, as ClusterTooLarge names them; buyer and openid values are per channel, device IDs per type code
_KEY_PARTS = {"phone": 2, "unionid": 2, "member": 2, "wecom": 2, "buyer": 3, "openid": 3, "dev": 3}


def _identifier_key(key: str) -> str:
    kind = key.split(":", 1)[0]
    parts = key.split(":", _KEY_PARTS.get(kind, 2) - 1)
    if kind not in _KEY_PARTS or len(parts) < _KEY_PARTS[kind] or not all(parts):
        raise ValueError(f"{key!r} is not an identifier key: expected `kind:value` with kind one of "
                         f"{', '.join(_KEY_PARTS)} (`buyer:{{channel}}:value`, `openid:{{channel}}:value`, "
                         "`dev:{type code}:md5`), as ClusterTooLarge prints it")
    if kind in ("phone", "dev"):  # hex digests: matched against the lower-case values ingest normalises to
        key = key[:key.rindex(":") + 1] + key[key.rindex(":") + 1:].lower()
    return key


IdentifierKey = Annotated[str, AfterValidator(_identifier_key)]


class PredictiveConfig(BaseModel):
    """cdp/predictive.py: first-purchase and repurchase models trained on a time split, scores as of as_of."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    horizon_days: Annotated[int, Field(ge=1, le=365)] = 30  # labels: orders in the N days before as_of
    min_positives: Annotated[int, Field(ge=1)] = 50  # fewer positives in the training window: no model
    max_train_rows: Annotated[int, Field(ge=1000)] = 500_000  # OneIDs per population, sampled by OneID hash
    seed: int = 7
    # with state_dir: models saved by a published run are reused (no T0 pass, no training) until they are this
    # many days older than as_of, if trained with the same settings; 0 = retrain every run (docs/cdp.md)
    retrain_days: Annotated[int, Field(ge=0, le=3650)] = 7
    # scores go to Redis rounded to multiples of this (0 = full precision), so a score that moves less than a
    # step between runs (models are retrained, features age daily) does not make an incremental export rewrite it
    export_resolution: Annotated[float, Field(ge=0, le=0.5)] = 0.01


class CdpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Path  # the directory of input tables (docs/specs/simulated-world.md)
    as_of: dt.date | None = None  # default: the world's meta.json as_of, else today (UTC)
    engine: Literal["duckdb", "pyspark"] = "duckdb"
    # duckdb: memory_limit ("4GB"), temp_directory, threads; pyspark: master ("local[2]"), conf {...}
    engine_options: dict[str, Any] = Field(default_factory=dict)
    phone_salt: str | None = None  # when set, raw phone numbers are salted and hashed; else such rows are rejected
    work_dir: Path | None = None  # validated tables, rejects.csv, tags.parquet; default: a temp dir removed at exit
    # the last run's identifier -> OneID map (OneIDs carried over, changes logged), its predictive models (reused
    # for predictive.retrain_days) and its export's digests
    state_dir: Path | None = None
    # a table losing more than this share of its rows to rejects fails the run after ingest (a wrong extract)
    max_reject_share: Annotated[float, Field(ge=0, le=1)] = 0.2
    max_cluster_size: Annotated[int, Field(ge=2)] = 200  # records in one OneID; past it the run fails
    # most distinct values of an identifier kind one person may hold; the excess stop linking (docs/cdp.md)
    identifier_caps: dict[IdentifierKind, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: dict(DEFAULT_CAPS))
    # identifier values that never link anyone, like the built-in junk values (docs/cdp.md, OneID)
    blocked_identifiers: list[IdentifierKey] = Field(default_factory=list)
    predictive: PredictiveConfig = Field(default_factory=PredictiveConfig)  # predictive tags (cdp/predictive.py)
    # YAML segments over tags (cdp/tags.py), checked here against the tags' types; after `predictive`, whose
    # score tags they may use
    segments_file: Path | None = None
    # redis://, rediss://, unix:// or redis+cluster:// (a Redis Cluster, cdp/export.py)
    redis_url: Annotated[str, Field(pattern=r"^(redis|rediss|unix|redis\+cluster)://")] = "redis://127.0.0.1:6379/0"
    namespace: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "rta"
    grace_s: Annotated[float, Field(ge=0, le=3600)] = 5.0  # before deleting the old generation
    # full: a new generation, switched atomically; incremental: only changed device entries, into the live one
    export_mode: Literal["full", "incremental"] = "full"
    write_rate: Annotated[float, Field(ge=0)] = 0  # device entries written per second; 0 = as fast as Redis takes them
    # refuse an export with fewer device entries than the live one by more than this fraction (1: any shrink,
    # but never to none) or with none at all; allow_shrink lets a deliberate shrink through
    max_shrink: Annotated[float, Field(ge=0, le=1)] = 0.5
    allow_shrink: bool = False

    @field_validator("segments_file")
    @classmethod
    def _segments(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None:
            problems = tags.segment_problems(path, _tag_types(info.data.get("predictive")))[1]
            if problems:  # one line each, naming the file, segment and condition
                raise PydanticCustomError("segments", "{problems}", {"problems": "\n".join(problems)})
        return path

    def segments(self) -> dict[str, list]:
        """The segments file's segments ({} without one), checked against the tags this run makes."""
        return tags.load_segments(self.segments_file, _tag_types(self.predictive)) if self.segments_file else {}

    @model_validator(mode="after")
    def _incremental_needs_state(self) -> CdpConfig:
        if self.export_mode == "incremental" and self.state_dir is None:
            raise ValueError("export_mode incremental needs state_dir, where the last export's digests are kept "
                             "(--state-dir DIR, or state_dir in the --config file)")
        return self


def _tag_types(predictive: PredictiveConfig | None) -> dict:
    """The tags segments may use: with predictive on, its two score tags too. When `predictive` itself is
    invalid (None), score tags of any horizon are accepted, so that only its own error is reported."""
    if predictive is None:
        return tags.tag_types(None)
    return tags.tag_types(tags.score_tags(predictive.horizon_days) if predictive.enabled else ())


FILE_PATHS = ("input", "work_dir", "state_dir", "segments_file")  # read relative to the config file's folder


def load_config(path: Path | None = None, **overrides: Any) -> CdpConfig:
    """Defaults < YAML file < overrides (None values ignored); relative paths in the file are relative to it,
    those of overrides (flags) to the working directory. Raises SettingsError listing every problem."""
    values: dict[str, Any] = {}
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"{path}: {exc}") from exc
        if not isinstance(values, dict):
            raise SettingsError(f"{path}: expected a mapping of settings")
        for key in FILE_PATHS:  # a relative path in the file is relative to the file, wherever the job runs from
            if isinstance(values.get(key), str) and not Path(values[key]).expanduser().is_absolute():
                values[key] = str(Path(path).parent / values[key])
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CdpConfig(**values)
    except ValidationError as exc:
        given = [k for k, v in overrides.items() if v is not None]
        where = " and ".join(filter(None, [f"file {path}" if path else "", "command-line flags" if given else ""]))
        raise SettingsError(format_errors(exc, path, where=where or "defaults")) from None
