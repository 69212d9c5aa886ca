from rta.v1 import decision_pb2 as _decision_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecisionRecord(_message.Message):
    __slots__ = ("ts", "platform", "os", "is_test", "ids", "features", "response")
    TS_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    IS_TEST_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ts: float
    platform: _decision_pb2.Platform
    os: _decision_pb2.Os
    is_test: bool
    ids: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedScalarFieldContainer[float]
    response: _decision_pb2.DecideResponse
    def __init__(self, ts: _Optional[float] = ..., platform: _Optional[_Union[_decision_pb2.Platform, str]] = ..., os: _Optional[_Union[_decision_pb2.Os, str]] = ..., is_test: _Optional[bool] = ..., ids: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[float]] = ..., response: _Optional[_Union[_decision_pb2.DecideResponse, _Mapping]] = ...) -> None: ...

class DecisionBatch(_message.Message):
    __slots__ = ("version", "records")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    records: _containers.RepeatedCompositeFieldContainer[DecisionRecord]
    def __init__(self, version: _Optional[int] = ..., records: _Optional[_Iterable[_Union[DecisionRecord, _Mapping]]] = ...) -> None: ...
