"""`rta cdp bench`: the CDP at scale on this machine, with its baselines measured in the same run.

Builds a simulated world of `people` (reused when `workdir` holds one), then runs `rta cdp run` on it,
the pipeline itself (cdp.pipeline.build, collect, publish), into a throw-away redis-server, and reports
the wall time and this process's peak resident memory of each of its stages (DuckDB runs in-process, so
its memory is included; Spark's JVM is not): ingest, load, oneid, profiles, tags, predictive, segments,
collect, export. Redis's own used_memory growth is reported per device ID.

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
import time
from pathlib import Path

import ibis
import redis

from rta_service import keyspace
from rta_service.embedded_redis import EmbeddedRedis, find_redis_server

from . import ingest, pipeline
from .config import CdpConfig
from .engine import materialize
from .export import _records
from .identity import edges, propagate
from .profiles import before, cutoff_ts

AS_OF = dt.date(2025, 6, 1)
MAX_CLUSTER = 1000  # records per OneID before the run fails; simulated people have a handful


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
    # propagate labels the nodes with an edge; the others are clusters of one, as in Splink's count
    ours_clusters = ours_components + int(nodes.count().to_pyarrow().as_py()) - int(labels.count().to_pyarrow().as_py())
    raw = con.con  # the duckdb connection under Ibis
    node_rows, edge_rows = nodes.to_pyarrow(), pairs.to_pyarrow()  # Splink's inputs, outside its timing
    t = time.perf_counter()
    clusters = cluster_pairwise_predictions_at_threshold(
        node_rows, edge_rows, DuckDBAPI(connection=raw), node_id_column_name="node",
        edge_id_column_name_left="node_l", edge_id_column_name_right="node_r", threshold_match_probability=0.5)
    splink_components = raw.sql(f"select count(distinct cluster_id) from {clusters.physical_name}").fetchall()[0][0]
    theirs = time.perf_counter() - t
    say(f"[bench] clustering {n_edges:,} record-pair edges: ours {ours:.1f}s ({rounds} rounds), Splink {theirs:.1f}s; "
        f"clusters incl. single records: ours {ours_clusters:,}, Splink {splink_components:,}; time Splink/ours = "
        f"{theirs / ours:.2f} (above 1: ours is faster)")
    return {"edges": n_edges, "ours_s": round(ours, 2), "splink_s": round(theirs, 2), "rounds": rounds,
            "ours_clusters": ours_clusters, "splink_clusters": int(splink_components),
            "splink_over_ours": round(theirs / ours, 2)}


def _mass_insert(path: Path, profiles, index, chunk: int = 1 << 18) -> None:
    """The RESP file `redis-cli --pipe` reads: SET pipe:1:{code}:{md5} to the person's record, per device ID."""
    records, person, _ = _records(profiles, index, unstamped=False)
    off = records.offsets
    codes = keyspace.TYPE_CODES
    id_types, md5s = index["id_type"].to_numpy(), index["md5"].to_numpy()
    with open(path, "wb") as f:
        for lo in range(0, len(index), chunk):
            parts = []
            for id_type, md5, who in zip(id_types[lo:lo + chunk].tolist(), md5s[lo:lo + chunk].tolist(),
                                         person[lo:lo + chunk].tolist(), strict=True):
                key = f"pipe:1:{codes[id_type]}:{md5}".encode()
                value = records.flat[off[who]:off[who + 1]].tobytes()
                parts.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
            f.write(b"".join(parts))


