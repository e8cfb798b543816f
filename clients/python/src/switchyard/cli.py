"""`switchyard`: the command line for a Switchyard router or model server.

switchyard models
switchyard models loaded                               # models in memory (see `models --help`)
switchyard generate smollm2-135m-instruct "The capital of France is" --max-tokens 16
switchyard chat smollm2-135m-instruct "Say hello"      # one turn
switchyard chat smollm2-135m-instruct                  # interactive, keeps history
switchyard chat smollm2-135m-instruct "Weather in Paris?" --tools tools.json --tool-choice required
switchyard generate smollm2-135m-instruct "A city:" --schema city.schema.json
switchyard count smollm2-135m-instruct "Which city is the capital of France?" --chat
switchyard bench --model smollm2-135m-instruct --concurrency 4 --requests 100 --stream
switchyard --target router:443 models --tls-ca ca.crt --api-key-file key   # a secured router
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from switchyard import bench, connection, model_admin_cli
from switchyard._convert import GenerationOptions
from switchyard.client import DEFAULT_TARGET, Client
from switchyard.connection import Connection, ConnectionOptionsError
from switchyard.errors import APIError, from_rpc_error
from switchyard.response_format import Grammar, JsonSchema, Regex
from switchyard.types import Message, StreamChunk, join_tool_calls


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchyard", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target",
        default=os.environ.get("SWITCHYARD_TARGET", DEFAULT_TARGET),
        help="router or model server address (env SWITCHYARD_TARGET; default %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    connection.add_arguments(parser)
    # Each subcommand takes the connection options too, after its name.
    subcommand = argparse.ArgumentParser(add_help=False)
    connection.add_arguments(subcommand, suppress_defaults=True)
    # ... and so do the address and the timeout (bench has its own --target and --timeout).
    calling = argparse.ArgumentParser(add_help=False, parents=[subcommand])
    calling.add_argument("--target", default=argparse.SUPPRESS, help="as before the command")
    calling.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="as above")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser(
        "models",
        help="list models and their status; load and unload models and adapters",
        parents=[calling],
    )
    model_admin_cli.add_arguments(models, [calling])
    commands.add_parser(
        "endpoints",
        help="the router's model servers: health, ejections, load (router only)",
        parents=[calling],
    )

    generate = commands.add_parser(
        "generate", help="complete a prompt, streaming the answer", parents=[calling]
    )
    generate.add_argument("model")
    generate.add_argument("prompt")
    _sampling_arguments(generate)

    chat = commands.add_parser(
        "chat", help="chat with a model (interactive without MESSAGE)", parents=[calling]
    )
    chat.add_argument("model")
    chat.add_argument("message", nargs="?", help="one user message; omit for an interactive chat")
    chat.add_argument("--system", help="a system prompt")
    _sampling_arguments(chat)
    _tool_arguments(chat)

    count = commands.add_parser(
        "count",
        help="count the tokens a prompt (or, with --chat, a user message) takes",
        parents=[calling],
    )
    count.add_argument("model")
    count.add_argument("text")
    count.add_argument("--chat", action="store_true", help="count TEXT as a user message")
    count.add_argument("--system", help="a system prompt (with --chat)")
    count.add_argument("--tools", type=Path, help="a JSON file with the tools (with --chat)")

    bench_command = commands.add_parser(
        "bench",
        help="load a server and measure latency, TTFT and throughput",
        description="Closed-loop (--concurrency) or open-loop (--rate) load over gRPC; "
        "prints a table, optionally writes JSON and an HTML report.",
        parents=[subcommand],
    )
    bench.command.add_arguments(bench_command)
    return parser


def _sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", help="a stop sequence (repeatable)")
    parser.add_argument("--adapter", help="a LoRA adapter of the model (see `switchyard models`)")
    parser.add_argument("--usage", action="store_true", help="print token usage and timings")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="answer with a JSON object")
    shape.add_argument("--schema", help="answer JSON matching this JSON Schema (a file or JSON)")
    shape.add_argument("--regex", help="answer text matching this regular expression")
    shape.add_argument("--grammar", help="answer text this GBNF grammar accepts (a file or text)")


def _tool_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tools",
        type=Path,
        help="a JSON file with a list of tools ({name, description, parameters, strict} "
        "or OpenAI's function shape); calls are printed as JSON lines",
    )
    parser.add_argument(
        "--tool-choice", help="auto (default with --tools), none, required, or a tool name"
    )
    parser.add_argument(
        "--one-tool-call", action="store_true", help="at most one tool call (no parallel calls)"
    )


def _file_or_text(value: str) -> str:
    """An option's value, or the contents of the file it names."""
    path = Path(value)
    return path.read_text() if path.is_file() else value


