"""The images, built from deploy/docker/ and run: Generate through a containerised router.

A private dockerd starts for this module; the router and CPU model-server
images are built from the project's Dockerfiles on a local Debian base
(BASE_IMAGE build argument), then run with testcontainers on the host network
with the chart's hardening (read-only root, no capabilities, non-root user)
and the configs and arguments the Helm chart renders. The model is a tiny
GGUF written by the tests. What cannot run here skips with the reason, and
fails on CI (tests/dockerd.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import smollm2_path
from dockerd import (
    BASE_IMAGE,
    BASE_TARBALL,
    EngineUnavailableError,
    PrivateDockerd,
    build_context,
    image_wheels,
)
from helmchart import (
    NAMESPACE,
    ROUTER_NAME,
    chart,
    config_of,
    container,
    documents,
    find,
    pool_name,
    render,
)
from processes import free_port, health_status, unavailable, wait_until
from testcontainers.core.container import DockerContainer
from testcontainers.core.docker_client import DockerClient
from testcontainers.core.image import DockerImage
from tinymodel import write_tiny_model

from switchyard import Client

# The first test also waits for the images (a few minutes on a fresh machine).
pytestmark = pytest.mark.timeout(900)

ROUTER_IMAGE = "switchyard/router:test"
MODELSERVER_IMAGE = "switchyard/modelserver-cpu:test"
CLOUD_IMAGE = "switchyard/modelserver-cloud:test"
ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 90.0

# The chart, rendered for a CPU pool serving the tiny model.
CHART_VALUES: dict[str, Any] = {
    "router": {
        "image": {"repository": "switchyard/router", "tag": "test"},
        "routes": [{"model": "tiny", "targets": [{"cluster": "cpu"}]}],
    },
    "modelServers": [
        {
            "name": "cpu",
            "backend": "llamacpp",
            "image": {"repository": "switchyard/modelserver-cpu", "tag": "test"},
            "readinessModel": "tiny",
            "backendOptions": {
                "models_dir": "/models",
                "threads": 1,
                "context_length": 512,
                "models": [{"file": "tiny.gguf", "id": "tiny"}],
            },
        }
    ],
}


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[PrivateDockerd]:
    try:
        daemon = PrivateDockerd()
        daemon.wait_ready()
    except EngineUnavailableError as error:
        unavailable(str(error))
    saved = {k: os.environ.get(k) for k in ("DOCKER_HOST", "TESTCONTAINERS_RYUK_DISABLED")}
    os.environ["DOCKER_HOST"] = daemon.host
    # Ryuk (testcontainers' reaper) is an image from Docker Hub; the fixture cleans up.
    os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    yield daemon
    daemon.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def build_image(context: Path, tag: str, dockerfile: str) -> None:
    DockerImage(
        path=context,
        tag=tag,
        dockerfile_path=dockerfile,
        clean_up=False,
        buildargs={"BASE_IMAGE": BASE_IMAGE, "PIP_NO_INDEX": "1"},
        network_mode="host",
        rm=True,
        forcerm=True,
    ).build()


@pytest.fixture(scope="module")
def build_root(docker_engine: PrivateDockerd, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base image imported, and a build context with every wheel (no index needed)."""
    if not BASE_TARBALL.is_file():
        unavailable(f"{BASE_TARBALL} is missing: run `make setup` as root (scripts/setup.d/)")
    try:
        wheels = image_wheels()
    except EngineUnavailableError as error:
        unavailable(str(error))
    repository, tag = BASE_IMAGE.split(":")
    DockerClient().client.api.import_image_from_file(
        str(BASE_TARBALL), repository=repository, tag=tag
    )
    return build_context(tmp_path_factory.mktemp("context"), wheels)


@pytest.fixture(scope="module")
def images(build_root: Path) -> None:
    """The router and CPU model-server images, built from their Dockerfiles."""
    build_image(build_root, ROUTER_IMAGE, "deploy/docker/router.Dockerfile")
    build_image(build_root, MODELSERVER_IMAGE, "deploy/docker/modelserver-cpu.Dockerfile")


@dataclass
class Deployment:
    """The running pair: addresses on 127.0.0.1 and the containers."""

    router: DockerContainer
    modelserver: DockerContainer
    router_address: str
    modelserver_address: str
    router_metrics: str


def rendered_config(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(config_of(docs, name))
    return config


def write_readable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)  # the containers run as uid 10001
    return path


def run_hardened(image: str, args: list[str], mounts: list[tuple[Path, str]]) -> DockerContainer:
    """Starts a container as the chart runs the pod: read-only root, /tmp only, no caps."""
    started = (
        DockerContainer(image)
        .with_command(args)
        .with_tmpfs_mount("/tmp")
        .with_kwargs(
            network_mode="host",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
        )
    )
    for host, inside in mounts:
        started = started.with_volume_mapping(host, inside, "ro")
    return started.start()


def run_to_exit(image: str, args: list[str], entrypoint: str | None = None) -> tuple[int, str]:
    """Runs a command in a hardened container to its end: exit status and output."""
    options: dict[str, Any] = {"network_mode": "host", "read_only": True, "cap_drop": ["ALL"]}
    if entrypoint is not None:
        options["entrypoint"] = [entrypoint]
    started = DockerContainer(image).with_command(args).with_kwargs(**options)
    started.start()
    try:
        code = int(started.get_wrapped_container().wait(timeout=60)["StatusCode"])
        return code, logs(started)
    finally:
        started.stop()


def logs(container_: DockerContainer) -> str:
    out, err = container_.get_logs()
    return (out + err).decode(errors="replace")[-3000:]