def _redis_cli_ratio(url: str, profiles, index, ours_keys_per_s: float, workdir: Path, say) -> dict:
    """redis-cli --pipe of the same records, one string key per device ID (format 1), into database 1 of
    the same server; also that layout's used_memory per device ID."""
    cli = shutil.which("redis-cli") or str(Path(find_redis_server()).with_name("redis-cli"))
    path = workdir / "mass-insert.resp"
    _mass_insert(path, profiles, index)
    port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
    memory_before = int(redis.Redis.from_url(url).info("memory")["used_memory"])
    t = time.perf_counter()
    with open(path, "rb") as f:
        done = subprocess.run([cli, "-p", str(port), "-n", "1", "--pipe"], stdin=f, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    path.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli --pipe failed: {done.stderr or done.stdout}")
    rate = len(index) / seconds
    per_key = (int(redis.Redis.from_url(url).info("memory")["used_memory"]) - memory_before) / max(len(index), 1)
    say(f"[bench] redis-cli --pipe {len(index):,} keys in {seconds:.1f}s = {rate:,.0f} keys/s; throughput "
        f"ours/redis-cli = {ours_keys_per_s / rate:.2f} (above 1: ours is faster); one string key per device ID "
        f"takes {per_key:.0f} bytes of Redis memory per device ID")
    redis.Redis.from_url(url, db=1).flushdb(asynchronous=True)  # 11M keys: a synchronous flush timed out
    return {"keys": len(index), "seconds": round(seconds, 2), "keys_per_s": round(rate),
            "ours_over_redis_cli": round(ours_keys_per_s / rate, 2), "string_keys_bytes_per_key": round(per_key, 1)}


def run_bench(people: int, engine_name: str = "duckdb", seed: int = 7, workdir: Path | None = None,
              memory_limit: str | None = None, baselines: bool = True, say=print) -> dict:
    from simulate.parts import simulate_in_parts  # noqa: PLC0415

    workdir = Path(workdir or tempfile.mkdtemp(prefix="rta-cdp-bench-"))
    results: dict = {"people": people, "engine": engine_name, "cpus": os.cpu_count(), "memory_limit": memory_limit}
    t = time.perf_counter()
    world = workdir / "world"
    if not (world / "meta.json").exists():
        simulate_in_parts(world, people=people, seed=seed, as_of=AS_OF, traffic=1)  # 1M-people parts
    say(f"[bench] world of {people:,} people in {world} ({time.perf_counter() - t:.0f}s, not a stage)")
    opts = {"memory_limit": memory_limit, "temp_directory": str(workdir / "spill")} if engine_name == "duckdb" else {}
    with EmbeddedRedis(extra_args=("--save", "", "--appendonly", "no")) as server:
        cfg = CdpConfig(input=world, as_of=AS_OF, engine=engine_name, engine_options=opts, work_dir=workdir / "work",
                        max_cluster_size=MAX_CLUSTER, redis_url=server.url, namespace="bench", grace_s=0)
        stages = pipeline.Stages(say)
        try:
            con, _, profile_t, index_t, res, _ = pipeline.build(cfg, say, built_ts=cutoff_ts(AS_OF), stages=stages)
            results["oneid_rounds"], results["predictive"] = res.rounds, stages.predictive
            profiles, index, _facts = pipeline.collect(stages, profile_t, index_t, res)
            exported = pipeline.publish(cfg, stages, profiles, index, say)
        finally:
            stages.close()
        results["rows"] = stages.ingest["tables"]
        results["stages"] = {name: {"seconds": seconds, "peak_rss_mib": stages.peak_rss_mib[name]}
                             for name, seconds in stages.seconds.items()}
        # encoding + writing, up to the switch (as the format-1 exporter's figure was taken)
        keys_per_s = exported["keys_written"] / exported["switch_seconds"]
        results["export"] = {**exported, "keys_per_s": round(keys_per_s)}
        say(f"[bench] export {exported['keys_written']:,} device IDs, {keys_per_s:,.0f} device IDs/s encoding and "
            f"writing ({exported['keys_written'] / exported['write_seconds']:,.0f}/s writing alone), "
            f"{exported['bytes_per_key']:.0f} bytes of Redis memory per device ID in {exported['buckets']:,} "
            f"bucket hashes")
        results["total_stage_seconds"] = round(sum(stages.seconds.values()), 1)
        results["peak_rss_mib"] = max(stages.peak_rss_mib.values())
        say(f"[bench] all stages: {results['total_stage_seconds']:.0f}s, peak RSS "
            f"{results['peak_rss_mib'] / 1024:.2f} GiB")
        if baselines:
            results["redis_cli"] = _redis_cli_ratio(server.url, profiles, index, keys_per_s, workdir, say)
    del profiles, index
    if baselines and engine_name == "duckdb":
        tables = before(ingest.read_parquet(con, cfg.work_dir), cutoff_ts(AS_OF))
        results["splink"] = _splink_ratio(con, edges(tables).pipe(materialize), say)
    return results
