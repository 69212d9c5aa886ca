"""Write profiles to Redis in the rta_service.keyspace format: bucketed hashes, one entry per device ID.

A full export publishes a new generation:

    1. read `{ns}:gen` (N; 0 when absent) and clear any leftovers of N+1 from a crashed run
    2. HSET every bucket of generation N+1, a chunk of buckets at a time, at most `write_rate` entries/s
    3. SET `{ns}:gen` "N+1:{bits}": readers switch to the complete new generation with this one command
    4. after `grace_s` (readers that read the pointer just before the switch finish), SCAN+UNLINK the
       keys of every older generation

Before writing anything, either mode compares the new export's device entry count with the live one's
(`{ns}:export`, the facts each export records about itself, else counted with HLEN) and refuses an
export that would empty the live store or shrink it by more than `max_shrink` (`ShrinkRefused`), unless
`allow_shrink`: an empty or truncated extract must not make every device unknown.

An incremental export (`mode="incremental"` with a `state_dir` holding the last export's digests)
writes into the live generation only the device entries whose record changed or is new (HSET) and
removes those no longer exported (HDEL). That is safe without a switch because each device entry is
self-contained (a full copy of its person's record, written by one atomic HSET/HDEL of its field): a
reader sees either the old or the new entry of a device, never a mix of two records. Two devices of
one person may briefly answer from different versions of the record during the run. When the state
does not match the live export (first run, another generation went live since, a crashed run), the
export is full instead, and says why.

Bytes are built with numpy (cdp/wire.py: protobuf wire format and RESP per column, no Python per
device) and written as raw RESP in large buffers on one connection per node; on a Redis Cluster
(`redis+cluster://`) each bucket goes to the node that owns its slot. One exporter per namespace at
a time. Keys and fields hold only MD5s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import redis
from redis.cluster import RedisCluster

from rta_service import keyspace
from rta_service.store import CLUSTER_SCHEME, _redact

from . import wire

CHUNK = 20_000  # device entries per write (whole buckets), paced as one by the write rate
ENCODE_ROWS = 500_000  # profiles encoded at a time
SCAN_COUNT = 1000
STATE_FILE = "export_state.json"
DIGESTS_FILE = "export_digests.parquet"
ENCODING_SAMPLE = 32  # buckets whose OBJECT ENCODING is checked after a write
COUNT_BATCH = 10_000  # HLENs per round trip when the live export's size must be counted


class ShrinkRefused(RuntimeError):
    """The export would empty the live store or shrink it past `max_shrink`; nothing was written."""


class RedisUnavailable(RuntimeError):
    """The configured Redis does not answer (checked before any work)."""


def connect(url: str, timeout_s: float = 60.0) -> redis.Redis | RedisCluster:
    """A client for a Redis URL; `redis+cluster://host:port` gives a Cluster client."""
    if url.startswith(CLUSTER_SCHEME):
        return RedisCluster.from_url("redis://" + url[len(CLUSTER_SCHEME):], socket_timeout=timeout_s,
                                     socket_connect_timeout=10)
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=10)


def _nodes(client) -> list[redis.Redis]:
    """One plain client per primary node (the client itself for a single Redis)."""
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(n) for n in client.get_primaries()]
    return [client]


class Pacer:
    """A token bucket over device entries: `take(n)` sleeps until n more fit in `per_s` (0 = unlimited).
    Clock and sleep are injectable, so tests judge the pacing without timing anything."""

    def __init__(self, per_s: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.per_s, self.clock, self.sleep = per_s, clock, sleep
        self.slept = 0.0
        self._next: float | None = None

    def take(self, n: int) -> None:
        if self.per_s <= 0:
            return
        now = self.clock()
        due = now if self._next is None else max(self._next, now)
        if due > now:
            self.sleep(due - now)
            self.slept += due - now
        self._next = due + n / self.per_s

    def chunk(self, default: int = CHUNK) -> int:
        """Entries per write: at most a tenth of a second's worth, so pacing stays smooth."""
        return default if self.per_s <= 0 else max(1, min(default, int(self.per_s / 10)))


