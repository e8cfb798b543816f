"""The floor for a Python hop: a bare grpc.aio relay of Generate bytes, nothing else.

Started by router_overhead.py so the router's cost can be read against what
grpcio itself costs on the same machine in the same run.

    python benchmarks/bare_grpc_proxy.py LISTEN UPSTREAM
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
import grpc.aio
import uvloop


async def serve(listen: str, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    generate = channel.unary_unary("/switchyard.v1.LLMService/Generate", None, None)

    async def relay(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        response: bytes = await generate(request, timeout=context.time_remaining())
        return response

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "switchyard.v1.LLMService",
                {"Generate": grpc.unary_unary_rpc_method_handler(relay)},
            ),
        )
    )
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1], sys.argv[2]))
