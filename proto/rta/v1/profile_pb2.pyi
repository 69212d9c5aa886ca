from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Profile(_message.Message):
    __slots__ = ("version", "one_id", "is_member", "segments", "order_count", "last_order_ts", "first_seen_ts", "monetary_fen", "wecom_friend", "channel_count", "device_count", "updated_ts", "scores")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ONE_ID_FIELD_NUMBER: _ClassVar[int]
    IS_MEMBER_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    ORDER_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_ORDER_TS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_TS_FIELD_NUMBER: _ClassVar[int]
    MONETARY_FEN_FIELD_NUMBER: _ClassVar[int]
    WECOM_FRIEND_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_TS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    version: int
    one_id: str
    is_member: bool
    segments: _containers.RepeatedScalarFieldContainer[str]
    order_count: int
    last_order_ts: int
    first_seen_ts: int
    monetary_fen: int
    wecom_friend: bool
    channel_count: int
    device_count: int
    updated_ts: int
    scores: _containers.ScalarMap[str, float]
    def __init__(self, version: _Optional[int] = ..., one_id: _Optional[str] = ..., is_member: _Optional[bool] = ..., segments: _Optional[_Iterable[str]] = ..., order_count: _Optional[int] = ..., last_order_ts: _Optional[int] = ..., first_seen_ts: _Optional[int] = ..., monetary_fen: _Optional[int] = ..., wecom_friend: _Optional[bool] = ..., channel_count: _Optional[int] = ..., device_count: _Optional[int] = ..., updated_ts: _Optional[int] = ..., scores: _Optional[_Mapping[str, float]] = ...) -> None: ...
