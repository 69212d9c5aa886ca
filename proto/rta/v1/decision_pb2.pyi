from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Platform(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLATFORM_UNSPECIFIED: _ClassVar[Platform]
    TENCENT: _ClassVar[Platform]
    OCEANENGINE: _ClassVar[Platform]
    KUAISHOU: _ClassVar[Platform]
    BAIDU: _ClassVar[Platform]
    OTHER_PLATFORM: _ClassVar[Platform]

class Os(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OS_UNKNOWN: _ClassVar[Os]
    ANDROID: _ClassVar[Os]
    IOS: _ClassVar[Os]
    HARMONY: _ClassVar[Os]
    OS_OTHER: _ClassVar[Os]

class IdType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ID_TYPE_UNSPECIFIED: _ClassVar[IdType]
    IMEI: _ClassVar[IdType]
    OAID: _ClassVar[IdType]
    IDFA: _ClassVar[IdType]
    CAID: _ClassVar[IdType]
    ANDROID_ID: _ClassVar[IdType]
    MAC: _ClassVar[IdType]
    WX_OPENID: _ClassVar[IdType]

class HashKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HASH_KIND_UNSPECIFIED: _ClassVar[HashKind]
    MD5: _ClassVar[HashKind]
    RAW: _ClassVar[HashKind]

class RequestType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_TYPE_UNSPECIFIED: _ClassVar[RequestType]
    NORMAL: _ClassVar[RequestType]
    AD_LIST: _ClassVar[RequestType]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    BID: _ClassVar[Decision]
    NO_BID: _ClassVar[Decision]

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    SCORED: _ClassVar[Reason]
    PING: _ClassVar[Reason]
    NO_DEVICE_ID: _ClassVar[Reason]
    NO_VALID_ID: _ClassVar[Reason]
    BELOW_THRESHOLD: _ClassVar[Reason]
    AUDIENCE_EXCLUDED: _ClassVar[Reason]
    HOLDOUT: _ClassVar[Reason]
    STORE_TIMEOUT: _ClassVar[Reason]
    STORE_ERROR: _ClassVar[Reason]
    MODEL_ERROR: _ClassVar[Reason]
    DEADLINE_EXCEEDED: _ClassVar[Reason]
    NO_STRATEGY: _ClassVar[Reason]
    BAD_PROFILE: _ClassVar[Reason]
    NO_PROFILES: _ClassVar[Reason]
    MALFORMED_ID: _ClassVar[Reason]
    DOUBTFUL_ID: _ClassVar[Reason]
    UNSUPPORTED_ID_TYPE: _ClassVar[Reason]
    DUPLICATE_ID: _ClassVar[Reason]
PLATFORM_UNSPECIFIED: Platform
TENCENT: Platform
OCEANENGINE: Platform
KUAISHOU: Platform
BAIDU: Platform
OTHER_PLATFORM: Platform
OS_UNKNOWN: Os
ANDROID: Os
IOS: Os
HARMONY: Os
OS_OTHER: Os
ID_TYPE_UNSPECIFIED: IdType
IMEI: IdType
OAID: IdType
IDFA: IdType
CAID: IdType
ANDROID_ID: IdType
MAC: IdType
WX_OPENID: IdType
HASH_KIND_UNSPECIFIED: HashKind
MD5: HashKind
RAW: HashKind
REQUEST_TYPE_UNSPECIFIED: RequestType
NORMAL: RequestType
AD_LIST: RequestType
DECISION_UNSPECIFIED: Decision
BID: Decision
NO_BID: Decision
REASON_UNSPECIFIED: Reason
SCORED: Reason
PING: Reason
NO_DEVICE_ID: Reason
NO_VALID_ID: Reason
BELOW_THRESHOLD: Reason
AUDIENCE_EXCLUDED: Reason
HOLDOUT: Reason
STORE_TIMEOUT: Reason
STORE_ERROR: Reason
MODEL_ERROR: Reason
DEADLINE_EXCEEDED: Reason
NO_STRATEGY: Reason
BAD_PROFILE: Reason
NO_PROFILES: Reason
MALFORMED_ID: Reason
DOUBTFUL_ID: Reason
UNSUPPORTED_ID_TYPE: Reason
DUPLICATE_ID: Reason

class DeviceId(_message.Message):
    __slots__ = ("type", "hash", "value", "caid_version", "doubtful", "app_id", "caid_origin_version")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CAID_VERSION_FIELD_NUMBER: _ClassVar[int]
    DOUBTFUL_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    CAID_ORIGIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    type: IdType
    hash: HashKind
    value: str
    caid_version: str
    doubtful: bool
    app_id: str
    caid_origin_version: str
    def __init__(self, type: _Optional[_Union[IdType, str]] = ..., hash: _Optional[_Union[HashKind, str]] = ..., value: _Optional[str] = ..., caid_version: _Optional[str] = ..., doubtful: _Optional[bool] = ..., app_id: _Optional[str] = ..., caid_origin_version: _Optional[str] = ...) -> None: ...

class AdInfo(_message.Message):
    __slots__ = ("ad_id", "creative_id", "advertiser_id")
    AD_ID_FIELD_NUMBER: _ClassVar[int]
    CREATIVE_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTISER_ID_FIELD_NUMBER: _ClassVar[int]
    ad_id: str
    creative_id: str
    advertiser_id: str
    def __init__(self, ad_id: _Optional[str] = ..., creative_id: _Optional[str] = ..., advertiser_id: _Optional[str] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("request_id", "platform", "is_ping", "is_test", "os", "device_ids", "strategy_ids", "platform_exp_ids", "request_type", "ad_infos", "source", "ip", "cached_id_type")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    IS_PING_FIELD_NUMBER: _ClassVar[int]
    IS_TEST_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_IDS_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_EXP_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TYPE_FIELD_NUMBER: _ClassVar[int]
    AD_INFOS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    CACHED_ID_TYPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    platform: Platform
    is_ping: bool
    is_test: bool
    os: Os
    device_ids: _containers.RepeatedCompositeFieldContainer[DeviceId]
    strategy_ids: _containers.RepeatedScalarFieldContainer[str]
    platform_exp_ids: _containers.RepeatedScalarFieldContainer[int]
    request_type: RequestType
    ad_infos: _containers.RepeatedCompositeFieldContainer[AdInfo]
    source: str
    ip: str
    cached_id_type: IdType
    def __init__(self, request_id: _Optional[str] = ..., platform: _Optional[_Union[Platform, str]] = ..., is_ping: _Optional[bool] = ..., is_test: _Optional[bool] = ..., os: _Optional[_Union[Os, str]] = ..., device_ids: _Optional[_Iterable[_Union[DeviceId, _Mapping]]] = ..., strategy_ids: _Optional[_Iterable[str]] = ..., platform_exp_ids: _Optional[_Iterable[int]] = ..., request_type: _Optional[_Union[RequestType, str]] = ..., ad_infos: _Optional[_Iterable[_Union[AdInfo, _Mapping]]] = ..., source: _Optional[str] = ..., ip: _Optional[str] = ..., cached_id_type: _Optional[_Union[IdType, str]] = ...) -> None: ...

class StrategyResult(_message.Message):
    __slots__ = ("strategy_id", "decision", "weight_factor", "target_cpa_fen", "reason", "dsp_tag")
    STRATEGY_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FACTOR_FIELD_NUMBER: _ClassVar[int]
    TARGET_CPA_FEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DSP_TAG_FIELD_NUMBER: _ClassVar[int]
    strategy_id: str
    decision: Decision
    weight_factor: float
    target_cpa_fen: int
    reason: Reason
    dsp_tag: str
    def __init__(self, strategy_id: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., weight_factor: _Optional[float] = ..., target_cpa_fen: _Optional[int] = ..., reason: _Optional[_Union[Reason, str]] = ..., dsp_tag: _Optional[str] = ...) -> None: ...

class IgnoredId(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: Reason
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[_Union[Reason, str]] = ...) -> None: ...

class Internal(_message.Message):
    __slots__ = ("reasons", "model_version", "matched_id_type", "matched_id", "degraded", "score", "experiment_bucket", "holdout", "one_id", "ignored_ids", "known")
    REASONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MATCHED_ID_TYPE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_ID_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_BUCKET_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    ONE_ID_FIELD_NUMBER: _ClassVar[int]
    IGNORED_IDS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    reasons: _containers.RepeatedScalarFieldContainer[Reason]
    model_version: str
    matched_id_type: IdType
    matched_id: str
    degraded: bool
    score: float
    experiment_bucket: int
    holdout: bool
    one_id: str
    ignored_ids: _containers.RepeatedCompositeFieldContainer[IgnoredId]
    known: bool
    def __init__(self, reasons: _Optional[_Iterable[_Union[Reason, str]]] = ..., model_version: _Optional[str] = ..., matched_id_type: _Optional[_Union[IdType, str]] = ..., matched_id: _Optional[str] = ..., degraded: _Optional[bool] = ..., score: _Optional[float] = ..., experiment_bucket: _Optional[int] = ..., holdout: _Optional[bool] = ..., one_id: _Optional[str] = ..., ignored_ids: _Optional[_Iterable[_Union[IgnoredId, _Mapping]]] = ..., known: _Optional[bool] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("request_id", "decision", "results", "cache_ttl_seconds", "processing_time_us", "internal")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_TIME_US_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    decision: Decision
    results: _containers.RepeatedCompositeFieldContainer[StrategyResult]
    cache_ttl_seconds: int
    processing_time_us: int
    internal: Internal
    def __init__(self, request_id: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., results: _Optional[_Iterable[_Union[StrategyResult, _Mapping]]] = ..., cache_ttl_seconds: _Optional[int] = ..., processing_time_us: _Optional[int] = ..., internal: _Optional[_Union[Internal, _Mapping]] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...
