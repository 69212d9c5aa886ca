"""`rta cdp`: read the private-domain tables, resolve OneIDs, build profiles as of a date, publish them to Redis.

`rta cdp run` first checks Redis (`check_redis`: PING, the live export, its layout), then runs the
stages, each printed with its wall time and the process's peak memory when `progress` is given: ingest
(cdp/validate.py) -> load (the inputs as of the cutoff into the engine) -> oneid (cdp/identity.py) ->
profiles -> tags -> [changes against state_dir] -> predictive (cdp/predictive.py, unless predictive.enabled
is false) -> segments (YAML, tags.parquet) -> collect (frames for the exporter) -> export (cdp/export.py).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ibis
import pandas as pd

from . import engine, ingest, predictive, validate
from .config import CdpConfig
from .engine import release
from .export import connect, export, preflight
from .identity import Guardrails, compare
from .ingest import CDP_TABLES
from .profiles import cutoff_ts, index_frame, profile_tables, to_frame
from .report import identity_accuracy, identity_counts, segment_sizes
from .schema import OPTIONAL_TABLES
from .state import commit_state, discard_pending, pending
from .tags import apply_segments, unattached_events, with_segments
from .tags import segment_sizes as tag_segment_sizes

META_FILE = "meta.json"  # written by simulate; carries the world's as_of


def read_tables(input_dir: Path, names: tuple[str, ...] = CDP_TABLES) -> dict[str, pd.DataFrame]:
    """{name: DataFrame} from `{input_dir}/{name}.parquet`; absent optional tables are left out
    (cdp.ingest.register supplies them empty)."""
    input_dir = Path(input_dir)
    present = [n for n in names if (input_dir / f"{n}.parquet").exists()]
    missing = [n for n in names if n not in present and n not in OPTIONAL_TABLES]
    if missing:
        raise FileNotFoundError(f"{input_dir}: missing {', '.join(f'{n}.parquet' for n in missing)}")
    return {n: pd.read_parquet(input_dir / f"{n}.parquet") for n in present}


def world_as_of(input_dir: Path, as_of: dt.date | None = None) -> dt.date:
    """as_of if given, else the as_of in the world's meta.json, else today (UTC)."""
    if as_of is not None:
        return as_of
    meta = Path(input_dir) / META_FILE
    if meta.exists():
        return dt.date.fromisoformat(json.loads(meta.read_text())["as_of"])
    return dt.datetime.now(dt.UTC).date()


def _rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 elsewhere). DuckDB runs in-process, so it counts;
    Spark's JVM is another process and does not."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Stages:
    """Wall time and peak resident memory per stage, reported through `progress` as each one ends (memory
    sampled every 50 ms by a background thread until `close()`)."""

    SAMPLE_S = 0.05

    def __init__(self, progress: Callable[[str], None] | None = None):
        self.seconds: dict[str, float] = {}
        self.peak_rss_mib: dict[str, int] = {}
        self._progress = progress or (lambda _msg: None)
        self._t = time.perf_counter()
        self._peak = _rss_bytes()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()
        self.ingest: dict = {}
        self.oneid_changes: dict | None = None
        self.tags: dict = {}
        self.predictive: dict = {}

    def _sample(self) -> None:
        while not self._stop.wait(self.SAMPLE_S):
            self._peak = max(self._peak, _rss_bytes())

    def done(self, stage: str, detail: str = "") -> None:
        now = time.perf_counter()
        peak, self._peak = max(self._peak, _rss_bytes()), _rss_bytes()
        self.seconds[stage] = round(now - self._t, 3)
        self.peak_rss_mib[stage] = round(peak / 2**20)
        self._t = now
        line = f"[cdp] {stage:<10} {self.seconds[stage]:7.2f}s  {peak / 2**30:5.2f} GiB peak  {detail}"
        self._progress(line.rstrip())

    def close(self) -> None:
        self._stop.set()
        self._sampler.join()


