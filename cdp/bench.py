"""`rta cdp bench`: the CDP at scale on this machine, with its baselines measured in the same run.

Builds a simulated world of `people`, then times each stage and samples this process's resident memory
(DuckDB runs in-process, so its memory is included; Spark's JVM is not) while it runs:

    ingest     validation of every input row to clean Parquet
    load       the clean tables into the engine (as of the cutoff)
    oneid      identifiers -> label propagation -> OneIDs
    profiles   profile aggregates and the device index
    tags       cdp.tags
    predictive cdp.predictive: OneID, profiles and tags again as of T0, two models trained, everyone scored
    export     rta.v1.Profile per device ID into bucketed hashes of a throw-away redis-server (Redis's own
               used_memory is reported per device ID)

Baselines in the same run: Splink's `cluster_pairwise_predictions_at_threshold` on the same record-pair
edges on the same DuckDB connection (time ratio against our label propagation), and `redis-cli --pipe`
mass insertion of the same records as one string key per device ID, the format-1 layout (throughput
ratio against our exporter, and that layout's memory per device ID against the buckets'). Figures
are printed, never asserted.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import ibis
import redis

from rta_service import keyspace
from rta_service.embedded_redis import EmbeddedRedis, find_redis_server

from . import engine, ingest, predictive, validate
from .engine import materialize
from .export import export
from .identity import Guardrails, edges, propagate, resolve
from .profiles import before, cutoff_ts, device_index, index_frame, profile_table, to_frame
from .tags import tag_table

AS_OF = dt.date(2025, 6, 1)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Stage:
    """Wall time and peak RSS of one stage (RSS sampled every 50 ms)."""

    def __init__(self, name: str, results: dict, say):
        self.name, self.results, self.say = name, results, say

    def __enter__(self):
        self.peak = _rss_bytes()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.t = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        seconds = time.perf_counter() - self.t
        self.stop.set()
        self.thread.join()
        self.results[self.name] = {"seconds": round(seconds, 2), "peak_rss_mib": round(self.peak / 2**20)}
        self.say(f"[bench] {self.name:<9} {seconds:8.1f}s  peak RSS {self.peak / 2**30:6.2f} GiB")


def _splink_ratio(con, e, say) -> dict:
    """Our propagation vs Splink's clustering on the same record-pair edges (a star per identifier), both
    on integer node ids."""
    from splink import DuckDBAPI  # noqa: PLC0415 - the cdpbench extra
    from splink.clustering import cluster_pairwise_predictions_at_threshold  # noqa: PLC0415

    numbered = e.select("node").distinct()
    numbered = numbered.mutate(nid=ibis.row_number().over(order_by="node")).pipe(materialize)
    e = e.join(numbered, "node").select(node="nid", key="key")
    hub = e.group_by("key").agg(hub=ibis._.node.min())
    pairs = e.join(hub, "key").filter(lambda t: t.node != t.hub)
    pairs = pairs.select(node_l="hub", node_r="node").distinct().mutate(match_probability=ibis.literal(1.0))
    pairs = pairs.pipe(materialize)
    nodes = numbered.select(node="nid")
    n_edges = pairs.count().to_pyarrow().as_py()
    # Integer node ids for both, as cdp.identity uses. Each edge's left node stands for the edge: a node
    # is in the group of every left node it is joined to, which gives the same components.
    graph = pairs.select(node="node_r", key="node_l").union(pairs.select(node="node_l", key="node_l"), distinct=True)
    graph = graph.pipe(materialize)
    t = time.perf_counter()
    labels, rounds = propagate(graph)
    ours_components = labels.label.nunique().to_pyarrow().as_py()
    ours = time.perf_counter() - t
    raw = con.con  # the duckdb connection under Ibis
    t = time.perf_counter()
    clusters = cluster_pairwise_predictions_at_threshold(
        nodes.to_pyarrow(), pairs.to_pyarrow(), DuckDBAPI(connection=raw), node_id_column_name="node",
        edge_id_column_name_left="node_l", edge_id_column_name_right="node_r", threshold_match_probability=0.5)
    splink_components = raw.sql(f"select count(distinct cluster_id) from {clusters.physical_name}").fetchall()[0][0]
    theirs = time.perf_counter() - t
    linked = ours_components  # nodes with at least one edge, by component
    say(f"[bench] clustering {n_edges:,} record-pair edges: ours {ours:.1f}s ({rounds} rounds, {linked:,} components), "
        f"Splink {theirs:.1f}s ({splink_components:,} clusters incl. singletons): Splink/ours = {theirs / ours:.2f}")
    return {"edges": n_edges, "ours_s": round(ours, 2), "splink_s": round(theirs, 2), "rounds": rounds,
            "ours_components": ours_components, "splink_clusters": int(splink_components),
            "splink_over_ours": round(theirs / ours, 2)}


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def _redis_cli_ratio(url: str, profiles, index, ours_keys_per_s: float, workdir: Path, say) -> dict:
    """redis-cli --pipe of the same records, one string key per device ID (format 1), into database 1 of
    the same server; also that layout's used_memory per device ID."""
    cli = shutil.which("redis-cli") or str(Path(find_redis_server()).with_name("redis-cli"))
    values = {row.one_id: keyspace.encode_profile(_message(row)) for row in profiles.itertuples(index=False)}
    path = workdir / "mass-insert.resp"
    with open(path, "wb") as f:
        for id_type, md5, one_id in zip(index["id_type"], index["md5"], index["one_id"], strict=True):
            key = f"pipe:1:{keyspace.TYPE_CODES[int(id_type)]}:{md5}"
            f.write(_resp(b"SET", key.encode(), values[one_id]))
    port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
    memory_before = int(redis.Redis.from_url(url).info("memory")["used_memory"])
    t = time.perf_counter()
    with open(path, "rb") as f:
        done = subprocess.run([cli, "-p", str(port), "-n", "1", "--pipe"], stdin=f, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli --pipe failed: {done.stderr or done.stdout}")
    rate = len(index) / seconds
    per_key = (int(redis.Redis.from_url(url).info("memory")["used_memory"]) - memory_before) / max(len(index), 1)
    say(f"[bench] redis-cli --pipe {len(index):,} keys in {seconds:.1f}s = {rate:,.0f} keys/s; "
        f"ours/redis-cli = {ours_keys_per_s / rate:.2f}; one string key per device ID takes {per_key:.0f} bytes "
        "of Redis memory per device ID")
    redis.Redis.from_url(url, db=1).flushdb(asynchronous=True)  # 11M keys: a synchronous flush timed out
    return {"keys": len(index), "seconds": round(seconds, 2), "keys_per_s": round(rate),
            "ours_over_redis_cli": round(ours_keys_per_s / rate, 2), "string_keys_bytes_per_key": round(per_key, 1)}


def _message(row):
    from .profiles import to_message  # noqa: PLC0415

    return to_message(row)


def run_bench(people: int, engine_name: str = "duckdb", seed: int = 7, workdir: Path | None = None,
              memory_limit: str | None = None, baselines: bool = True, say=print) -> dict:
    from simulate.parts import simulate_in_parts  # noqa: PLC0415

    workdir = Path(workdir or tempfile.mkdtemp(prefix="rta-cdp-bench-"))
    results: dict = {"people": people, "engine": engine_name, "cpus": os.cpu_count(), "stages": {}}
    stages = results["stages"]
    t = time.perf_counter()
    world = workdir / "world"
    if not (world / "meta.json").exists():
        simulate_in_parts(world, people=people, seed=seed, as_of=AS_OF, traffic=1)  # 1M-people parts
    say(f"[bench] world of {people:,} people in {world} ({time.perf_counter() - t:.0f}s, not a stage)")
    opts = {"memory_limit": memory_limit, "temp_directory": str(workdir / "spill")} if engine_name == "duckdb" else {}
    con = engine.connect(engine_name, **opts)
    cutoff = cutoff_ts(AS_OF)
    with Stage("ingest", stages, say):
        checked = validate.validate(world, workdir / "clean", tables=ingest.CDP_TABLES)
        results["rows"] = checked["tables"]
    with Stage("load", stages, say):  # the clean Parquet into the engine, as of the cutoff
        t_in = {k: v.pipe(materialize) for k, v in before(ingest.read_parquet(con, workdir / "clean"), cutoff).items()}
    with Stage("oneid", stages, say):
        res = resolve(t_in, Guardrails(max_cluster_size=1000))
        results["oneid_rounds"] = res.rounds
    with Stage("profiles", stages, say):
        index_t = device_index(res.identifiers).pipe(materialize)
        profile_t = profile_table(t_in, res, index_t, cutoff, built_ts=cutoff).pipe(materialize)
        profiles, index = to_frame(profile_t), index_frame(index_t)
    with Stage("tags", stages, say):
        res.tags = tag_table(t_in, res, profile_t, cutoff).pipe(materialize)
        res.tags.to_parquet(workdir / "tags.parquet")
    with Stage("predictive", stages, say):
        results["predictive"] = predictive.run(t_in, res, profile_t, AS_OF, workdir, guardrails=Guardrails(1000),
                                               progress=say)
        profiles = predictive.attach(profiles, results["predictive"])  # the scores go to Redis too
    with EmbeddedRedis(extra_args=("--save", "", "--appendonly", "no")) as server:
        with Stage("export", stages, say):
            exported = export(redis.Redis.from_url(server.url, socket_timeout=120), profiles, index, ns="bench",
                              say=say)
        # encoding + writing, up to the switch (as the format-1 exporter's figure was taken)
        keys_per_s = exported["keys_written"] / exported["switch_seconds"]
        results["export"] = {**exported, "keys_per_s": round(keys_per_s)}
        say(f"[bench] export {exported['keys_written']:,} device IDs, {keys_per_s:,.0f} device IDs/s encoding and "
            f"writing ({exported['keys_written'] / exported['write_seconds']:,.0f}/s writing alone), "
            f"{exported['bytes_per_key']:.0f} bytes of Redis memory per device ID in {exported['buckets']:,} "
            f"bucket hashes, encodings {exported['encodings']}")
        if baselines:
            results["redis_cli"] = _redis_cli_ratio(server.url, profiles, index, keys_per_s, workdir, say)
    if baselines and engine_name == "duckdb":
        e = edges(t_in).pipe(materialize)
        results["splink"] = _splink_ratio(con, e, say)
    results["total_stage_seconds"] = round(sum(s["seconds"] for s in stages.values() if isinstance(s, dict)), 1)
    results["peak_rss_mib"] = max(s["peak_rss_mib"] for s in stages.values() if isinstance(s, dict))
    return results
