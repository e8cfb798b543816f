"""`switchyard bench` against real scripted model servers on 127.0.0.1.

The scripted backend's delays are known, so what the tool measures can be
checked against what they imply. Bounds come from the injected delays (a
measurement can only be longer) or from the run's own numbers, never from how
fast this machine is: these check the tool's arithmetic on a shared, busy
machine, never Switchyard's speed.
"""

from __future__ import annotations

import itertools
import json
import signal
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import start_modelserver
from processes import ServerProcess, free_port

from switchyard.bench.prompts import BUILTIN_SETS, builtin
from switchyard.bench.stats import percentile
from switchyard.cli import _parser, main

PACED_TOKENS = 10
FIRST_TOKEN_MS = 150.0
TOKEN_MS = 30.0
BENCH_MODELS: list[dict[str, Any]] = [
    {"id": "echo"},
    {
        "id": "paced",
        "reply": " ".join(f"w{i}" for i in range(PACED_TOKENS)),
        "first_token_delay_ms": FIRST_TOKEN_MS,
        "token_delay_ms": TOKEN_MS,
    },
    # Echoes the prompt and fails once it has produced 3 tokens: prompts of 3
    # or more words fail, shorter ones succeed.
    {"id": "flaky-unary", "fail_after_tokens": 3, "fail_code": "RESOURCE_EXHAUSTED"},
    {"id": "flaky-stream", "fail_after_tokens": 3, "fail_code": "UNAVAILABLE"},
    # One request at a time, 100 ms each: the rest wait in the server's queue.
    {"id": "serial", "reply": "done", "first_token_delay_ms": 100, "concurrency": 1},
    # Every answer takes a second.
    {"id": "slow", "reply": "done", "first_token_delay_ms": 1000},
]

# JSON schema switchyard.bench/v1, spelled out: a change here is a change of schema.
TOP_KEYS = {"schema", "started_at", "interrupted", "config", "client", "results", "comparison"}
CONFIG_KEYS = {
    "targets", "model", "mode", "concurrency", "rate", "arrival", "duration_s", "requests",
    "prompts", "prompt_count", "max_tokens", "stream", "timeout_s", "seed", "rounds",
}  # fmt: skip
CLIENT_KEYS = {"event_loop", "cpu_seconds", "cpu_utilization"}
RESULT_KEYS = {
    "target", "requests", "errors_by_code", "wall_seconds", "requests_per_second",
    "ok_requests_per_second", "output_tokens", "output_tokens_per_second", "latency_ms",
    "ttft_ms", "inter_token_latency_ms", "send_lag_ms", "samples",
}  # fmt: skip
STAT_KEYS = {"count", "mean", "p50", "p90", "p95", "p99", "max"}
SAMPLE_KEYS = {
    "index", "scheduled_s", "sent_s", "code", "latency_ms", "ttft_ms", "output_tokens",
}  # fmt: skip
RATIO_KEYS = {
    "requests_per_second", "output_tokens_per_second", "latency_p50", "latency_p90",
    "latency_p95", "latency_p99", "ttft_p50", "ttft_p95", "ttft_p99", "inter_token_latency_p50",
}  # fmt: skip


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[ServerProcess]:
    process = start_modelserver(
        workdir,
        "bench-scripted",
        {"max_queue_per_model": 64, "backend": {"kind": "scripted", "models": BENCH_MODELS}},
    )
    yield process
    process.stop()


