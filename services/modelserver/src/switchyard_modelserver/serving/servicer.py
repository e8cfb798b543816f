"""The LLMService servicer: protobuf in, domain request to the backend, protobuf out.

Around each generation call, in order: the request's telemetry
(``request_telemetry``: spans, metrics, access-log line), the status boundary
(``status_boundary``: the one place an exception becomes the call's status),
the in-flight count a drain waits on (``in_flight``) and the caller's deadline.
Parsing and input limits live in ``request_parsing``, the max_tokens ceiling in
``limits``, model lookup in ``catalog``, queueing in ``admission``, merging
deltas in ``coalescing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import grpc
import grpc.aio
from google.protobuf import duration_pb2

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc
from switchyard_modelserver.backends.base import Backend
from switchyard_modelserver.config import InputLimits
from switchyard_modelserver.domain import (
    Capability,
    Delta,
    Finish,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelState,
    PromptCounted,
    ToolCallDelta,
)
from switchyard_modelserver.models.catalog import ModelCatalog
from switchyard_modelserver.models.model_defaults import ModelDefaults
from switchyard_modelserver.serving import capability_check, request_parsing
from switchyard_modelserver.serving.admission import ModelGate
from switchyard_modelserver.serving.coalescing import coalesced
from switchyard_modelserver.serving.in_flight import InFlight
from switchyard_modelserver.serving.limits import max_tokens_ceiling
from switchyard_modelserver.serving.request_parsing import (
    UnreadableRequest,
    count_request,
    generation_request,
)
from switchyard_modelserver.serving.status_boundary import Trailers, status_boundary
from switchyard_modelserver.telemetry.request_telemetry import RequestTelemetry

Context = grpc.aio.ServicerContext[Any, Any]

_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: pb.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}
_CAPABILITY = {
    Capability.COMPLETION: pb.CAPABILITY_COMPLETION,
    Capability.CHAT: pb.CAPABILITY_CHAT,
    Capability.STREAMING: pb.CAPABILITY_STREAMING,
    Capability.LOGPROBS: pb.CAPABILITY_LOGPROBS,
    Capability.TOOLS: pb.CAPABILITY_TOOLS,
    Capability.JSON_OUTPUT: pb.CAPABILITY_JSON_OUTPUT,
    Capability.GRAMMAR_OUTPUT: pb.CAPABILITY_GRAMMAR_OUTPUT,
    Capability.COUNT_TOKENS: pb.CAPABILITY_COUNT_TOKENS,
    Capability.ADAPTERS: pb.CAPABILITY_ADAPTERS,
    Capability.STRICT_TOOLS: pb.CAPABILITY_STRICT_TOOLS,
}
STATUS = {
    ModelState.LOADING: pb.MODEL_STATUS_LOADING,
    ModelState.READY: pb.MODEL_STATUS_READY,
    ModelState.UNAVAILABLE: pb.MODEL_STATUS_UNAVAILABLE,
    ModelState.UNLOADED: pb.MODEL_STATUS_UNLOADED,
    ModelState.DRAINING: pb.MODEL_STATUS_DRAINING,
}
"""A model's state as the contract's ModelStatus (REMOVED models are never listed)."""


def _deadline(context: Context) -> asyncio.Timeout:
    """The caller's deadline as a timeout around the whole handler, so that the
    engine stops when it passes (not only the bytes on the wire)."""
    return asyncio.timeout(context.time_remaining())


def _with_deadline(request: GenerationRequest, context: Context) -> GenerationRequest:
    """The request with the caller's deadline, which cloud backends use as their HTTP timeout."""
    remaining = context.time_remaining()
    if remaining is None:
        return request
    return dataclasses.replace(request, deadline=time.monotonic() + remaining)


def _delta_message(delta: Delta, include_token_ids: bool) -> pb.StreamGenerateResponse:
    message = pb.StreamGenerateResponse(text=delta.text)
    for piece in delta.tool_calls:
        message.tool_calls.add(
            index=piece.index, id=piece.id, name=piece.name, arguments=piece.arguments
        )
    if delta.logprobs:
        message.tokens.extend(_tokens(delta))
    elif include_token_ids:
        message.tokens.extend(pb.Token(id=token_id) for token_id in delta.token_ids)
    return message


def _tokens(delta: Delta) -> list[pb.Token]:
    """A delta's per-token details (ids, texts, logprobs) for the response's ``tokens``."""
    return [
        pb.Token(
            id=token.id,
            text=token.text,
            logprob=token.logprob,
            top_logprobs=[pb.TopLogprob(id=i, text=t, logprob=lp) for i, t, lp in token.top],
        )
        for token in delta.logprobs
    ]


