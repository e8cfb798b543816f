"""The serving path: one generation call from protobuf in to protobuf out.

The servicer (``servicer``) and what it calls in order: request parsing and input
limits (``request_parsing``, ``tool_request``, ``limits``), what a model cannot do
(``capability_check``), the admission queue (``admission``), the status boundary
(``status_boundary``), requests in flight for drains (``in_flight``), and the
streaming helpers backends and the servicer share: engine thread to asyncio
(``bridge``), stop sequences (``stops``), delta coalescing (``coalescing``).
"""
