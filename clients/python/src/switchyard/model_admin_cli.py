"""`switchyard models load / unload / loaded / load-adapter / unload-adapter`.

ModelAdminService calls, against a model server (no ``--endpoint``) or through a
router (``--endpoint host:port`` names the model server; see ``switchyard
endpoints``; the router's API key needs its admin permission)::

    switchyard models loaded
    switchyard --target router:50051 models load qwen --endpoint 10.0.0.7:50061
    switchyard models unload qwen --endpoint 10.0.0.7:50061
    switchyard models load-adapter qwen sql-expert --path /adapters/qwen/sql-expert
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import grpc

from switchyard.connection import Connection
from switchyard.errors import from_rpc_error
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import model_admin_pb2 as admin_pb
from switchyard.v1 import model_admin_pb2_grpc as admin_grpc

ACTIONS = ("load", "unload", "loaded", "load-adapter", "unload-adapter")


def add_arguments(
    models: argparse.ArgumentParser, parents: Sequence[argparse.ArgumentParser]
) -> None:
    """The actions under `switchyard models` (none: list the models)."""
    actions = models.add_subparsers(dest="action", metavar="{" + ",".join(ACTIONS) + "}")
    endpoint_help = "through a router: the model server (host:port) to act on"
    load = actions.add_parser("load", help="load a model now", parents=list(parents))
    load.add_argument("model")
    load.add_argument("--endpoint", default="", help=endpoint_help)
    unload = actions.add_parser(
        "unload", help="free a model once its requests finish", parents=list(parents)
    )
    unload.add_argument("model")
    unload.add_argument("--endpoint", default="", help=endpoint_help)
    loaded = actions.add_parser(
        "loaded", help="models in memory and the memory budget", parents=list(parents)
    )
    loaded.add_argument("--endpoint", default="", help="through a router: only this one")
    load_adapter = actions.add_parser(
        "load-adapter", help="make a LoRA adapter available and load it", parents=list(parents)
    )
    load_adapter.add_argument("model")
    load_adapter.add_argument("adapter")
    load_adapter.add_argument(
        "--path", default="", help="its file or folder on the model server (default: by name)"
    )
    load_adapter.add_argument("--endpoint", default="", help=endpoint_help)
    unload_adapter = actions.add_parser(
        "unload-adapter", help="free a LoRA adapter", parents=list(parents)
    )
    unload_adapter.add_argument("model")
    unload_adapter.add_argument("adapter")
    unload_adapter.add_argument("--endpoint", default="", help=endpoint_help)


def run(args: argparse.Namespace, target: str, timeout: float, connect: Connection) -> None:
    """Runs one action and prints its result (raises the SDK's APIError on failure)."""
    with connect.channel(target) as channel:
        stub = admin_grpc.ModelAdminServiceStub(channel)
        metadata = connect.metadata
        try:
            if args.action == "loaded":
                listed = stub.ListLoaded(
                    admin_pb.ListLoadedRequest(endpoint=args.endpoint),
                    timeout=timeout,
                    metadata=metadata,
                )
                _print_loaded(listed)
                return
            if args.action == "load":
                request = admin_pb.LoadModelRequest(model=args.model, endpoint=args.endpoint)
                model = stub.LoadModel(request, timeout=timeout, metadata=metadata).model
            elif args.action == "unload":
                request_ = admin_pb.UnloadModelRequest(model=args.model, endpoint=args.endpoint)
                model = stub.UnloadModel(request_, timeout=timeout, metadata=metadata).model
            elif args.action == "load-adapter":
                model = stub.LoadAdapter(
                    admin_pb.LoadAdapterRequest(
                        model=args.model,
                        adapter=args.adapter,
                        path=args.path,
                        endpoint=args.endpoint,
                    ),
                    timeout=timeout,
                    metadata=metadata,
                ).model
            else:
                model = stub.UnloadAdapter(
                    admin_pb.UnloadAdapterRequest(
                        model=args.model, adapter=args.adapter, endpoint=args.endpoint
                    ),
                    timeout=timeout,
                    metadata=metadata,
                ).model
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
    _print_models([model])


def _status(value: int) -> str:
    return str(pb.ModelStatus.Name(value)).removeprefix("MODEL_STATUS_").lower()


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


def _print_models(models: Sequence[admin_pb.LoadedModel]) -> None:
    header = f"{'ENDPOINT':22} {'MODEL':28} {'STATUS':10} {'MEMORY':>11} {'INFLIGHT':>8}"
    print(f"{header} {'IDLE':>8}  ADAPTERS")
    for m in models:
        idle = m.idle_for.seconds + m.idle_for.nanos / 1e9
        print(
            f"{m.endpoint or '-':22} {m.model:28} {_status(m.status):10} "
            f"{_mib(m.memory_bytes):>11} {m.requests_in_flight:>8} {idle:>7.1f}s  "
            f"{', '.join(m.adapters)}" + (f"  [{m.detail}]" if m.detail else "")
        )


def _print_loaded(listed: admin_pb.ListLoadedResponse) -> None:
    _print_models(listed.models)
    for budget in listed.budgets:
        limits = []
        if budget.max_loaded_models:
            limits.append(f"{budget.loaded_models}/{budget.max_loaded_models} models")
        if budget.budget_bytes:
            limits.append(f"{_mib(budget.used_bytes)} of {_mib(budget.budget_bytes)}")
        described = ", ".join(limits) or f"{_mib(budget.used_bytes)}, no limit"
        print(f"budget {budget.endpoint or 'here'}: {described}")
    for unreachable in listed.unreachable_endpoints:
        print(f"unreachable: {unreachable}")
