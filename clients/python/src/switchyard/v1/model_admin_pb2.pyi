import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from switchyard.v1 import llm_service_pb2 as _llm_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadModelRequest(_message.Message):
    __slots__ = ("model", "endpoint")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    model: str
    endpoint: str
    def __init__(self, model: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: LoadedModel
    def __init__(self, model: _Optional[_Union[LoadedModel, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model", "endpoint")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    model: str
    endpoint: str
    def __init__(self, model: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: LoadedModel
    def __init__(self, model: _Optional[_Union[LoadedModel, _Mapping]] = ...) -> None: ...

class ListLoadedRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class ListLoadedResponse(_message.Message):
    __slots__ = ("models", "budgets", "unreachable_endpoints")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    budgets: _containers.RepeatedCompositeFieldContainer[MemoryBudget]
    unreachable_endpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, models: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ..., budgets: _Optional[_Iterable[_Union[MemoryBudget, _Mapping]]] = ..., unreachable_endpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("endpoint", "model", "status", "memory_bytes", "requests_in_flight", "idle_for", "adapters", "detail")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    IDLE_FOR_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    model: str
    status: _llm_service_pb2.ModelStatus
    memory_bytes: int
    requests_in_flight: int
    idle_for: _duration_pb2.Duration
    adapters: _containers.RepeatedScalarFieldContainer[str]
    detail: str
    def __init__(self, endpoint: _Optional[str] = ..., model: _Optional[str] = ..., status: _Optional[_Union[_llm_service_pb2.ModelStatus, str]] = ..., memory_bytes: _Optional[int] = ..., requests_in_flight: _Optional[int] = ..., idle_for: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., adapters: _Optional[_Iterable[str]] = ..., detail: _Optional[str] = ...) -> None: ...

class MemoryBudget(_message.Message):
    __slots__ = ("endpoint", "budget_bytes", "used_bytes", "max_loaded_models", "loaded_models")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    budget_bytes: int
    used_bytes: int
    max_loaded_models: int
    loaded_models: int
    def __init__(self, endpoint: _Optional[str] = ..., budget_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., max_loaded_models: _Optional[int] = ..., loaded_models: _Optional[int] = ...) -> None: ...

class LoadAdapterRequest(_message.Message):
    __slots__ = ("model", "adapter", "path", "endpoint")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    model: str
    adapter: str
    path: str
    endpoint: str
    def __init__(self, model: _Optional[str] = ..., adapter: _Optional[str] = ..., path: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class LoadAdapterResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: LoadedModel
    def __init__(self, model: _Optional[_Union[LoadedModel, _Mapping]] = ...) -> None: ...

class UnloadAdapterRequest(_message.Message):
    __slots__ = ("model", "adapter", "endpoint")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    model: str
    adapter: str
    endpoint: str
    def __init__(self, model: _Optional[str] = ..., adapter: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class UnloadAdapterResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: LoadedModel
    def __init__(self, model: _Optional[_Union[LoadedModel, _Mapping]] = ...) -> None: ...
