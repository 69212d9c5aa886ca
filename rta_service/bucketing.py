"""The experiment hash: one function online and in batch jobs. Spec and test vectors:
docs/specs/bucketing.md and tests/vectors/bucketing.json.

    bucket(salt, key) = int(md5(f"{salt}:{key}")[:8], 16) % 10000

It needs only md5, a hex prefix and a modulo, so SQL engines compute it too, e.g. DuckDB
`(('0x' || substr(md5(salt || ':' || key), 1, 8))::UBIGINT % 10000)` and Spark
`pmod(conv(substr(md5(concat(salt, ':', key)), 1, 8), 16, 10), 10000)`.
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def bucket(salt: str, key: str) -> int:
    digest = hashlib.md5(f"{salt}:{key}".encode()).hexdigest()
    return int(digest[:8], 16) % BUCKETS


def in_holdout(bucket_value: int, holdout_share: float) -> bool:
    return bucket_value < round(holdout_share * BUCKETS)
