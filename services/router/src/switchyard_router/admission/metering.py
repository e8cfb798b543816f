"""Metering a stream: the tokens it relays, kept paid for from the key's budget.

A key with a token rate or a budget is charged what its answers use. For a stream
the router counts tokens as it relays them: it asks the model server for token ids
(one ``tokens`` entry per generated token, read from the bytes, and cut out again
when the caller did not ask for them); a backend without token ids (the cloud
APIs) is counted from its text, about four bytes a token, until the last message's
usage says exactly. A stream cut off early is charged what it delivered.

With a budget, a stream runs on its reservation; when a message would take it past
it, the meter asks the fleet state for more; when the budget has no more, the
stream ends with RESOURCE_EXHAUSTED before that message, so the caller gets only
tokens already paid for.
"""

from __future__ import annotations

from switchyard_router import metrics
from switchyard_router.fleet import FleetState, Ticket
from switchyard_router.fleet.state import budget_exhausted
from switchyard_router.request_path import wire

_BYTES_PER_TOKEN = 4  # the usual estimate for text without token ids


class TokenMeter:
    """Counts one stream's tokens across its attempts and enforces its budget."""

    __slots__ = ("_step", "delivered", "fleet", "model", "strip_tokens", "ticket")

    def __init__(
        self, fleet: FleetState, ticket: Ticket, model: str, strip_tokens: bool, step: int
    ) -> None:
        self.fleet = fleet
        self.ticket = ticket
        self.model = model
        self.strip_tokens = strip_tokens
        """The router asked for token ids the caller did not: cut them out."""
        self.delivered = 0
        """Tokens relayed to the caller so far."""
        self._step = step

    async def pass_message(self, message: bytes) -> bytes:
        """The message to relay, once its tokens are paid for; raises RESOURCE_EXHAUSTED
        (BUDGET_EXHAUSTED) when the budget cannot pay for them."""
        tokens, text_bytes = wire.read_stream_tokens(message)
        if not tokens and text_bytes:
            tokens = -(-text_bytes // _BYTES_PER_TOKEN)
        if tokens:
            total = self.delivered + tokens
            ticket = self.ticket
            if ticket.periods and total > ticket.granted:
                await self.fleet.extend(ticket, max(total - ticket.granted, self._step))
                if total > ticket.granted:
                    metrics.BUDGET_CUTOFFS.labels(self.model).inc()
                    spent = ticket.spent or ticket.periods[0]
                    raise budget_exhausted(spent, 0, cut=True)
            self.delivered = total
        return wire.without_tokens(message) if self.strip_tokens else message
