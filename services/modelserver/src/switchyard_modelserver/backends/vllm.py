"""The `vllm` backend: vLLM's async engine (AsyncLLM) in the model-server process.

One engine serves one model. Every request goes straight into the engine, which
batches them continuously (no lock, no per-request thread): ``concurrency`` is
large and the engine's own scheduler decides what runs, up to ``max_num_seqs``
at a time. Requests are tokenized here (so prompt length is checked against the
context before the engine sees it, and chat goes through the tokenizer's chat
template), then streamed back as deltas. A consumer that stops (the RPC was
cancelled or its deadline passed) aborts the engine request, so the GPU stops
working on it: this module owns each engine request (``add_request``) and
aborts it itself. If the engine dies, the model turns UNAVAILABLE and
:meth:`VllmBackend.failure` tells the server to exit non-zero, so that
Kubernetes restarts the pod.

Prefix caching is vLLM's (``enable_prefix_caching``, on by default in vLLM's V1
engine): each request's cached prompt tokens (``num_cached_tokens``) go into its
usage, and a stat logger keeps the scheduler's KV-cache usage and queue for the
model server's load reports.

vLLM is imported only when the engine loads: the options and this module work
without it (the config check, ``--list-backends``, type checking).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from pydantic import Field

from switchyard_common.status import FieldViolation, StatusError, invalid_argument
from switchyard_modelserver.backends import vllm_structured, vllm_tool_calls
from switchyard_modelserver.backends.base import Backend, BackendOptions, StateReporter
from switchyard_modelserver.domain import (
    AdapterInfo,
    BackendEvent,
    Capability,
    Delta,
    EngineLoad,
    Finish,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelCard,
    ModelState,
    PromptCounted,
    Sampling,
    TokenLogprob,
)
from switchyard_modelserver.models.adapters import AdapterCatalog, peft_folder
from switchyard_modelserver.serving.limits import MAX_LOGPROBS, tokenize_within_context
from switchyard_modelserver.tools import chat_template, prompting

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.output_processor import RequestOutputCollector

log = logging.getLogger(__name__)

# Prompts longer than this are tokenized off the event loop.
_INLINE_TOKENIZE_CHARS = 8192
_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logprobs",
)


class VllmOptions(BackendOptions):
    """Options of the vllm backend: the served model and vLLM's engine arguments."""

    model: str = Field(
        description="a local Hugging Face model folder (or a hub id where reachable)"
    )
    id: str | None = Field(default=None, description="model id (default: the folder's name)")
    aliases: list[str] = Field(default_factory=list)
    tokenizer: str | None = Field(default=None, description="default: the model's own")
    revision: str | None = None
    dtype: str = Field(default="auto", description="auto, float16, bfloat16, float32")
    quantization: str | None = Field(default=None, description="e.g. awq, gptq, fp8")
    max_model_len: int | None = Field(default=None, ge=16, description="context length")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(
        default=None, ge=1, description="KV cache size; overrides gpu_memory_utilization"
    )
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1, description="sequences per batch")
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    enable_prefix_caching: bool | None = None
    enable_lora: bool = False
    max_loras: int | None = Field(default=None, ge=1)
    max_lora_rank: int | None = Field(default=None, ge=1)
    adapters_dir: Path | None = Field(
        default=None,
        description="LoRA adapters (PEFT folders): <adapters_dir>/<adapter>/adapter_config.json; "
        "needs enable_lora",
    )
    enforce_eager: bool = Field(default=False, description="no CUDA graphs / compilation")
    trust_remote_code: bool = False
    seed: int | None = Field(default=None, description="engine seed")
    max_logprobs: int = Field(default=MAX_LOGPROBS, ge=0)
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="any other AsyncEngineArgs field, passed as is (vLLM checks it)",
    )
    default_max_tokens: int = Field(default=512, ge=1)
    max_concurrent_requests: int = Field(
        default=256,
        ge=1,
        description="requests handed to the engine at once; its scheduler batches them "
        "(max_num_seqs at a time) and queues the rest. Past this, max_queue_per_model applies",
    )
    log_stats: bool = Field(
        default=True,
        description="vLLM's engine metrics (vllm:*) on metrics_listen, and its periodic stats line",
    )
    health_check_seconds: float = Field(default=1.0, gt=0, description="engine liveness poll")
    tool_parser: str = Field(
        default="hermes",
        description="vLLM's tool parser that reads tool calls from the output (vllm serve's "
        "--tool-call-parser); with hermes, calls are also held to their schemas",
    )
    compact_json: bool = Field(
        default=True,
        description="constrained JSON without free whitespace (models can otherwise loop on "
        "whitespace); structured_outputs_config.disable_any_whitespace",
    )


