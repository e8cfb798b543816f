"""Unit tests of the pure pieces: wire reading, stop sequences, config loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from importcheck import assert_imports_none_of

from switchyard.types import FinishReason as FinishReasonSDK
from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.configfile import ConfigError, MissingVariableError, expand_env, load_config
from switchyard_modelserver.backends.registry import backend_class
from switchyard_modelserver.config import ModelServerConfig
from switchyard_modelserver.domain import Delta, Finish, FinishReason
from switchyard_modelserver.serving.bridge import EngineThreadBridge
from switchyard_modelserver.serving.coalescing import coalesced
from switchyard_modelserver.serving.stops import StopMatcher
from switchyard_router.config import RouterConfig
from switchyard_router.request_path import wire

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "request_message",
    [
        pb.GenerateRequest(model="tiny", prompt="hello"),
        pb.GenerateRequest(prompt="no model"),
        pb.StreamGenerateRequest(
            model="ünïcode-model", messages=[pb.ChatMessage(role="user", content="x" * 300_000)]
        ),
        pb.GenerateRequest(
            model="m", prompt="p", sampling=pb.SamplingParams(temperature=0.5, seed=7, stop=["a"])
        ),
    ],
)
def test_wire_reads_the_model_the_way_protobuf_does(request_message: pb.GenerateRequest) -> None:
    data = request_message.SerializeToString()
    assert wire.read_model(data) == request_message.model
    rewritten = wire.with_model(data, "other")
    parsed = type(request_message).FromString(rewritten)
    assert parsed.model == "other"
    parsed.model = request_message.model
    assert parsed == request_message


def test_wire_takes_the_last_model_of_concatenated_messages() -> None:
    data = (
        pb.GenerateRequest(model="first").SerializeToString()
        + pb.GenerateRequest(model="second", prompt="x").SerializeToString()
    )
    assert wire.read_model(data) == pb.GenerateRequest.FromString(data).model == "second"
    assert pb.GenerateRequest.FromString(wire.with_model(data, "z")).model == "z"


def test_wire_rejects_garbage() -> None:
    with pytest.raises(wire.MalformedRequestError):
        wire.read_model(b"\x0a\xff")


def test_stop_matcher_holds_back_a_possible_stop_prefix() -> None:
    matcher = StopMatcher(["</end>"])
    assert matcher.feed("hello </") == ("hello ", None)
    assert matcher.feed("en") == ("", None)
    assert matcher.feed("d> more") == ("", "</end>")


def test_stop_matcher_releases_text_that_turned_out_not_to_stop() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("ST") == ("", None)
    assert matcher.feed("ART") == ("START", None)
    assert matcher.feed("ST") == ("", None)
    assert matcher.flush() == "ST"


def test_stop_matcher_picks_the_earliest_stop() -> None:
    assert StopMatcher(["b", "a"]).feed("xxab") == ("xx", "a")


async def test_deltas_ready_together_are_coalesced_and_the_first_goes_alone() -> None:
    bridge = EngineThreadBridge()  # an engine thread that pushed four tokens at once
    for text in ("a", "b", "c", "d"):
        bridge.push(Delta(text, 1, [ord(text)]))
    bridge.push(Finish(FinishReason.LENGTH, 1, 4))
    events = [event async for event in coalesced(bridge.events())]
    assert events == [
        Delta("a", 1, [97]),
        Delta("bcd", 3, [98, 99, 100]),
        Finish(FinishReason.LENGTH, 1, 4),
    ]


def test_expand_env() -> None:
    env = {"HOST": "h"}
    assert expand_env("${HOST}:${PORT:-50051} $${LITERAL}", env) == "h:50051 ${LITERAL}"
    with pytest.raises(MissingVariableError):
        expand_env("${NOPE}", env)


def test_the_local_configs_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SWITCHYARD_MODELS_DIR", str(tmp_path))
    router = load_config(REPO / "deploy/local/router.yaml", RouterConfig)
    assert router.routes[0].model == "smollm2-135m-instruct"
    server = load_config(REPO / "deploy/local/modelserver.yaml", ModelServerConfig)
    assert server.backend.kind == "llamacpp"
    assert server.backend.options()["models_dir"] == str(tmp_path)


def test_router_config_errors_name_the_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "clusters: {cpu: {endpoints: ['127.0.0.1:1']}}\n"
        "routes: [{model: m, targets: [{cluster: gpu}]}]\n"
    )
    with pytest.raises(
        ConfigError, match=r"routes\[0\]\.targets\[0\]\.cluster: unknown cluster 'gpu'"
    ):
        load_config(path, RouterConfig)
    path.write_text("clusters: {cpu: {endpoints: []}}\nroutes: []\nlisen: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, RouterConfig)
    message = str(caught.value)
    assert "clusters.cpu.endpoints" in message
    assert "lisen" in message


def test_a_config_broken_by_a_secret_does_not_quote_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HEADER", "sk-not-for-logs: {[")
    path = tmp_path / "modelserver.yaml"
    path.write_text("backend:\n  kind: scripted\n  note: ${HEADER}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ModelServerConfig)
    message = str(caught.value)
    assert "not valid YAML" in message and "line 3" in message
    assert "sk-not-for-logs" not in message


def test_sdk_tolerates_enum_values_newer_than_itself() -> None:
    from switchyard import _convert

    chunk = _convert.stream_chunk(pb.StreamGenerateResponse(finish_reason=99))  # type: ignore[arg-type]
    assert chunk.finish_reason is FinishReasonSDK.UNKNOWN
    info = _convert.model_info(pb.Model(id="m", status=42, capabilities=[1, 77]))  # type: ignore[list-item, arg-type]
    assert info.status == "unknown"
    assert info.capabilities == ["completion", "unknown"]


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("router.yaml", RouterConfig),
        ("modelserver-llamacpp.yaml", ModelServerConfig),
        ("modelserver-scripted.yaml", ModelServerConfig),
        ("modelserver-openai.yaml", ModelServerConfig),
        ("modelserver-anthropic.yaml", ModelServerConfig),
        ("modelserver-ollama.yaml", ModelServerConfig),
        ("modelserver-vllm.yaml", ModelServerConfig),
    ],
)
def test_the_documented_example_configs_are_valid(name: str, model: type[Any]) -> None:
    text = (REPO / "deploy/examples" / name).read_text()
    assert text.split("\n", 1)[1] in (REPO / "README.md").read_text()  # README shows it whole
    config = load_config(REPO / "deploy/examples" / name, model)
    if isinstance(config, ModelServerConfig):
        backend = backend_class(config.backend.kind)
        backend.options_model.model_validate(config.backend.options())


def test_resume_sends_token_ids_only_to_the_model_that_made_them() -> None:
    from switchyard_router.load_balancing.picker import EndpointView, Pick
    from switchyard_router.request_path.resume import ResumeState

    nowhere = cast(EndpointView, None)  # resume reads only the pick's cluster and model
    same, other = Pick(nowhere, "m", "cpu"), Pick(nowhere, "cloud-m", "cloud")
    resumable = ResumeState(client_wants_token_ids=False)
    message = pb.StreamGenerateResponse(text="Hello", tokens=[pb.Token(id=7), pb.Token(id=9)])
    relayed = pb.StreamGenerateResponse.FromString(
        resumable.relay(message.SerializeToString(), same)
    )
    assert not relayed.tokens  # the client did not ask for them
    to_same = pb.StreamGenerateRequest.FromString(resumable.continuation(same)).continuation
    to_other = pb.StreamGenerateRequest.FromString(resumable.continuation(other)).continuation
    assert (to_same.text, list(to_same.token_ids)) == ("Hello", [7, 9])
    assert (to_other.text, list(to_other.token_ids)) == ("Hello", [])


_SERVER_ONLY = ("switchyard_common", "pydantic", "yaml", "prometheus_client", "opentelemetry")


def test_the_sdk_and_cli_import_nothing_that_only_the_services_need() -> None:
    """`pip install switchyard-client` brings grpcio and protobuf only: importing the
    SDK, its CLI and `switchyard bench` must not reach for a server-side package."""
    sdk = ("switchyard", "switchyard.cli", "switchyard.bench.command", "switchyard.errors")
    assert_imports_none_of(_SERVER_ONLY, *sdk)


_MODELSERVER_SRC = REPO / "services" / "modelserver" / "src"


def _is_protobuf(module: str) -> bool:
    """Protobuf's runtime, the generated contract, or any generated message module."""
    parts = module.split(".")
    return (
        module.startswith(("google.protobuf", "switchyard.v1"))
        or parts[:2] == ["switchyard", "v1"]
        or any(part.endswith(("_pb2", "_pb2_grpc")) for part in parts)
    )


def _module_file(module: str) -> Path | None:
    base = _MODELSERVER_SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """Every module name an import statement in ``path`` names (relative ones made
    absolute; ``from package import name`` counts ``package.name`` too)."""
    import ast

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _protobuf_reached_from(module: str) -> list[str]:
    """Import chains from ``module`` to protobuf, following the model server's own
    modules (switchyard_common's status errors carry protobuf details by design)."""
    chains: list[str] = []
    seen = {module}
    queue = [(module, module)]
    while queue:
        current, chain = queue.pop()
        path = _module_file(current)
        assert path is not None, current
        for name in sorted(_imported_modules(path, current)):
            if _is_protobuf(name):
                chains.append(f"{chain} -> {name}")
            elif name.startswith("switchyard_modelserver") and name not in seen:
                seen.add(name)
                if _module_file(name) is not None:
                    queue.append((name, f"{chain} -> {name}"))
    return chains


def test_backends_never_import_protobuf() -> None:
    """Backends see only the domain's types: no module under backends/ imports protobuf
    or the generated contract, directly or through another model-server module."""
    assert _protobuf_reached_from("switchyard_modelserver.serving.servicer"), (
        "the check sees nothing"
    )
    backends = _MODELSERVER_SRC / "switchyard_modelserver" / "backends"
    modules = [
        ".".join(path.relative_to(_MODELSERVER_SRC).with_suffix("").parts).removesuffix(".__init__")
        for path in sorted(backends.rglob("*.py"))
    ]
    assert "switchyard_modelserver.backends.cloud.openai" in modules
    reached = [chain for module in modules for chain in _protobuf_reached_from(module)]
    assert reached == []