def _tool_calls(pieces: list[ToolCallDelta]) -> list[pb.ToolCall]:
    """Streamed tool call pieces joined into whole calls, in index order."""
    calls: dict[int, pb.ToolCall] = {}
    for piece in pieces:
        call = calls.setdefault(piece.index, pb.ToolCall())
        if piece.id:
            call.id = piece.id
        if piece.name:
            call.name = piece.name
        call.arguments += piece.arguments
    return [calls[index] for index in sorted(calls)]


def _defaults_message(defaults: ModelDefaults | None) -> pb.ModelDefaults | None:
    if defaults is None:
        return None
    sampling = pb.SamplingParams(stop=defaults.stop)
    for name in ("temperature", "top_p", "max_tokens"):
        value = getattr(defaults, name)
        if value is not None:
            setattr(sampling, name, value)
    return pb.ModelDefaults(
        sampling=sampling,
        system_prompt=defaults.system_prompt or "",
        chat_template_override=defaults.chat_template is not None,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


class LLMServicer(pb_grpc.LLMServiceServicer):
    """Serves switchyard.v1.LLMService from one backend."""

    def __init__(
        self,
        backend: Backend,
        catalog: ModelCatalog,
        gates: dict[str, ModelGate],
        in_flight: InFlight,
        coalesce_seconds: float = 0.0,
        limits: InputLimits = request_parsing.DEFAULT_LIMITS,
        max_tokens: dict[str, int] | None = None,
        defaults: dict[str, ModelDefaults] | None = None,
        trailers: Trailers | None = None,
    ) -> None:
        self._defaults = defaults or {}  # per model id
        self._coalesce_seconds = coalesce_seconds
        self._trailers = trailers  # every call's last words: the load report
        self._limits = limits
        self._max_tokens = max_tokens or {}  # ceiling per model id
        self._backend = backend
        self._catalog = catalog
        self._gates = gates
        self._in_flight = in_flight

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: pb.GenerateRequest | UnreadableRequest, context: Context
    ) -> pb.GenerateResponse:
        telemetry = self._telemetry("Generate", request, context)
        async with (
            telemetry.current(),
            status_boundary(context, telemetry, self._trailers),
            self._in_flight.track(),
            _deadline(context),
        ):
            parts: list[str] = []
            tokens: list[pb.Token] = []
            calls: list[ToolCallDelta] = []
            valid = _with_deadline(generation_request(request, self._limits), context)
            events = self._events(valid, telemetry)
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, Delta):
                        parts.append(event.text)
                        if event.logprobs:
                            tokens += _tokens(event)
                        calls += event.tool_calls
                    else:
                        final = self._final_message(event, telemetry)
                        return pb.GenerateResponse(
                            text="".join(parts),
                            finish_reason=final.finish_reason,
                            stop_sequence=final.stop_sequence,
                            usage=final.usage,
                            model=final.model,
                            backend=final.backend,
                            timings=final.timings,
                            tokens=tokens,
                            tool_calls=_tool_calls(calls),
                        )
        raise AssertionError("unreachable: the boundary aborts or a Finish returns")

    async def StreamGenerate(  # type: ignore[override]  # noqa: N802 - writes via context
        self, request: pb.StreamGenerateRequest | UnreadableRequest, context: Context
    ) -> None:
        telemetry = self._telemetry("StreamGenerate", request, context)
        async with (
            telemetry.current(),
            status_boundary(context, telemetry, self._trailers),
            self._in_flight.track(),
            _deadline(context),
        ):
            valid = _with_deadline(generation_request(request, self._limits), context)
            with_ids = valid.include_token_ids
            events = coalesced(self._events(valid, telemetry), self._coalesce_seconds)
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, Delta):
                        if (
                            event.text
                            or (with_ids and event.token_ids)
                            or event.logprobs
                            or event.tool_calls
                        ):
                            await context.write(_delta_message(event, with_ids))
                    else:
                        await context.write(self._final_message(event, telemetry))

    def _telemetry(
        self,
        method: str,
        request: pb.GenerateRequest | pb.StreamGenerateRequest | UnreadableRequest,
        context: Context,
    ) -> RequestTelemetry:
        readable = None if isinstance(request, UnreadableRequest) else request
        return RequestTelemetry.start(
            method,
            readable,
            context,
            served_id=None if readable is None else self._catalog.lookup(readable.model),
            provider=self._backend.kind,
            remote=self._backend.remote,
        )

    async def CountTokens(  # noqa: N802 - gRPC method name
        self, request: pb.CountTokensRequest | UnreadableRequest, context: Context
    ) -> pb.CountTokensResponse:
        telemetry = RequestTelemetry("CountTokens")  # a log line and metrics, no spans
        async with (
            status_boundary(context, telemetry),
            self._in_flight.track(),
            _deadline(context),
        ):
            valid = count_request(request, self._limits)
            telemetry.model = valid.model
            residency = self._backend.residency
            model_id = self._catalog.resolve(valid.model, loads_on_demand=residency is not None)
            telemetry.resolved_to(model_id)
            counted = self._with_defaults(dataclasses.replace(valid, model=model_id))
            # Counting needs the model's tokenizer: in memory, on a backend that loads on demand.
            hold = residency.hold(model_id) if residency is not None else contextlib.nullcontext()
            async with hold:
                tokens = await self._backend.count_tokens(counted)
            telemetry.prompt_tokens = tokens
            return pb.CountTokensResponse(
                prompt_tokens=tokens,
                model=model_id,
                backend=self._backend.kind,
                context_length=self._catalog.card(model_id).context_length,
            )
        raise AssertionError("unreachable: the boundary aborts or the count returns")

    def _with_defaults(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with its model's configured defaults where it leaves things unset."""
        defaults = self._defaults.get(request.model)
        return request if defaults is None else defaults.apply(request)

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        models = []
        for entry in self._catalog.entries():
            card = entry.card
            adapters = await self._backend.adapters(card.id)
            if entry.state is ModelState.REMOVED:
                continue  # its file went away while the adapters were read
            models.append(
                pb.Model(
                    id=card.id,
                    aliases=card.aliases,
                    backend=self._backend.kind,
                    context_length=card.context_length,
                    capabilities=sorted(_CAPABILITY[c] for c in card.capabilities),
                    status=STATUS[entry.state],
                    healthy_replicas=1 if entry.serving else 0,
                    total_replicas=1,
                    memory_bytes=card.memory_bytes,
                    adapters=[pb.Adapter(name=a.name, loaded=a.loaded) for a in adapters],
                    defaults=_defaults_message(self._defaults.get(entry.card.id)),
                )
            )
        return pb.ListModelsResponse(models=models)

    async def _events(
        self, request: GenerationRequest, telemetry: RequestTelemetry
    ) -> AsyncGenerator[GenerationEvent, None]:
        """The backend's events for ``request``, once its model (and adapter) is
        resolved, what the model cannot do refused, its defaults and max_tokens
        ceiling applied, the model held in memory (a backend whose models load on
        demand loads it now) and a place in its queue granted."""
        residency = self._backend.residency
        model_id = self._catalog.resolve(request.model, loads_on_demand=residency is not None)
        telemetry.resolved_to(model_id)
        capability_check.check(self._catalog.card(model_id), request, self._backend.kind)
        if request.adapter is not None:
            self._backend.check_adapter(model_id, request.adapter)
        resolved = max_tokens_ceiling(
            self._with_defaults(dataclasses.replace(request, model=model_id)),
            self._max_tokens.get(model_id, self._limits.max_tokens),
        )
        gate = self._gates[model_id]
        gate.refuse_if_full()  # at once, rather than after waiting for a load
        # The hold comes first, so that a request queued for its model keeps it in
        # memory too: the budget unloads only models nobody waits for.
        hold = residency.hold(model_id) if residency is not None else contextlib.nullcontext()
        async with hold, gate.admit():
            events = self._backend.generate(resolved)
            try:
                async for event in events:
                    telemetry.observe(event)
                    if not isinstance(event, PromptCounted):
                        yield event
            finally:
                await events.aclose()

    def _final_message(
        self, finish: Finish, telemetry: RequestTelemetry
    ) -> pb.StreamGenerateResponse:
        now = time.monotonic()
        first = telemetry.first_token_at if telemetry.first_token_at is not None else now
        return pb.StreamGenerateResponse(
            finish_reason=_FINISH[finish.reason],
            stop_sequence=finish.stop_sequence,
            usage=pb.Usage(
                prompt_tokens=finish.prompt_tokens,
                completion_tokens=finish.completion_tokens,
                cached_prompt_tokens=finish.cached_prompt_tokens,
            ),
            model=telemetry.model,
            backend=self._backend.kind,
            timings=pb.Timings(
                time_to_first_token=_duration(first - telemetry.started),
                total=_duration(now - telemetry.started),
            ),
        )
