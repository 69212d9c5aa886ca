"""The profile store's key/value format: the one implementation of docs/specs/profile-store.md.

The decision service (store.py) reads with it and the CDP exporter writes with it. Pure functions.

    {ns}:gen                  -> the live export: "{generation}:{bucket_bits}", e.g. "7:14"
    {ns}:{gen}:{bucket:x}     -> a hash of device entries, field {code}{md5 bytes} -> rta.v1.Profile
    {ns}:export               -> the exporter's own facts about the export it made live (a hash:
                                 generation, bucket_bits, entries, ...); readers never need it

A device ID's bucket is the top `bucket_bits` bits of its MD5 (`bucket_of`), so a reader finds the
hash from the request's ID and the live pointer alone. Hashes of a few dozen entries stay in Redis's
compact listpack (ziplist before Redis 7) encoding when the server's `hash-max-listpack-value`
admits the largest record (see the spec). Exporters write a whole new generation, then switch
`{ns}:gen` with one SET, then delete the old generation after a grace period, so readers never see a
half-loaded state.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rta.v1 import decision_pb2 as pb
from rta.v1 import profile_pb2

FORMAT_VERSION = 2
PROFILE_VERSION = 1  # rta.v1.Profile.version written by this code; readers accept 1..PROFILE_VERSION

TYPE_CODES: dict[int, str] = {
    pb.IMEI: "i",
    pb.OAID: "o",
    pb.IDFA: "a",
    pb.CAID: "c",
    pb.ANDROID_ID: "n",
    pb.MAC: "m",
    pb.WX_OPENID: "w",
}
CODE_TYPES = {code: t for t, code in TYPE_CODES.items()}

FIELD_BYTES = 17  # one type-code byte + the 16 bytes of the MD5
BUCKET_TARGET = 64  # device entries per bucket on average, well inside the listpack limits
MAX_BUCKET_BITS = 24


class BadRecord(ValueError):
    """A stored value that is not a readable profile of a supported version."""


class Live(NamedTuple):
    """What `{ns}:gen` says: the live generation (0 = no export yet) and its bucket bits. A bare integer
    is a format-1 pointer (one string key per device ID), which format-2 readers do not read:
    `bucket_bits` is None then."""

    generation: int
    bucket_bits: int | None


NOTHING = Live(0, 0)


def generation_key(ns: str) -> str:
    return f"{ns}:gen"


def export_meta_key(ns: str) -> str:
    """The exporter's hash of facts about the live export (its device entry count, largest record and bucket),
    so the next export can compare sizes and check a server's settings without scanning. Not a generation key."""
    return f"{ns}:export"


def pointer_value(generation: int, bucket_bits: int) -> str:
    """The value of `{ns}:gen` that makes (generation, bucket_bits) live."""
    if generation < 1 or not 0 <= bucket_bits <= MAX_BUCKET_BITS:
        raise ValueError(f"bad live pointer {generation}:{bucket_bits}")
    return f"{generation}:{bucket_bits}"


def parse_pointer(raw: bytes | str | None) -> Live:
    """The value of `{ns}:gen`; NOTHING when no export has run yet. Raises ValueError when malformed."""
    if raw is None:
        return NOTHING
    text = raw.decode() if isinstance(raw, bytes) else raw
    generation, sep, bits = text.partition(":")
    live = Live(int(generation), int(bits) if sep else None)
    if live.generation < 0 or (live.bucket_bits is not None and not 0 <= live.bucket_bits <= MAX_BUCKET_BITS):
        raise ValueError(f"malformed {text!r}")
    return live


def bucket_bits_for(entries: int) -> int:
    """The fewest bucket bits that keep the average bucket at or under BUCKET_TARGET entries."""
    bits = 0
    while bits < MAX_BUCKET_BITS and entries > BUCKET_TARGET << bits:
        bits += 1
    return bits


def bucket_of(md5hex: str, bucket_bits: int) -> int:
    """The top `bucket_bits` bits of the MD5."""
    return int(md5hex[:6], 16) >> (MAX_BUCKET_BITS - bucket_bits)


def bucket_key(ns: str, generation: int, bucket: int) -> str:
    return f"{ns}:{generation}:{bucket:x}"


