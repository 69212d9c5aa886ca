"""Stage 1: normalise the request's device IDs and rank them by precedence. Pure functions.

Rules (docs/specs/decision-api.md#device-ids):
- MD5 values must be 32 hex characters; they are lower-cased.
- RAW values are hashed with the platforms' rules: IMEI md5(lower), IDFA md5(upper), others md5(value).
- Doubtful values (the platform's flag, md5 of the empty string, md5 of the all-zero IDFA/OAID and any
  configured extras) are ignored, as are IDs of a type not in the precedence list and repeats.
- What is left is ordered by the configured precedence; the first ID found in the store decides.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from rta.v1 import decision_pb2 as pb

# md5("") and md5 of the all-zero IDFA/OAID: values that identify no one (Tencent's list).
BUILTIN_DOUBTFUL = frozenset({"d41d8cd98f00b204e9800998ecf8427e", "9f89c84a559f573636a47ff8daed0d33"})
DEFAULT_PRECEDENCE = ("IMEI", "OAID", "IDFA", "CAID", "ANDROID_ID", "MAC", "WX_OPENID")
MAX_RAW_LENGTH = 128

_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_RAW_OK = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces


@dataclass(frozen=True, slots=True)
class NormalizedId:
    id_type: int  # rta.v1.IdType value
    value: str  # lower-case hex MD5
    index: int  # position in the request


def hash_raw(id_type: int, raw: str) -> str:
    """The platforms' hashing of a raw identifier (Tencent's rules)."""
    if id_type == pb.IMEI:
        raw = raw.lower()
    elif id_type == pb.IDFA:
        raw = raw.upper()
    return hashlib.md5(raw.encode()).hexdigest()


class IdNormalizer:
    """Built once at start-up from the settings; `normalize` is called per request."""

    def __init__(self, precedence: tuple[str, ...] = DEFAULT_PRECEDENCE, extra_doubtful: tuple[str, ...] = ()):
        self.rank = {pb.IdType.Value(name): i for i, name in enumerate(precedence)}
        self.doubtful = BUILTIN_DOUBTFUL | {v.lower() for v in extra_doubtful}

    def normalize(self, device_ids) -> tuple[list[NormalizedId], list[tuple[int, int]]]:
        """Return (usable IDs best first, [(index, reason)] for the ignored ones)."""
        kept: list[NormalizedId] = []
        ignored: list[tuple[int, int]] = []
        seen: set[tuple[int, str]] = set()
        for index, did in enumerate(device_ids):
            reason, value = self._one(did)
            if reason:
                ignored.append((index, reason))
                continue
            key = (did.type, value)
            if key in seen:
                ignored.append((index, pb.DUPLICATE_ID))
                continue
            seen.add(key)
            kept.append(NormalizedId(did.type, value, index))
        kept.sort(key=lambda n: (self.rank[n.id_type], n.index))
        return kept, ignored

    def _one(self, did) -> tuple[int, str]:
        if did.type not in self.rank:
            return pb.UNSUPPORTED_ID_TYPE, ""
        value = did.value.strip()
        if did.hash == pb.RAW:
            if not value or len(value) > MAX_RAW_LENGTH or not _RAW_OK.fullmatch(value):
                return pb.MALFORMED_ID, ""
            value = hash_raw(did.type, value)
        elif did.hash in (pb.MD5, pb.HASH_KIND_UNSPECIFIED):
            if len(value) != 32 or not _HEX32.fullmatch(value):
                return pb.MALFORMED_ID, ""
            value = value.lower()
        else:
            return pb.MALFORMED_ID, ""
        if did.doubtful or value in self.doubtful:
            return pb.DOUBTFUL_ID, ""
        return 0, value
