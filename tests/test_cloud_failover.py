"""End to end through the router: a llama.cpp target that goes down fails over to a cloud one."""

from __future__ import annotations

from pathlib import Path

from fleet import Fleet
from vendors import VALID_KEY, FakeVendors, backend_config, new_request_id

from switchyard import Client


def test_a_route_falls_back_from_a_dead_llamacpp_target_to_a_cloud_target(
    fleet: Fleet, vendors: FakeVendors, workdir: Path, models_dir: Path
) -> None:
    key_file = workdir / "failover-key"
    key_file.write_text(VALID_KEY)
    llama = fleet.modelserver(
        "llama",
        {
            "backend": {
                "kind": "llamacpp",
                "models_dir": str(models_dir),
                "threads": 1,
                "models": [{"file": "tiny.gguf"}],
            }
        },
    )
    cloud = fleet.modelserver("openai", backend_config("openai", vendors.url, key_file))
    router = fleet.router(
        {
            "clusters": {
                "cpu": {"endpoints": [llama.address]},
                "cloud": {"endpoints": [cloud.address]},
            },
            "routes": [
                {
                    "model": "tiny",
                    "targets": [
                        {"cluster": "cpu", "model": "tiny"},
                        {"cluster": "cloud", "model": "ok", "priority": 1},
                    ],
                    "resume": True,  # the router then asks every target for token ids
                }
            ],
        }
    )
    messages = [{"role": "user", "content": "who answers"}]
    with Client(router.address, timeout=20, max_retries=0) as client:
        first = client.chat("tiny", messages, max_tokens=4, temperature=0.0)
        assert first.backend == "llamacpp"  # the preferred target while it is up
        llama.process.kill()
        llama.process.wait()
        answer = client.chat("tiny", messages, max_tokens=4, temperature=0.0)
        request_id = new_request_id()
        streamed_messages = [{"role": "user", "content": f"who answers {request_id}"}]
        streamed = "".join(c.text for c in client.stream("tiny", messages=streamed_messages))
    assert streamed == f"Hello from openai: who answers {request_id}"
    assert (answer.backend, answer.model) == ("openai", "ok")
    assert answer.text == "Hello from openai: who"  # four tokens, as asked
    assert vendors.received(request_id).body["messages"] == streamed_messages