class VllmBackend(Backend):
    """Serves one Hugging Face model with vLLM's AsyncLLM engine."""

    kind = "vllm"
    options_model = VllmOptions
    formats_chats = True

    def __init__(self, options: VllmOptions) -> None:
        if options.adapters_dir is not None and not options.enable_lora:
            raise ValueError("backend.adapters_dir: LoRA adapters need enable_lora: true")
        self._options = options
        self._id = options.id or options.model.rstrip("/").rsplit("/", 1)[-1]
        capabilities = {
            Capability.COMPLETION,
            Capability.STREAMING,
            Capability.LOGPROBS,
            Capability.JSON_OUTPUT,
            Capability.GRAMMAR_OUTPUT,
            Capability.COUNT_TOKENS,
        }
        if options.enable_lora:
            capabilities.add(Capability.ADAPTERS)
        self._card = ModelCard(
            id=self._id,
            aliases=tuple(options.aliases),
            context_length=options.max_model_len or 0,
            capabilities=frozenset(capabilities),
        )
        self._adapters = AdapterCatalog(lambda _: options.adapters_dir, peft_folder)
        self._loras: dict[str, LoRARequest] = {}
        """The engine's LoRARequest per adapter name (vLLM knows adapters by number)."""
        self._lora_numbers = 0  # the last number given to an adapter (never reused)
        self._adding_lora = asyncio.Lock()
        self._engine: AsyncLLM | None = None
        self._tokenizer: Any = None
        self._scheduler = _SchedulerLoad()  # kept by a stat logger in the engine's loop
        self._running = 0  # requests of ours in the engine
        self._failed: asyncio.Future[str] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._report: StateReporter | None = None

    def models(self) -> list[ModelCard]:
        return [self._card]

    def concurrency(self, model_id: str) -> int:
        return self._options.max_concurrent_requests

    def engine_args(self) -> dict[str, Any]:
        """The AsyncEngineArgs fields this config sets (unset ones keep vLLM's defaults)."""
        o = self._options
        args: dict[str, Any] = {
            "model": o.model,
            "served_model_name": [self._id],
            "dtype": o.dtype,
            "gpu_memory_utilization": o.gpu_memory_utilization,
            "tensor_parallel_size": o.tensor_parallel_size,
            "pipeline_parallel_size": o.pipeline_parallel_size,
            "enable_lora": o.enable_lora,
            "enforce_eager": o.enforce_eager,
            "trust_remote_code": o.trust_remote_code,
            "max_logprobs": o.max_logprobs,
            "disable_log_stats": not o.log_stats,
        }
        optional = {
            "tokenizer": o.tokenizer,
            "revision": o.revision,
            "quantization": o.quantization,
            "max_model_len": o.max_model_len,
            "kv_cache_memory_bytes": o.kv_cache_memory_bytes,
            "max_num_seqs": o.max_num_seqs,
            "max_num_batched_tokens": o.max_num_batched_tokens,
            "enable_prefix_caching": o.enable_prefix_caching,
            "max_loras": o.max_loras,
            "max_lora_rank": o.max_lora_rank,
            "seed": o.seed,
        }
        args.update({k: v for k, v in optional.items() if v is not None})
        if o.compact_json:
            args["structured_outputs_config"] = {
                "backend": "xgrammar",
                "disable_any_whitespace": True,
            }
        args.update(o.engine_args)
        return args

    async def load(self, report: StateReporter) -> None:
        self._report = report
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        try:
            # Building the engine blocks (it waits for the engine process to load
            # the model and size the KV cache): off the loop, so health answers
            # NOT_SERVING meanwhile.
            engine = await asyncio.to_thread(self._start_engine)
        except Exception as error:
            log.exception("vLLM engine failed to start for %s", self._options.model)
            report(self._card, ModelState.UNAVAILABLE, f"engine failed to start: {error}")
            self._fail(f"vLLM engine failed to start: {error}")
            return
        self._engine = engine
        self._tokenizer = engine.tokenizer
        capabilities = set(self._card.capabilities)
        if getattr(self._tokenizer, "chat_template", None):
            capabilities |= {Capability.CHAT, Capability.TOOLS}
            if self._options.tool_parser == "hermes":  # structural tags hold every call
                capabilities.add(Capability.STRICT_TOOLS)
        self._card = ModelCard(
            id=self._id,
            aliases=self._card.aliases,
            context_length=engine.model_config.max_model_len,
            capabilities=frozenset(capabilities),
        )
        self._watchdog = loop.create_task(self._watch(engine))
        log.info(
            "vLLM engine ready: %s as %s (context %d)",
            self._options.model,
            self._id,
            self._card.context_length,
        )
        report(self._card, ModelState.READY, "")

    def _start_engine(self) -> AsyncLLM:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(
            AsyncEngineArgs(**self.engine_args()),
            stat_loggers=[_scheduler_load_recorder(self._scheduler)],
        )

    def engine_load(self) -> EngineLoad:
        """The scheduler's last KV-cache usage and queue (0 once none of our requests
        is in the engine: its last step's numbers would be stale)."""
        if not self._running:
            return EngineLoad(kv_cache_usage=0.0)
        scheduler = self._scheduler
        return EngineLoad(kv_cache_usage=scheduler.kv_cache_usage, waiting=scheduler.waiting)

    async def _watch(self, engine: AsyncLLM) -> None:
        """Polls the engine's liveness; a dead engine makes the model UNAVAILABLE."""
        while not engine.errored:  # noqa: ASYNC110 - vLLM exposes liveness only as a property
            await asyncio.sleep(self._options.health_check_seconds)
        log.error("vLLM engine died; the model is unavailable and the server will exit")
        if self._report is not None:
            self._report(self._card, ModelState.UNAVAILABLE, "the vLLM engine died")
        self._fail("the vLLM engine died")

    def _fail(self, why: str) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(why)

    async def failure(self) -> str:
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return await self._failed

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[BackendEvent, None]:
        engine = self._engine
        assert engine is not None, "generate before load"
        if engine.errored:
            raise _engine_dead()
        sampling = request.sampling
        if sampling.logprobs is not None and sampling.logprobs > self._options.max_logprobs:
            raise invalid_argument(
                FieldViolation(
                    "sampling.logprobs",
                    f"at most {self._options.max_logprobs} for model {self._id} (got "
                    f"{sampling.logprobs})",
                )
            )
        tokens = await tokenize_within_context(
            request,
            tokenize_prompt=lambda: self._prompt_tokens(request),
            tokenize_text=lambda text: self._tokens(text, add_special_tokens=False),
            vocabulary_size=len(self._tokenizer),
            context_length=self._card.context_length,
            default_max_tokens=self._options.default_max_tokens,
        )
        prompt_tokens, continuation = tokens.prompt_tokens, tokens.continuation_tokens
        if len(continuation) >= tokens.max_tokens:
            yield Finish(FinishReason.LENGTH, len(prompt_tokens), len(continuation))
            return
        hermes = self._options.tool_parser == "hermes"
        vllm_structured.check_tool_options(request, self._options.tool_parser, self._id)
        params = _sampling_params(
            sampling,
            tokens.max_tokens - len(continuation),
            vllm_structured.structured_outputs(request, hermes, self._options.compact_json),
            keep_special_tokens=request.calls_tools,
        )
        lora = await self._lora(engine, request.adapter) if request.adapter else None
        yield PromptCounted(len(prompt_tokens))
        # aclosing: when our consumer leaves, _run is closed (and aborts) now, not when collected.
        async with contextlib.aclosing(
            self._run(engine, prompt_tokens, continuation, params, request, lora)
        ) as run:
            events: AsyncIterator[BackendEvent] = run
            if request.calls_tools:
                events = vllm_tool_calls.tool_call_events(
                    run,
                    self._tool_parser(request),
                    vllm_tool_calls.parser_request(request, self._id),
                )
            async for event in events:
                yield event

    def _tool_parser(self, request: GenerationRequest) -> Any:
        from vllm.tool_parsers import ToolParserManager

        parser_class = ToolParserManager.get_tool_parser(self._options.tool_parser)
        return parser_class(self._tokenizer, prompting.function_definitions(request.tools))

    async def count_tokens(self, request: GenerationRequest) -> int:
        return len(await self._prompt_tokens(request))

    async def _run(
        self,
        engine: AsyncLLM,
        prompt_tokens: list[int],
        continuation: list[int],
        params: SamplingParams,
        request: GenerationRequest,
        lora: LoRARequest | None = None,
    ) -> AsyncGenerator[GenerationEvent, None]:
        """One engine request, owned here from add_request to its end or our abort.

        ``add_request`` rather than ``AsyncLLM.generate``: the latter aborts by
        itself only when its generator is closed or collected, so the engine
        would keep a request whose consumer left until garbage collection. Here
        the request leaves the engine because this code aborts it.
        """
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        request_id = f"sy-{uuid.uuid4().hex}"
        generated = len(continuation)
        cached = 0
        collector: RequestOutputCollector | None = None
        finished = False
        self._running += 1
        try:
            collector = await engine.add_request(
                request_id,
                {"prompt_token_ids": prompt_tokens + continuation},
                params,
                lora_request=lora,
            )
            while not finished:
                # Drain without a task switch when the engine is ahead of us.
                output = collector.get_nowait() or await collector.get()
                cached = output.num_cached_tokens or cached
                completion = output.outputs[0]
                new_tokens = len(completion.token_ids)
                generated += new_tokens
                finished = output.finished
                if completion.text or new_tokens:
                    yield Delta(
                        completion.text,
                        new_tokens,
                        list(completion.token_ids)
                        if request.include_token_ids or request.calls_tools
                        else [],
                        _logprobs(completion.token_ids, completion.logprobs, params.logprobs)
                        if params.logprobs is not None
                        else [],
                    )
                if finished:
                    reason, stop_sequence = _finish_reason(
                        completion.finish_reason, completion.stop_reason
                    )
                    # A continuation's tokens may be among the cached ones: not the prompt's.
                    cached_prompt = min(cached, len(prompt_tokens))
                    yield Finish(
                        reason, len(prompt_tokens), generated, stop_sequence, cached_prompt
                    )
        except EngineDeadError:
            raise _engine_dead() from None
        except VLLMClientError as error:
            if params.structured_outputs is not None and not _names_sampling(error):
                raise invalid_argument(
                    FieldViolation(
                        vllm_structured.refused_field(request), f"refused by vLLM: {error}"
                    )
                ) from None
            raise _refused_by_vllm(error) from None
        finally:
            self._running -= 1
            if collector is not None:
                collector.close()
            if not finished and not engine.errored:
                # The consumer left (cancelled, deadline) or the request failed:
                # take it out of the engine's batch now. Also when add_request
                # was interrupted (the request may be in the engine already);
                # aborting an id the engine does not hold does nothing.
                await engine.abort(request_id)
                log.debug("aborted engine request %s after %d tokens", request_id, generated)

    async def _prompt_tokens(self, request: GenerationRequest) -> list[int]:
        if request.prompt is not None:
            text, add_special = request.prompt, True
        else:
            assert request.messages is not None
            text = self._chat_text(request)
            add_special = False  # the template places BOS itself where the model wants it
        return await self._tokens(text, add_special_tokens=add_special)

    def _chat_text(self, request: GenerationRequest) -> str:
        """The chat through the configured template override (sandboxed), else the
        tokenizer's own, with the request's tools."""
        assert request.messages is not None
        source = request.chat_template
        own = getattr(self._tokenizer, "chat_template", None)
        if source is None and not own:
            raise invalid_argument(
                FieldViolation("messages", f"model {self._id} has no chat template; send a prompt")
            )
        template = chat_template.compiled(source or own)

        def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
            if source is not None:
                return template.render(
                    messages,
                    tools=tools,
                    bos_token=self._tokenizer.bos_token or "",
                    eos_token=self._tokenizer.eos_token or "",
                )
            return str(
                self._tokenizer.apply_chat_template(
                    messages, tools=tools, tokenize=False, add_generation_prompt=True
                )
            )

        try:
            return prompting.rendered(
                render,
                request.messages,
                request.tools,
                template_knows_tools=template.knows_tools,
                offer_tools=request.calls_tools,
            )
        except Exception as error:  # templates refuse what they cannot format
            raise invalid_argument(
                FieldViolation("messages", f"{self._id}'s chat template refused them: {error}")
            ) from None

    async def _tokens(self, text: str, *, add_special_tokens: bool) -> list[int]:
        """``text``'s token ids; long text is tokenized off the event loop."""
        if len(text) <= _INLINE_TOKENIZE_CHARS:
            return self._encode(text, add_special_tokens)
        return await asyncio.to_thread(self._encode, text, add_special_tokens)

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    # -- LoRA adapters ----------------------------------------------------------

    def check_adapter(self, model_id: str, name: str) -> None:
        self._adapters.path(model_id, name)

    async def adapters(self, model_id: str) -> list[AdapterInfo]:
        if not self._options.enable_lora:
            return []
        engine = self._engine
        loaded_ids = (
            await engine.list_loras() if engine is not None and not engine.errored else set()
        )
        loaded = {name for name, lora in self._loras.items() if lora.lora_int_id in loaded_ids}
        names = await asyncio.to_thread(self._adapters.names, model_id)
        return [AdapterInfo(name, name in loaded) for name in sorted(set(names) | loaded)]

    async def _lora(self, engine: AsyncLLM, name: str, path: Path | None = None) -> LoRARequest:
        """The adapter's LoRARequest, added to the engine (loaded) the first time."""
        from vllm.lora.request import LoRARequest

        path = path or self._adapters.path(self._id, name)
        known = self._loras.get(name)
        if known is not None and known.lora_path == str(path):
            return known
        # One add at a time: the first requests naming two new adapters at once must
        # not both take the next number (vLLM would serve one adapter's weights to
        # both), nor two first requests of one adapter add it twice.
        async with self._adding_lora:
            known = self._loras.get(name)
            if known is not None and known.lora_path == str(path):
                return known
            self._lora_numbers += 1
            lora = LoRARequest(name, self._lora_numbers, str(path))
            try:
                added = await engine.add_lora(lora)
            except Exception as error:  # vLLM refuses adapters it cannot read or fit
                raise _adapter_refused(name, str(error)) from None
            if not added:
                raise _adapter_refused(name, "vLLM did not add it")
            if known is not None:
                await engine.remove_lora(known.lora_int_id)
            self._loras[name] = lora
            return lora

    async def load_adapter(self, model_id: str, name: str, path: str) -> None:
        engine = self._engine
        if not self._options.enable_lora or engine is None:
            raise StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {self._id} takes no adapters: start it with enable_lora: true",
                reason="ADAPTERS_DISABLED",
            )
        found = self._adapters.locate(model_id, name, path)
        await self._lora(engine, name, found)
        self._adapters.register(model_id, name, found)  # once it loaded: requests may name it

    async def unload_adapter(self, model_id: str, name: str) -> None:
        self._adapters.path(model_id, name)  # NOT_FOUND for one it never had
        lora = self._loras.get(name)
        if lora is not None and self._engine is not None:
            await self._engine.remove_lora(lora.lora_int_id)
            del self._loras[name]

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await asyncio.to_thread(engine.shutdown)


