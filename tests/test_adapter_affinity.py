"""The router sends a request naming a LoRA adapter to a replica that already holds
it: the picker's preference (unit tests on the router's own Endpoint objects) and
two real llama.cpp replicas behind a real router."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import start_modelserver, start_router
from processes import ServerProcess
from tinylora import only_words, write_tiny_lora

from switchyard import Client
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import model_admin_pb2 as admin_pb
from switchyard.v1 import model_admin_pb2_grpc as admin_grpc
from switchyard_router.config import ClusterConfig
from switchyard_router.load_balancing.picker import Picker, RequestView, Target
from switchyard_router.request_path import wire
from switchyard_router.upstream.endpoints import Endpoint

Make = Callable[..., Endpoint]


@pytest.fixture
async def endpoint() -> AsyncIterator[Make]:
    made: list[Endpoint] = []

    def make(
        address: str, adapters: frozenset[str] = frozenset(), serving: bool = True
    ) -> Endpoint:
        made.append(Endpoint("test", address, ClusterConfig(endpoints=[address]), 1 << 20))
        made[-1].set_model_health("m", serving)
        made[-1].adapters = {"m": adapters}
        return made[-1]

    yield make
    for e in made:
        await e.channel.close(grace=None)


def _picker(*endpoints: Endpoint, policy: str = "least_outstanding") -> Picker[Endpoint]:
    target = Target("pool", "m", 0, 1, {e.address: e for e in endpoints})
    return Picker([target], policy)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["least_outstanding", "round_robin"])
async def test_the_picker_prefers_an_endpoint_that_holds_the_adapter(
    endpoint: Make, policy: str
) -> None:
    cold = [endpoint(f"10.0.0.{i}:1") for i in range(1, 4)]
    warm = endpoint("10.0.0.9:1", frozenset({"paris"}))
    warm.outstanding = 5  # busier than the others: the adapter still wins
    picker = _picker(*cold, warm, policy=policy)
    view = RequestView("m", adapter="paris")
    assert {picker.pick(view).endpoint for _ in range(20)} == {warm}  # type: ignore[union-attr]
    plain = {picker.pick(RequestView("m")).endpoint for _ in range(40)}  # type: ignore[union-attr]
    assert len(plain) > 1  # without an adapter: the policy alone spreads them


async def test_without_an_eligible_holder_any_endpoint_takes_the_adapter(endpoint: Make) -> None:
    warm = endpoint("10.0.0.9:1", frozenset({"paris"}), serving=False)
    cold = endpoint("10.0.0.1:1")
    picker = _picker(cold, warm)
    view = RequestView("m", adapter="paris")
    assert picker.pick(view).endpoint is cold  # type: ignore[union-attr]
    warm.set_model_health("m", True)
    assert picker.pick(view).endpoint is warm  # type: ignore[union-attr]
    assert picker.pick(view, exclude={warm}).endpoint is cold  # type: ignore[union-attr]


def test_the_adapter_is_read_from_the_request_bytes_in_the_same_scan_as_the_model() -> None:
    request = pb.GenerateRequest(model="tiny", prompt="x" * 1000, adapter="paris")
    assert wire.read_model_and_adapter(request.SerializeToString()) == ("tiny", "paris")
    plain = pb.StreamGenerateRequest(model="tiny", prompt="hello")
    assert wire.read_model_and_adapter(plain.SerializeToString()) == ("tiny", "")


@pytest.fixture(scope="module")
def replicas(workdir: Path, models_dir: Path) -> Iterator[list[ServerProcess]]:
    """Two llama.cpp replicas of `tiny`, each with the `paris` adapter on disk."""
    servers = []
    for index in range(2):
        models = workdir / f"affinity-models-{index}"
        adapters = workdir / f"affinity-adapters-{index}"
        models.mkdir()
        (adapters / "tiny").mkdir(parents=True)
        (models / "tiny.gguf").symlink_to(models_dir / "tiny.gguf")
        write_tiny_lora(adapters / "tiny" / "paris.gguf")
        servers.append(
            start_modelserver(
                workdir,
                f"affinity-replica-{index}",
                {
                    "backend": {
                        "kind": "llamacpp",
                        "models_dir": str(models),
                        "adapters_dir": str(adapters),
                        "threads": 1,
                        "context_length": 512,
                        "watch_models_dir": False,
                    }
                },
            )
        )
    yield servers
    for server in servers:
        server.stop()


def _holds(server: ServerProcess) -> bool:
    with Client(server.address) as client:
        [tiny] = client.list_models()
        return any(a.name == "paris" and a.loaded for a in tiny.adapters)


def _unload_adapter(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        admin_grpc.ModelAdminServiceStub(channel).UnloadAdapter(
            admin_pb.UnloadAdapterRequest(model="tiny", adapter="paris"), timeout=30
        )


def _router(
    workdir: Path, name: str, replicas: list[ServerProcess], refresh: float
) -> ServerProcess:
    return start_router(
        workdir,
        name,
        {
            "clusters": {
                "cpu": {
                    "endpoints": [r.address for r in replicas],
                    "adapter_refresh_seconds": refresh,
                }
            },
            "routes": [{"model": "tiny", "targets": [{"cluster": "cpu"}]}],
        },
    )


def test_requests_for_an_adapter_stay_on_the_replica_that_loaded_it(
    workdir: Path, replicas: list[ServerProcess]
) -> None:
    """The first request loads the adapter on one replica; the router notes it, and
    the next ones go there too: the other replica never loads it."""
    for replica in replicas:
        _unload_adapter(replica)
    router = _router(workdir, "affinity-router", replicas, refresh=0)
    try:
        with Client(router.address) as client:
            for _ in range(12):
                text = client.generate("tiny", "the capital of", max_tokens=4, adapter="paris").text
                assert only_words(text)
        assert sorted(_holds(r) for r in replicas) == [False, True]
    finally:
        router.stop()


def test_the_router_learns_which_replica_holds_an_adapter_from_its_list_models(
    workdir: Path, replicas: list[ServerProcess]
) -> None:
    """An operator loaded the adapter on the second replica: once the router has read
    that replica's ListModels, requests for the adapter go there, never to the first."""
    for replica in replicas:
        _unload_adapter(replica)
    with grpc.insecure_channel(replicas[1].address) as channel:
        admin_grpc.ModelAdminServiceStub(channel).LoadAdapter(
            admin_pb.LoadAdapterRequest(model="tiny", adapter="paris"), timeout=30
        )
    router = _router(workdir, "affinity-router-refresh", replicas, refresh=0.2)
    try:
        deadline = time.monotonic() + 30
        heard = f"{replicas[1].address} (cpu): adapters loaded: tiny: paris"
        while heard not in router.log():
            assert time.monotonic() < deadline, router.log()
            time.sleep(0.05)
        with Client(router.address) as client:
            for _ in range(12):
                client.generate("tiny", "the capital of", max_tokens=4, adapter="paris")
        assert [_holds(r) for r in replicas] == [False, True]
    finally:
        router.stop()
