"""A real Prometheus (Debian's 2.42, scripts/setup.d/45-prometheus.sh) scrapes both
services; `promtool check config` accepts the compose file's Prometheus config and
the scrape config the Prometheus Operator makes of the chart's ServiceMonitor."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from fleet import Fleet
from helmchart import NAMESPACE, manifests
from processes import free_port, unavailable, wait_until

from switchyard import Client

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_PROMETHEUS = ROOT / "deploy" / "compose" / "prometheus.yml"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (Debian prometheus; scripts/setup.d/)")
    return path


def _promtool_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("promtool"), "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Prometheus:
    """A Prometheus server on a free port with its own storage, in a temp folder."""

    def __init__(self, config: dict[str, Any], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = folder / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    _tool("prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, f"Prometheus ready at {self.url}", timeout=60)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result of an instant query through the HTTP API."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        """The single value an instant query returns (None: no series yet)."""
        result = self.query(expression)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _scraping(router_metrics: str, modelserver_metrics: str) -> dict[str, Any]:
    """The compose file's Prometheus config with its targets on this machine: the same
    jobs, scraped every second (compose finds the model servers by DNS; here they are
    listed)."""
    config: dict[str, Any] = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    config["global"]["scrape_interval"] = "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"switchyard-router", "switchyard-modelserver"}
    jobs["switchyard-router"]["static_configs"] = [{"targets": [router_metrics]}]
    del jobs["switchyard-modelserver"]["dns_sd_configs"]
    jobs["switchyard-modelserver"]["static_configs"] = [{"targets": [modelserver_metrics]}]
    return config


def test_a_real_prometheus_scrapes_both_services(fleet: Fleet, tmp_path: Path) -> None:
    server = fleet.scripted("server", [{"id": "m", "reply": "one two three"}], metrics=True)
    router = fleet.router(
        {
            "clusters": {"pool": {"endpoints": [server.address]}},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        },
        metrics=True,
    )
    assert router.metrics_address and server.metrics_address
    prometheus = Prometheus(
        _scraping(router.metrics_address, server.metrics_address), tmp_path / "prometheus"
    )
    try:
        assert _promtool_check(prometheus.config).returncode == 0
        with Client(router.address, max_retries=0) as client:
            for _ in range(5):
                assert client.generate("m", "x").text == "one two three"
            list(client.stream("m", "x"))
        routed = (
            'switchyard_router_requests_total{job="switchyard-router",'
            'method="Generate",model="m",code="OK"}'
        )
        served = (
            'switchyard_modelserver_requests_total{job="switchyard-modelserver",'
            'method="Generate",model="m",code="OK"}'
        )
        # Scraped every second: wait until a scrape after the requests has landed.
        wait_until(
            lambda: prometheus.value(routed) == 5 and prometheus.value(served) == 5,
            "Prometheus to hold both counters at 5",
            timeout=30,
        )
        for job in ("switchyard-router", "switchyard-modelserver"):
            assert prometheus.value(f'up{{job="{job}"}}') == 1, job
        tokens = prometheus.value(
            'sum(switchyard_modelserver_output_tokens_total{job="switchyard-modelserver"})'
        )
        assert tokens == 6 * 3
        histogram = prometheus.query(
            'switchyard_modelserver_time_to_first_token_seconds_count{model="m"}'
        )
        assert [float(series["value"][1]) for series in histogram] == [6]
    finally:
        prometheus.stop()


def test_promtool_accepts_the_compose_prometheus_config() -> None:
    result = _promtool_check(COMPOSE_PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_accepts_the_scrape_config_of_the_charts_service_monitor(
    tmp_path: Path,
) -> None:
    """The Prometheus Operator turns each ServiceMonitor endpoint into a scrape job
    over every pod of the Services its selector matches, on the named port. Debian's
    Prometheus is built without Kubernetes service discovery, so this job finds the
    same pods by the Services' cluster DNS names (the pools' Services are headless:
    one address per pod) on the port the monitor names, from what the chart renders."""
    docs = manifests("everything-values.yaml")
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    spec = monitor["spec"]
    (endpoint,) = spec["endpoints"]
    (namespace,) = spec["namespaceSelector"]["matchNames"]
    assert namespace == NAMESPACE
    selector = spec["selector"]["matchLabels"].items()
    services = [
        d for d in docs if d["kind"] == "Service" and selector <= d["metadata"]["labels"].items()
    ]
    assert len(services) >= 2  # the router and the pools
    names_by_port: dict[int, list[str]] = {}
    for service in services:
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        fqdn = f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
        names_by_port.setdefault(int(port["port"]), []).append(fqdn)
    job = {
        "job_name": f"serviceMonitor/{namespace}/{monitor['metadata']['name']}/0",
        "scrape_interval": endpoint["interval"],
        "scrape_timeout": endpoint["scrapeTimeout"],
        "metrics_path": endpoint["path"],
        "dns_sd_configs": [
            {"names": names, "type": "A", "port": port} for port, names in names_by_port.items()
        ],
    }
    config = tmp_path / "service-monitor.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [job]}))
    result = _promtool_check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool does check: a scrape timeout longer than the interval is refused.
    broken = {**job, "scrape_interval": "5s", "scrape_timeout": "10s"}
    config.write_text(yaml.safe_dump({"scrape_configs": [broken]}))
    assert _promtool_check(config).returncode != 0
