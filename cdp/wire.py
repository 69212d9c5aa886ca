"""Vectorised byte encoding for the exporter: rta.v1.Profile wire format and RESP commands, per column.

Encoding each profile through protobuf objects and each command through redis-py cost ~30 µs per
device ID (cProfile of the former exporter: `to_message` 22% and redis-py's pack/parse ~55% of the
time). Here every value is a *ragged column*: a flat uint8 buffer and one length per row, built with
numpy for all rows at once. `concat` joins columns row by row into one ragged column, so a profile
record is the concatenation of its fields' columns and a RESP body the concatenation of framing and
payload columns. `tests/test_cdp_export.py` checks the bytes against protobuf's own serializer.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from rta.v1 import profile_pb2
from rta_service import keyspace

from .profiles import SCORE_PREFIX, score_columns


class Ragged(NamedTuple):
    """n variable-length byte strings, stored: row i is flat[offsets[i]:offsets[i + 1]]."""

    flat: np.ndarray  # uint8
    lengths: np.ndarray  # int64, one per row

    @property
    def offsets(self) -> np.ndarray:
        out = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    def to_list(self) -> list[bytes]:
        off = self.offsets
        data = self.flat.tobytes()
        return [data[a:b] for a, b in zip(off[:-1].tolist(), off[1:].tolist(), strict=True)]


class Padded(NamedTuple):
    """n byte strings being built: row i is the bytes of matrix[i] where keep[i] holds, in order. Columns
    are joined side by side (np.concatenate) and compacted once (`compact`), all in C loops over bytes."""

    matrix: np.ndarray  # (n, w) uint8
    keep: np.ndarray  # (n, w) bool


def padded(column: Ragged) -> Padded:
    width = int(column.lengths.max(initial=0))
    keep = np.arange(width) < column.lengths[:, None]
    matrix = np.zeros(keep.shape, dtype=np.uint8)
    matrix[keep] = column.flat
    return Padded(matrix, keep)


def side_by_side(*parts: Padded) -> Padded:
    """Row i of the result is row i of each part, in order (not yet compacted)."""
    return Padded(np.concatenate([p.matrix for p in parts], axis=1), np.concatenate([p.keep for p in parts], axis=1))


def compact(*parts: Padded) -> Ragged:
    """Row i of the result is row i of each part, joined in order."""
    p = side_by_side(*parts)
    return Ragged(p.matrix[p.keep], p.keep.sum(axis=1, dtype=np.int64))


def take(column: Ragged, rows: np.ndarray) -> Ragged:
    """Rows of `column` in the order given (repeats allowed), gathered byte by byte: no padded copy of the
    whole column."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = column.lengths[rows]
    starts = column.offsets[:-1][rows]
    out_start = np.cumsum(lengths) - lengths  # where each row begins in the result
    index = np.repeat(starts - out_start, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    return Ragged(column.flat[index], lengths)


def stack(columns: list[Ragged]) -> Ragged:
    """The rows of each column, one column after the other."""
    if not columns:
        return Ragged(np.zeros(0, np.uint8), np.zeros(0, np.int64))
    return Ragged(np.concatenate([c.flat for c in columns]), np.concatenate([c.lengths for c in columns]))


def fixed(matrix: np.ndarray) -> Padded:
    """Every byte of every row of an (n, w) uint8 matrix."""
    return Padded(np.asarray(matrix, dtype=np.uint8), np.ones(matrix.shape, dtype=bool))


def const(value: bytes, n: int) -> Padded:
    return fixed(np.tile(np.frombuffer(value, np.uint8), (n, 1)))


def from_bytes(values) -> Ragged:
    """A column from bytes/str values (str as UTF-8): a pandas Series or any sequence. Arrow-backed
    strings are read from their buffers without a Python object per row."""
    array = pa.array(values, from_pandas=True) if isinstance(values, pd.Series) else None
    if array is None or not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
                             or pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        blobs = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
        lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        return Ragged(np.frombuffer(b"".join(blobs), np.uint8).copy(), lengths)
    if array.null_count:
        raise ValueError("null in a bytes column")
    array = array.cast(pa.large_binary())
    if isinstance(array, pa.ChunkedArray):  # pandas' arrow-backed columns come chunked
        array = array.combine_chunks()
    _, offsets, data = array.buffers()
    off = np.frombuffer(offsets, np.int64)[array.offset:array.offset + len(array) + 1]
    flat = np.frombuffer(data, np.uint8)[off[0]:off[-1]] if data is not None else np.zeros(0, np.uint8)
    return Ragged(flat, np.diff(off))


def _varint_matrix(values) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, lengths): row i's first lengths[i] bytes are the varint of values[i]."""
    u = np.asarray(values, dtype=np.int64).view(np.uint64)
    lengths = np.ones(len(u), dtype=np.int64)
    for k in range(1, 10):
        lengths += u >= np.uint64(1 << (7 * k))
    width = int(lengths.max()) if len(u) else 1
    matrix = np.empty((len(u), width), dtype=np.uint8)
    for k in range(width):
        more = np.where(k < lengths - 1, 0x80, 0).astype(np.uint8)
        matrix[:, k] = ((u >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8) | more
    return matrix, lengths


def decimals(values: np.ndarray) -> Padded:
    """ASCII decimal digits of non-negative integers (RESP lengths and counts)."""
    v = np.asarray(values, dtype=np.int64)
    digits = np.ones(len(v), dtype=np.int64)
    for k in range(1, 19):
        digits += v >= 10 ** k
    width = int(digits.max()) if len(v) else 1
    matrix = np.empty((len(v), width), dtype=np.uint8)
    for k in range(width):  # column k: the digit k places from the left of a width-wide, zero-padded number
        matrix[:, k] = (v // 10 ** (width - 1 - k)) % 10 + ord("0")
    return Padded(matrix, np.arange(width) >= (width - digits)[:, None])


def int_field(number: int, values) -> Padded:
    """A varint field (int32/int64/uint32/uint64/bool; field numbers < 16, a one-byte tag), omitted where 0."""
    assert number < 16
    v = np.asarray(values).astype(np.int64)
    matrix, lengths = _varint_matrix(v)
    tagged = np.concatenate([np.full((len(v), 1), number << 3, dtype=np.uint8), matrix], axis=1)
    return Padded(tagged, (np.arange(tagged.shape[1]) <= lengths[:, None]) & (v != 0)[:, None])


def bytes_field(number: int, column: Ragged) -> tuple[Padded, Padded]:
    """A length-delimited field (string/bytes; field numbers < 16), omitted where empty."""
    assert number < 16
    present = (column.lengths > 0)[:, None]
    matrix, lengths = _varint_matrix(column.lengths)
    head = np.concatenate([np.full((len(lengths), 1), (number << 3) | 2, dtype=np.uint8), matrix], axis=1)
    body = padded(column)
    return (Padded(head, (np.arange(head.shape[1]) <= lengths[:, None]) & present),
            Padded(body.matrix, body.keep & present))


def repeated_strings(number: int, rows) -> Padded:
    """A repeated string field from a sequence of tuples: each distinct tuple is encoded once."""
    codes, uniques = pd.factorize(pd.Series(list(rows), dtype=object))
    message = profile_pb2.Profile.DESCRIPTOR.fields_by_number[number].name
    encoded = padded(from_bytes(profile_pb2.Profile(**{message: list(u)}).SerializeToString() for u in uniques))
    return Padded(encoded.matrix[codes], encoded.keep[codes])


def profile_fields(profiles: pd.DataFrame, score_resolution: float = 0.0) -> tuple[list[Padded], Padded,
                                                                                    list[Padded]]:
    """The rta.v1.Profile fields of each row of a frame with cdp.profiles.COLUMNS (and optional
    `score_{name}` columns, rounded to multiples of `score_resolution` unless 0), in field-number order:
    (fields 1-11, field 12 `updated_ts`, the scores map, field 13). Split at `updated_ts` so a record can be
    built with and without it from one encoding."""
    n = len(profiles)
    col = profiles.__getitem__
    numbered = ((5, "order_count"), (6, "last_order_ts"), (7, "first_seen_ts"), (8, "monetary_fen"),
                (9, "wecom_friend"), (10, "channel_count"), (11, "device_count"))
    head = [int_field(1, np.full(n, keyspace.PROFILE_VERSION)), *bytes_field(2, from_bytes(col("one_id"))),
            int_field(3, col("is_member")), repeated_strings(4, col("segments")),
            *(int_field(number, col(name)) for number, name in numbered)]
    scores = [score_entry(name[len(SCORE_PREFIX):], col(name), score_resolution)
              for name in score_columns(profiles.columns)]
    return head, int_field(12, col("updated_ts")), scores


def encode_profiles(profiles: pd.DataFrame, stamp: bool = True, score_resolution: float = 0.0) -> Ragged:
    """rta.v1.Profile bytes of each row of a frame with cdp.profiles.COLUMNS (version PROFILE_VERSION),
    byte for byte what protobuf's SerializeToString gives for cdp.profiles.to_message(row); without
    `updated_ts` (field 12) when not `stamp`."""
    head, updated, scores = profile_fields(profiles, score_resolution)
    return compact(*head, *([updated] if stamp else []), *scores)


def quantize(values, resolution: float) -> np.ndarray:
    """Each value rounded to the nearest multiple of `resolution` (0: unchanged), NaN kept: a score that moves
    less than a step between runs keeps its exported bytes, so an incremental export need not rewrite it."""
    v = np.asarray(values, dtype=np.float64)
    return np.round(v / resolution) * resolution if resolution > 0 else v


def score_entry(name: str, values, resolution: float = 0.0) -> Padded:
    """One entry of the `scores` map (field 13, map<string, float>) per row, omitted where NaN: the
    entry message {1: name, 2: float32} as a length-delimited field 13, the value rounded to a multiple of
    `resolution` (0 = as given). Entries of several names are encoded in name order, as protobuf's
    deterministic serialization does."""
    key = name.encode()
    entry = bytes([0x0A, len(key)]) + key + b"\x15"  # field 1 (string), then field 2's tag (fixed32)
    assert len(entry) + 4 < 128 and len(key) < 128, "score names are short"
    v = quantize(values, resolution)
    n = len(v)
    head = const(bytes([(13 << 3) | 2, len(entry) + 4]) + entry, n)
    value = fixed(v.astype("<f4").view(np.uint8).reshape(n, 4))
    p = side_by_side(head, value)
    return Padded(p.matrix, p.keep & ~np.isnan(v)[:, None])


def resp_bulk(column: Ragged) -> tuple[Padded, ...]:
    """Each row as a RESP bulk string, "$" + length + CRLF + bytes + CRLF: the parts, for `compact`."""
    n = len(column.lengths)
    return (const(b"$", n), decimals(column.lengths), const(b"\r\n", n), padded(column), const(b"\r\n", n))


_MIX = np.uint64(0x9E3779B97F4A7C15)


def digests(column: Ragged, chunk: int = 1 << 20) -> np.ndarray:
    """A 64-bit digest of each row (length included), to tell changed records from unchanged ones.

    Rows are zero-padded to 8-byte words and folded word by word with a multiply-xorshift mix, all rows
    at once; not cryptographic, but a change goes unnoticed only on a 64-bit collision."""
    out = np.empty(len(column.lengths), dtype=np.uint64)
    off = column.offsets
    with np.errstate(over="ignore"):
        for a in range(0, len(out), chunk):
            b = min(a + chunk, len(out))
            lengths = column.lengths[a:b]
            width = max(8, -(-int(lengths.max(initial=0)) // 8) * 8)
            words = np.zeros((b - a, width), dtype=np.uint8)
            words[np.arange(width) < lengths[:, None]] = column.flat[off[a]:off[b]]
            h = lengths.astype(np.uint64) * _MIX
            for word in words.view(np.uint64).T:
                h = (h ^ word) * _MIX
                h ^= h >> np.uint64(29)
            out[a:b] = h
    return out