def build(cfg: CdpConfig, progress: Callable[[str], None] | None = None, built_ts: int | None = None,
          save_state: bool = True, stages: Stages | None = None):
    """(con, stages, profiles, index, resolution, as_of): everything up to, not including, the export.
    With `save_state` False (reports), OneID changes are counted against `state_dir` but nothing is written
    there, so the next run still compares with the last run."""
    if stages is None:  # this call's own: the memory sampler stops when it returns
        stages = Stages(progress)
        try:
            return build(cfg, progress, built_ts, save_state, stages)
        finally:
            stages.close()
    segments = cfg.segments()  # checked when cfg was made; read before any work, so a bad file costs nothing
    as_of = world_as_of(cfg.input, cfg.as_of)
    work = Path(cfg.work_dir or engine.scratch_dir("rta-cdp-work-"))
    checked = validate.validate(cfg.input, work, cfg.phone_salt, tables=CDP_TABLES)
    if cfg.work_dir is None:
        checked = _keep_rejects(checked)
    counts = "; ".join(f"{t} {c['in']:,} in = {c['out']:,} out + {c['rejected']:,} rejected"
                       for t, c in checked["tables"].items())
    notes = "".join(f"; {label}: {value}" for label, value in (
        ("absent optional tables (read as empty)", ", ".join(checked["absent_tables"])),
        ("absent optional columns (read as null)", checked["absent_columns"]),
        (f"kept with a warning ({checked['warnings_file']})", checked["warnings"])) if value)
    listed = f"rejects: {checked['rejects_file']}" if checked["rejects_file"] else "no rejects"
    stages.done("ingest", f"{counts} ({listed}){notes}")
    validate.check_reject_share(checked["tables"], cfg.max_reject_share, checked["rejects_file"])
    con = engine.connect(cfg.engine, **cfg.engine_options)
    tables = ingest.read_parquet(con, work)
    guardrails = Guardrails(cfg.max_cluster_size, tuple(cfg.identifier_caps.items()), tuple(cfg.blocked_identifiers))
    previous = last_run_identifiers(con, cfg.state_dir)
    profiles, index, res = profile_tables(tables, as_of, built_ts, guardrails, tags=True, stage=stages.done,
                                          previous=previous)
    if cfg.state_dir:
        stages.oneid_changes = _compare_with_last_run(cfg.state_dir, previous, res, save_state)
        stages.done("changes", f"OneIDs vs last run: {stages.oneid_changes}" if stages.oneid_changes
                    else f"no earlier run in {cfg.state_dir}")
    base_tags = res.tags  # materialised by profile_tables; released once written to tags.parquet
    if cfg.predictive.enabled:
        stages.predictive, res.tags = predictive.stage(cfg.predictive, tables, res, profiles, as_of, work,
                                                       guardrails, progress, cfg.state_dir, save_state)
        stages.done("predictive", predictive.headline(stages.predictive))
    apply_segments(res.tags, segments).to_parquet(work / "tags.parquet")
    # From here on the tags (with scores and a segment_{name} flag per YAML segment, which the export carries)
    # are read from their file, and the engine's copy is freed for the stages after.
    tagged = res.tags = con.read_parquet(str(work / "tags.parquet"))
    release(base_tags)
    stages.tags = {"lifecycle": _distribution(tagged, "lifecycle"), "segments": tag_segment_sizes(tagged),
                   "best_store_source": _distribution(tagged, "best_store_source"),
                   "wecom_events_unattached": unattached_events(tables["wecom_interactions"], res.identifiers,
                                                                cutoff_ts(as_of)),
                   "file": str(work / "tags.parquet") if cfg.work_dir else None}  # else removed at exit
    stages.done("segments", f"lifecycle {stages.tags['lifecycle']}; best store from "
                f"{stages.tags['best_store_source']}; WeCom events of no known person "
                f"{stages.tags['wecom_events_unattached']:,}; segments {stages.tags['segments']}")
    stages.ingest = checked
    return con, stages, profiles, index, res, as_of


def _keep_rejects(checked: dict) -> dict:
    """Without a work_dir the work files go at exit, but rejected rows and warnings are what a user must read
    after the run: they are moved to a directory of their own that stays (`rta-cdp-rejects-*` in the system
    temp dir). With none, the result says so (None) rather than naming a file about to be removed."""
    rejected = any(c["rejected"] for c in checked["tables"].values())
    if not rejected and not checked["warnings"]:
        return {**checked, "rejects_file": None, "warnings_file": None}
    kept = Path(tempfile.mkdtemp(prefix="rta-cdp-rejects-"))
    moved = {key: str(shutil.move(checked[key], kept / Path(checked[key]).name)) if present else None
             for key, present in (("rejects_file", rejected), ("warnings_file", bool(checked["warnings"])))}
    return {**checked, **moved}


