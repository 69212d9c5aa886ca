"""The model registry: a directory of published model versions and a pointer to the one to serve
(docs/specs/model-registry.md). `rta model list|promote|rollback` and the service's ModelWatcher
use it; the watcher never touches the request path until a new model is loaded and checked.

    {registry}/versions/{version}/model.onnx    an artifact rta_service.model reads (+ its reports)
    {registry}/CURRENT                          {"version": ..., "previous": [older versions, newest last]}

CURRENT is replaced atomically (write a temporary file, fsync, rename), so a reader sees the old
pointer or the new one, never half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from . import features
from .model import ModelError, OnnxModel

log = logging.getLogger(__name__)
POINTER = "CURRENT"
MODEL_FILE = "model.onnx"
_VERSION_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to, bad model)."""


def _check_version(version: str) -> str:
    if not version or len(version) > 100 or not set(version) <= _VERSION_OK or version.startswith("."):
        raise RegistryError(f"bad model version name {version!r}")
    return version


def model_path(registry: Path, version: str) -> Path:
    return Path(registry) / "versions" / _check_version(version) / MODEL_FILE


def read_pointer(registry: Path) -> dict:
    """{"version": str | None, "previous": [...]}; version None when nothing was promoted yet."""
    path = Path(registry) / POINTER
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": None, "previous": []}
    except ValueError as exc:
        raise RegistryError(f"{path}: unreadable pointer: {exc}") from None
    return {"version": data.get("version"), "previous": list(data.get("previous", []))}


def _write_pointer(registry: Path, pointer: dict) -> None:
    registry = Path(registry)
    tmp = registry / f".{POINTER}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({**pointer, "updated_ts": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, registry / POINTER)
    fd = os.open(registry, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_model_path(registry: Path) -> Path:
    version = read_pointer(registry)["version"]
    if version is None:
        raise RegistryError(f"{registry}: no model has been promoted yet")
    return model_path(registry, version)


def check_model(path: Path) -> OnnxModel:
    """Load and check a model as the service would: feature list, a smoke prediction, scores in [0, 1]."""
    model = OnnxModel.load(path)
    rows = np.full((4, features.N_FEATURES), np.nan, dtype=np.float32)
    rows[1] = features.build_features(None, 1, 0, 1.7e9)
    rows[2, :] = 1.0
    scores = model.predict(rows)
    if not all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores.tolist()):
        raise ModelError(f"{path}: smoke prediction gave scores outside [0, 1]: {scores.tolist()}")
    return model


def publish(registry: Path, artifact: Path, extra_files: tuple[Path, ...] = ()) -> str:
    """Copy a checked artifact (and its reports) into the registry under its own version; returns it."""
    version = _check_version(check_model(artifact).version)
    target = model_path(registry, version)
    if target.exists():
        if target.read_bytes() != Path(artifact).read_bytes():
            raise RegistryError(f"version {version} is already published with different content")
        return version
    staging = Path(registry) / "versions" / f".{version}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(artifact, staging / MODEL_FILE)
    for extra in extra_files:
        shutil.copyfile(extra, staging / Path(extra).name)
    os.replace(staging, target.parent)
    return version


def promote(registry: Path, version: str) -> dict:
    """Make `version` current, after checking it loads; the old current can be rolled back to."""
    path = model_path(registry, version)
    if not path.exists():
        raise RegistryError(f"{registry}: no published version {version!r}")
    try:
        check_model(path)
    except ModelError as exc:
        raise RegistryError(f"refusing to promote {version}: {exc}") from None
    pointer = read_pointer(registry)
    if pointer["version"] == version:
        return pointer
    previous = pointer["previous"] + ([pointer["version"]] if pointer["version"] else [])
    pointer = {"version": version, "previous": previous[-50:]}
    _write_pointer(registry, pointer)
    return pointer


def rollback(registry: Path) -> dict:
    """Make the previously current version current again."""
    pointer = read_pointer(registry)
    if not pointer["previous"]:
        raise RegistryError(f"{registry}: no earlier version to roll back to")
    pointer = {"version": pointer["previous"][-1], "previous": pointer["previous"][:-1]}
    _write_pointer(registry, pointer)
    return pointer


def list_versions(registry: Path) -> list[dict]:
    """Every published version, oldest first: version, published time, metrics, whether current."""
    current = read_pointer(registry)["version"]
    rows = []
    for d in sorted((Path(registry) / "versions").glob("*/")):
        if d.name.startswith(".") or not (d / MODEL_FILE).exists():
            continue
        metrics = {}
        with contextlib.suppress(Exception):  # a listing shows what it can read; promote checks properly
            if (d / "report.json").exists():
                metrics = json.loads((d / "report.json").read_text()).get("metrics", {})
            else:  # an artifact from `rta train --input` carries its metrics in the ONNX metadata
                metrics = OnnxModel.load(d / MODEL_FILE).metrics
        rows.append({"version": d.name, "published_ts": int((d / MODEL_FILE).stat().st_mtime),
                     "current": d.name == current, "metrics": metrics})
    return sorted(rows, key=lambda r: (r["published_ts"], r["version"]))


class ModelWatcher:
    """Follows the registry pointer off the request path. A new current version is loaded and checked
    in a worker thread; only then is it swapped into the decision core (one attribute assignment,
    between two batches). A model that fails is refused, counted and logged once; the old one keeps
    serving."""

    def __init__(self, registry: Path, core, interval_s: float = 1.0, metrics=None):
        self.registry = Path(registry)
        self.core = core
        self.interval_s = interval_s
        self.metrics = metrics
        self._refused: str | None = None
        self._task: asyncio.Task | None = None

    async def check_once(self) -> str | None:
        """Load and swap if the pointer moved; returns the version now serving, or None if unchanged."""
        try:
            version = read_pointer(self.registry)["version"]
        except (RegistryError, OSError) as exc:
            log.warning("model registry unreadable: %s", exc)
            return None
        if version is None or version == self.core.model.version or version == self._refused:
            return None
        try:
            model = await asyncio.to_thread(check_model, model_path(self.registry, version))
            if model.version != version:
                raise ModelError(f"artifact says version {model.version!r}, the registry {version!r}")
        except Exception as exc:  # onnxruntime raises many types; any of them means refuse
            self._refused = version
            log.error("refusing promoted model %s, %s keeps serving: %s", version, self.core.model.version, exc)
            if self.metrics:
                self.metrics.model_reloads.labels(result="refused").inc()
            return None
        old = self.core.model
        self.core.model = model
        self._refused = None
        log.info("model %s -> %s", old.version, model.version)
        if self.metrics:
            self.metrics.model_reloads.labels(result="ok").inc()
            self.metrics.model_info.labels(model_version=old.version).set(0)
            self.metrics.model_info.labels(model_version=model.version).set(1)
        return model.version

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_once()
            except Exception:  # never let a bug here stop the service; the old model keeps serving
                log.exception("model watcher failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="model-watch")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
