"""Write profiles to Redis in the rta_service.keyspace format, one key per device ID, as a new generation.

    1. read `{ns}:gen` (N; 0 when absent) and clear any leftovers of N+1 from a crashed run
    2. write every key of generation N+1 with pipelined SETs in chunks
    3. SET `{ns}:gen` N+1: readers switch to the complete new generation with this one command
    4. after `grace_s` (readers that read the pointer just before the switch finish), SCAN+UNLINK the
       keys of every older generation

One exporter per namespace at a time. Values are serialized rta.v1.Profile; keys hold only MD5s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd
import redis

from rta_service import keyspace

from .identity import str_isin
from .profiles import to_messages

CHUNK = 2000
SCAN_COUNT = 1000


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def delete_generations(client: redis.Redis, ns: str, keep: int) -> int:
    """UNLINK every `{ns}:{g}:*` key with g != keep; returns the number of keys removed."""
    prefix = f"{ns}:".encode()
    removed, batch = 0, []
    for key in client.scan_iter(match=f"{ns}:*", count=SCAN_COUNT):
        parts = key[len(prefix):].split(b":")
        if len(parts) == 3 and parts[0].isdigit() and int(parts[0]) != keep:
            batch.append(key)
        if len(batch) >= CHUNK:
            removed += client.unlink(*batch)
            batch = []
    if batch:
        removed += client.unlink(*batch)
    return removed


def _clear_generation(client: redis.Redis, ns: str, generation: int) -> int:
    keys = list(client.scan_iter(match=keyspace.generation_pattern(ns, generation), count=SCAN_COUNT))
    return sum(client.unlink(*keys[i:i + CHUNK]) for i in range(0, len(keys), CHUNK))


def export(client: redis.Redis, profiles: pd.DataFrame, index: pd.DataFrame, ns: str = "rta", grace_s: float = 0.0,
           sleep: Callable[[float], None] = time.sleep) -> dict:
    """Publish profiles (cdp.profiles COLUMNS) under every device ID of `index` as a new generation."""
    started = time.perf_counter()
    previous = keyspace.parse_generation(client.get(keyspace.generation_key(ns)))
    generation = previous + 1
    stale = _clear_generation(client, ns, generation)
    memory_before = _used_memory(client)
    wanted = profiles[str_isin(profiles["one_id"], index["one_id"])]
    values = {one_id: keyspace.encode_profile(msg) for one_id, msg in to_messages(wanted).items()}
    written = value_bytes = 0
    pipe = client.pipeline(transaction=False)
    rows = zip(index["id_type"].tolist(), index["md5"].tolist(), index["one_id"].tolist(), strict=True)
    for id_type, md5, one_id in rows:
        value = values[one_id]
        pipe.set(keyspace.device_key(ns, generation, id_type, md5), value)
        written += 1
        value_bytes += len(value)
        if written % CHUNK == 0:
            pipe.execute()
    pipe.execute()
    memory_written = _used_memory(client)
    client.set(keyspace.generation_key(ns), generation)
    switched = time.perf_counter()
    if grace_s > 0:
        sleep(grace_s)
    deleted = delete_generations(client, ns, keep=generation)
    memory_after = _used_memory(client)
    return {
        "generation": generation,
        "previous_generation": previous,
        "profiles": len(values),
        "keys_written": written,
        "keys_deleted": deleted,
        "stale_keys_cleared": stale,
        "value_bytes": value_bytes,
        "used_memory_before": memory_before,
        "used_memory_written": memory_written,
        "used_memory_after": memory_after,
        "bytes_per_key": round((memory_written - memory_before) / written, 1) if written else 0.0,
        "write_seconds": round(switched - started, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }
