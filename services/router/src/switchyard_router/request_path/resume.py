"""Resume: what a stream on a ``resume: true`` route keeps so that another endpoint
can continue it after its model server failed mid-stream.

The router asks the model server for token ids (whether the caller wants them or
not), records the text and ids of every message it relays (the only place that
parses responses), and hands the next endpoint a ``continuation``. Token ids are
sent only to the model that produced them; another model continues from the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.status import FieldViolation, invalid_argument
from switchyard_router.load_balancing.picker import EndpointView, Pick

WANT_TOKEN_IDS = pb.StreamGenerateRequest(include_token_ids=True).SerializeToString()
"""Appended to a request's bytes: protobuf merges it, so the model server sends token ids."""


@dataclass
class ResumeState:
    """What a resume needs: the text and token ids delivered so far."""

    client_wants_token_ids: bool
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    source: tuple[str, str] | None = None
    """(cluster, model) that produced the token ids; other targets get text only."""
    resumes: int = 0
    finished: bool = False
    calls_tools: bool = False
    """Tool calls were relayed: a continuation (text and token ids) cannot carry them, so
    the stream is not resumed (it ends with a clean error instead)."""

    @classmethod
    def for_request(cls, request: bytes) -> ResumeState:
        """The state for a StreamGenerateRequest's bytes; INVALID_ARGUMENT if they are
        not one (only resume parses the request)."""
        try:
            wants_ids = pb.StreamGenerateRequest.FromString(request).include_token_ids
        except DecodeError as error:
            raise invalid_argument(
                FieldViolation("request", f"not a valid request: {error}")
            ) from None
        return cls(client_wants_token_ids=wants_ids)

    def continuation(self, pick: Pick[EndpointView]) -> bytes:
        """Bytes to append to the request for ``pick``'s attempt (empty before any text)."""
        if not self.text and not self.token_ids:
            return b""
        same_model = self.source == (pick.cluster, pick.model)
        continuation = pb.Continuation(
            text="".join(self.text), token_ids=self.token_ids if same_model else ()
        )
        return pb.StreamGenerateRequest(continuation=continuation).SerializeToString()

    def relay(self, message: bytes, pick: Pick[EndpointView]) -> bytes:
        """Records a message's text and token ids; returns what the client gets."""
        parsed = pb.StreamGenerateResponse.FromString(message)
        if self.source != (pick.cluster, pick.model):
            # Token ids of another model mean nothing here; start counting afresh.
            self.source = (pick.cluster, pick.model)
            self.token_ids = []
        self.text.append(parsed.text)
        self.token_ids.extend(token.id for token in parsed.tokens)
        self.finished = self.finished or bool(parsed.finish_reason)
        self.calls_tools = self.calls_tools or len(parsed.tool_calls) > 0
        changed = False
        if parsed.tokens and not self.client_wants_token_ids:
            parsed.ClearField("tokens")
            changed = True
        if parsed.finish_reason and self.resumes:
            parsed.resumes = self.resumes
            changed = True
        return parsed.SerializeToString() if changed else message