def test_no_model_server_code_calls_context_abort() -> None:
    """Calls end through switchyard_common.status.abort (which sends the status's
    details) from the status boundary, never by a handler's own context.abort."""
    import ast

    calls = [
        f"{path.relative_to(_MODELSERVER_SRC)}:{node.lineno}"
        for path in sorted((_MODELSERVER_SRC / "switchyard_modelserver").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "abort"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "context"
    ]
    assert calls == []


def test_a_refused_stream_is_told_apart_from_other_failures() -> None:
    """HTTP/2 REFUSED_STREAM (never processed; sent again) as grpcio words it."""
    from switchyard.status import refused_stream

    refused = "Stream removed (RST_STREAM (Received RST_STREAM with error code 7))"
    assert refused_stream("UNAVAILABLE", refused)
    assert not refused_stream("INTERNAL", refused)
    cancelled = "Stream removed (RST_STREAM (Received RST_STREAM with error code 8))"
    assert not refused_stream("UNAVAILABLE", cancelled)  # CANCEL: it may have been processed
    assert not refused_stream("UNAVAILABLE", "failed to connect to all addresses")
    assert not refused_stream("UNAVAILABLE", None)


def test_vllm_refuses_tool_options_only_hermes_calls_can_honour() -> None:
    """With another tool parser, calls are the model's own (unconstrained): forcing one
    or at most one cannot be honoured and is refused naming the field, never ignored."""
    from switchyard_common.status import StatusError
    from switchyard_modelserver.backends.vllm_structured import check_tool_options
    from switchyard_modelserver.domain import (
        ChatTurn,
        GenerationRequest,
        Sampling,
        ToolChoice,
        ToolChoiceMode,
        ToolSpec,
    )

    def request(**fields: Any) -> GenerationRequest:
        fields.setdefault("tools", (ToolSpec("f"),))
        return GenerationRequest("m", None, (ChatTurn("user", "hi"),), Sampling(), **fields)

    def refused(given: GenerationRequest, parser: str = "llama3_json") -> list[str]:
        try:
            check_tool_options(given, parser, "m")
        except StatusError as error:
            return [v.field for v in error.details.field_violations]
        return []

    assert refused(request()) == []
    assert refused(request(parallel_tool_calls=False)) == ["parallel_tool_calls"]
    assert refused(request(tool_choice=ToolChoice(ToolChoiceMode.REQUIRED))) == ["tool_choice"]
    assert refused(request(tool_choice=ToolChoice(ToolChoiceMode.NAMED, "f"))) == ["tool_choice"]
    # tool_choice none: no calls, nothing to honour; hermes: constrained, all honoured
    none = ToolChoice(ToolChoiceMode.NONE)
    assert refused(request(tool_choice=none, parallel_tool_calls=False)) == []
    assert refused(request(parallel_tool_calls=False), parser="hermes") == []


def test_a_strict_tool_is_refused_on_a_model_that_cannot_hold_calls_to_schemas() -> None:
    """Whatever the backend (a third-party one too): a model whose card lacks
    STRICT_TOOLS refuses a strict tool naming ``tools[i].strict``, before the backend
    sees it; with tool choice none no call is made, so it is accepted."""
    from switchyard_common.status import StatusError
    from switchyard_modelserver.domain import (
        Capability,
        ChatTurn,
        GenerationRequest,
        ModelCard,
        Sampling,
        ToolChoice,
        ToolChoiceMode,
        ToolSpec,
    )
    from switchyard_modelserver.serving import capability_check

    tools = (ToolSpec("f"), ToolSpec("g", strict=True))

    def refused(capabilities: set[Capability], **fields: Any) -> list[str]:
        card = ModelCard("m", 512, capabilities=frozenset({Capability.CHAT, *capabilities}))
        given = GenerationRequest("m", None, (ChatTurn("user", "hi"),), Sampling(), **fields)
        try:
            capability_check.check(card, given, "plugin")
        except StatusError as error:
            return [v.field for v in error.details.field_violations]
        return []

    assert refused({Capability.TOOLS}, tools=tools) == ["tools[1].strict"]
    assert refused({Capability.TOOLS}, tools=tools[:1]) == []
    none = ToolChoice(ToolChoiceMode.NONE)
    assert refused({Capability.TOOLS}, tools=tools, tool_choice=none) == []
    assert refused({Capability.TOOLS, Capability.STRICT_TOOLS}, tools=tools) == []
    assert refused(set(), tools=tools) == ["tools"]  # no tools at all: said once


def test_every_example_config_the_readme_shows_is_the_file_as_it_is() -> None:
    """The README quotes each example under its path (the file's first line, a comment
    naming it, aside): the quote and the file never drift apart."""
    import re

    readme = (REPO / "README.md").read_text()
    quoted = re.findall(
        r"^`(deploy/examples/[\w.-]+\.yaml)`:\n\n```yaml\n(.*?)```", readme, re.M | re.S
    )
    assert len(quoted) >= 7, "the README lost its quoted example configs"
    drifted = [
        path for path, block in quoted if (REPO / path).read_text().split("\n", 1)[1] != block
    ]
    assert not drifted, f"README quotes differ from the files: {drifted}"


@pytest.mark.parametrize(
    ("options", "holds"),
    [
        ({}, True),  # OpenAI's own API
        ({"base_url": "https://api.openai.com/v1"}, True),
        ({"base_url": "http://vllm.internal:8000/v1"}, False),  # may ignore function.strict
        ({"base_url": "http://vllm.internal:8000/v1", "strict_tools": True}, True),
        ({"strict_tools": False}, False),
    ],
)
def test_the_openai_backend_claims_strict_tools_only_for_a_server_that_holds_them(
    options: dict[str, Any], holds: bool
) -> None:
    from switchyard_modelserver.backends.cloud.openai import OpenAIBackend
    from switchyard_modelserver.domain import Capability

    backend = OpenAIBackend.from_options({"models": [{"id": "gpt"}], **options})
    assert isinstance(backend, OpenAIBackend)
    assert (Capability.STRICT_TOOLS in backend.card("gpt").capabilities) is holds


def test_a_route_lists_a_routed_capability_one_replica_has_and_any_other_only_if_all_do() -> None:
    """Tools, strict tools, JSON output... are routed by (a request needing one goes to
    a replica that has it); CountTokens and adapters are not (it may land anywhere)."""
    from switchyard.v1 import llm_service_pb2 as pb
    from switchyard_router.operations.model_listing import route_capabilities

    cloud = [pb.CAPABILITY_CHAT, pb.CAPABILITY_TOOLS, pb.CAPABILITY_STRICT_TOOLS]
    counting = [pb.CAPABILITY_CHAT, pb.CAPABILITY_COUNT_TOKENS, pb.CAPABILITY_ADAPTERS]
    assert route_capabilities([cloud, counting]) == sorted(
        [pb.CAPABILITY_CHAT, pb.CAPABILITY_TOOLS, pb.CAPABILITY_STRICT_TOOLS]
    )
    assert route_capabilities([counting]) == sorted(counting)
    assert route_capabilities([]) == []
