"""What does the idle-connection sweep cost? The router's once-a-second pass over
every endpoint of a cluster (``Cluster.close_idle_connections``), which takes out
of each pool the connections a burst opened once they carried no call for
``connection_pool.idle_timeout_seconds``.

Measured in-process on the router's own Cluster and Endpoint objects (1,000
endpoints at unreachable addresses: no connection is made, which a sweep does not
need), in two states: each endpoint with its first connection alone (a steady
load: the common case), and each with ``max_connections`` (8) connections that
carry calls (in a burst: every connection is looked at, none closed). Prints ms
per sweep (median of rounds) and that as a share of the second between sweeps,
the share of one core the sweep takes.

    .venv/bin/python benchmarks/idle_sweep_cost.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from switchyard_router.config import ClusterConfig
from switchyard_router.upstream.endpoints import Cluster

SWEEP_INTERVAL_MS = 1000.0  # the router's _IDLE_SWEEP_SECONDS


async def _sweep_ms(cluster: Cluster, sweeps: int) -> float:
    """ms per sweep over ``sweeps`` sweeps."""
    started = time.perf_counter_ns()
    for _ in range(sweeps):
        await cluster.close_idle_connections(time.monotonic())
    return (time.perf_counter_ns() - started) / sweeps / 1e6


async def run(smoke: bool) -> None:
    endpoints, rounds, sweeps = (50, 2, 5) if smoke else (1000, 15, 50)
    addresses = [f"10.9.{index // 250}.{index % 250}:50061" for index in range(endpoints)]
    config = ClusterConfig.model_validate(
        {"endpoints": addresses, "connection_pool": {"max_concurrent_streams": 1}}
    )
    cluster = Cluster("bench", config, 1 << 20)
    await cluster.refresh(0)
    print(f"idle sweep cost, {endpoints:,} endpoints (median of {rounds} rounds of {sweeps})")
    print("| connections per endpoint | ms per sweep | share of one core |")
    print("|---|---|---|")
    steady = [await _sweep_ms(cluster, sweeps) for _ in range(rounds)]
    pools = [endpoint.pool for endpoint in cluster.endpoints.values()]
    for pool in pools:  # a burst: every pool at max_connections, each carrying a call
        while len(pool.connections) < config.connection_pool.max_connections:
            pool.acquire()
    burst = [await _sweep_ms(cluster, sweeps) for _ in range(rounds)]
    for label, samples in (("1 (steady)", steady), ("8 (a burst)", burst)):
        median = statistics.median(samples)
        print(f"| {label} | {median:.3f} | {median / SWEEP_INTERVAL_MS:.4%} |")
    await cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few sweeps: checks it runs")
    asyncio.run(run(parser.parse_args().smoke))


if __name__ == "__main__":
    main()
