"""The domain's limits on a generation, checked on domain types (no protobuf).

- :func:`max_tokens_ceiling`: a model's configured max_tokens ceiling (the
  servicer applies it once the model is resolved).
- :func:`tokenize_within_context`: what a backend that tokenizes itself
  (llamacpp, vllm) does before generating: the prompt's and the continuation's
  tokens, checked against the model's context, and how many tokens the
  generation may produce.

Checks of the request's shape (fields, characters, counts) happen earlier, in
``request_parsing``; these need the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from switchyard_common.status import FieldViolation, StatusError, invalid_argument
from switchyard_modelserver.domain import GenerationRequest

MAX_LOGPROBS = 20
"""The most alternatives per token a request may ask for (``sampling.logprobs``)."""


def max_tokens_ceiling(request: GenerationRequest, ceiling: int | None) -> GenerationRequest:
    """Applies a model's max_tokens ceiling: INVALID_ARGUMENT above it; unset becomes it."""
    if ceiling is None:
        return request
    asked = request.sampling.max_tokens
    if asked is None:
        sampling = dataclasses.replace(request.sampling, max_tokens=ceiling)
        return dataclasses.replace(request, sampling=sampling)
    if asked > ceiling:
        raise invalid_argument(
            FieldViolation(
                "sampling.max_tokens",
                f"at most {ceiling} for model {request.model!r} (got {asked})",
            )
        )
    return request


@dataclass(frozen=True)
class TokenizedRequest:
    """A request's tokens, known to fit the model's context."""

    prompt_tokens: list[int]
    continuation_tokens: list[int]
    """The output already delivered elsewhere, which this generation continues."""
    max_tokens: int
    """How many tokens the whole generation may produce, the continuation's included."""


async def tokenize_within_context(
    request: GenerationRequest,
    *,
    tokenize_prompt: Callable[[], Awaitable[list[int]]],
    tokenize_text: Callable[[str], Awaitable[list[int]]],
    vocabulary_size: int,
    context_length: int,
    default_max_tokens: int,
) -> TokenizedRequest:
    """Tokenizes the prompt (``tokenize_prompt``: text or chat template) and the
    continuation (its token ids, checked against the vocabulary, else its text
    through ``tokenize_text``), then checks that they fit ``context_length``.

    A request without max_tokens may produce ``default_max_tokens``, or what is
    left of the context if that is less. Raises INVALID_ARGUMENT naming the field.
    """
    prompt_tokens = await tokenize_prompt()
    continuation_tokens = await _continuation_tokens(request, tokenize_text, vocabulary_size)
    max_tokens = request.sampling.max_tokens
    overflow = _context_overflow(
        prompt_field="prompt" if request.prompt is not None else "messages",
        prompt_tokens=len(prompt_tokens),
        max_tokens=max_tokens,
        context_length=context_length,
        continuation_tokens=len(continuation_tokens),
    )
    if overflow is not None:
        raise overflow
    return TokenizedRequest(
        prompt_tokens=prompt_tokens,
        continuation_tokens=continuation_tokens,
        max_tokens=max_tokens or min(default_max_tokens, context_length - len(prompt_tokens)),
    )


async def _continuation_tokens(
    request: GenerationRequest,
    tokenize_text: Callable[[str], Awaitable[list[int]]],
    vocabulary_size: int,
) -> list[int]:
    continuation = request.continuation
    if continuation.token_ids:
        if any(t >= vocabulary_size for t in continuation.token_ids):
            raise invalid_argument(
                FieldViolation("continuation.token_ids", f"not ids of {request.model}'s vocabulary")
            )
        return list(continuation.token_ids)
    if continuation.text:
        return await tokenize_text(continuation.text)
    return []


def _context_overflow(
    *,
    prompt_field: str,
    prompt_tokens: int,
    max_tokens: int | None,
    context_length: int,
    continuation_tokens: int = 0,
) -> StatusError | None:
    """INVALID_ARGUMENT when the prompt, prompt plus max_tokens, or prompt plus the
    continuation being resumed does not fit the context."""
    if prompt_tokens >= context_length:
        return invalid_argument(
            FieldViolation(
                prompt_field,
                f"is {prompt_tokens} tokens; the model's context length is {context_length}",
            )
        )
    if max_tokens is not None and prompt_tokens + max_tokens > context_length:
        return invalid_argument(
            FieldViolation(
                "sampling.max_tokens",
                f"{max_tokens} plus the prompt's {prompt_tokens} tokens exceeds the context "
                f"length {context_length}; at most {context_length - prompt_tokens}",
            )
        )
    if prompt_tokens + continuation_tokens >= context_length:
        return invalid_argument(
            FieldViolation("continuation", "prompt and continuation fill the context")
        )
    return None