class Entries:
    """Device entries sorted by bucket: fields (n, 17) and the row of each one's person's record."""

    def __init__(self, id_types, md5s, person: np.ndarray, bucket_bits: int):
        raw = keyspace.md5_bytes(md5s)
        buckets = keyspace.buckets_of(raw, bucket_bits)
        order = np.argsort(buckets, kind="stable")
        self.bucket = buckets[order]
        self.field = keyspace.device_fields(np.asarray(id_types)[order], raw[order])
        self.person = np.asarray(person)[order]
        self.bucket_bits = bucket_bits

    def __len__(self) -> int:
        return len(self.bucket)

    def field_bulk(self, lo: int, hi: int) -> wire.Padded:
        """The RESP bulk strings ("$17" CRLF field CRLF) of entries lo..hi."""
        n = hi - lo
        return wire.side_by_side(wire.const(b"$%d\r\n" % keyspace.FIELD_BYTES, n), wire.fixed(self.field[lo:hi]),
                                 wire.const(b"\r\n", n))


def _read_replies(owed: list[tuple]) -> None:
    errors = []
    for conn, count in owed:
        for _ in range(count):
            try:
                conn.read_response(disable_decoding=True)
            except redis.ResponseError as exc:
                errors.append(exc)
    if errors:
        raise RuntimeError(f"{len(errors)} writes failed, e.g. {errors[0]} (on a Cluster, is it resharding?)")