@dataclass
class _SchedulerLoad:
    """The engine scheduler's load at its last step."""

    kv_cache_usage: float = 0.0
    waiting: int = 0


def _scheduler_load_recorder(load: _SchedulerLoad) -> Any:
    """A vLLM stat logger (a per-engine factory: the class) that keeps the
    scheduler's KV-cache usage and queue in ``load`` at every engine step, for the
    model server's load reports. vLLM's own loggers and Prometheus metrics stay."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerLoadRecorder(StatLoggerBase):  # type: ignore[misc]  # vLLM is untyped here
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                load.kv_cache_usage = scheduler_stats.kv_cache_usage
                load.waiting = scheduler_stats.num_waiting_reqs

        def log_engine_initialized(self) -> None:
            pass

    return SchedulerLoadRecorder


def _sampling_params(
    sampling: Sampling,
    max_tokens: int,
    structured: dict[str, Any] | None = None,
    *,
    keep_special_tokens: bool = False,
) -> SamplingParams:
    """Our sampling fields as vLLM's; INVALID_ARGUMENT naming the field vLLM refuses.

    ``structured``: the structured-output constraint; ``keep_special_tokens``: tool
    calls are read from the text, and some models' tool tags are special tokens.
    """
    from vllm import SamplingParams
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    given: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "seed": sampling.seed,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "repetition_penalty": sampling.repetition_penalty,
        "logprobs": sampling.logprobs,
    }
    try:
        return SamplingParams(
            **{k: v for k, v in given.items() if v is not None},
            max_tokens=max_tokens,
            stop=list(sampling.stop) or None,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=None
            if structured is None
            else StructuredOutputsParams(**structured),
            skip_special_tokens=not keep_special_tokens,
        )
    except (VLLMClientError, ValueError) as error:
        raise _refused_by_vllm(error) from None


def _names_sampling(error: Exception) -> bool:
    """Whether vLLM's error is about one of our sampling fields."""
    message = str(error)
    name = getattr(error, "parameter", None)
    return name in _SAMPLING_FIELDS or any(message.startswith(f) for f in _SAMPLING_FIELDS)