def device_field(id_type: int, md5hex: str) -> bytes:
    return TYPE_CODES[id_type].encode() + bytes.fromhex(md5hex)


def locate(ns: str, live: Live, id_type: int, md5hex: str) -> tuple[str, bytes]:
    """(hash key, field) of one device ID in the live export."""
    return (bucket_key(ns, live.generation, bucket_of(md5hex, live.bucket_bits)), device_field(id_type, md5hex))


_CODE_BYTES = {t: c.encode() for t, c in TYPE_CODES.items()}


def group_by_bucket(ns: str, live: Live, ids) -> dict[str, list[tuple[int, bytes]]]:
    """{hash key: [(position, field), ...]} for a batch of IDs (objects with id_type and value), as
    `locate` gives them; inlined, because it runs for every ID on the request path."""
    prefix = f"{ns}:{live.generation}:"
    shift = MAX_BUCKET_BITS - live.bucket_bits
    fromhex = bytes.fromhex
    out: dict[str, list[tuple[int, bytes]]] = {}
    for pos, i in enumerate(ids):
        v = i.value
        key = f"{prefix}{int(v[:6], 16) >> shift:x}"
        entry = (pos, _CODE_BYTES[i.id_type] + fromhex(v))
        got = out.get(key)
        if got is None:
            out[key] = [entry]
        else:
            got.append(entry)
    return out


def pack_hmgets(groups: dict[str, list[tuple[int, bytes]]]) -> bytes:
    """RESP for one `HMGET key field...` per group, back to back."""
    parts = []
    for key, fields in groups.items():
        k = key.encode()
        parts.append(b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n%s\r\n" % (2 + len(fields), len(k), k))
        parts.extend(b"$%d\r\n%s\r\n" % (len(f), f) for _, f in fields)
    return b"".join(parts)


def is_generation_key(ns: str, key: bytes) -> int | None:
    """The generation of a bucket key of namespace `ns` (or of a format-1 device key), else None."""
    prefix = f"{ns}:".encode()
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix):].split(b":")
    return int(parts[0]) if len(parts) in (2, 3) and parts[0].isdigit() else None


# -- the same, vectorised, for exporters --------------------------------------------------------------

_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_CODES = np.zeros(max(TYPE_CODES) + 1, dtype=np.uint8)
_CODES[list(TYPE_CODES)] = [ord(c) for c in TYPE_CODES.values()]


def md5_bytes(md5hex) -> np.ndarray:
    """(n, 16) uint8 from n lower-case hex MD5 strings; ValueError on anything else."""
    text = np.asarray(md5hex, dtype="S32")
    nibbles = _HEX[text.view(np.uint8).reshape(len(text), 32)] if len(text) else np.zeros((0, 32), np.uint8)
    if (nibbles == 255).any() or (np.char.str_len(text) != 32).any():
        raise ValueError("device MD5s must be 32 lower-case hex digits")
    return (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]


def buckets_of(raw_md5: np.ndarray, bucket_bits: int) -> np.ndarray:
    """bucket_of for (n, 16) MD5 bytes."""
    top = (raw_md5[:, 0].astype(np.int64) << 16) | (raw_md5[:, 1].astype(np.int64) << 8) | raw_md5[:, 2]
    return top >> (MAX_BUCKET_BITS - bucket_bits)


def device_fields(id_types, raw_md5: np.ndarray) -> np.ndarray:
    """device_field for n IDs: (n, FIELD_BYTES) uint8."""
    codes = _CODES[np.asarray(id_types, dtype=np.int64)]
    if (codes == 0).any():
        raise ValueError("unknown device ID type")
    return np.concatenate([codes[:, None], raw_md5], axis=1)


def encode_profile(profile: profile_pb2.Profile) -> bytes:
    if not profile.version:
        profile.version = PROFILE_VERSION
    return profile.SerializeToString()


def decode_profile(raw: bytes) -> profile_pb2.Profile:
    profile = profile_pb2.Profile()
    try:
        profile.ParseFromString(raw)
    except Exception as exc:  # protobuf raises DecodeError, but be safe about its subclasses
        raise BadRecord(f"undecodable profile: {exc}") from exc
    if not 1 <= profile.version <= PROFILE_VERSION:
        raise BadRecord(f"unsupported profile version {profile.version}")
    return profile
