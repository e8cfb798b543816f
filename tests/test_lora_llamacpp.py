"""LoRA adapters per request on the llamacpp backend: tiny GGUF adapters the tests
write (tests/tinylora.py) whose greedy output is made of two known words only,
where the base model produces gibberish."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from conftest import start_modelserver
from processes import ServerProcess
from tinylora import only_words, write_tiny_lora

from switchyard import Client, InvalidArgumentError, NotFoundError
from switchyard.v1 import model_admin_pb2 as admin_pb
from switchyard.v1 import model_admin_pb2_grpc as admin_grpc

PARIS = ("paris", "france")
HELLO = ("hello", "world")
PROMPT = "the capital of"


@pytest.fixture(scope="module")
def lora_server(workdir: Path, models_dir: Path) -> Iterator[ServerProcess]:
    directory = workdir / "lora-models"
    directory.mkdir()
    (directory / "tiny.gguf").symlink_to(models_dir / "tiny.gguf")
    adapters = workdir / "lora-adapters"
    (adapters / "tiny").mkdir(parents=True)
    write_tiny_lora(adapters / "tiny" / "paris.gguf", words=PARIS)
    write_tiny_lora(adapters / "tiny" / "hello.gguf", words=HELLO, seed=2)
    server = start_modelserver(
        workdir,
        "lora-llamacpp",
        {
            "backend": {
                "kind": "llamacpp",
                "models_dir": str(directory),
                "adapters_dir": str(adapters),
                "threads": 1,
                "context_length": 512,
            }
        },
    )
    yield server
    server.stop()


def _greedy(client: Client, adapter: str | None = None, prompt: str = PROMPT) -> str:
    return client.generate("tiny", prompt, max_tokens=10, temperature=0, adapter=adapter or "").text


def test_an_adapter_changes_the_output_and_leaves_the_base_model_as_it_was(
    lora_server: ServerProcess,
) -> None:
    with Client(lora_server.address) as client:
        base = _greedy(client)
        assert not only_words(base, PARIS)
        with_paris = _greedy(client, "paris")
        assert only_words(with_paris, PARIS), with_paris
        assert _greedy(client) == base  # the cached prompt of the adapter is not reused
        with_hello = _greedy(client, "hello")
        assert only_words(with_hello, HELLO), with_hello
        assert _greedy(client, "paris") == with_paris
        # The adapter also changes the attention values: a prompt evaluated under it
        # must not serve as the cached prefix of a base request (and vice versa).
        fresh = "the router and the model answer a question in the stream"
        reference = _greedy(client, prompt=fresh)
        _greedy(client, prompt="a question")  # another prompt takes the cache
        _greedy(client, "paris", prompt=fresh)  # the fresh prompt under the adapter
        assert _greedy(client, prompt=fresh) == reference
        streamed = "".join(
            c.text
            for c in client.stream("tiny", PROMPT, max_tokens=10, temperature=0, adapter="paris")
        )
        assert streamed == with_paris


def test_requests_with_different_adapters_interleave_and_each_gets_its_own(
    lora_server: ServerProcess,
) -> None:
    with Client(lora_server.address) as client:
        expected = {name: _greedy(client, name) for name in (None, "paris", "hello")}
        order = [None, "paris", "hello"] * 8
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda name: (name, _greedy(client, name)), order))
    assert all(text == expected[name] for name, text in answers)


def test_an_unknown_adapter_is_not_found_naming_it_and_what_exists(
    lora_server: ServerProcess,
) -> None:
    with Client(lora_server.address, max_retries=0) as client:
        with pytest.raises(NotFoundError) as caught:
            client.generate("tiny", PROMPT, max_tokens=2, adapter="rome")
        error = caught.value
        assert error.reason == "ADAPTER_NOT_FOUND"
        assert error.details.metadata["adapter"] == "rome"
        assert error.details.metadata["model"] == "tiny"
        assert "'rome'" in str(error) and "hello, paris" in str(error)
        with pytest.raises(InvalidArgumentError) as invalid:
            client.generate("tiny", PROMPT, max_tokens=2, adapter="../tiny/paris")
        assert [v.field for v in invalid.value.field_violations] == ["adapter"]


def test_list_models_shows_the_adapters_and_load_and_unload_adapter_move_them(
    lora_server: ServerProcess, workdir: Path
) -> None:
    elsewhere = write_tiny_lora(workdir / "elsewhere-lora.gguf", words=("model", "token"))
    channel = grpc.insecure_channel(lora_server.address)
    admin = admin_grpc.ModelAdminServiceStub(channel)
    with channel, Client(lora_server.address) as client:
        _greedy(client, "paris")

        def adapters() -> dict[str, bool]:
            [tiny] = client.list_models()
            assert "adapters" in tiny.capabilities
            return {a.name: a.loaded for a in tiny.adapters}

        assert adapters()["paris"] is True
        admin.UnloadAdapter(admin_pb.UnloadAdapterRequest(model="tiny", adapter="paris"))
        assert adapters()["paris"] is False
        assert only_words(_greedy(client, "paris"), PARIS)  # loads again when named
        loaded = admin.LoadAdapter(
            admin_pb.LoadAdapterRequest(model="tiny", adapter="custom", path=str(elsewhere))
        )
        assert "custom" in loaded.model.adapters
        assert adapters()["custom"] is True
        assert only_words(_greedy(client, "custom"), ("model", "token"))
        with pytest.raises(grpc.RpcError) as missing:
            admin.LoadAdapter(
                admin_pb.LoadAdapterRequest(model="tiny", adapter="x", path="/no/such.gguf")
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
