"""Tool calls read out of a vLLM generation by one of vLLM's own tool parsers.

vLLM ships a parser per model family (``hermes``, ``llama3_json``,
``mistral``, ``pythonic``...: ``--tool-call-parser`` in ``vllm serve``); the
backend's ``tool_parser`` option names one. Its streaming extraction turns
each text delta into content and tool-call pieces (name first, then argument
fragments, with OpenAI's indexes), which become the contract's
``ToolCallDelta``. Generate and StreamGenerate both read the stream, so a
stream reassembled equals the unary answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from switchyard_modelserver.domain import (
    BackendEvent,
    Delta,
    Finish,
    FinishReason,
    GenerationRequest,
    ToolCallDelta,
)
from switchyard_modelserver.tools.prompting import function_definitions


def parser_request(request: GenerationRequest, model: str) -> Any:
    """The OpenAI-shaped request vLLM's parsers read (the tools and the tool choice)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest(
        model=model,
        messages=[{"role": "user", "content": ""}],
        tools=function_definitions(request.tools),
        tool_choice="auto",
    )


async def tool_call_events(
    events: AsyncIterator[BackendEvent], parser: Any, openai_request: Any
) -> AsyncGenerator[BackendEvent, None]:
    """``events`` with their text run through ``parser``'s streaming extraction."""
    text = ""
    token_ids: list[int] = []
    called = False
    async for event in events:
        if isinstance(event, Delta):
            previous, previous_ids = text, list(token_ids)
            text += event.text
            token_ids += event.token_ids
            message = parser.extract_tool_calls_streaming(
                previous_text=previous,
                current_text=text,
                delta_text=event.text,
                previous_token_ids=previous_ids,
                current_token_ids=token_ids,
                delta_token_ids=event.token_ids,
                request=openai_request,
            )
            pieces = _pieces(message)
            called = called or bool(pieces)
            content = (message.content or "") if message is not None else ""
            yield dataclasses.replace(event, text=content, tool_calls=pieces)
        elif isinstance(event, Finish):
            rest = parser.get_remaining_unstreamed_args() if called else ""
            if rest:
                index = len(parser.prev_tool_call_arr) - 1
                yield Delta("", 0, tool_calls=[ToolCallDelta(index, arguments=rest)])
            if called and event.reason is FinishReason.STOP:
                event = dataclasses.replace(event, reason=FinishReason.TOOL_CALLS)
            yield event
        else:
            yield event


def _pieces(message: Any) -> list[ToolCallDelta]:
    if message is None:
        return []
    pieces = []
    for call in message.tool_calls or ():
        function = call.function
        if isinstance(function, dict):
            name, arguments = function.get("name") or "", function.get("arguments") or ""
        elif function is not None:
            name, arguments = function.name or "", function.arguments or ""
        else:
            name, arguments = "", ""
        pieces.append(ToolCallDelta(call.index, id=call.id or "", name=name, arguments=arguments))
    return pieces
