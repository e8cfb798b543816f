"""The `switchyard bench` command: arguments, the run, and what it prints and writes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from switchyard.bench import prompts as prompt_sets
from switchyard.bench.load import BenchError, LoadConfig, run_load
from switchyard.bench.progress import stderr_if_tty
from switchyard.bench.report import document, html_report, table
from switchyard.bench.stats import TargetResult
from switchyard.connection import Connection

_T = TypeVar("_T")
# The client's own CPU use above which its numbers may understate the server.
CLIENT_BUSY = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench subcommand's options."""
    parser.add_argument(
        "--target",
        dest="bench_target",
        metavar="HOST:PORT",
        help="router or model server to load (default: the global --target)",
    )
    parser.add_argument("--model", required=True, help="model (or route) name to request")
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="closed loop: requests in flight at all times (default 1)",
    )
    load.add_argument(
        "--rate", type=float, metavar="R", help="open loop: requests started per second"
    )
    parser.add_argument(
        "--arrival",
        choices=("poisson", "uniform"),
        default="poisson",
        help="open loop: Poisson arrivals or evenly spaced ones (default %(default)s)",
    )
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, metavar="S", help="seconds to send for")
    bound.add_argument("--requests", type=int, metavar="K", help="requests to send (default 100)")
    parser.add_argument(
        "--prompts",
        default="short",
        metavar="SET|FILE",
        help="short, medium, long (built-in synthetic sets) or a JSONL file with one "
        '{"prompt": ...} or {"messages": [...]} per line (default %(default)s)',
    )
    parser.add_argument(
        "--max-tokens", type=int, default=128, metavar="T", help="per request (default %(default)s)"
    )
    parser.add_argument("--stream", action="store_true", help="StreamGenerate (measures TTFT)")
    parser.add_argument(
        "--timeout",
        dest="request_timeout",
        metavar="S",
        type=float,
        default=60.0,
        help="deadline per request in seconds (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the Poisson arrivals"
    )
    parser.add_argument("--compare", metavar="HOST:PORT", help="a second target, run interleaved")
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        default=6,
        help="with --compare: alternating rounds per target (default %(default)s)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        metavar="S",
        default=10.0,
        help="seconds to wait for each target to answer before giving up (default %(default)s)",
    )
    parser.add_argument("--json", dest="json_out", metavar="OUT", help="write the JSON results")
    parser.add_argument("--report", metavar="OUT.html", help="write an HTML report with charts")
    parser.add_argument(
        "--progress", action="store_true", help="progress line on stderr even when not a terminal"
    )


def _load_config(args: argparse.Namespace) -> LoadConfig:
    prompts = prompt_sets.load(args.prompts)
    return LoadConfig(
        model=args.model,
        prompts=prompts,
        concurrency=None if args.rate is not None else _or_default(args.concurrency, 1),
        rate=args.rate,
        arrival=args.arrival,
        duration=args.duration,
        requests=None if args.duration is not None else _or_default(args.requests, 100),
        max_tokens=args.max_tokens,
        stream=args.stream,
        timeout=args.request_timeout,
        seed=args.seed,
        rounds=args.rounds,
    )


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value


def _config_entry(config: LoadConfig, targets: list[str], prompts: str) -> dict[str, Any]:
    return {
        "targets": targets,
        "model": config.model,
        "mode": config.mode,
        "concurrency": config.concurrency,
        "rate": config.rate,
        "arrival": config.arrival if config.mode == "open" else None,
        "duration_s": config.duration,
        "requests": config.requests,
        "prompts": prompts,
        "prompt_count": len(config.prompts),
        "max_tokens": config.max_tokens,
        "stream": config.stream,
        "timeout_s": config.timeout,
        "seed": config.seed,
        "rounds": config.rounds if len(targets) > 1 else 1,
    }


def run_event_loop(coroutine: Coroutine[Any, Any, _T]) -> tuple[_T, str]:
    """Runs on uvloop when installed (less client CPU per request), unless
    SWITCHYARD_EVENT_LOOP=asyncio; returns the result and the loop's name."""
    if os.environ.get("SWITCHYARD_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coroutine), "uvloop"
    return asyncio.run(coroutine), "asyncio"


async def _interruptible(
    load: Callable[[asyncio.Event], Awaitable[list[TargetResult]]],
) -> tuple[list[TargetResult], bool]:
    """Runs ``load`` so that a first Ctrl-C (or SIGTERM) stops sending and still reports
    what was measured; a second Ctrl-C quits at once. Returns the results and whether
    the run was stopped early."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
            print(
                "\nstopping: no new requests; waiting for those in flight (Ctrl-C again to quit)",
                file=sys.stderr,
            )
            loop.remove_signal_handler(signal.SIGINT)  # the next one raises KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        return await load(stop), stop.is_set()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run(args: argparse.Namespace, default_target: str, connection: Connection | None = None) -> int:
    """Runs the benchmark the arguments describe over ``connection`` (TLS and API key,
    for every target; default: plaintext, no key); returns the exit status."""
    try:
        config = _load_config(args)
    except (prompt_sets.PromptFileError, ValueError) as error:
        print(f"switchyard bench: {error}", file=sys.stderr)
        return 2
    for option, path in (("--json", args.json_out), ("--report", args.report)):
        if path and not Path(path).resolve().parent.is_dir():
            print(f"switchyard bench: {option}: no directory for {path}", file=sys.stderr)
            return 2
    targets = [args.bench_target or default_target]
    if args.compare:
        targets.append(args.compare)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    cpu_before = time.process_time()
    progress = stderr_if_tty(args.progress)
    try:
        (results, interrupted), loop_name = run_event_loop(
            _interruptible(
                lambda stop: run_load(
                    targets, config, progress, args.connect_timeout, stop, connection
                )
            )
        )
    except BenchError as error:
        print(f"switchyard bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    # CPU of the whole command over the time spent loading: errs on the busy side.
    cpu, wall = time.process_time() - cpu_before, sum(r.wall_seconds for r in results)
    utilization = cpu / wall if wall > 0 else 0.0
    client = {"event_loop": loop_name, "cpu_seconds": cpu, "cpu_utilization": utilization}
    doc = document(
        _config_entry(config, targets, args.prompts),
        [r.summary() for r in results],
        client,
        started_at,
        interrupted,
    )
    text = table(doc)
    sys.stdout.write(text)
    if utilization > CLIENT_BUSY:
        print(
            f"warning: the benchmark client used {utilization:.0%} of a CPU core; "
            "it may be the bottleneck (run it on another machine or lower the load)",
            file=sys.stderr,
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    if args.report:
        Path(args.report).write_text(html_report(doc, text), encoding="utf-8")
    return 0 if _every_target_answered(results) else 1


def _every_target_answered(results: list[TargetResult]) -> bool:
    return all(any(r.ok for r in result.records) for result in results)
