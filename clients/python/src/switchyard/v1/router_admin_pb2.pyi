import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EndpointState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_STATE_UNSPECIFIED: _ClassVar[EndpointState]
    ENDPOINT_STATE_HEALTHY: _ClassVar[EndpointState]
    ENDPOINT_STATE_NOT_SERVING: _ClassVar[EndpointState]
    ENDPOINT_STATE_UNREACHABLE: _ClassVar[EndpointState]
    ENDPOINT_STATE_EJECTED: _ClassVar[EndpointState]
    ENDPOINT_STATE_UNKNOWN: _ClassVar[EndpointState]
    ENDPOINT_STATE_DRAINING: _ClassVar[EndpointState]

class ServingState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVING_STATE_UNSPECIFIED: _ClassVar[ServingState]
    SERVING_STATE_SERVING: _ClassVar[ServingState]
    SERVING_STATE_NOT_SERVING: _ClassVar[ServingState]
    SERVING_STATE_UNREACHABLE: _ClassVar[ServingState]
ENDPOINT_STATE_UNSPECIFIED: EndpointState
ENDPOINT_STATE_HEALTHY: EndpointState
ENDPOINT_STATE_NOT_SERVING: EndpointState
ENDPOINT_STATE_UNREACHABLE: EndpointState
ENDPOINT_STATE_EJECTED: EndpointState
ENDPOINT_STATE_UNKNOWN: EndpointState
ENDPOINT_STATE_DRAINING: EndpointState
SERVING_STATE_UNSPECIFIED: ServingState
SERVING_STATE_SERVING: ServingState
SERVING_STATE_NOT_SERVING: ServingState
SERVING_STATE_UNREACHABLE: ServingState

class ListEndpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "clusters", "priorities")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointStatus]
    clusters: _containers.RepeatedCompositeFieldContainer[ClusterStatus]
    priorities: _containers.RepeatedCompositeFieldContainer[PriorityStatus]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[EndpointStatus, _Mapping]]] = ..., clusters: _Optional[_Iterable[_Union[ClusterStatus, _Mapping]]] = ..., priorities: _Optional[_Iterable[_Union[PriorityStatus, _Mapping]]] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("cluster", "endpoints", "ejected_endpoints", "max_ejected_endpoints", "max_ejection_percent", "ejections_overflow")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    EJECTED_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTED_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    EJECTIONS_OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    endpoints: int
    ejected_endpoints: int
    max_ejected_endpoints: int
    max_ejection_percent: float
    ejections_overflow: int
    def __init__(self, cluster: _Optional[str] = ..., endpoints: _Optional[int] = ..., ejected_endpoints: _Optional[int] = ..., max_ejected_endpoints: _Optional[int] = ..., max_ejection_percent: _Optional[float] = ..., ejections_overflow: _Optional[int] = ...) -> None: ...

class PriorityStatus(_message.Message):
    __slots__ = ("route", "priority", "endpoints", "healthy_endpoints", "healthy_panic_threshold", "panic", "health", "priority_load")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_PANIC_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PANIC_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_LOAD_FIELD_NUMBER: _ClassVar[int]
    route: str
    priority: int
    endpoints: int
    healthy_endpoints: int
    healthy_panic_threshold: float
    panic: bool
    health: int
    priority_load: int
    def __init__(self, route: _Optional[str] = ..., priority: _Optional[int] = ..., endpoints: _Optional[int] = ..., healthy_endpoints: _Optional[int] = ..., healthy_panic_threshold: _Optional[float] = ..., panic: _Optional[bool] = ..., health: _Optional[int] = ..., priority_load: _Optional[int] = ...) -> None: ...

class EndpointStatus(_message.Message):
    __slots__ = ("cluster", "address", "state", "models", "outstanding_requests", "consecutive_failures", "ejection_reason", "ejected_for", "ejections", "connections")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    EJECTION_REASON_FIELD_NUMBER: _ClassVar[int]
    EJECTED_FOR_FIELD_NUMBER: _ClassVar[int]
    EJECTIONS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    address: str
    state: EndpointState
    models: _containers.RepeatedCompositeFieldContainer[ModelHealth]
    outstanding_requests: int
    consecutive_failures: int
    ejection_reason: str
    ejected_for: _duration_pb2.Duration
    ejections: int
    connections: int
    def __init__(self, cluster: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[_Union[EndpointState, str]] = ..., models: _Optional[_Iterable[_Union[ModelHealth, _Mapping]]] = ..., outstanding_requests: _Optional[int] = ..., consecutive_failures: _Optional[int] = ..., ejection_reason: _Optional[str] = ..., ejected_for: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., ejections: _Optional[int] = ..., connections: _Optional[int] = ...) -> None: ...

class ModelHealth(_message.Message):
    __slots__ = ("model", "state")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    state: ServingState
    def __init__(self, model: _Optional[str] = ..., state: _Optional[_Union[ServingState, str]] = ...) -> None: ...