def wait_health(address: str, service: str, container_: DockerContainer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while (status := health_status(address, service)) != "SERVING":
        if time.monotonic() > deadline or container_.status == "exited":
            raise AssertionError(
                f"{service or 'server'} at {address} is {status}:\n{logs(container_)}"
            )
        time.sleep(0.3)


@pytest.fixture(scope="module")
def deployment(images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("containers")
    workdir.chmod(0o755)
    models = workdir / "models"
    models.mkdir(mode=0o755)
    write_tiny_model(models / "tiny.gguf")
    (models / "tiny.gguf").chmod(0o644)

    docs = documents(render(CHART_VALUES))
    pool = pool_name("cpu")
    ms_port, router_port, router_metrics = free_port(), free_port(), free_port()

    # Host network instead of pod IPs and cluster DNS: only the addresses change.
    ms_config = rendered_config(docs, pool)
    ms_config["listen"] = f"127.0.0.1:{ms_port}"
    ms_config["metrics_listen"] = f"127.0.0.1:{free_port()}"
    router_config = rendered_config(docs, ROUTER_NAME)
    router_config["listen"] = f"127.0.0.1:{router_port}"
    router_config["metrics_listen"] = f"127.0.0.1:{router_metrics}"
    (endpoint,) = router_config["clusters"]["cpu"]["endpoints"]
    assert endpoint == f"dns:///{pool}.{NAMESPACE}.svc.cluster.local:50061"
    router_config["clusters"]["cpu"]["endpoints"] = [f"dns:///localhost:{ms_port}"]

    ms_file = write_readable(workdir / "modelserver.yaml", yaml.safe_dump(ms_config))
    router_file = write_readable(workdir / "router.yaml", yaml.safe_dump(router_config))
    # The images and arguments the chart's pods would run.
    ms_pod = container(find(docs, "Deployment", pool))
    router_pod = container(find(docs, "Deployment", ROUTER_NAME))
    assert (ms_pod["image"], router_pod["image"]) == (MODELSERVER_IMAGE, ROUTER_IMAGE)

    modelserver = run_hardened(
        ms_pod["image"],
        ms_pod["args"],
        [(ms_file, "/etc/switchyard/config.yaml"), (models, "/models")],
    )
    router = run_hardened(
        router_pod["image"], router_pod["args"], [(router_file, "/etc/switchyard/config.yaml")]
    )
    try:
        ms_address, router_address = f"127.0.0.1:{ms_port}", f"127.0.0.1:{router_port}"
        wait_health(ms_address, "tiny", modelserver)
        wait_health(router_address, "switchyard.v1.LLMService", router)
        yield Deployment(
            router, modelserver, router_address, ms_address, f"127.0.0.1:{router_metrics}"
        )
    finally:
        router.stop()
        modelserver.stop()


def test_images_run_as_the_non_root_user_the_chart_expects(images: None) -> None:
    client = DockerClient().client
    for image in (ROUTER_IMAGE, MODELSERVER_IMAGE):
        config = client.images.get(image).attrs["Config"]
        assert config["User"] == "10001:10001"
        pod_user = chart().merge_values({})["securityContext"]["runAsUser"]
        assert config["User"].split(":")[0] == str(pod_user)


def test_generate_through_the_containerised_router(deployment: Deployment) -> None:
    with Client(deployment.router_address, timeout=30) as client:
        answer = client.generate("tiny", "hello world", max_tokens=8, temperature=0)
    with Client(deployment.modelserver_address, timeout=30) as client:
        direct = client.generate("tiny", "hello world", max_tokens=8, temperature=0)
    assert answer.model == "tiny"
    assert answer.backend == "llamacpp"
    assert answer.usage.completion_tokens == 8
    assert answer.text and answer.text == direct.text


def test_stream_through_the_containerised_router(deployment: Deployment) -> None:
    with Client(deployment.router_address, timeout=30) as client:
        with client.stream("tiny", "hello world", max_tokens=8, temperature=0) as stream:
            chunks = [chunk.text for chunk in stream]
        whole = client.generate("tiny", "hello world", max_tokens=8, temperature=0)
    assert "".join(chunks) == whole.text


def test_modelserver_container_reports_health_per_model(deployment: Deployment) -> None:
    # What the readiness probe checks (readinessModel), and a name nobody serves.
    assert health_status(deployment.modelserver_address, "tiny") == "SERVING"
    assert health_status(deployment.modelserver_address, "nope") == "NOT_FOUND"


def test_router_container_serves_metrics(deployment: Deployment) -> None:
    with Client(deployment.router_address, timeout=30) as client:
        client.generate("tiny", "hi", max_tokens=2)
    with urllib.request.urlopen(f"http://{deployment.router_metrics}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    counted = [
        line
        for line in text.splitlines()
        if line.startswith("switchyard_router_requests_total{")
        and 'model="tiny"' in line
        and 'code="OK"' in line
        and 'method="Generate"' in line
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1, text[-2000:]


def test_compose_healthcheck_passes_inside_the_modelserver_image(deployment: Deployment) -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    command = compose["services"]["modelserver"]["healthcheck"]["test"]
    assert command[0] == "CMD"
    port = deployment.modelserver_address.rpartition(":")[2]
    argv = [part.replace("127.0.0.1:50061", f"127.0.0.1:{port}") for part in command[1:]]
    result = deployment.modelserver.exec(argv)
    assert result.exit_code == 0, result.output


def test_containers_drain_and_exit_zero_on_sigterm(deployment: Deployment) -> None:
    """Runs last: `docker stop` (SIGTERM, as Kubernetes sends) ends both cleanly."""
    for running in (deployment.router, deployment.modelserver):
        wrapped = running.get_wrapped_container()
        wrapped.stop(timeout=30)
        assert wrapped.wait(timeout=30)["StatusCode"] == 0, logs(running)


def test_cloud_image_carries_its_backends_and_no_engine(build_root: Path) -> None:
    dockerfile = ROOT / "deploy" / "docker" / "modelserver-cloud.Dockerfile"
    build_image(build_root, CLOUD_IMAGE, "deploy/docker/modelserver-cloud.Dockerfile")
    (default,) = [
        line.split("=", 1)[1]
        for line in dockerfile.read_text().splitlines()
        if line.startswith("ARG BACKENDS=")
    ]
    pyproject = tomllib.loads((ROOT / "services" / "modelserver" / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    backends = default.split(",")
    assert set(backends) <= set(extras), (backends, sorted(extras))

    # Loading a backend imports its SDK (--list-backends would only read entry
    # points, which name every backend whether or not its SDK is installed).
    load = "from switchyard_modelserver.backends.registry import backend_class as b\n"
    load += "".join(f"print(b({name!r}).kind)\n" for name in backends)
    code, output = run_to_exit(CLOUD_IMAGE, ["-c", load], entrypoint="python3")
    assert code == 0, output
    assert output.split()[: len(backends)] == backends, output  # stdout comes first
    code, output = run_to_exit(CLOUD_IMAGE, ["-c", "import llama_cpp"], entrypoint="python3")
    assert code != 0 and "No module named 'llama_cpp'" in output


# -- the compose file, started for real ------------------------------------------------

# Prometheus' image comes from Docker Hub, unreachable here: the same server from
# Debian's package (the one tests/test_prometheus.py runs), in an image made like it.
PROMETHEUS_IMAGE = "local/prometheus:debian"
PROMETHEUS_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY prometheus /bin/prometheus
RUN mkdir /prometheus && chown 65534:65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
"""


def _compose(project: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = ["docker-compose", "-p", project, "-f", str(ROOT / "deploy" / "compose.yaml")]
    return subprocess.run(
        [*command, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _prometheus_value(url: str, expression: str) -> float | None:
    query = urllib.parse.urlencode({"query": expression})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=5) as response:
            result = json.loads(response.read())["data"]["result"]
    except OSError:
        return None  # not up yet
    return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.fixture(scope="module")
def compose_images(images: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The images the compose file names: the ones built above under its tags, and a
    Prometheus image from Debian's binary."""
    if shutil.which("docker-compose") is None:
        unavailable("docker-compose is not installed (Debian docker-compose)")
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        unavailable("prometheus is not installed (Debian prometheus)")
    client = DockerClient().client
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    for service, built in (("router", ROUTER_IMAGE), ("modelserver", MODELSERVER_IMAGE)):
        repository, tag = compose["services"][service]["image"].rsplit(":", 1)
        client.images.get(built).tag(repository, tag)
    context = tmp_path_factory.mktemp("prometheus-image")
    shutil.copy(prometheus, context / "prometheus")
    (context / "Dockerfile").write_text(PROMETHEUS_DOCKERFILE)
    build_image(context, PROMETHEUS_IMAGE, "Dockerfile")


def test_the_compose_file_serves_generate_with_two_replicas_and_prometheus(
    compose_images: None, tmp_path: Path
) -> None:
    """`docker-compose up` (Debian's 1.29) on the compose file as shipped, with the
    README's model (SmolLM2) and `--scale modelserver=2`."""
    models = tmp_path / "models"
    models.mkdir(mode=0o755)
    (models / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(smollm2_path().read_bytes())
    (models / "SmolLM2-135M-Instruct.Q4_1.gguf").chmod(0o644)
    tmp_path.chmod(0o755)
    router_port, prometheus_port = free_port(), free_port()
    env = {
        "SWITCHYARD_MODELS_DIR": str(models),
        "SWITCHYARD_ROUTER_PORT": str(router_port),
        "SWITCHYARD_PROMETHEUS_PORT": str(prometheus_port),
        "SWITCHYARD_PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
    }
    project = f"sytest{free_port()}"
    up = _compose(project, env, "up", "-d", "--no-build", "--scale", "modelserver=2")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        router = f"127.0.0.1:{router_port}"
        wait_until(
            lambda: health_status(router, "switchyard.v1.LLMService") == "SERVING",
            "the compose router SERVING",
            timeout=START_TIMEOUT,
        )
        with Client(router, timeout=60) as client:
            # Both replicas found through the compose network's DNS (dns:///modelserver).
            wait_until(
                lambda: client.list_models()[0].healthy_replicas == 2,
                "two healthy model-server replicas behind the router",
                timeout=START_TIMEOUT,
            )
            answer = client.generate(
                "smollm2-135m-instruct", "The capital of France is", max_tokens=8, temperature=0
            )
        assert "Paris" in answer.text
        assert (answer.model, answer.backend) == ("smollm2-135m-instruct", "llamacpp")
        url = f"http://127.0.0.1:{prometheus_port}"
        counted = (
            'sum(switchyard_router_requests_total{job="switchyard-router",'
            'method="Generate",code="OK"})'
        )
        wait_until(
            lambda: (
                _prometheus_value(url, counted) == 1
                and _prometheus_value(url, 'count(up{job="switchyard-modelserver"} == 1)') == 2
            ),
            "Prometheus scraping the router and both replicas",
            timeout=START_TIMEOUT,
        )
    finally:
        logs_ = _compose(project, env, "logs", "--no-color", "--tail", "30")
        down = _compose(project, env, "down", "--volumes", "--timeout", "10")
    assert down.returncode == 0, down.stderr
    assert "Traceback" not in logs_.stdout, logs_.stdout