def _sampling(args: argparse.Namespace) -> GenerationOptions:
    options: GenerationOptions = {}
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "adapter"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.json:
        options["response_format"] = "json_object"
    elif args.schema:
        options["response_format"] = JsonSchema(json.loads(_file_or_text(args.schema)))
    elif args.regex:
        options["response_format"] = Regex(args.regex)
    elif args.grammar:
        options["response_format"] = Grammar(_file_or_text(args.grammar))
    if getattr(args, "tools", None) is not None:
        options["tools"] = _tools(args.tools)
    if getattr(args, "tool_choice", None):
        options["tool_choice"] = args.tool_choice
    if getattr(args, "one_tool_call", False):
        options["parallel_tool_calls"] = False
    return options


def _tools(path: Path) -> list[Any]:
    tools = json.loads(path.read_text())
    if not isinstance(tools, list):
        raise ValueError(f"{path}: expected a JSON list of tools")
    return tools


def _print_stream(chunks: Iterator[StreamChunk], show_usage: bool) -> str:
    text = []
    pieces = []
    last: StreamChunk | None = None
    for chunk in chunks:
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        text.append(chunk.text)
        pieces += chunk.tool_calls
        last = chunk
    sys.stdout.write("\n")
    for call in join_tool_calls(pieces):  # one JSON line per call, for scripts
        print(json.dumps({"id": call.id, "name": call.name, "arguments": call.arguments}))
    if show_usage and last is not None and last.usage is not None and last.timings is not None:
        print(
            f"[{last.model} via {last.backend}: finish={last.finish_reason}, "
            f"prompt_tokens={last.usage.prompt_tokens}, "
            f"completion_tokens={last.usage.completion_tokens}, "
            f"ttft={last.timings.time_to_first_token * 1000:.1f} ms, "
            f"total={last.timings.total * 1000:.1f} ms]",
            file=sys.stderr,
        )
    return "".join(text)


def _models(client: Client) -> None:
    models = client.list_models()
    if not models:
        print("no models")
        return
    print(f"{'MODEL':32} {'STATUS':12} {'BACKEND':10} {'CONTEXT':>8} {'REPLICAS':>9}  ALIASES")
    for m in models:
        replicas = f"{m.healthy_replicas}/{m.total_replicas}"
        adapters = ", ".join(a.name + ("*" if a.loaded else "") for a in m.adapters)
        print(
            f"{m.id:32} {m.status:12} {m.backend:10} {m.context_length:>8} {replicas:>9}"
            f"  {', '.join(m.aliases)}" + (f"  adapters: {adapters}" if adapters else "")
        )


