"""The `llamacpp` backend: every GGUF file in a models directory, on the CPU.

One llama.cpp context per model, driven by one worker thread, so one
generation per model runs at a time and the rest wait in the model's bounded
queue. Generation is our own token loop (``llamacpp_decode``, on the worker
thread) rather than ``create_completion``, because we need what that API does not give:
``max_tokens`` as a hard cap (llama-cpp-python lets multi-byte characters
overshoot it), a cancellation check before every token, exact token counts
and stop sequences that are never partly emitted.

Which models are in memory is the residency's business (``residency``):
without a budget every model loads at start and stays; with
``max_loaded_models`` or ``memory_budget_bytes`` models load on their first
request and the least recently used idle one makes room. The folder is
watched (``gguf_files.ModelsFolder``): a file added is served, one removed
drains, one replaced loads beside the old copy and takes over. LoRA adapters
(``llamacpp_lora``) are applied per request.

A prompt reuses what the context already computed: the prefix it shares with
the live context, or with a state the model's prompt cache kept from an earlier
request (``prompt_cache``, up to ``prompt_cache_bytes``), whichever is longer; the
reused tokens are the usage's ``cached_prompt_tokens``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import Field

from switchyard_common.status import FieldViolation, invalid_argument
from switchyard_modelserver.backends import llamacpp_grammar
from switchyard_modelserver.backends.base import Backend, BackendOptions, StateReporter
from switchyard_modelserver.backends.gguf_files import ModelsFolder, model_size, read_metadata
from switchyard_modelserver.backends.llamacpp_decode import DecodeJob, decode
from switchyard_modelserver.backends.llamacpp_lora import (
    AdapterSet,
    free_adapter,
    load_adapter,
)
from switchyard_modelserver.domain import (
    AdapterInfo,
    BackendEvent,
    Capability,
    EngineLoad,
    GenerationRequest,
    ModelCard,
    ModelState,
    PromptCounted,
)
from switchyard_modelserver.models.adapters import AdapterCatalog, gguf_file
from switchyard_modelserver.models.residency import ModelResidency, ResidencyLimits
from switchyard_modelserver.serving.bridge import EngineThreadBridge
from switchyard_modelserver.serving.limits import tokenize_within_context
from switchyard_modelserver.tools import chat_template, prompting
from switchyard_modelserver.tools.hermes import tool_call_events

if TYPE_CHECKING:
    from llama_cpp import Llama

    from switchyard_modelserver.backends.prompt_cache import PromptStateCache

log = logging.getLogger(__name__)

# llama.cpp's own sampling defaults, used where a request leaves a field unset.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40


class LlamaCppModelOptions(BackendOptions):
    """Overrides for one GGUF file."""

    file: str = Field(description="file name inside models_dir")
    id: str | None = Field(default=None, description="model id (default: file name without .gguf)")
    aliases: list[str] = Field(default_factory=list)
    context_length: int | None = Field(default=None, ge=16)


class LlamaCppOptions(BackendOptions):
    """Options of the llamacpp backend."""

    models_dir: Path
    models: list[LlamaCppModelOptions] = Field(default_factory=list)
    context_length: int = Field(default=4096, ge=16, description="per model, capped by training")
    threads: int | None = Field(default=None, ge=1, description="CPU threads per model")
    batch_size: int = Field(default=512, ge=1)
    default_max_tokens: int = Field(default=512, ge=1)
    prompt_chunk_tokens: int = Field(
        default=128,
        ge=1,
        description="prompt tokens per forward pass; cancellation is "
        "checked between passes, so this bounds how long a cancelled prompt keeps the model",
    )
    prompt_cache_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="memory per model for prompt states beyond the live one, so that "
        "conversations that interleave each skip the prefix they already computed; 0: off",
    )
    max_loaded_models: int | None = Field(
        default=None, ge=1, description="models in memory at once; set: models load on demand"
    )
    memory_budget_bytes: int | None = Field(
        default=None,
        ge=1,
        description="memory the loaded models may take (file + KV cache each); set: models "
        "load on demand",
    )
    load_wait_seconds: float = Field(
        default=30.0,
        gt=0,
        description="how long a request waits for its model to load (or for room in the "
        "budget) before UNAVAILABLE MODEL_LOADING / RESOURCE_EXHAUSTED",
    )
    watch_models_dir: bool = Field(
        default=True, description="serve files added, drain files removed, swap files replaced"
    )
    watch_interval_seconds: float = Field(default=2.0, gt=0)
    adapters_dir: Path | None = Field(
        default=None, description="LoRA adapters: <adapters_dir>/<model id>/<adapter>.gguf"
    )


@dataclass(eq=False)
class _LoadedModel:
    """One loaded copy of a model (a replaced file has two for a while)."""

    card: ModelCard
    llama: Llama
    executor: concurrent.futures.ThreadPoolExecutor
    add_bos: bool
    chat_template: str | None
    prompt_cache: PromptStateCache | None = None
    """Earlier prompts' states (``prompt_cache_bytes``); None: off."""
    adapters: AdapterSet = field(default_factory=AdapterSet)
    """Touched only on the worker thread."""
    users: int = 0
    """Generations and token counts running on this copy."""
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while nothing runs on this copy: it may be freed."""

    def __post_init__(self) -> None:
        self.idle.set()

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Keeps the copy from being freed (a replaced file's old copy waits) for the block."""
        self._take()
        try:
            yield
        finally:
            self._give_back()

    async def off_loop(
        self, pool: concurrent.futures.Executor, work: Callable[..., _R], *args: Any
    ) -> _R:
        """``work(*args)`` run on ``pool`` (tokenizing: not the worker thread). The copy
        stays in use until it has run, even when the caller leaves meanwhile (a
        thread cannot be stopped; one that had not started never runs)."""
        loop = asyncio.get_running_loop()
        self._take()
        job = pool.submit(work, *args)

        def ran(_: concurrent.futures.Future[_R]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing to free
                loop.call_soon_threadsafe(self._give_back)

        job.add_done_callback(ran)
        return await asyncio.wrap_future(job)  # cancelling it drops a job not started

    def _take(self) -> None:
        self.users += 1
        self.idle.clear()

    def _give_back(self) -> None:
        self.users -= 1
        if not self.users:
            self.idle.set()


@dataclass
class _ModelFile:
    path: Path
    override: LlamaCppModelOptions
    card: ModelCard


class LlamaCppBackend(Backend):
    """Serves GGUF models with llama-cpp-python."""

    kind = "llamacpp"
    options_model = LlamaCppOptions
    formats_chats = True

    def __init__(self, options: LlamaCppOptions) -> None:
        self._options = options
        self._overrides = {m.file: m for m in options.models}
        self._folder = ModelsFolder(options.models_dir)
        self._files = self._discover(options)
        self._limits = ResidencyLimits(
            max_loaded_models=options.max_loaded_models,
            memory_budget_bytes=options.memory_budget_bytes,
            load_wait_seconds=options.load_wait_seconds,
        )
        self._residency = ModelResidency[_LoadedModel](
            self._limits, _CopyLoader(self), self._on_state
        )
        self._adapters = AdapterCatalog(self._adapters_folder, gguf_file)
        self._report: StateReporter | None = None
        self._starting = not self._limits.bounded  # eager: every model loads at start
        self._copies: set[_LoadedModel] = set()
        self._live: set[EngineThreadBridge] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # referenced until done
        # Tokenizing (prompts, counts, grammar checks) off the event loop, apart from
        # the loop's default threads, which load models and scan the folder: requests
        # can keep these busy without delaying a load or a swap.
        self._tokenizers = concurrent.futures.ThreadPoolExecutor(
            max(2, os.cpu_count() or 1), thread_name_prefix="llama-tokenize"
        )
        for model_id in sorted(self._files):  # known from the start; reported from load()
            self._residency.add(model_id, self._files[model_id].card.memory_bytes)

    # -- the models folder ------------------------------------------------------

    def _discover(self, options: LlamaCppOptions) -> dict[str, _ModelFile]:
        directory = options.models_dir
        if not directory.is_dir():
            raise ValueError(f"backend.models_dir: {directory} is not a directory")
        files: dict[str, _ModelFile] = {}
        for path in self._folder.prime():
            found = self._model_file(path)
            if found is None:
                continue
            if found.card.id in files:
                raise ValueError(
                    f"backend.models: {path.name} and {files[found.card.id].path.name} "
                    f"would both be model {found.card.id!r}"
                )
            files[found.card.id] = found
        missing = sorted(set(self._overrides) - {f.path.name for f in files.values()})
        if missing:
            raise ValueError(f"backend.models: no such file in {directory}: {', '.join(missing)}")
        if not files:
            raise ValueError(f"backend.models_dir: no .gguf models in {directory}")
        return files

    def _model_file(self, path: Path) -> _ModelFile | None:
        """The model a GGUF file is (None for a LoRA adapter put there by mistake).
        A file whose header cannot be read is still listed (its load will fail and
        say why)."""
        override = self._overrides.get(path.name, LlamaCppModelOptions(file=path.name))
        model_id = override.id or path.name.removesuffix(".gguf")
        wanted = override.context_length or self._options.context_length
        capabilities = {
            Capability.COMPLETION,
            Capability.STREAMING,
            Capability.JSON_OUTPUT,
            Capability.GRAMMAR_OUTPUT,
            Capability.COUNT_TOKENS,
        }
        if self._options.adapters_dir is not None:
            capabilities.add(Capability.ADAPTERS)
        try:
            metadata = read_metadata(path)
            size = model_size(path, wanted)
        except (OSError, ValueError) as error:
            log.warning("model %s: cannot read %s (%s)", model_id, path.name, error)
            card = ModelCard(model_id, wanted, tuple(override.aliases), frozenset(capabilities))
            return _ModelFile(path, override, card)
        if metadata.get("general.type") == "adapter":
            log.warning("%s is a LoRA adapter, not a model: put it in adapters_dir", path.name)
            return None
        if metadata.get("tokenizer.chat_template"):
            # Calls are held to their schemas by grammar: strict tools by construction.
            capabilities |= {Capability.CHAT, Capability.TOOLS, Capability.STRICT_TOOLS}
        card = ModelCard(
            id=model_id,
            aliases=tuple(override.aliases),
            context_length=size.context_length,
            capabilities=frozenset(capabilities),
            memory_bytes=size.total_bytes,
        )
        return _ModelFile(path, override, card)

    def _adapters_folder(self, model_id: str) -> Path | None:
        root = self._options.adapters_dir
        return None if root is None else root / model_id

    async def _watch(self) -> None:
        """Follows the models folder: new files are served, removed ones drain,
        replaced ones load beside the old copy and take over."""
        while True:
            await asyncio.sleep(self._options.watch_interval_seconds)
            try:
                await self._follow_changes()
            except Exception:  # the folder is scanned again next time
                log.exception("scanning %s failed", self._options.models_dir)

    async def _follow_changes(self) -> None:
        changes = await asyncio.to_thread(self._folder.changes)
        for path in changes.removed:
            gone = next((m for m in self._files.values() if m.path == path), None)
            if gone is not None:
                log.info("model %s: %s was removed; draining", gone.card.id, path.name)
                self._spawn(self._residency.remove(gone.card.id))
        for path in changes.added + changes.replaced:
            found = await asyncio.to_thread(self._model_file, path)
            if found is not None:
                self._serve_file(found, replaced=path in changes.replaced)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _serve_file(self, found: _ModelFile, replaced: bool) -> None:
        model_id = found.card.id
        known = self._files.get(model_id)
        if known is not None and known.path != found.path:
            log.error(
                "%s would be model %s, which %s already is; ignored",
                found.path.name,
                model_id,
                known.path.name,
            )
            return
        clash = next((m for m in self._files.values() if model_id in m.card.aliases), None)
        if clash is not None:
            log.error(
                "%s would be model %s, an alias of %s; ignored",
                found.path.name,
                model_id,
                clash.card.id,
            )
            return
        self._files[model_id] = found
        if replaced or known is not None:
            log.info("model %s: %s changed", model_id, found.path.name)
            self._residency.replace(model_id, found.card.memory_bytes)
        else:
            log.info("model %s: %s added", model_id, found.path.name)
            self._residency.add(model_id, found.card.memory_bytes)
            if not self._limits.bounded:  # without a budget every model is loaded
                self._spawn(self._preload(model_id))

    # -- states -----------------------------------------------------------------

    def _on_state(self, model_id: str, state: ModelState, detail: str) -> None:
        if state is ModelState.UNLOADED and self._starting:
            state = ModelState.LOADING  # eager start-up: about to load
        found = self._files.get(model_id)
        if state is ModelState.REMOVED:
            self._files.pop(model_id, None)
        if found is None or self._report is None:
            return
        loaded = self._residency.loaded(model_id)
        card = loaded.card if loaded is not None and state is ModelState.READY else found.card
        self._report(card, state, detail)

    @property
    def residency(self) -> ModelResidency[_LoadedModel]:
        return self._residency

    def models(self) -> list[ModelCard]:
        return [self._files[k].card for k in sorted(self._files)]

    async def load(self, report: StateReporter) -> None:
        self._report = report
        self._residency.report_all()
        if self._starting:
            for model_id in sorted(self._files):
                await self._preload(model_id)
            self._starting = False
        if self._options.watch_models_dir:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _preload(self, model_id: str) -> None:
        with contextlib.suppress(Exception):  # reported as UNAVAILABLE; the others serve
            await self._residency.load(model_id)

    # -- copies -----------------------------------------------------------------

    def _load_one(self, model_id: str, model_file: _ModelFile) -> _LoadedModel:
        from llama_cpp import Llama

        override = model_file.override
        wanted = override.context_length or self._options.context_length
        llama = Llama(
            model_path=str(model_file.path),
            # What the header says the model was trained for caps it (the file's
            # card has it): llama.cpp would allocate a KV cache for all of `wanted`,
            # which requests can never use and the memory budget does not count.
            n_ctx=min(wanted, model_file.card.context_length),
            n_batch=self._options.batch_size,
            n_threads=self._options.threads,
            n_threads_batch=self._options.threads,
            verbose=False,
        )
        trained = int(llama.metadata.get(f"{_architecture(llama)}.context_length", wanted))
        context_length = min(wanted, trained, llama.n_ctx())
        template = llama.metadata.get("tokenizer.chat_template")
        chat = {Capability.CHAT, Capability.TOOLS, Capability.STRICT_TOOLS}
        capabilities = set(model_file.card.capabilities) - chat
        if template:
            capabilities |= chat
        card = ModelCard(
            id=model_id,
            aliases=tuple(override.aliases),
            context_length=context_length,
            capabilities=frozenset(capabilities),
            memory_bytes=model_file.card.memory_bytes,
        )
        add_bos = llama.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false"
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"llama-{model_id}")
        prompt_cache = None
        if self._options.prompt_cache_bytes:
            from switchyard_modelserver.backends.prompt_cache import PromptStateCache

            prompt_cache = PromptStateCache(self._options.prompt_cache_bytes)
        log.info(
            "model %s loaded from %s (context %d)", model_id, model_file.path.name, context_length
        )
        return _LoadedModel(card, llama, executor, add_bos, template, prompt_cache=prompt_cache)

    async def _load_copy(self, model_id: str) -> _LoadedModel:
        copy = await asyncio.to_thread(self._load_one, model_id, self._files[model_id])
        self._copies.add(copy)
        return copy

    async def _free_copy(self, copy: _LoadedModel) -> None:
        """Waits until nothing runs on the copy (generations, counts), then frees it."""
        await copy.idle.wait()
        # The worker may still be between tokens of a cancelled job: wait for it.
        await asyncio.to_thread(copy.executor.shutdown, wait=True, cancel_futures=True)
        copy.llama.close()
        self._copies.discard(copy)

    # -- adapters ---------------------------------------------------------------

    async def adapters(self, model_id: str) -> list[AdapterInfo]:
        copy = self._residency.loaded(model_id)
        loaded = set(copy.adapters.loaded) if copy is not None else set()
        names = await asyncio.to_thread(self._adapters.names, model_id)
        return [AdapterInfo(name, name in loaded) for name in sorted(set(names) | loaded)]

    def check_adapter(self, model_id: str, name: str) -> None:
        self._adapters.path(model_id, name)

    async def load_adapter(self, model_id: str, name: str, path: str) -> None:
        found = self._adapters.locate(model_id, name, path)
        async with self._residency.hold(model_id):
            copy = self._residency.current(model_id)
            await self._on_worker(copy, load_adapter, copy.llama, copy.adapters, name, found)
        self._adapters.register(model_id, name, found)  # once it loaded: requests may name it

    async def unload_adapter(self, model_id: str, name: str) -> None:
        self._adapters.path(model_id, name)  # NOT_FOUND for an adapter it never had
        copy = self._residency.loaded(model_id)
        if copy is not None:  # after the generation running there, if any
            with copy.in_use():  # not freed meanwhile (an unload or a swap waits)
                await self._on_worker(copy, free_adapter, copy.llama, copy.adapters, name)

    async def _on_worker(self, copy: _LoadedModel, work: Any, *args: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(copy.executor, work, *args)

    # -- generation -------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[BackendEvent, None]:
        model = self._residency.current(request.model)  # the server holds it for us
        sampling = request.sampling
        if sampling.logprobs is not None:
            raise invalid_argument(
                FieldViolation("sampling.logprobs", "not supported by the llamacpp backend")
            )
        adapter_path = (
            self._adapters.path(request.model, request.adapter) if request.adapter else None
        )
        with model.in_use():
            async for event in self._generate_on(model, request, adapter_path):
                yield event

    async def _generate_on(
        self, model: _LoadedModel, request: GenerationRequest, adapter_path: Path | None
    ) -> AsyncGenerator[BackendEvent, None]:
        sampling = request.sampling
        pool = self._tokenizers
        tokens = await tokenize_within_context(
            request,
            tokenize_prompt=lambda: model.off_loop(pool, self._prompt_tokens, model, request),
            tokenize_text=lambda text: model.off_loop(pool, _text_tokens, model.llama, text),
            vocabulary_size=model.llama.n_vocab(),
            context_length=model.card.context_length,
            default_max_tokens=self._options.default_max_tokens,
        )
        constraint = llamacpp_grammar.constraint_for(request)
        if constraint is not None:
            await model.off_loop(
                pool, llamacpp_grammar.check_parses, model.llama._model.vocab, constraint, request
            )
        job = DecodeJob(
            prompt_chunk_tokens=self._options.prompt_chunk_tokens,
            prompt_tokens=tokens.prompt_tokens,
            continuation_tokens=tokens.continuation_tokens,
            delivered_text=request.continuation.text,
            include_token_ids=request.include_token_ids,
            max_tokens=tokens.max_tokens,
            temperature=_or(sampling.temperature, DEFAULT_TEMPERATURE),
            top_p=_or(sampling.top_p, DEFAULT_TOP_P),
            top_k=_or(sampling.top_k, DEFAULT_TOP_K),
            # Without a seed every request samples differently, as users expect.
            seed=(sampling.seed if sampling.seed is not None else random.getrandbits(32))
            & 0xFFFFFFFF,
            presence_penalty=_or(sampling.presence_penalty, 0.0),
            frequency_penalty=_or(sampling.frequency_penalty, 0.0),
            repetition_penalty=_or(sampling.repetition_penalty, 1.0),
            stop=sampling.stop,
            constraint=constraint,
            adapter=request.adapter,
            adapter_path=adapter_path,
            adapters=model.adapters,
        )
        yield PromptCounted(len(tokens.prompt_tokens))
        bridge = EngineThreadBridge()
        self._live.add(bridge)
        asyncio.get_running_loop().run_in_executor(
            model.executor, decode, model.llama, model.prompt_cache, job, bridge
        )
        events: AsyncIterator[BackendEvent] = bridge.events()
        if request.calls_tools:
            events = tool_call_events(events)
        try:
            async for event in events:
                yield event
        finally:
            # Consumer gone (finished, cancelled or timed out): the worker stops
            # before its next token and the model is free for the next request.
            bridge.cancelled.set()
            self._live.discard(bridge)

    def engine_load(self) -> EngineLoad:
        """The context in use of a model copy in use now (llama.cpp's KV cache is
        its context: one sequence per model), 0 while none is."""
        usage = 0.0
        for model in self._copies:
            if model.users:
                usage = max(usage, model.llama.n_tokens / model.llama.n_ctx())
        return EngineLoad(kv_cache_usage=usage)

    async def count_tokens(self, request: GenerationRequest) -> int:
        model = self._residency.current(request.model)  # the server holds it for us
        # The copy is in use while the tokenizer runs: a swap frees the old copy
        # after the count, not during it.
        return len(await model.off_loop(self._tokenizers, self._prompt_tokens, model, request))

    @staticmethod
    def _prompt_tokens(model: _LoadedModel, request: GenerationRequest) -> list[int]:
        llama = model.llama
        if request.messages is None:
            assert request.prompt is not None
            return list(
                llama.tokenize(request.prompt.encode(), add_bos=model.add_bos, special=False)
            )
        source = request.chat_template or model.chat_template
        if source is None:
            raise invalid_argument(
                FieldViolation(
                    "messages", f"model {request.model} has no chat template; send a prompt"
                )
            )
        template = chat_template.compiled(source)
        eos_text = _token_text(llama, llama.token_eos())
        bos_text = _token_text(llama, llama.token_bos())
        try:
            text = prompting.rendered(
                lambda messages, tools: template.render(
                    messages, tools=tools, eos_token=eos_text, bos_token=bos_text
                ),
                request.messages,
                request.tools,
                template_knows_tools=template.knows_tools,
                offer_tools=request.calls_tools,
            )
        except chat_template.TemplateRefusedError as error:
            # Templates reject what they cannot format (e.g. roles that do not alternate).
            raise invalid_argument(
                FieldViolation("messages", f"{request.model}'s chat template refused them: {error}")
            ) from None
        add_bos = model.add_bos and not (bos_text and text.startswith(bos_text))
        return list(llama.tokenize(text.encode(), add_bos=add_bos, special=True))

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for task in self._background:
            task.cancel()
        # Stop generations still running (the drain's grace period is over),
        # then wait for the workers off the event loop.
        for bridge in self._live:
            bridge.cancelled.set()
        await asyncio.to_thread(self._tokenizers.shutdown, wait=True, cancel_futures=True)
        for copy in list(self._copies):
            await asyncio.to_thread(copy.executor.shutdown, wait=True, cancel_futures=True)
            copy.llama.close()
        self._copies.clear()


class _CopyLoader:
    """The residency's side of the backend: load a copy, free a copy."""

    def __init__(self, backend: LlamaCppBackend) -> None:
        self._backend = backend

    async def load(self, model_id: str) -> _LoadedModel:
        return await self._backend._load_copy(model_id)

    async def free(self, model_id: str, copy: _LoadedModel) -> None:
        await self._backend._free_copy(copy)


def _text_tokens(llama: Llama, text: str) -> list[int]:
    """Tokens of text the model produced (a continuation): no BOS, no special tokens."""
    return list(llama.tokenize(text.encode(), add_bos=False, special=False))


_T = TypeVar("_T")
_R = TypeVar("_R")


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _architecture(llama: Llama) -> str:
    return str(llama.metadata.get("general.architecture", "llama"))


def _token_text(llama: Llama, token: int) -> str:
    if token < 0:
        return ""
    return llama._model.token_get_text(token)
