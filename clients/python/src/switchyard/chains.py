"""Chains: a template, a model and a named output; steps whose outputs feed later steps.

from switchyard import AsyncClient, LLMChain, SequentialChain

async with AsyncClient("localhost:50051") as client:
    outline = LLMChain(client, "smollm2-135m-instruct", "Outline a talk on {topic}.",
                       output_key="outline")
    talk = LLMChain(client, "smollm2-135m-instruct", "Write the talk:\\n{outline}",
                    output_key="talk")
    chain = SequentialChain([outline, talk])
    values = await chain.ainvoke(topic="gRPC")      # {"topic": ..., "outline": ..., "talk": ...}
    async for chunk in chain.astream(topic="gRPC"):  # earlier steps run whole, the last streams
        print(chunk.text, end="")

Async first: ``ainvoke`` / ``astream`` run a chain built on an
:class:`~switchyard.AsyncClient`; ``invoke`` / ``stream`` are the same steps for
a chain built on a blocking :class:`~switchyard.Client`. Every variable a chain
needs is checked before its first call, so a missing one costs no tokens.
Each step's call reports its own usage event through the client's ``on_usage``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Unpack

from switchyard._convert import SamplingOptions
from switchyard.client import AsyncClient, AsyncStream, Client, Stream
from switchyard.errors import MissingVariablesError, TemplateError
from switchyard.templates import ChatPromptTemplate, PromptTemplate
from switchyard.types import Completion, Message, StreamChunk

Template = PromptTemplate | ChatPromptTemplate
Values = dict[str, object]


class Chain:
    """What every chain offers: its steps, the variables it needs, and how to run it."""

    steps: tuple[LLMChain, ...]

    @property
    def input_variables(self) -> tuple[str, ...]:
        """Variables the caller must give (those no earlier step produces)."""
        produced: set[str] = set()
        needed: list[str] = []
        for step in self.steps:
            needed += [v for v in step.prompt.variables if v not in produced and v not in needed]
            produced.add(step.output_key)
        return tuple(needed)

    @property
    def output_keys(self) -> tuple[str, ...]:
        """The names the steps store their answers under, in order."""
        return tuple(step.output_key for step in self.steps)

    def _start(self, values: Mapping[str, object] | None, keywords: Mapping[str, object]) -> Values:
        state: Values = {**(values or {}), **keywords}
        missing = [name for name in self.input_variables if name not in state]
        if missing:
            raise MissingVariablesError(missing, self.input_variables, repr(self))
        return state

    async def ainvoke(
        self, values: Mapping[str, object] | None = None, /, **kwargs: object
    ) -> Values:
        """Runs every step in order; returns the inputs and every step's output.

        Raises:
            MissingVariablesError: before any call, naming what is missing.
            APIError: a step's call failed (later steps do not run).
        """
        state = self._start(values, kwargs)
        for step in self.steps:
            state[step.output_key] = (await step.acomplete(state)).text
        return state

    def invoke(self, values: Mapping[str, object] | None = None, /, **kwargs: object) -> Values:
        """The blocking twin of :meth:`ainvoke`, for chains built on a :class:`Client`."""
        state = self._start(values, kwargs)
        for step in self.steps:
            state[step.output_key] = step.complete(state).text
        return state

    def astream(
        self, values: Mapping[str, object] | None = None, /, **kwargs: object
    ) -> AsyncIterator[StreamChunk]:
        """Runs all steps but the last whole, then streams the last one's chunks.

        Missing variables raise here, before any call. Leaving the iteration
        early cancels the last step's request.
        """
        state = self._start(values, kwargs)
        return self._astream(state)

    async def _astream(self, state: Values) -> AsyncIterator[StreamChunk]:
        *earlier, last = self.steps
        for step in earlier:
            state[step.output_key] = (await step.acomplete(state)).text
        async with last.astream_step(state) as stream:
            async for chunk in stream:
                yield chunk

    def stream(
        self, values: Mapping[str, object] | None = None, /, **kwargs: object
    ) -> Iterator[StreamChunk]:
        """The blocking twin of :meth:`astream`, for chains built on a :class:`Client`."""
        state = self._start(values, kwargs)
        return self._stream(state)

    def _stream(self, state: Values) -> Iterator[StreamChunk]:
        *earlier, last = self.steps
        for step in earlier:
            state[step.output_key] = step.complete(state).text
        with last.stream_step(state) as stream:
            yield from stream


class LLMChain(Chain):
    """One step: fill a template, call a model, store the answer under ``output_key``.

    Args:
        client: a :class:`~switchyard.AsyncClient` (for ``ainvoke`` / ``astream``)
            or a :class:`~switchyard.Client` (for ``invoke`` / ``stream``).
        model: the model (or route) to call.
        prompt: a :class:`PromptTemplate` (a completion), a
            :class:`ChatPromptTemplate` (a chat), or a template string.
        output_key: the name the answer is stored under.
        timeout: per-call deadline (default: the client's).
        **sampling: sampling options for every call (``max_tokens``, ``temperature``...).
    """

    def __init__(
        self,
        client: Client | AsyncClient,
        model: str,
        prompt: Template | str,
        *,
        output_key: str = "text",
        timeout: float | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> None:
        if not output_key.isidentifier():
            raise TemplateError(f"output_key must be a plain name (got {output_key!r})")
        self.client = client
        self.model = model
        self.prompt: Template = PromptTemplate(prompt) if isinstance(prompt, str) else prompt
        self.output_key = output_key
        self.timeout = timeout
        self.sampling = sampling
        self.steps = (self,)

    def __repr__(self) -> str:
        return (
            f"LLMChain(model={self.model!r}, prompt={self.prompt!r},"
            f" output_key={self.output_key!r})"
        )

    def _async_client(self) -> AsyncClient:
        if not isinstance(self.client, AsyncClient):
            raise TypeError(f"{self!r} has a blocking Client: use invoke() / stream()")
        return self.client

    def _sync_client(self) -> Client:
        if not isinstance(self.client, Client):
            raise TypeError(f"{self!r} has an AsyncClient: use ainvoke() / astream()")
        return self.client

    async def acomplete(self, values: Mapping[str, object]) -> Completion:
        """Calls the model once with the template filled from ``values``."""
        client = self._async_client()
        if isinstance(self.prompt, ChatPromptTemplate):
            messages = self.prompt.format_messages(values)
            return await client.chat(self.model, messages, timeout=self.timeout, **self.sampling)
        prompt = self.prompt.format(values)
        return await client.generate(self.model, prompt, timeout=self.timeout, **self.sampling)

    def complete(self, values: Mapping[str, object]) -> Completion:
        """The blocking twin of :meth:`acomplete`."""
        client = self._sync_client()
        if isinstance(self.prompt, ChatPromptTemplate):
            messages = self.prompt.format_messages(values)
            return client.chat(self.model, messages, timeout=self.timeout, **self.sampling)
        prompt = self.prompt.format(values)
        return client.generate(self.model, prompt, timeout=self.timeout, **self.sampling)

    def astream_step(self, values: Mapping[str, object]) -> AsyncStream:
        """Streams one call with the template filled from ``values``."""
        prompt, messages = self._filled(values)
        return self._async_client().stream(
            self.model, prompt, messages=messages, timeout=self.timeout, **self.sampling
        )

    def stream_step(self, values: Mapping[str, object]) -> Stream:
        """The blocking twin of :meth:`astream_step`."""
        prompt, messages = self._filled(values)
        return self._sync_client().stream(
            self.model, prompt, messages=messages, timeout=self.timeout, **self.sampling
        )

    def _filled(self, values: Mapping[str, object]) -> tuple[str | None, list[Message] | None]:
        """(prompt, None) or (None, messages): the template filled from ``values``."""
        if isinstance(self.prompt, ChatPromptTemplate):
            return None, self.prompt.format_messages(values)
        return self.prompt.format(values), None


class SequentialChain(Chain):
    """Chains run in order; each step's output is a variable for the steps after it.

    Raises:
        TemplateError: no steps, or two steps with the same ``output_key``.
    """

    def __init__(self, chains: Sequence[Chain]) -> None:
        steps = tuple(step for chain in chains for step in chain.steps)
        if not steps:
            raise TemplateError("SequentialChain needs at least one chain")
        seen: set[str] = set()
        for step in steps:
            if step.output_key in seen:
                raise TemplateError(
                    f"SequentialChain: two steps store their answer as {step.output_key!r};"
                    " give each LLMChain its own output_key"
                )
            seen.add(step.output_key)
        self.steps = steps

    def __repr__(self) -> str:
        return f"SequentialChain(steps={list(self.output_keys)!r})"
