"""Many models per llama.cpp server within a memory budget: load on first request,
unload the least recently used idle model, never one with requests in flight.

Real model servers over real GGUF files (tests/tinymodel.py); what a test observes
is what an operator would: ListModels states, health, ModelAdminService, answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from conftest import start_modelserver, start_router
from fleet import endpoint_view
from processes import ServerProcess, free_port, health_status, wait_until
from scrape import scrape, value
from tinymodel import TinyModelSpec, write_tiny_model

from switchyard import (
    Client,
    FailedPreconditionError,
    FinishReason,
    RateLimitError,
    UnavailableError,
)
from switchyard.cli import main
from switchyard.status import parse_details
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import model_admin_pb2 as admin_pb
from switchyard.v1 import model_admin_pb2_grpc as admin_grpc
from switchyard.v1 import router_admin_pb2 as router_admin_pb

MODELS = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def three_models(workdir: Path) -> Path:
    """Three small models (different weights) and one slow one, in their own folder."""
    directory = workdir / "three-models"
    directory.mkdir()
    for seed, name in enumerate(MODELS):
        write_tiny_model(directory / f"{name}.gguf", TinyModelSpec(seed=seed))
    return directory


def _budget_server(workdir: Path, models_dir: Path, name: str, **options: object) -> ServerProcess:
    backend = {
        "kind": "llamacpp",
        "models_dir": str(models_dir),
        "threads": 1,
        "context_length": 512,
        "watch_models_dir": False,
        **options,
    }
    return start_modelserver(workdir, name, {"max_queue_per_model": 64, "backend": backend})


@pytest.fixture(scope="module")
def two_of_three(workdir: Path, three_models: Path) -> Iterator[ServerProcess]:
    server = _budget_server(workdir, three_models, "budget-two", max_loaded_models=2)
    yield server
    server.stop()


def _states(client: Client) -> dict[str, str]:
    return {m.id: m.status for m in client.list_models()}


def _admin(address: str) -> tuple[grpc.Channel, admin_grpc.ModelAdminServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, admin_grpc.ModelAdminServiceStub(channel)


def test_models_load_on_their_first_request_and_the_least_recently_used_idle_one_makes_room(
    two_of_three: ServerProcess,
) -> None:
    with Client(two_of_three.address, max_retries=0) as client:
        client.generate("alpha", "warm", max_tokens=1)  # the module's servers share state:
        for model in MODELS:  # start from a known order: all unloaded
            _unload(two_of_three.address, model)
        assert _states(client) == dict.fromkeys(MODELS, "unloaded")
        client.generate("alpha", "hello", max_tokens=2)
        client.generate("beta", "hello", max_tokens=2)
        assert _states(client) == {"alpha": "ready", "beta": "ready", "gamma": "unloaded"}
        client.generate("alpha", "hello again", max_tokens=2)  # beta is now the least recent
        client.generate("gamma", "hello", max_tokens=2)
        assert _states(client) == {"alpha": "ready", "beta": "unloaded", "gamma": "ready"}
        client.generate("beta", "hello", max_tokens=2)  # alpha was used before gamma
        assert _states(client) == {"alpha": "unloaded", "beta": "ready", "gamma": "ready"}
    log = two_of_three.log()
    assert "model beta unloaded: least recently used, to make room for gamma" in log
    assert "model alpha unloaded: least recently used, to make room for beta" in log


def test_loads_and_unloads_show_in_the_metrics(workdir: Path, three_models: Path) -> None:
    port = free_port()
    backend = {
        "kind": "llamacpp",
        "models_dir": str(three_models),
        "threads": 1,
        "context_length": 512,
        "watch_models_dir": False,
        "max_loaded_models": 2,
    }
    server = start_modelserver(
        workdir, "budget-metrics", {"metrics_listen": f"127.0.0.1:{port}", "backend": backend}
    )
    try:
        with Client(server.address, max_retries=0) as client:
            for model in ("alpha", "beta", "gamma"):  # gamma makes alpha go
                client.generate(model, "hello", max_tokens=2)
        samples = scrape(port)
        loads = "switchyard_modelserver_model_loads_total"
        unloads = "switchyard_modelserver_model_unloads_total"
        assert [value(samples, loads, model=m) for m in MODELS] == [1, 1, 1]
        assert value(samples, unloads, model="alpha", reason="lru") == 1
        loaded = "switchyard_modelserver_model_loaded"
        assert [value(samples, loaded, model=m) for m in MODELS] == [0, 1, 1]
        ready = "switchyard_modelserver_model_ready"  # loaded or not, all of them serve
        assert [value(samples, ready, model=m) for m in MODELS] == [1, 1, 1]
    finally:
        server.stop()


def test_an_unloaded_model_stays_serving_in_health(two_of_three: ServerProcess) -> None:
    _unload(two_of_three.address, "gamma")
    with Client(two_of_three.address) as client:
        assert _states(client)["gamma"] == "unloaded"
        [gamma] = [m for m in client.list_models() if m.id == "gamma"]
        assert gamma.healthy_replicas == 1 and gamma.memory_bytes > 0
    # A router must keep sending gamma's requests here: it loads on demand.
    assert health_status(two_of_three.address, "gamma") == "SERVING"
    assert health_status(two_of_three.address) == "SERVING"


def test_a_model_with_a_request_in_flight_is_never_unloaded(
    workdir: Path, models_dir: Path
) -> None:
    """While a long stream runs on tiny-slow, loads of the others unload each other,
    never tiny-slow; the stream ends with every token it asked for."""
    directory = workdir / "inflight-models"
    directory.mkdir()
    for name in ("tiny-slow", "alpha", "beta"):
        source = "tiny-slow.gguf" if name == "tiny-slow" else "tiny.gguf"
        (directory / f"{name}.gguf").symlink_to(models_dir / source)
    server = _budget_server(workdir, directory, "budget-inflight", max_loaded_models=2)
    try:
        with Client(server.address, max_retries=0) as client:
            stream = client.stream("tiny-slow", "a long story", max_tokens=400, temperature=0)
            chunks = iter(stream)
            text = next(chunks).text  # tiny-slow is loaded and generating
            for model in ("alpha", "beta", "alpha", "beta"):
                assert client.generate(model, "hello", max_tokens=2).usage.completion_tokens == 2
                assert _states(client)["tiny-slow"] == "ready"
            last = None
            for chunk in chunks:
                text += chunk.text
                last = chunk
            assert last is not None and last.finish_reason == FinishReason.LENGTH
            assert last.usage is not None and last.usage.completion_tokens == 400
        assert "model tiny-slow unloaded" not in server.log()
    finally:
        server.stop()


def test_a_load_waits_for_a_busy_model_to_finish_rather_than_unloading_it(
    workdir: Path, models_dir: Path
) -> None:
    """Budget of one: a request for another model waits until the stream in flight
    ends (then takes its place) instead of taking the model from under it."""
    directory = workdir / "one-model-budget"
    directory.mkdir()
    (directory / "tiny-slow.gguf").symlink_to(models_dir / "tiny-slow.gguf")
    (directory / "tiny.gguf").symlink_to(models_dir / "tiny.gguf")
    server = _budget_server(workdir, directory, "budget-one", max_loaded_models=1)
    stream_ended = threading.Event()
    try:
        with Client(server.address, max_retries=0) as client:
            stream = client.stream("tiny-slow", "a long story", max_tokens=200, temperature=0)
            chunks = iter(stream)
            next(chunks)
            with ThreadPoolExecutor(1) as pool:

                def other() -> tuple[int, bool]:
                    answer = client.generate("tiny", "hello", max_tokens=3)
                    return answer.usage.completion_tokens, stream_ended.is_set()

                waiting = pool.submit(other)
                finish = None
                for chunk in chunks:
                    finish = chunk.finish_reason
                stream_ended.set()
                assert finish == FinishReason.LENGTH
                tokens, after_the_stream = waiting.result(timeout=60)
            assert tokens == 3 and after_the_stream
            assert _states(client) == {"tiny": "ready", "tiny-slow": "unloaded"}
    finally:
        server.stop()


def test_a_load_that_cannot_make_room_in_time_is_memory_budget_busy_with_retry_info(
    workdir: Path, models_dir: Path
) -> None:
    """Budget of one, held by a stream: past ``load_wait_seconds`` the other model's
    request is RESOURCE_EXHAUSTED ``MEMORY_BUDGET_BUSY`` with RetryInfo (a router goes
    elsewhere), naming the model that holds the budget; the stream is untouched."""
    directory = workdir / "busy-budget"
    directory.mkdir()
    (directory / "tiny-slow.gguf").symlink_to(models_dir / "tiny-slow.gguf")
    (directory / "tiny.gguf").symlink_to(models_dir / "tiny.gguf")
    server = _budget_server(
        workdir, directory, "budget-busy", max_loaded_models=1, load_wait_seconds=0.5
    )
    try:
        with (
            Client(server.address, max_retries=0) as client,
            # Held until this block leaves it: unread, the stream stays in flight.
            client.stream("tiny-slow", "a long story", max_tokens=400) as stream,
        ):
            next(iter(stream))
            with pytest.raises(RateLimitError) as refused:
                client.generate("tiny", "hello", max_tokens=3)
            assert _states(client)["tiny-slow"] == "ready"
        assert refused.value.reason == "MEMORY_BUDGET_BUSY"
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        assert "tiny-slow (1 requests)" in str(refused.value)
    finally:
        server.stop()


def test_no_request_fails_while_models_are_unloaded_and_loaded_under_load(
    workdir: Path, three_models: Path
) -> None:
    """Four clients cycle over three models with room for two (every few requests
    one model makes room for another) while an operator unloads and loads alpha
    in a loop: every request succeeds."""
    server = _budget_server(workdir, three_models, "budget-churn", max_loaded_models=2)
    stop = threading.Event()
    failures: list[str] = []
    served = [0]
    try:

        def client_loop(offset: int) -> None:
            with Client(server.address, max_retries=0, timeout=60) as client:
                index = offset
                while not stop.is_set():
                    model = MODELS[index % 3]
                    index += 1
                    try:
                        client.generate(model, "load", max_tokens=4)
                        served[0] += 1
                    except Exception as error:
                        failures.append(f"{model}: {error!r}")

        channel, admin = _admin(server.address)
        with channel, ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(client_loop, offset) for offset in range(4)]
            try:  # a failed call must stop the clients, or the pool waits for them forever
                # Each churn succeeds (what they leave, the clients change at once),
                # with requests served between every two, however slow the machine.
                for cycle in range(5):
                    wanted = 4 * (cycle + 1)
                    wait_until(
                        lambda: served[0] >= wanted or bool(failures),  # noqa: B023 - called now
                        f"{wanted} requests served",
                        timeout=120,
                    )
                    admin.UnloadModel(admin_pb.UnloadModelRequest(model="alpha"), timeout=60)
                    admin.LoadModel(admin_pb.LoadModelRequest(model="alpha"), timeout=60)
            finally:
                stop.set()
            for finished in clients:
                finished.result(timeout=120)
        assert not failures, failures[:5]
        assert served[0] >= 20
        log = server.log()
        assert log.count("to make room for") >= 3  # the budget really churned
        # Each UnloadModel either unloaded alpha or found it unloaded already (the
        # clients' own loads may have made room by unloading it since the last LoadModel).
        assert log.count("model alpha unloaded: an operator asked") >= 1
    finally:
        stop.set()
        server.stop()


def test_a_budget_too_small_for_a_model_is_failed_precondition_saying_what_it_needs(
    workdir: Path, models_dir: Path
) -> None:
    directory = workdir / "small-budget"
    directory.mkdir()
    (directory / "tiny.gguf").symlink_to(models_dir / "tiny.gguf")
    (directory / "tiny-slow.gguf").symlink_to(models_dir / "tiny-slow.gguf")
    budget = 8 * 2**20  # tiny needs about 1 MiB at this context; tiny-slow about 30 MiB
    server = _budget_server(workdir, directory, "budget-small", memory_budget_bytes=budget)
    try:
        with Client(server.address, max_retries=0) as client:
            with pytest.raises(FailedPreconditionError) as caught:
                client.generate("tiny-slow", "hello", max_tokens=2)
            error = caught.value
            assert error.reason == "MODEL_TOO_LARGE"
            needed = int(error.details.metadata["needed_bytes"])
            assert needed > budget
            assert f"needs {needed} bytes" in str(error) and str(budget) in str(error)
            [slow] = [m for m in client.list_models() if m.id == "tiny-slow"]
            assert slow.status == "unavailable" and slow.memory_bytes == needed
            assert client.generate("tiny", "hello", max_tokens=2).usage.completion_tokens == 2
        assert health_status(server.address, "tiny-slow") == "NOT_SERVING"
        assert health_status(server.address, "tiny") == "SERVING"
    finally:
        server.stop()


def test_a_request_waits_for_its_model_up_to_load_wait_seconds_then_retry_info(
    workdir: Path, models_dir: Path
) -> None:
    """With a bound shorter than any load, the first request is UNAVAILABLE
    MODEL_LOADING with RetryInfo; the load goes on, and the model then serves."""
    directory = workdir / "impatient"
    directory.mkdir()
    (directory / "tiny-slow.gguf").symlink_to(models_dir / "tiny-slow.gguf")
    server = _budget_server(
        workdir, directory, "budget-impatient", max_loaded_models=1, load_wait_seconds=0.001
    )
    try:
        with Client(server.address, max_retries=0) as client:
            with pytest.raises(UnavailableError) as caught:
                client.generate("tiny-slow", "hello", max_tokens=2)
            assert caught.value.reason == "MODEL_LOADING"
            assert caught.value.retry_after is not None
            _wait_state(client, "tiny-slow", "ready")
            assert client.generate("tiny-slow", "hi", max_tokens=2).usage.completion_tokens == 2
    finally:
        server.stop()


def _resident_mib(server: ServerProcess) -> float:
    with open(f"/proc/{server.process.pid}/status") as status:
        [line] = [line for line in status if line.startswith("VmRSS:")]
    return int(line.split()[1]) / 1024


def test_a_model_takes_the_memory_the_budget_counts_for_it(workdir: Path) -> None:
    """A context_length past what the model was trained for (256 tokens here) is
    capped by it, in the KV cache llama.cpp allocates as in memory_bytes: the
    budget counts what a load really takes (at 131072 tokens the cache alone
    would be 64 MiB)."""
    directory = workdir / "short-context"
    directory.mkdir()
    write_tiny_model(directory / "short.gguf", TinyModelSpec(context_length=256))
    server = _budget_server(
        workdir, directory, "budget-short", max_loaded_models=1, context_length=131072
    )
    try:
        with Client(server.address, max_retries=0) as client:
            client.list_models()  # the server has answered once before we measure
            before = _resident_mib(server)
            client.generate("short", "hello", max_tokens=2)
            grown = _resident_mib(server) - before
            [short] = client.list_models()
        assert (short.status, short.context_length) == ("ready", 256)
        assert short.memory_bytes < 4 * 2**20
        assert grown < 24, f"the load took {grown:.0f} MiB"
    finally:
        server.stop()


def test_a_model_still_loading_does_not_eject_its_server_from_the_router(
    workdir: Path, models_dir: Path
) -> None:
    """MODEL_LOADING is about one model, not the server, which serves its other models
    meanwhile: the router passes it on (or retries elsewhere) but never ejects the
    endpoint for it, even with one failure to eject."""
    directory = workdir / "loading-behind-router"
    directory.mkdir()
    for name in ("tiny-slow", "tiny"):
        (directory / f"{name}.gguf").symlink_to(models_dir / f"{name}.gguf")
    server = _budget_server(
        workdir, directory, "budget-behind-router", max_loaded_models=2, load_wait_seconds=0.001
    )
    outlier = {"consecutive_failures": 1, "base_ejection_seconds": 120}
    router = start_router(
        workdir,
        "loading-router",
        {
            "retry": {"num_retries": 0},
            "clusters": {"cpu": {"endpoints": [server.address], "outlier_detection": outlier}},
            "routes": [
                {"model": m, "targets": [{"cluster": "cpu"}]} for m in ("tiny", "tiny-slow")
            ],
        },
    )
    try:
        with Client(router.address, max_retries=0) as client:
            with pytest.raises(UnavailableError) as caught:
                client.generate("tiny-slow", "hello", max_tokens=2)
            assert caught.value.reason == "MODEL_LOADING"
            view = endpoint_view(router, server.address)
            assert (view.ejections, view.state) == (0, router_admin_pb.ENDPOINT_STATE_HEALTHY)
        with Client(server.address) as direct:
            _wait_state(direct, "tiny-slow", "ready")
        with Client(router.address, max_retries=0) as client:
            assert client.generate("tiny-slow", "hi", max_tokens=2).usage.completion_tokens == 2
    finally:
        router.stop()
        server.stop()


def test_unload_model_lets_requests_in_flight_finish_first(workdir: Path, models_dir: Path) -> None:
    """UnloadModel during a long stream: the stream runs to its last token on the
    model, and only then is the model freed."""
    directory = workdir / "unload-drains"
    directory.mkdir()
    (directory / "tiny-slow.gguf").symlink_to(models_dir / "tiny-slow.gguf")
    server = _budget_server(workdir, directory, "budget-unload", max_loaded_models=1)
    try:
        with Client(server.address, max_retries=0) as client:
            stream = iter(client.stream("tiny-slow", "a story", max_tokens=300, temperature=0))
            next(stream)
            channel, admin = _admin(server.address)
            with channel, ThreadPoolExecutor(1) as pool:
                [held] = admin.ListLoaded(admin_pb.ListLoadedRequest(), timeout=10).models
                assert held.requests_in_flight == 1  # the stream holds it now
                unloading = pool.submit(
                    admin.UnloadModel, admin_pb.UnloadModelRequest(model="tiny-slow"), timeout=60
                )
                chunks = list(stream)
                unloaded = unloading.result(timeout=60)
            assert chunks[-1].finish_reason == FinishReason.LENGTH
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 300
            assert unloaded.model.status == pb.MODEL_STATUS_UNLOADED
            assert _states(client)["tiny-slow"] == "unloaded"
    finally:
        server.stop()


def test_list_loaded_shows_each_model_in_memory_and_the_budget(
    two_of_three: ServerProcess,
) -> None:
    _unload(two_of_three.address, "alpha")
    channel, admin = _admin(two_of_three.address)
    with channel:
        admin.LoadModel(admin_pb.LoadModelRequest(model="alpha"), timeout=60)
        listed = admin.ListLoaded(admin_pb.ListLoadedRequest(), timeout=10)
    by_model = {m.model: m for m in listed.models}
    assert "alpha" in by_model and len(by_model) <= 2
    assert by_model["alpha"].memory_bytes > 0 and by_model["alpha"].requests_in_flight == 0
    [budget] = listed.budgets
    assert budget.max_loaded_models == 2 and budget.loaded_models == len(by_model)
    assert budget.used_bytes == sum(m.memory_bytes for m in listed.models)


def test_model_admin_is_unimplemented_where_models_do_not_load_on_demand(
    scripted_server: ServerProcess,
) -> None:
    channel, admin = _admin(scripted_server.address)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            admin.UnloadModel(admin_pb.UnloadModelRequest(model="echo"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "scripted" in (caught.value.details() or "")
        assert parse_details(caught.value.trailing_metadata()).reason == "NOT_SUPPORTED"
        listed = admin.ListLoaded(admin_pb.ListLoadedRequest(), timeout=10)
        assert "echo" in {m.model for m in listed.models} and not listed.budgets
        with pytest.raises(grpc.RpcError) as unknown:
            admin.LoadModel(admin_pb.LoadModelRequest(model="no-such-model"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_router_forwards_model_admin_calls_to_the_endpoint_named(
    workdir: Path, two_of_three: ServerProcess
) -> None:
    router = start_router(
        workdir,
        "admin-router",
        {
            "clusters": {"cpu": {"endpoints": [two_of_three.address]}},
            "routes": [{"model": m, "targets": [{"cluster": "cpu"}]} for m in MODELS],
        },
    )
    try:
        channel, admin = _admin(router.address)
        with channel:
            endpoint = two_of_three.address
            loaded = admin.LoadModel(
                admin_pb.LoadModelRequest(model="gamma", endpoint=endpoint), timeout=60
            )
            assert (loaded.model.model, loaded.model.endpoint) == ("gamma", endpoint)
            listed = admin.ListLoaded(admin_pb.ListLoadedRequest(), timeout=10)
            assert {m.endpoint for m in listed.models} == {endpoint}
            assert [b.endpoint for b in listed.budgets] == [endpoint]
            with pytest.raises(grpc.RpcError) as unnamed:
                admin.UnloadModel(admin_pb.UnloadModelRequest(model="gamma"), timeout=10)
            assert unnamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as unknown:
                admin.UnloadModel(
                    admin_pb.UnloadModelRequest(model="gamma", endpoint="10.0.0.1:1"), timeout=10
                )
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            assert endpoint in (unknown.value.details() or "")
            unknown_details = parse_details(unknown.value.trailing_metadata())
            assert unknown_details.reason == "ENDPOINT_NOT_FOUND"
            with pytest.raises(grpc.RpcError) as relayed:  # the model server's own answer
                admin.LoadModel(
                    admin_pb.LoadModelRequest(model="delta", endpoint=endpoint), timeout=10
                )
            assert relayed.value.code() == grpc.StatusCode.NOT_FOUND
            assert "delta" in (relayed.value.details() or "")
    finally:
        router.stop()


def test_the_router_lists_a_model_no_replica_holds_as_unloaded_until_one_loads_it(
    workdir: Path, two_of_three: ServerProcess
) -> None:
    router = start_router(
        workdir,
        "listing-router",
        {
            "clusters": {"cpu": {"endpoints": [two_of_three.address]}},
            "routes": [{"model": m, "targets": [{"cluster": "cpu"}]} for m in MODELS],
        },
    )
    try:
        _unload(two_of_three.address, "gamma")
        with Client(router.address, max_retries=0) as client:
            [gamma] = [m for m in client.list_models() if m.id == "gamma"]
            assert (gamma.status, gamma.healthy_replicas) == ("unloaded", 1)
            client.generate("gamma", "hello", max_tokens=2)
            [gamma] = [m for m in client.list_models() if m.id == "gamma"]
            assert (gamma.status, gamma.healthy_replicas) == ("ready", 1)
    finally:
        router.stop()


def test_the_cli_loads_unloads_and_lists_through_a_router(
    workdir: Path, two_of_three: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    router = start_router(
        workdir,
        "cli-admin-router",
        {
            "clusters": {"cpu": {"endpoints": [two_of_three.address]}},
            "routes": [{"model": m, "targets": [{"cluster": "cpu"}]} for m in MODELS],
        },
    )
    endpoint = two_of_three.address
    try:
        target = ["--target", router.address]
        assert main([*target, "models", "unload", "beta", "--endpoint", endpoint]) == 0
        unloaded = capsys.readouterr().out
        assert " beta " in unloaded and "unloaded" in unloaded
        assert main([*target, "models", "load", "beta", "--endpoint", endpoint]) == 0
        assert "ready" in capsys.readouterr().out
        assert main([*target, "models", "loaded"]) == 0
        listed = capsys.readouterr().out
        assert f"{endpoint}" in listed and "beta" in listed
        assert f"budget {endpoint}: " in listed and "/2 models" in listed
        assert main([*target, "models", "unload", "beta"]) == 1  # no endpoint: refused
        assert "endpoint" in capsys.readouterr().err
    finally:
        router.stop()


def _unload(address: str, model: str) -> None:
    channel, admin = _admin(address)
    with channel:
        admin.UnloadModel(admin_pb.UnloadModelRequest(model=model), timeout=60)


def _wait_state(client: Client, model: str, state: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _states(client).get(model) != state:
        assert time.monotonic() < deadline, f"{model} never {state}: {_states(client)}"
        time.sleep(0.05)