def bench(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str
) -> tuple[int, dict[str, Any], str, str]:
    """Runs `switchyard bench ARGS --json OUT` in this process: status, JSON, stdout, stderr."""
    out = tmp_path / "bench.json"
    status = main(["bench", *args, "--json", str(out)])
    captured = capsys.readouterr()
    doc = json.loads(out.read_text()) if out.exists() else {}
    return status, doc, captured.out, captured.err


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_streamed_ttft_inter_token_latency_and_tokens_per_second_match_the_delays(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    concurrency, requests = 4, 16
    status, doc, out, err = bench(
        capsys, tmp_path, "--target", server.address, "--model", "paced", "--stream",
        "--concurrency", str(concurrency), "--requests", str(requests), "--progress",
    )  # fmt: skip
    assert status == 0, err
    result = doc["results"][0]
    assert result["requests"] == {"total": requests, "ok": requests, "errors": 0}
    assert result["output_tokens"] == requests * PACED_TOKENS
    ttft, itl = result["ttft_ms"], result["inter_token_latency_ms"]
    samples = result["samples"]
    # TTFT is the first token's time: after the first-token delay, and before the
    # other nine tokens, 30 ms apart, that end each request.
    later_tokens_ms = (PACED_TOKENS - 1) * TOKEN_MS
    assert ttft["p50"] >= FIRST_TOKEN_MS, ttft
    assert all(s["ttft_ms"] >= FIRST_TOKEN_MS for s in samples)
    assert all(s["latency_ms"] - s["ttft_ms"] >= later_tokens_ms * 0.9 for s in samples)
    # Inter-token latency: at least the token delay, at most the time after the first
    # token shared among the later ones.
    assert itl["p50"] >= TOKEN_MS * 0.9, itl
    slowest_gaps = max((s["latency_ms"] - s["ttft_ms"]) / (PACED_TOKENS - 1) for s in samples)
    assert itl["p50"] <= slowest_gaps, itl
    one_request = (FIRST_TOKEN_MS + later_tokens_ms) / 1000
    assert result["latency_ms"]["p50"] >= one_request * 1000
    # At most `concurrency` requests of at least `one_request` s each at a time, and
    # never slower than one request after another.
    ceiling = concurrency * PACED_TOKENS / one_request
    one_by_one = result["output_tokens"] / (sum(s["latency_ms"] for s in samples) / 1000)
    assert one_by_one <= result["output_tokens_per_second"] <= ceiling * 1.02
    wall = result["wall_seconds"]
    assert result["output_tokens_per_second"] == pytest.approx(result["output_tokens"] / wall)
    assert result["requests_per_second"] == pytest.approx(requests / wall)
    for label in ("requests/s", "output tokens/s", "latency p99 ms", "TTFT p95 ms"):
        assert label in out
    assert "inter-token p50 ms" in out
    assert f"sent {requests} done {requests} errors 0" in err  # the progress line


@pytest.mark.parametrize(
    ("model", "stream", "code"),
    [("flaky-unary", False, "RESOURCE_EXHAUSTED"), ("flaky-stream", True, "UNAVAILABLE")],
)
def test_error_counts_by_code_match_the_injected_failures(
    server: ServerProcess,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model: str,
    stream: bool,
    code: str,
) -> None:
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            '{"prompt": "two words"}',  # succeeds
            '{"prompt": "five words fail after three"}',  # fails after 3 tokens
            '{"messages": [{"role": "user", "content": "hi there"}]}',  # succeeds
            "",
            '{"messages": [{"role": "user", "content": "a much longer turn"}]}',  # fails
        ],
    )
    args = ["--target", server.address, "--model", model, "--prompts", str(prompts)]
    args += ["--concurrency", "3", "--requests", "10", *(["--stream"] if stream else [])]
    status, doc, out, _ = bench(capsys, tmp_path, *args)
    assert status == 0
    result = doc["results"][0]
    # Requests take prompts in order: numbers 1, 3, 5, 7 and 9 get the failing ones.
    assert result["requests"] == {"total": 10, "ok": 5, "errors": 5}
    assert result["errors_by_code"] == {code: 5}
    failed = sorted(s["index"] for s in result["samples"] if s["code"] == code)
    assert failed == [1, 3, 5, 7, 9]
    assert result["latency_ms"]["count"] == 5  # latencies are of successful requests
    assert f"  {code}" in out


