"""The base class of the cloud backends: a provider reached over HTTP.

It serves the configured models' cards, runs the startup check, checks what a
request asks against the model's capabilities, and passes every provider
failure through the error table and provider health, with the key scrubbed.
A provider implements listing its models, streaming one generation and
naming the status of its SDK's errors.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, ClassVar

import grpc

from switchyard_common.status import FieldViolation, StatusError, invalid_argument
from switchyard_modelserver.backends.base import Backend, StateReporter
from switchyard_modelserver.backends.cloud.api_key import Secret, load_secret
from switchyard_modelserver.backends.cloud.errors import MODEL_LIST
from switchyard_modelserver.backends.cloud.health import ProviderHealth
from switchyard_modelserver.backends.cloud.options import CloudModel, CloudOptions
from switchyard_modelserver.domain import (
    Capability,
    GenerationEvent,
    GenerationRequest,
    ModelCard,
)

log = logging.getLogger(__name__)

_CAPABILITIES = {
    "completion": Capability.COMPLETION,
    "chat": Capability.CHAT,
    "streaming": Capability.STREAMING,
    "logprobs": Capability.LOGPROBS,
    "tools": Capability.TOOLS,
    "json_output": Capability.JSON_OUTPUT,
}


class CloudBackend(Backend):
    """A provider reached over HTTP; subclasses speak its API."""

    provider: ClassVar[str]
    remote = True
    authoritative_model_list: ClassVar[bool] = False
    """Whether a model the provider does not list is unavailable (else only a warning)."""
    requires_api_key: ClassVar[bool] = False
    """Whether a missing API key is a config error (else requests go without one)."""
    provider_capabilities: ClassVar[frozenset[Capability]] = frozenset()
    """What the provider's API adds for every model (e.g. a token-count endpoint)."""
    no_token_count: ClassVar[str] = "the provider has no token-count API"
    """Why CountTokens is UNIMPLEMENTED, for providers without one."""
    options: CloudOptions

    def __init__(self, options: CloudOptions) -> None:
        self.options = options
        self._models = {m.id: m for m in options.models}
        self._health: ProviderHealth | None = None
        self._secret = load_secret(options, required=self.requires_api_key, kind=self.kind)

    # -- what a provider implements --------------------------------------

    def holds_strict_tools(self) -> bool:
        """Whether the provider holds a strict tool's calls to its schema when told to
        (its models with ``tools`` then have STRICT_TOOLS, and the backend must send
        the flag); otherwise the server refuses strict tools for its models."""
        return False

    @abc.abstractmethod
    async def list_provider_models(self) -> set[str] | None:
        """The provider's model ids (None where the list is not authoritative);
        raises StatusError when the provider cannot be reached or refuses."""

    @abc.abstractmethod
    def stream(
        self, model: CloudModel, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Streams one generation from the provider; closing it closes the HTTP stream."""

    @abc.abstractmethod
    def status_of(
        self, error: Exception, model: CloudModel, request: GenerationRequest | None
    ) -> StatusError | None:
        """The gRPC status of an SDK or HTTP error (None: not a provider failure)."""

    # -- the Backend interface --------------------------------------------

    def model_ids(self) -> list[str]:
        return list(self._models)

    def card(self, model_id: str) -> ModelCard:
        model = self._models[model_id]
        capabilities = {_CAPABILITIES[c] for c in model.capabilities} | self.provider_capabilities
        if Capability.TOOLS in capabilities and self.holds_strict_tools():
            capabilities.add(Capability.STRICT_TOOLS)
        return ModelCard(
            id=model.id,
            aliases=tuple(model.aliases),
            context_length=model.context_length,
            capabilities=frozenset(capabilities),
        )

    def models(self) -> list[ModelCard]:
        return [self.card(model_id) for model_id in self._models]

    async def count_tokens(self, request: GenerationRequest) -> int:
        """UNIMPLEMENTED with the reason, rather than a guess (providers with a count
        API override this)."""
        raise StatusError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"the {self.kind} backend cannot count tokens exactly: {self.no_token_count}",
            reason="TOKEN_COUNT_UNSUPPORTED",
            metadata={"backend": self.kind},
        )

    def concurrency(self, model_id: str) -> int:
        return self._models[model_id].concurrency

    async def check(self) -> set[str]:
        """Asks the provider for its models; returns our ids it does not have."""
        provider_ids = await self.list_provider_models()
        if provider_ids is None:
            return set()
        missing = {m.id for m in self._models.values() if m.upstream not in provider_ids}
        return missing

    async def load(self, report: StateReporter) -> None:
        self._health = ProviderHealth(self, report)
        if not self.options.startup_check:
            for model_id in self._models:
                self._health.up(model_id)
            return
        try:
            missing = await self.check()
        except StatusError as error:
            for model_id in self._models:
                self._health.down(model_id, error.message)
            return
        for model_id, model in self._models.items():
            if model_id in missing and self.authoritative_model_list:
                self._health.down(model_id, f"{self.provider} has no model {model.upstream!r}")
                continue
            if model_id in missing:  # compatible servers list models their own way
                log.warning(
                    "%s does not list model %r (served as %s); serving it anyway",
                    self.provider,
                    model.upstream,
                    model_id,
                )
            self._health.up(model_id)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        model = self._models[request.model]
        capabilities = self.card(model.id).capabilities
        if request.prompt is not None and Capability.COMPLETION not in capabilities:
            raise invalid_argument(
                FieldViolation("prompt", f"model {model.id} is chat-only; send messages")
            )
        if request.messages is not None and Capability.CHAT not in capabilities:
            raise invalid_argument(
                FieldViolation("messages", f"model {model.id} takes a prompt, not messages")
            )
        # include_token_ids is accepted (routers that may resume a stream always
        # ask) but answered without ids: providers do not expose them.
        if request.continuation.token_ids:
            raise invalid_argument(
                FieldViolation(
                    "continuation.token_ids",
                    f"the {self.provider} backend has no token ids; send continuation.text",
                )
            )
        events = self.stream(model, request)
        try:
            async with aclosing(events):
                async for event in events:
                    yield event
        except StatusError as error:
            scrubbed = self._failed(model, error)
            if scrubbed is error:
                raise
            raise scrubbed from None
        except Exception as error:
            status = self.status_of(error, model, request)
            if status is None:
                raise
            raise self._failed(model, status) from None
        if self._health is not None:
            self._health.succeeded(model.id)

    async def sdk_model_ids(self, client: Any) -> set[str]:
        """The model ids an official SDK client's ``models.list()`` pages through;
        a failure becomes the table's StatusError, with the key scrubbed."""
        try:
            page = await client.models.list(timeout=self.options.connect_timeout_seconds)
            return {model.id async for model in page}
        except Exception as error:
            status = self.status_of(error, MODEL_LIST, None)
            if status is None:
                raise
            raise self._scrubbed(status) from None

    def _scrubbed(self, error: StatusError) -> StatusError:
        """``error`` with the API key, should a provider echo it, replaced."""
        return error.with_message(self.secret.scrub(error.message))

    def _failed(self, model: CloudModel, error: StatusError) -> StatusError:
        """Records the failure for health; returns the error to raise, scrubbed."""
        error = self._scrubbed(error)
        if self._health is not None:
            self._health.failed(model.id, error)
        return error

    @abc.abstractmethod
    def send_key(self, key: str | None) -> None:
        """Makes the provider's client send ``key`` (None: no key) from the next
        request on."""

    @property
    def secret(self) -> Secret:
        """The backend's API key."""
        return self._secret

    def use_secret(self, secret: Secret) -> None:
        """Sends ``secret`` as the API key from the next request on."""
        self._secret = secret
        self.send_key(secret.reveal())

    def reload_secret(self) -> None:
        """Re-reads ``api_key_file`` (a rotated or fixed Kubernetes secret is seen
        without a restart); a key from the environment cannot change."""
        if self.options.api_key_file is None:
            return
        try:
            fresh = load_secret(self.options, required=False, kind=self.kind)
        except ValueError as error:  # mid-rotation: keep the old key for now
            log.info("cannot reload the API key: %s", error)
            return
        if fresh.reveal() != self.secret.reveal():
            log.info("API key file %s changed; using the new key", self.options.api_key_file)
            self.use_secret(fresh)

    async def close(self) -> None:
        if self._health is not None:
            self._health.close()


def max_tokens_for(model: CloudModel, request: GenerationRequest) -> int | None:
    """The request's max_tokens, else the model's configured default."""
    return request.sampling.max_tokens or model.default_max_tokens