class Writer:
    """Raw RESP commands to the node owning each key, in chunks of whole buckets, paced."""

    def __init__(self, client, pacer: Pacer):
        self.client, self.pacer = client, pacer
        self.cluster = isinstance(client, RedisCluster)
        self._conns: dict[str, tuple] = {}  # node name -> (connection, its pool)

    def _connection(self, key: bytes):
        if self.cluster:
            node = self.client.nodes_manager.get_node_from_slot(self.client.keyslot(key))
            name, pool = node.name, self.client.get_redis_connection(node).connection_pool
        else:
            name, pool = "", self.client.connection_pool
        if name not in self._conns:
            self._conns[name] = (pool.get_connection(), pool)
        return self._conns[name][0]

    def write(self, verb: bytes, ns: str, generation: int, buckets_sorted: np.ndarray,
              body: Callable[[int, int], wire.Ragged], args_per_entry: int) -> int:
        """`verb key args...` per bucket; `body(lo, hi)` gives the args of entries lo..hi, a row each.
        Returns the number of entries."""
        if not len(buckets_sorted):
            return 0
        buckets, starts, counts = np.unique(buckets_sorted, return_index=True, return_counts=True)
        chunk = self.pacer.chunk()
        i = 0
        owed: list[tuple] = []  # (connection, replies) of the chunk before: read after sending the next one,
        # so Redis works on one chunk while this process encodes the next (replies are a few bytes each)
        while i < len(buckets):
            j, n = i, 0
            while j < len(buckets) and (n == 0 or n + counts[j] <= chunk):
                n += int(counts[j])
                j += 1
            self.pacer.take(n)
            lo = int(starts[i])
            rows = body(lo, lo + n)
            off, data = rows.offsets, rows.flat
            per_conn: dict[int, tuple] = {}
            for b, s, c in zip(buckets[i:j].tolist(), (starts[i:j] - lo).tolist(), counts[i:j].tolist(), strict=True):
                key = keyspace.bucket_key(ns, generation, b).encode()
                conn = self._connection(key)
                parts, count, _ = per_conn.setdefault(id(conn), ([], [0], conn))
                parts.append(b"*%d\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                    2 + args_per_entry * c, len(verb), verb, len(key), key))
                parts.append(data[off[s]:off[s + c]].tobytes())
                count[0] += 1
            for parts, _count, conn in per_conn.values():
                conn.send_packed_command([b"".join(parts)], check_health=False)
            _read_replies(owed)
            owed = [(conn, count[0]) for _parts, count, conn in per_conn.values()]
            i = j
        _read_replies(owed)
        return len(buckets_sorted)

    def hset(self, ns: str, generation: int, entries: Entries, records: wire.Ragged) -> int:
        """HSET every entry to its person's record (rows of `records`)."""
        def body(lo: int, hi: int) -> wire.Ragged:
            values = wire.take(records, entries.person[lo:hi])
            return wire.compact(entries.field_bulk(lo, hi), *wire.resp_bulk(values))

        return self.write(b"HSET", ns, generation, entries.bucket, body, 2)

    def hdel(self, ns: str, generation: int, entries: Entries) -> int:
        return self.write(b"HDEL", ns, generation, entries.bucket,
                          lambda lo, hi: wire.compact(entries.field_bulk(lo, hi)), 1)

    def close(self) -> None:
        """Drop the connections (one may owe replies after a failure) and hand them back to their pools."""
        for conn, pool in self._conns.values():
            conn.disconnect()
            pool.release(conn)
        self._conns.clear()


def read_meta(client, ns: str) -> dict[str, int]:
    """The facts the last export recorded in `{ns}:export` (generation, bucket_bits, entries, ...); {} if none
    or unreadable (an older exporter wrote none)."""
    raw = client.hgetall(keyspace.export_meta_key(ns))
    try:
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
    except ValueError:
        return {}


def _describes(meta: dict[str, int], live: keyspace.Live) -> bool:
    return (meta.get("generation"), meta.get("bucket_bits")) == (live.generation, live.bucket_bits)


def live_entries(client, ns: str, live: keyspace.Live) -> tuple[int, str]:
    """(device entries of the live export, how that was found): from `{ns}:export` when it describes the live
    generation (one HGETALL), else counted (HLEN of every bucket, pipelined; a format-1 export's keys by SCAN)."""
    if live.generation == 0:
        return 0, "nothing live"
    meta = read_meta(client, ns)
    if _describes(meta, live) and "entries" in meta:
        return meta["entries"], "recorded"
    if live.bucket_bits is None:  # format 1: one string key per device ID
        return sum(1 for node in _nodes(client)
                   for _ in node.scan_iter(match=f"{ns}:{live.generation}:*", count=SCAN_COUNT)), "counted"
    total, buckets = 0, 1 << live.bucket_bits
    for lo in range(0, buckets, COUNT_BATCH):
        pipe = client.pipeline(transaction=False)
        for b in range(lo, min(lo + COUNT_BATCH, buckets)):
            pipe.hlen(keyspace.bucket_key(ns, live.generation, b))
        total += sum(pipe.execute())
    return total, "counted"


def shrink_refusal(live_count: int, new_count: int, max_shrink: float, allow_shrink: bool = False) -> str | None:
    """Why an export of `new_count` device entries must not replace a live one of `live_count`, or None.
    An export with none replacing one with some is refused even with max_shrink 1; only allow_shrink lets
    either through. A first export (nothing live) is always allowed."""
    if allow_shrink or live_count == 0:
        return None
    if new_count == 0:
        return f"the new export has no device entries while the live one has {live_count:,}"
    if max_shrink < 1 and live_count - new_count > max_shrink * live_count:
        return (f"the new export has {new_count:,} device entries, {1 - new_count / live_count:.0%} fewer than "
                f"the live one's {live_count:,} (max_shrink {max_shrink:g})")
    return None


def preflight(url: str, ns: str) -> dict:
    """Before a run does any work: the Redis at `url` answers PING, `{ns}:gen` is readable, and when a live
    export recorded its largest record and bucket, whether every node's hash-max-listpack-* keep buckets of
    that size compact (`layout_warnings`). Raises RedisUnavailable with the (password-less) URL."""
    try:
        client = connect(url, timeout_s=10)
        try:
            client.ping()
            live = keyspace.parse_pointer(client.get(keyspace.generation_key(ns)))
            count, how = live_entries(client, ns, live)
            meta = read_meta(client, ns)
            warnings = None  # not checked: nothing live, or no record of its sizes
            if live.generation and _describes(meta, live) and "largest_value" in meta:
                warnings = check_layout(_nodes(client), meta["largest_value"], meta.get("largest_bucket", 0))
        finally:
            client.close()
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        raise RedisUnavailable(f"Redis at {_redact(url)} does not answer ({type(exc).__name__}: {exc}); "
                               "checked before reading any input, nothing was written") from None
    except ValueError as exc:  # a malformed pointer
        raise RedisUnavailable(f"Redis at {_redact(url)}: {keyspace.generation_key(ns)} is not a live pointer "
                               f"({exc}); nothing was written") from None
    return {"url": _redact(url), "live_generation": live.generation, "live_entries": count, "counted_by": how,
            "layout_warnings": warnings}


def _used_memory(nodes) -> int:
    return sum(int(n.info("memory")["used_memory"]) for n in nodes)


def _hash_limits(node: redis.Redis) -> dict[str, int] | None:
    """hash-max-listpack-entries/value (hash-max-ziplist-* before Redis 7), None when CONFIG is refused."""
    try:
        for kind in ("listpack", "ziplist"):
            got = node.config_get(f"hash-max-{kind}-*")
            if got:
                return {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in got.items()}
    except redis.ResponseError:
        return None
    return None


def check_layout(nodes, largest_value: int, largest_bucket: int) -> list[str]:
    """Warnings when a server's settings would store buckets as hashtables (160 bytes per device ID
    instead of 103 in a measurement, docs/specs/profile-store.md)."""
    field = keyspace.FIELD_BYTES
    warnings = []
    for node in nodes:
        limits = _hash_limits(node)
        kw = node.connection_pool.connection_kwargs
        where = f"{kw['host']}:{kw['port']}" if "host" in kw else kw.get("path", "redis")
        if limits is None:
            warnings.append(f"{where}: cannot read hash-max-listpack-* (CONFIG refused); make sure "
                            f"hash-max-listpack-value >= {largest_value} and hash-max-listpack-entries >= "
                            f"{largest_bucket}, or buckets take about 1.5 times the memory")
            continue
        value_limit = next(v for k, v in limits.items() if k.endswith("value"))
        entries_limit = next(v for k, v in limits.items() if k.endswith("entries"))
        if value_limit < max(largest_value, field) or entries_limit < largest_bucket:
            warnings.append(f"{where}: {limits} cannot keep buckets compact (largest record {largest_value} "
                            f"bytes, largest bucket {largest_bucket} entries): set hash-max-listpack-value >= "
                            f"{largest_value} and hash-max-listpack-entries >= {largest_bucket} "
                            "(docs/specs/profile-store.md), else buckets take about 1.5 times the memory")
    return warnings


def _encodings(client, ns: str, generation: int, entries: Entries) -> dict[str, int]:
    """OBJECT ENCODING of the largest bucket and a spread of others."""
    if not len(entries):
        return {}
    buckets, counts = np.unique(entries.bucket, return_counts=True)
    pick = set(buckets[np.linspace(0, len(buckets) - 1, min(ENCODING_SAMPLE, len(buckets))).astype(int)].tolist())
    pick.add(int(buckets[np.argmax(counts)]))
    out: dict[str, int] = {}
    for b in sorted(pick):
        enc = client.object("encoding", keyspace.bucket_key(ns, generation, b))
        enc = enc.decode() if isinstance(enc, bytes) else str(enc)
        out[enc] = out.get(enc, 0) + 1
    return out


def delete_generations(client, ns: str, keep: int | None = None, only: int | None = None) -> int:
    """UNLINK the keys of generations of `ns` other than `keep` (or only those of `only`), format 1's
    string keys included; the pointer and other keys of the namespace are left alone. Returns keys removed."""
    removed = 0
    for node in _nodes(client):
        pipe, batch = node.pipeline(transaction=False), 0
        for key in node.scan_iter(match=f"{ns}:*", count=SCAN_COUNT):
            g = keyspace.is_generation_key(ns, key)
            if g is None or g == keep or (only is not None and g != only):
                continue
            pipe.unlink(key)  # one key per command: keys of one node may still be in different slots
            batch += 1
            if batch >= SCAN_COUNT:
                removed += sum(pipe.execute())
                batch = 0
        if batch:
            removed += sum(pipe.execute())
    return removed


def _records(profiles: pd.DataFrame, index: pd.DataFrame, unstamped: bool,
             score_resolution: float = 0.0) -> tuple[wire.Ragged, np.ndarray, wire.Ragged | None]:
    """(the record of each person who has a device entry, the row of that record for each device entry of
    `index`, and when `unstamped` those records without `updated_ts`). The last is what digests are taken
    of: `updated_ts` changes every run, and an unchanged record keeps the build time it was first written
    with. Profiles without a device ID are not encoded: nothing in Redis would point at them."""
    from .profiles import COLUMNS, score_columns  # noqa: PLC0415 - profiles imports the engine; keep this module light

    pos = pc.index_in(pa.array(index["one_id"]), value_set=pa.array(profiles["one_id"]))
    pos = pos.fill_null(-1).to_numpy().astype(np.int64)
    if (pos < 0).any():
        raise ValueError(f"{int((pos < 0).sum())} device IDs point at OneIDs without a profile")
    used, pos = np.unique(pos, return_inverse=True)  # the profiles with devices, in profile order
    frame = profiles[list(COLUMNS) + score_columns(profiles.columns)].iloc[used]
    stamped, bare = [], []
    for lo in range(0, len(frame), ENCODE_ROWS):  # in blocks: the padded rows of every profile at once took GBs
        head, updated, scores = wire.profile_fields(frame.iloc[lo:lo + ENCODE_ROWS], score_resolution)
        stamped.append(wire.compact(*head, updated, *scores))
        if unstamped:
            bare.append(wire.compact(*head, *scores))
    return wire.stack(stamped), pos, wire.stack(bare) if unstamped else None


def _load_state(state_dir: Path | None) -> dict | None:
    path = state_dir / STATE_FILE if state_dir else None
    if path is None or not path.exists() or not (state_dir / DIGESTS_FILE).exists():
        return None
    return json.loads(path.read_text())


def _save_state(state_dir: Path, state: dict, digests: pd.DataFrame | None = None) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    if digests is not None:
        tmp = state_dir / (DIGESTS_FILE + ".tmp")
        digests.to_parquet(tmp, index=False)
        tmp.replace(state_dir / DIGESTS_FILE)
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(state_dir / STATE_FILE)


def export(client, profiles: pd.DataFrame, index: pd.DataFrame, ns: str = "rta", grace_s: float = 0.0,
           sleep: Callable[[float], None] = time.sleep, *, mode: str = "full", state_dir: Path | None = None,
           write_rate: float = 0, clock: Callable[[], float] = time.monotonic,
           say: Callable[[str], None] | None = None, max_shrink: float = 0.5, allow_shrink: bool = False,
           score_resolution: float = 0.0) -> dict:
    """Publish profiles (cdp.profiles COLUMNS) under every device ID of `index` [id_type, md5, one_id]:
    a new generation (mode "full"), or only the changes into the live one (mode "incremental", which
    needs `state_dir`). `client` is a redis.Redis or RedisCluster (see `connect`). Raises ShrinkRefused,
    before writing anything, when the export would empty the live store or shrink it by more than
    `max_shrink` (a fraction; 1 = any shrink but to nothing), unless `allow_shrink`. Scores are exported
    rounded to multiples of `score_resolution` (0 = as computed)."""
    say = say or (lambda _msg: None)
    state_dir = Path(state_dir) if state_dir else None
    started = time.perf_counter()
    nodes = _nodes(client)
    pointer = client.get(keyspace.generation_key(ns))
    live = keyspace.parse_pointer(pointer)
    live_count, counted_by = live_entries(client, ns, live)
    refused = shrink_refusal(live_count, len(index), max_shrink, allow_shrink)
    if refused:
        raise ShrinkRefused(f"refusing to export to namespace {ns!r}: {refused}. An empty or truncated input "
                            f"would make those devices unknown; generation {live.generation} stays live and "
                            "nothing was written. If the shrink is deliberate, rerun with --allow-shrink "
                            f"(allow_shrink: true){' or a larger max_shrink' if len(index) else ''}.")
    records, person, unstamped = _records(profiles, index, unstamped=state_dir is not None,
                                          score_resolution=score_resolution)
    digest = wire.digests(unstamped)[person] if unstamped is not None else None
    summary = {"profiles": len(profiles), "previous_generation": live.generation, "previous_entries": live_count,
               "previous_entries_from": counted_by}
    state = _load_state(state_dir)
    why_full = None
    if mode == "incremental":
        why_full = _why_not_incremental(state, ns, live, state_dir)
        if why_full is None:
            summary.update(_incremental(client, nodes, ns, live, index, records, person, digest, state_dir, state,
                                        Pacer(write_rate, clock, sleep)))
            summary["seconds"] = round(time.perf_counter() - started, 3)
            return summary
        say(f"[export] full export instead of incremental: {why_full}")
    summary["mode"], summary["full_because"] = "full", why_full
    generation = live.generation + 1
    entries = Entries(index["id_type"].to_numpy(), index["md5"].to_numpy(), person,
                      keyspace.bucket_bits_for(len(index)))
    largest_bucket = int(np.bincount(entries.bucket).max()) if len(entries) else 0
    largest_value = int(records.lengths.max(initial=0))
    warnings = check_layout(nodes, largest_value, largest_bucket)
    for w in warnings:
        say(f"[export] WARNING {w}")
    stale = delete_generations(client, ns, only=generation)
    memory_before = _used_memory(nodes)
    write_started = time.perf_counter()
    pacer = Pacer(write_rate, clock, sleep)
    writer = Writer(client, pacer)
    try:
        written = writer.hset(ns, generation, entries, records)
    finally:
        writer.close()
    write_seconds = time.perf_counter() - write_started
    memory_written = _used_memory(nodes)
    encodings = _encodings(client, ns, generation, entries)
    # the facts first: until the SET they name a generation that is not live, which readers of them ignore
    _record_meta(client, ns, generation, entries.bucket_bits, len(entries), largest_value, largest_bucket)
    client.set(keyspace.generation_key(ns), keyspace.pointer_value(generation, entries.bucket_bits))
    switched = time.perf_counter()
    if state_dir is not None:
        _save_state(state_dir, {"format": keyspace.FORMAT_VERSION, "namespace": ns, "generation": generation,
                                "bucket_bits": entries.bucket_bits, "complete": True},
                    pd.DataFrame({"id_type": index["id_type"].to_numpy(), "md5": index["md5"].to_numpy(),
                                  "digest": digest}))
    if grace_s > 0 and pointer is not None:  # without a pointer before, no reader can be on an old generation
        sleep(grace_s)
    deleted = delete_generations(client, ns, keep=generation)
    memory_after = _used_memory(nodes)
    summary.update({
        "generation": generation,
        "bucket_bits": entries.bucket_bits,
        "buckets": int(len(np.unique(entries.bucket))),
        "largest_bucket": largest_bucket,
        "largest_value": largest_value,
        "keys_written": written,  # device entries (the name predates buckets)
        "keys_deleted": deleted,
        "stale_keys_cleared": stale,
        "value_bytes": int(records.lengths[person].sum()),
        "used_memory_before": memory_before,
        "used_memory_written": memory_written,
        "used_memory_after": memory_after,
        "bytes_per_key": round((memory_written - memory_before) / written, 1) if written else 0.0,
        "encodings": encodings,
        "layout_warnings": warnings,
        "paced_seconds": round(pacer.slept, 3),
        "write_seconds": round(write_seconds, 3),
        "switch_seconds": round(switched - started, 3),
        "seconds": round(time.perf_counter() - started, 3),
    })
    return summary


def _record_meta(client, ns: str, generation: int, bucket_bits: int, entries: int, largest_value: int,
                 largest_bucket: int) -> None:
    """Write `{ns}:export` in one HSET: what the next export compares its size with and preflight checks."""
    client.hset(keyspace.export_meta_key(ns), mapping={
        "format": keyspace.FORMAT_VERSION, "generation": generation, "bucket_bits": bucket_bits, "entries": entries,
        "largest_value": largest_value, "largest_bucket": largest_bucket, "written_ts": int(time.time())})


def _why_not_incremental(state: dict | None, ns: str, live: keyspace.Live, state_dir: Path | None) -> str | None:
    if state_dir is None:
        return "no state_dir"
    if state is None:
        return f"no previous export state in {state_dir}"
    if not state.get("complete"):
        return "the previous export did not finish"
    if state.get("format") != keyspace.FORMAT_VERSION or state.get("namespace") != ns:
        return "the state is of another format or namespace"
    if live.bucket_bits is None or (state.get("generation"), state.get("bucket_bits")) != tuple(live):
        return f"the live export ({live.generation}) is not the one the state describes ({state.get('generation')})"
    return None


def _incremental(client, nodes, ns, live, index, records, person, digest, state_dir, state, pacer) -> dict:
    previous = pd.read_parquet(state_dir / DIGESTS_FILE)
    current = pd.DataFrame({"id_type": index["id_type"].to_numpy(), "md5": index["md5"].to_numpy(),
                            "digest": digest})
    # join on the device ID only: the digests are compared as uint64 arrays, never through the
    # merge's float columns (missing rows would turn them to float64 and drop their low bits)
    merged = current[["id_type", "md5"]].assign(row=np.arange(len(current))).merge(
        previous[["id_type", "md5"]].assign(old_row=np.arange(len(previous))), on=["id_type", "md5"], how="outer",
        indicator=True)
    both = merged[merged["_merge"] == "both"]
    both_rows = both["row"].to_numpy(dtype=np.int64)
    old_digest = previous["digest"].to_numpy(dtype=np.uint64)
    differs = digest[both_rows] != old_digest[both["old_row"].to_numpy(dtype=np.int64)]
    new_rows = merged.loc[merged["_merge"] == "left_only", "row"].to_numpy(dtype=np.int64)
    gone = previous.iloc[merged.loc[merged["_merge"] == "right_only", "old_row"].to_numpy(dtype=np.int64)]
    write_rows = np.sort(np.concatenate([new_rows, both_rows[differs]]))
    new, changed = len(new_rows), int(differs.sum())
    _save_state(state_dir, {**state, "complete": False})  # a crash mid-way makes the next export full
    client.hdel(keyspace.export_meta_key(ns), "entries")  # and the next size check count the live entries
    memory_before = _used_memory(nodes)
    entries = Entries(index["id_type"].to_numpy()[write_rows], index["md5"].to_numpy()[write_rows],
                      person[write_rows], live.bucket_bits)
    removed = Entries(gone["id_type"].to_numpy(), gone["md5"].to_numpy(), np.zeros(len(gone), np.int64),
                      live.bucket_bits)
    writer = Writer(client, pacer)
    t = time.perf_counter()
    try:
        written = writer.hset(ns, live.generation, entries, records)
        deleted = writer.hdel(ns, live.generation, removed)
    finally:
        writer.close()
    write_seconds = time.perf_counter() - t
    all_buckets = keyspace.buckets_of(keyspace.md5_bytes(index["md5"].to_numpy()), live.bucket_bits)
    _record_meta(client, ns, live.generation, live.bucket_bits, len(index),
                 int(records.lengths[person].max(initial=0)), int(np.bincount(all_buckets).max(initial=0)))
    _save_state(state_dir, {**state, "complete": True}, current)
    unchanged = len(index) - written
    return {"mode": "incremental", "generation": live.generation, "bucket_bits": live.bucket_bits,
            "keys_written": written, "new": new, "changed": changed, "keys_deleted": deleted,
            "unchanged": unchanged, "used_memory_before": memory_before, "used_memory_after": _used_memory(nodes),
            "paced_seconds": round(pacer.slept, 3), "write_seconds": round(write_seconds, 3)}