def _endpoints(target: str, timeout: float, connect: Connection) -> None:
    import grpc

    from switchyard.v1 import router_admin_pb2 as admin_pb
    from switchyard.v1 import router_admin_pb2_grpc as admin_grpc

    with connect.channel(target) as channel:
        try:
            response = admin_grpc.RouterAdminServiceStub(channel).ListEndpoints(
                admin_pb.ListEndpointsRequest(), timeout=timeout, metadata=connect.metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
    header = f"{'CLUSTER':14} {'ENDPOINT':22} {'STATE':12} {'INFLIGHT':>8} {'CONNS':>5}"
    print(f"{header} {'FAILS':>5}  MODELS / EJECTION")
    for e in response.endpoints:
        state = admin_pb.EndpointState.Name(e.state).removeprefix("ENDPOINT_STATE_").lower()
        models = ", ".join(
            f"{m.model}={admin_pb.ServingState.Name(m.state).removeprefix('SERVING_STATE_').lower()}"
            for m in e.models
        )
        line = f"{e.cluster:14} {e.address:22} {state:12} {e.outstanding_requests:>8} "
        line += f"{e.connections:>5} {e.consecutive_failures:>5}  {models}"
        if e.ejection_reason:
            left = e.ejected_for.seconds + e.ejected_for.nanos / 1e9
            line += f"  [ejected {e.ejections}x, {left:.1f}s left: {e.ejection_reason}]"
        print(line)
    for c in response.clusters:
        if c.ejected_endpoints or c.ejections_overflow:
            print(
                f"cluster {c.cluster}: {c.ejected_endpoints} of {c.endpoints} ejected, at most "
                f"{c.max_ejected_endpoints} (max_ejection_percent {c.max_ejection_percent:g}); "
                f"{c.ejections_overflow} ejections refused by the cap"
            )
    first = {
        p.route: min(q.priority for q in response.priorities if q.route == p.route)
        for p in response.priorities
    }
    for p in response.priorities:
        if p.panic:
            print(
                f"route {p.route} priority {p.priority}: PANIC, {p.healthy_endpoints} of "
                f"{p.endpoints} healthy (< {p.healthy_panic_threshold:g}%): its "
                f"{p.priority_load}% of requests spread over its connected endpoints, "
                "ejected ones included"
            )
        elif p.priority_load != (100 if p.priority == first[p.route] else 0):
            print(  # a priority short of health: the next ones take what it lacks
                f"route {p.route} priority {p.priority}: {p.healthy_endpoints} of "
                f"{p.endpoints} healthy (health {p.health}%): takes {p.priority_load}% "
                "of requests"
            )


def _count(client: Client, args: argparse.Namespace) -> None:
    if args.chat:
        messages = [Message("system", args.system)] if args.system else []
        messages.append(Message("user", args.text))
        tools = _tools(args.tools) if args.tools is not None else None
        counted = client.count_tokens(args.model, messages=messages, tools=tools)
    else:
        counted = client.count_tokens(args.model, args.text)
    print(
        f"{counted.prompt_tokens} tokens ({counted.model} via {counted.backend}; "
        f"context {counted.context_length}, {counted.remaining} left)"
    )


def _chat(client: Client, args: argparse.Namespace) -> None:
    history: list[Message] = []
    if args.system:
        history.append(Message("system", args.system))
    if args.message is not None:
        history.append(Message("user", args.message))
        _print_stream(client.stream(args.model, messages=history, **_sampling(args)), args.usage)
        return
    print(f"chatting with {args.model}; an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        history.append(Message("user", line))
        answer = _print_stream(
            client.stream(args.model, messages=history, **_sampling(args)), args.usage
        )
        history.append(Message("assistant", answer))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        connect = connection.from_args(args)
    except ConnectionOptionsError as error:
        print(f"switchyard: {error}", file=sys.stderr)
        return 2
    if args.command == "bench":
        return bench.command.run(args, args.target, connect)
    with Client(
        args.target,
        timeout=args.timeout,
        api_key=connect.api_key,
        credentials=connect.credentials,
    ) as client:
        try:
            if args.command == "models" and args.action is not None:
                model_admin_cli.run(args, args.target, args.timeout, connect)
            elif args.command == "models":
                _models(client)
            elif args.command == "endpoints":
                _endpoints(args.target, args.timeout, connect)
            elif args.command == "generate":
                stream = client.stream(args.model, args.prompt, **_sampling(args))
                _print_stream(stream, args.usage)
            elif args.command == "count":
                _count(client, args)
            else:
                _chat(client, args)
        except APIError as error:
            print(f"\nerror: {error}", file=sys.stderr)
            return 1
        except (OSError, ValueError) as error:  # a --tools / --schema file that cannot be read
            print(f"switchyard: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