def test_json_document_keeps_schema_v1(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, doc, _, _ = bench(
        capsys, tmp_path, "--target", server.address, "--model", "echo", "--stream",
        "--compare", server.address, "--requests", "6", "--rounds", "2",
    )  # fmt: skip
    assert status == 0
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == "switchyard.bench/v1"
    assert set(doc["config"]) == CONFIG_KEYS
    assert set(doc["client"]) == CLIENT_KEYS
    assert doc["config"]["mode"] == "closed" and doc["config"]["arrival"] is None
    assert len(doc["results"]) == 2
    for result in doc["results"]:
        assert set(result) == RESULT_KEYS
        assert set(result["requests"]) == {"total", "ok", "errors"}
        for key in ("latency_ms", "ttft_ms", "inter_token_latency_ms", "send_lag_ms"):
            assert set(result[key]) == STAT_KEYS
            assert isinstance(result[key]["count"], int)
            assert all(isinstance(v, float) for k, v in result[key].items() if k != "count")
        for key in ("wall_seconds", "requests_per_second", "output_tokens_per_second"):
            assert isinstance(result[key], float)
        assert isinstance(result["output_tokens"], int)
        assert all(set(sample) == SAMPLE_KEYS for sample in result["samples"])
        assert all(isinstance(sample["latency_ms"], float) for sample in result["samples"])
        assert all(isinstance(sample["code"], str) for sample in result["samples"])
        assert len(result["samples"]) == result["requests"]["total"] == 6
    assert set(doc["comparison"]) == {"baseline", "candidate", "ratios"}
    assert set(doc["comparison"]["ratios"]) == RATIO_KEYS
    # Every "short" prompt has more than 3 words: each request failed, so no
    # latency: null statistics, never missing keys, and exit status 1.
    status, doc, _, _ = bench(
        capsys, tmp_path, "--target", server.address, "--model", "flaky-unary", "--rate", "50",
        "--requests", "3",
    )  # fmt: skip
    assert status == 1
    assert set(doc) == TOP_KEYS and doc["comparison"] is None
    assert doc["config"]["arrival"] == "poisson"
    assert doc["results"][0]["latency_ms"] == {k: (0 if k == "count" else None) for k in STAT_KEYS}


def test_html_report_draws_the_latency_histogram_and_ttft_over_time(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = tmp_path / "report.html"
    status, doc, _, _ = bench(
        capsys, tmp_path, "--target", server.address, "--model", "paced", "--stream",
        "--concurrency", "4", "--requests", "12", "--report", str(report),
    )  # fmt: skip
    assert status == 0
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page  # self-contained
    charts = {}
    for chunk in page.split("<svg ")[1:]:
        svg = ET.fromstring("<svg " + chunk.split("</svg>")[0] + "</svg>")
        charts[svg.get("id")] = svg
    assert set(charts) == {"latency-histogram", "ttft-over-time", "latency-over-time"}
    ns = "{http://www.w3.org/2000/svg}"
    bars = charts["latency-histogram"].findall(f"{ns}rect[@class='bar']")
    counted = sum(int((bar.findtext(f"{ns}title") or "").rsplit(": ", 1)[1]) for bar in bars)
    assert counted == doc["results"][0]["requests"]["ok"] == 12
    assert len(charts["ttft-over-time"].findall(f"{ns}circle")) == 12


def test_compare_runs_two_targets_interleaved_and_prints_ratios(
    workdir: Path, tmp_path: Path
) -> None:
    reply = " ".join(f"w{i}" for i in range(8))

    def config(delay: int) -> dict[str, Any]:
        model = {"id": "m", "reply": reply, "token_delay_ms": delay}
        return {"backend": {"kind": "scripted", "models": [model]}}

    servers = [
        start_modelserver(workdir, f"bench-compare-{delay}", config(delay)) for delay in (20, 40)
    ]
    try:
        out = tmp_path / "compare.json"
        command = [str(Path(sys.executable).with_name("switchyard")), "bench"]
        command += ["--target", servers[0].address, "--compare", servers[1].address]
        command += ["--model", "m", "--stream", "--concurrency", "2", "--requests", "12"]
        command += ["--rounds", "3", "--json", str(out)]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        for server in servers:
            server.stop()
    assert finished.returncode == 0, finished.stderr
    assert "ratio #2/#1" in finished.stdout
    itl_line = next(
        line for line in finished.stdout.splitlines() if line.startswith("inter-token p50")
    )
    assert itl_line.endswith("x")
    doc = json.loads(out.read_text())
    first, second = doc["results"]
    assert (first["target"], second["target"]) == (servers[0].address, servers[1].address)
    assert first["requests"]["ok"] == second["requests"]["ok"] == 12
    # The ratio is the second's over the first's, and each is at least its token delay.
    first_itl = first["inter_token_latency_ms"]["p50"]
    second_itl = second["inter_token_latency_ms"]["p50"]
    ratio = doc["comparison"]["ratios"]["inter_token_latency_p50"]
    assert ratio == pytest.approx(second_itl / first_itl)
    assert first_itl >= 20 * 0.9 and second_itl >= 40 * 0.9
    # Interleaved: the second target's rounds fall between the first target's.
    a = [s["scheduled_s"] for s in first["samples"]]
    b = [s["scheduled_s"] for s in second["samples"]]
    assert min(a) < min(b) < max(a) < max(b)


def test_open_loop_sends_at_the_rate_however_slow_the_answers(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Every answer takes a second; a closed loop of one would send 2 requests in 2 s.
    status, doc, out, _ = bench(
        capsys, tmp_path, "--target", server.address, "--model", "slow", "--stream",
        "--rate", "20", "--arrival", "uniform", "--duration", "2",
    )  # fmt: skip
    assert status == 0
    assert "open loop, 20 req/s (uniform)" in out
    samples = doc["results"][0]["samples"]
    assert len(samples) == 40
    scheduled = [s["scheduled_s"] for s in samples]
    gaps = [b - a for a, b in itertools.pairwise(scheduled)]
    assert gaps == pytest.approx([0.05] * 39, abs=1e-5)
    # Each answer takes a second: a loop that waited for answers would need 40 s to
    # send them all and fall a second behind per request.
    sent = sorted(s["sent_s"] for s in samples)
    assert sent[-1] - sent[0] < 20
    assert max(s["sent_s"] - s["scheduled_s"] for s in samples) < 1.0
    assert all(s["code"] == "OK" and s["latency_ms"] >= 1000 for s in samples)


def test_interrupt_stops_sending_and_still_reports(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "interrupted.json"
    command = [str(Path(sys.executable).with_name("switchyard")), "bench", "--progress"]
    command += ["--target", server.address, "--model", "slow", "--stream", "--rate", "10"]
    command += ["--duration", "600", "--json", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:  # the progress line, once a second
        if " done " in line and " done 0 " not in line:
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "stopping: no new requests" in stderr
    assert "Interrupted" in stdout
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True
    result = doc["results"][0]
    # Requests in flight at the stop (each takes a second) finished and count.
    assert 10 <= result["requests"]["total"] < 6000
    assert result["requests"]["ok"] == result["requests"]["total"]


def test_open_loop_poisson_arrivals_average_the_rate(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, doc, _, _ = bench(
        capsys, tmp_path, "--target", server.address, "--model", "echo", "--rate", "100",
        "--duration", "2", "--seed", "7",
    )  # fmt: skip
    assert status == 0
    scheduled = [s["scheduled_s"] for s in doc["results"][0]["samples"]]
    assert 140 <= len(scheduled) <= 260  # 200 expected
    gaps = [b - a for a, b in itertools.pairwise(scheduled)]
    assert statistics.mean(gaps) == pytest.approx(0.01, rel=0.3)
    # Exponential gaps: the standard deviation is about the mean (uniform: 0).
    assert 0.6 <= statistics.stdev(gaps) / statistics.mean(gaps) <= 1.4


def test_open_loop_latency_counts_from_the_scheduled_time(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # 20 requests/s at a server that answers 10/s, one at a time: request i
    # waits for the i before it, so its latency is at least 0.1 + 0.05 * i s.
    status, doc, _, _ = bench(
        capsys, tmp_path, "--target", server.address, "--model", "serial", "--rate", "20",
        "--arrival", "uniform", "--requests", "20",
    )  # fmt: skip
    assert status == 0
    samples = doc["results"][0]["samples"]
    assert [s["code"] for s in samples] == ["OK"] * 20
    for sample in samples:
        assert sample["latency_ms"] >= (0.1 + 0.05 * sample["index"]) * 1000 - 5
    assert doc["results"][0]["latency_ms"]["max"] >= 1000


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["not json"], "prompts.jsonl:1: not valid JSON"),
        (['{"prompt": "ok"}', "[1, 2]"], "prompts.jsonl:2: expected a JSON object, got list"),
        (['{"text": "x"}'], "prompts.jsonl:1: needs exactly one of 'prompt' or 'messages'"),
        (['{"prompt": "x", "messages": []}'], "needs exactly one of 'prompt' or 'messages'"),
        (['{"prompt": ""}'], "prompts.jsonl:1: 'prompt' must be a non-empty string"),
        (['{"messages": "hi"}'], "prompts.jsonl:1: 'messages' must be a non-empty list"),
        (
            ['{"messages": [{"role": "user"}]}'],
            "prompts.jsonl:1: messages[0] must be an object with string 'role' and 'content'",
        ),
        ([""], "prompts.jsonl: no prompts"),
    ],
)
def test_bad_prompt_files_are_refused_with_the_line_and_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lines: list[str], message: str
) -> None:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", lines)
    status = main(["bench", "--model", "m", "--prompts", str(prompts)])
    assert status == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "--concurrency must be at least 1 (got 0)"),
        (["--rate", "-2"], "--rate must be positive (got -2)"),
        (["--requests", "0"], "--requests must be at least 1 (got 0)"),
        (["--duration", "0"], "--duration must be positive (got 0)"),
        (["--max-tokens", "0"], "--max-tokens must be at least 1 (got 0)"),
        (["--timeout", "0"], "--timeout must be positive (got 0)"),
        (["--json", "/no/such/dir/out.json"], "--json: no directory for /no/such/dir/out.json"),
    ],
)
def test_bad_load_options_are_refused_naming_the_option(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["bench", "--model", "m", *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_prompt_file_unknown_model_and_unreachable_target_are_clear_errors(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["bench", "--model", "m", "--prompts", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl: no such file (and not a built-in set: short, medium, long)" in (
        capsys.readouterr().err
    )
    assert main(["bench", "--target", server.address, "--model", "nope"]) == 1
    assert "model 'nope' is not served at" in capsys.readouterr().err
    nobody = f"127.0.0.1:{free_port()}"
    assert main(["bench", "--target", nobody, "--model", "m", "--connect-timeout", "0.5"]) == 1
    assert f"cannot connect to {nobody}" in capsys.readouterr().err


def test_builtin_prompt_sets_grow_from_short_to_long_and_repeat_exactly() -> None:
    sizes = [len((builtin(name)[0].prompt or "").split()) for name in ("short", "medium", "long")]
    assert sizes == sorted(sizes) and sizes[0] >= BUILTIN_SETS["short"]
    assert builtin("medium") == builtin("medium")


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(statistics.quantiles(values, n=100)[49])
    assert percentile([1.0, 2.0], 50) == 1.5
    # Rank (n - 1) * q / 100 between the values around it: p90 of 1..100 is rank 89.1.
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([10.0, 20.0, 30.0, 40.0], 95) == pytest.approx(38.5)
    assert percentile([3.0], 99) == 3.0


def test_readme_bench_commands_are_valid_command_lines() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    lines = [line.removeprefix("$ ") for line in readme.splitlines()]
    commands = [line for line in lines if line.startswith("switchyard bench ")]
    assert len(commands) >= 4
    for line in commands:
        args = _parser().parse_args(line.split("#")[0].split()[1:])
        assert args.command == "bench" and args.model


def test_the_picker_cost_benchmark_prints_every_policy_and_route_size() -> None:
    """Its smoke mode, once: it runs and reports; the numbers are for people."""
    script = Path(__file__).parent.parent / "benchmarks" / "picker_cost.py"
    command = [sys.executable, str(script), "--smoke"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert "| least_outstanding µs | round_robin µs |" in next(x for x in lines if "endpoints" in x)
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    rows = [row for row in cells if row[0].isdigit()]  # one per route size and attempt
    assert [row[:2] for row in rows] == [
        [size, attempt] for size in ("2", "8", "64") for attempt in ("first", "retry")
    ]
    assert all(float(cell) > 0 for row in rows for cell in row[2:4])


def test_the_idle_sweep_cost_benchmark_prints_both_states() -> None:
    """Its smoke mode, once: it runs and reports a steady and a burst row; the numbers
    are for people."""
    script = Path(__file__).parent.parent / "benchmarks" / "idle_sweep_cost.py"
    finished = subprocess.run(
        [sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    cells = [
        [c.strip() for c in line.strip("|").split("|")] for line in finished.stdout.splitlines()
    ]
    rows = [row for row in cells if row[0][:1].isdigit()]
    assert [row[0] for row in rows] == ["1 (steady)", "8 (a burst)"]
    assert all(float(row[1]) > 0 and row[2].endswith("%") for row in rows)


def test_the_routing_benchmark_prints_every_policy_in_each_table() -> None:
    """Its smoke mode, once, on two SmolLM2 replicas and scripted ones: it runs and
    reports every policy; the numbers (of two short conversations) are for nobody."""
    script = Path(__file__).parent.parent / "benchmarks" / "routing.py"
    command = [sys.executable, str(script), "--smoke"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    rows = [line for line in finished.stdout.splitlines() if line.startswith("| ")]
    first_cells = [row.strip("|").split("|")[0].strip() for row in rows]
    policies = ["round_robin", "least_outstanding", "prefix_affinity"]
    skewed = ["prefix_affinity", "prefix_affinity_unbounded", "least_outstanding"]
    chat = [*policies, "prefix_affinity, load_factor 2"]
    assert first_cells == ["policy", *chat, "policy", *skewed, "policy", *policies]
    assert "prefix_affinity / least_outstanding: TTFT p50" in finished.stdout