def _refused_by_vllm(error: Exception) -> StatusError:
    """vLLM's validation error as INVALID_ARGUMENT naming our field."""
    message = str(error).split(" (parameter=")[0]
    name = getattr(error, "parameter", None)
    if name not in _SAMPLING_FIELDS:
        name = next((f for f in _SAMPLING_FIELDS if message.startswith(f)), None)
    field = f"sampling.{name}" if name else "sampling"
    return invalid_argument(FieldViolation(field, f"refused by vLLM: {message}"))


def _logprobs(token_ids: Sequence[int], positions: Any, top_n: int) -> list[TokenLogprob]:
    """vLLM's per-position logprob maps (token id -> Logprob) as ours, the top ``top_n`` by rank.

    Each map holds the sampled token (whatever its rank) and the ``top_n`` best.
    """
    found = []
    for token_id, candidates in zip(token_ids, positions or (), strict=False):
        chosen = candidates[token_id]
        top = sorted(
            (c for c in candidates.items() if c[1].rank is not None and c[1].rank <= top_n),
            key=lambda c: c[1].rank,
        )
        found.append(
            TokenLogprob(
                id=token_id,
                text=chosen.decoded_token or "",
                logprob=chosen.logprob,
                top=tuple((i, c.decoded_token or "", c.logprob) for i, c in top),
            )
        )
    return found


def _adapter_refused(name: str, why: str) -> StatusError:
    return StatusError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"adapter {name!r} could not be loaded: {why}",
        reason="ADAPTER_UNAVAILABLE",
        metadata={"adapter": name},
    )


def _engine_dead() -> StatusError:
    return StatusError(
        grpc.StatusCode.UNAVAILABLE,
        "the vLLM engine died; retry on another replica",
        reason="ENGINE_DEAD",
    )


def _finish_reason(reason: str | None, stop_reason: int | str | None) -> tuple[FinishReason, str]:
    """vLLM's finish_reason / stop_reason as ours (and the stop sequence that matched)."""
    if reason == "stop":
        if isinstance(stop_reason, str):
            return FinishReason.STOP_SEQUENCE, stop_reason
        return FinishReason.STOP, ""
    if reason == "length":
        return FinishReason.LENGTH, ""
    if reason == "abort":
        return FinishReason.CANCELLED, ""
    return FinishReason.ERROR, ""