IDENTIFIERS_FILE = "identifiers.parquet"


def _distribution(t, column: str) -> dict[str, int]:
    rows = t.group_by(column).agg(n=ibis._.count()).to_pyarrow().to_pylist()
    return {str(r[column]): int(r["n"]) for r in sorted(rows, key=lambda r: str(r[column]))}


CHANGES_DIR = "oneid_changes"  # a Parquet file of merges, splits and renames per run that had any, named by time


def last_run_identifiers(con, state_dir: Path | None):
    """The [key, one_id] map the last published run left in state_dir, on `con`; None without one."""
    path = Path(state_dir) / IDENTIFIERS_FILE if state_dir else None
    return con.read_parquet(str(path)).select("key", "one_id") if path and path.exists() else None


def _compare_with_last_run(state_dir: Path, previous, res, save: bool = True) -> dict | None:
    """Merges, splits and renames against the last published run's map `previous` (None: no earlier run),
    counted; with `save` and any change, each one written to `{state_dir}/oneid_changes/{time}.parquet`, and
    this run's map saved, both as pending files that `commit_state` puts in place after the export: a run
    whose export fails leaves the state as it was."""
    state_dir = Path(state_dir)
    moved = log_frame = None
    if previous is not None:
        moved, log_frame = compare(previous, res.identifiers)
    if not save:
        return moved
    discard_pending(state_dir)  # left by a run whose export failed
    if log_frame is not None and len(log_frame):
        log_dir = state_dir / CHANGES_DIR
        log_dir.mkdir(parents=True, exist_ok=True)
        moved["log"] = str(log_dir / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.parquet")
        log_frame.to_parquet(pending(Path(moved["log"])), index=False)
    state_dir.mkdir(parents=True, exist_ok=True)
    res.identifiers.to_parquet(pending(state_dir / IDENTIFIERS_FILE))
    return moved


def collect(stages: Stages, profile_t, index_t, res) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(profiles with their scores and YAML segments, device index, counts) as frames for the exporter. The
    engine's tables of the run are released once read, so the export has their memory."""
    facts = {"records": int(res.records.count().to_pyarrow().as_py()), "segments": segment_sizes(profile_t)}
    res.release()
    # in the engine's order: the exporter sorts device entries by bucket itself (10M: 17M + 11M rows unsorted)
    profiles = with_segments(to_frame(predictive.with_scores(profile_t, stages.predictive), ordered=False), res.tags)
    index = index_frame(index_t, ordered=False)
    for done in (profile_t, index_t):
        release(done)
    stages.done("collect", f"{len(profiles):,} profiles, {len(index):,} device IDs")
    return profiles, index, facts


def publish(cfg: CdpConfig, stages: Stages, profiles: pd.DataFrame, index: pd.DataFrame,
            progress: Callable[[str], None] | None = None) -> dict:
    """The export stage: profiles to cfg.redis_url as configured (cdp.export)."""
    client = connect(cfg.redis_url)
    try:
        exported = export(client, profiles, index, ns=cfg.namespace, grace_s=cfg.grace_s, mode=cfg.export_mode,
                          state_dir=cfg.state_dir, write_rate=cfg.write_rate, say=progress,
                          max_shrink=cfg.max_shrink, allow_shrink=cfg.allow_shrink,
                          score_resolution=cfg.predictive.export_resolution)
    finally:
        client.close()
    stages.done("export", _export_line(exported))
    return exported


def check_redis(cfg: CdpConfig, progress: Callable[[str], None] | None = None) -> dict:
    """cdp.export.preflight on the configured Redis, said on one line (and its layout warnings, if any);
    raises RedisUnavailable before any input is read."""
    say = progress or (lambda _msg: None)
    got = preflight(cfg.redis_url, cfg.namespace)
    live = (f"live generation {got['live_generation']} of namespace {cfg.namespace!r}, "
            f"{got['live_entries']:,} device entries ({got['counted_by']})" if got["live_generation"]
            else f"nothing live in namespace {cfg.namespace!r} yet")
    warnings = got["layout_warnings"]  # None: not checked (no record of the live export's sizes)
    layout = "" if warnings is None else "; see the WARNING below" if warnings else \
        "; every node's hash-max-listpack-* keep the live export's buckets compact"
    say(f"[cdp] redis      {got['url']} answers; {live}{layout}")
    for w in warnings or ():
        say(f"[cdp] WARNING {w}")
    return got


def run_config(cfg: CdpConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Build profiles as configured and export them as a new generation; returns a summary."""
    validate.find_sources(cfg.input, CDP_TABLES)  # a wrong --input is said before Redis is even asked
    redis_check = check_redis(cfg, progress)  # minutes of work are not spent before finding Redis unreachable
    stages = Stages(progress)
    try:
        con, stages, profile_t, index_t, res, as_of = build(cfg, progress, stages=stages)
        profiles, index, facts = collect(stages, profile_t, index_t, res)
        exported = publish(cfg, stages, profiles, index, progress)
        commit_state(cfg.state_dir)
    except BaseException:
        discard_pending(cfg.state_dir)  # the state stays as the last published run left it, and looks it
        raise
    finally:
        stages.close()
    return {
        "as_of": as_of.isoformat(),
        "cutoff_ts": cutoff_ts(as_of),
        "namespace": cfg.namespace,
        "engine": cfg.engine,
        "records": facts["records"],
        "oneid_rounds": res.rounds,
        "profiles": len(profiles),
        "members": int(profiles["is_member"].sum()),
        "profiles_with_devices": int((profiles["device_count"] > 0).sum()),
        "segments": facts["segments"],
        "ingest": stages.ingest,
        "oneid_changes": stages.oneid_changes,
        "tags": stages.tags,
        "predictive": stages.predictive,
        "stage_seconds": stages.seconds,
        "stage_peak_rss_mib": stages.peak_rss_mib,
        "redis": redis_check,
        "export": exported,
    }


def _export_line(e: dict) -> str:
    if e["mode"] == "incremental":
        return (f"incremental into generation {e['generation']}: {e['keys_written']:,} device entries written "
                f"({e['new']:,} new, {e['changed']:,} changed), {e['keys_deleted']:,} deleted, "
                f"{e['unchanged']:,} unchanged")
    return (f"generation {e['generation']}, {e['keys_written']:,} device entries in {e['buckets']:,} buckets, "
            f"{e['bytes_per_key']:.0f} bytes of Redis memory per device ID, OBJECT ENCODING of "
            f"{sum(e['encodings'].values())} sampled buckets {e['encodings']}")


def run(input_dir: Path, redis_url: str, namespace: str = "rta", as_of: dt.date | None = None,
        grace_s: float = 0.0, engine_name: str = "duckdb", progress: Callable[[str], None] | None = None,
        allow_shrink: bool = False) -> dict:
    """run_config with the common settings as arguments (the demo's entry point)."""
    cfg = CdpConfig(input=input_dir, redis_url=redis_url, namespace=namespace, as_of=as_of, grace_s=grace_s,
                    engine=engine_name, allow_shrink=allow_shrink)
    return run_config(cfg, progress)


def report(cfg: CdpConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Identity accuracy against the world's truth files (when present), segment sizes; no export."""
    con, stages, profiles, _index, res, as_of = build(cfg, progress, save_state=False)
    out = {"as_of": as_of.isoformat(), "engine": cfg.engine, "ingest": stages.ingest}
    if (Path(cfg.input) / "truth_memberships.parquet").exists():
        out["identity"] = identity_accuracy(con, cfg.input, res)
    else:
        out["identity"] = identity_counts(res)
    out["segments"] = segment_sizes(profiles)
    out["tags"] = stages.tags
    out["predictive"] = stages.predictive
    ident = out["identity"]
    stages.done("report", f"{ident['records']:,} records in {ident['one_ids']:,} OneIDs; " + (
        f"pairwise precision {ident['pairwise_precision']}, recall {ident['pairwise_recall']}, "
        f"{ident['true_persons']:,} true persons" if "pairwise_precision" in ident else ident["accuracy"]))
    out["stage_seconds"], out["stage_peak_rss_mib"] = stages.seconds, stages.peak_rss_mib
    return out
