"""The profile store's key/value format: the one implementation of docs/specs/profile-store.md.

The decision service (store.py) reads with it and the CDP exporter writes with it. Pure functions.

    {ns}:gen                      -> the live generation, a decimal integer ("7")
    {ns}:{gen}:{code}:{md5hex}    -> rta.v1.Profile, serialized protobuf

`code` is the one-letter ID type code below. Exporters write a whole new generation, then switch
`{ns}:gen` with one SET, then delete the old generation after a grace period, so readers never see a
half-loaded state.
"""

from __future__ import annotations

from rta.v1 import decision_pb2 as pb
from rta.v1 import profile_pb2

FORMAT_VERSION = 1
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


class BadRecord(ValueError):
    """A stored value that is not a readable profile of a supported version."""


def generation_key(ns: str) -> str:
    return f"{ns}:gen"


def device_key(ns: str, generation: int, id_type: int, md5hex: str) -> str:
    return f"{ns}:{generation}:{TYPE_CODES[id_type]}:{md5hex}"


def generation_pattern(ns: str, generation: int) -> str:
    """SCAN pattern for every device key of one generation."""
    return f"{ns}:{generation}:*"


def parse_generation(raw: bytes | str | None) -> int:
    """The value of `{ns}:gen`; 0 when no export has run yet."""
    if raw is None:
        return 0
    value = int(raw)
    if value < 0:
        raise ValueError(f"negative generation {value}")
    return value


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
