"""The Helm chart, rendered offline through the Helm SDK: lint, schema, Kubernetes
schemas, checkov, and the configs it renders loaded by the services' own loaders.

There is no cluster here; every check is on the rendered manifests.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import trustme
import yaml
from helmchart import (
    CHART,
    NAMESPACE,
    ROUTER_NAME,
    VALUES_DIR,
    chart,
    config_of,
    container,
    documents,
    find,
    load_values,
    manifests,
    of_kind,
    pool_name,
    render,
    rendered_files,
)

from switchyard_common.configfile import ConfigError
from switchyard_modelserver.backends.registry import backend_class
from switchyard_modelserver.config import load_modelserver_config
from switchyard_router.config import load_router_config

ROOT = Path(__file__).resolve().parents[1]
# A current Kubernetes release (kubernetes-validate bundles schemas up to 1.37).
KUBE_VERSION = "1.35.0"
VENV_BIN = Path(sys.executable).parent
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

# Checks skipped on purpose, each for a reason:
CHECKOV_SKIPS = {
    # Image digests: the chart supports `image.digest` (one values file sets it and
    # passes); tags stay the readable default for the other examples.
    "CKV_K8S_43",
    # imagePullPolicy Always: IfNotPresent with versioned tags or digests is the
    # safe default; Always adds a registry round trip to every pod start and
    # breaks nodes that pull from a local mirror only.
    "CKV_K8S_15",
    # Secrets as environment variables: the cloud SDKs read API keys from the
    # environment (`secretEnv`); mounted files are offered too (`secretFiles`).
    "CKV_K8S_35",
}

VALUES_FILES = sorted(p.name for p in VALUES_DIR.glob("*-values.yaml"))
ALL_VALUES = ["defaults", *VALUES_FILES]
# Where the chart mounts Secrets; configs name files under it.
SECRETS_DIR = "/var/run/switchyard/"


def merged_values(name: str) -> dict[str, Any]:
    return chart().merge_values(load_values(name))


def with_secrets(config: str, root: Path) -> str:
    """A rendered config whose Secret mounts point at test files under ``root``:
    certificates signed by one CA in each TLS folder and a key hash per API key file."""
    ca = trustme.CA()
    leaf = ca.issue_cert("switchyard.test")
    for path in sorted(set(re.findall(rf"{re.escape(SECRETS_DIR)}\S+", config))):
        local = root / path.removeprefix(SECRETS_DIR)
        local.parent.mkdir(parents=True, exist_ok=True)
        if local.name == "ca.crt":
            ca.cert_pem.write_to_path(str(local))
        elif local.name == "tls.crt":
            leaf.cert_chain_pems[0].write_to_path(str(local))
        elif local.name == "tls.key":
            leaf.private_key_pem.write_to_path(str(local))
        else:
            local.write_text(hashlib.sha256(local.name.encode()).hexdigest())
    return config.replace(SECRETS_DIR, f"{root}/")


# --- lint, schema, Kubernetes schemas, checkov --------------------------------


@pytest.mark.parametrize("values", ALL_VALUES)
def test_chart_lints_strictly(values: str) -> None:
    report = helm.lint(
        CHART,
        load_values(values),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("values", ALL_VALUES)
def test_values_pass_the_schema(values: str) -> None:
    chart().validate_schema(load_values(values))


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"routerr": {}}, "routerr"),
        (
            {
                "modelServers": [
                    {"name": "CPU", "backend": "llamacpp", "image": {"repository": "x"}}
                ]
            },
            "name",
        ),
        ({"modelServers": [{"name": "cpu", "image": {"repository": "x"}}]}, "backend"),
        ({"router": {"routes": [{"model": "m", "targets": [{"model": "m"}]}]}}, "cluster"),
        (
            {
                "router": {
                    "routes": [{"model": "m", "policy": "random", "targets": [{"cluster": "c"}]}]
                }
            },
            "policy",
        ),
        (
            {
                "router": {
                    "routes": [
                        {
                            "model": "m",
                            "healthy_panic_threshold": 150,
                            "targets": [{"cluster": "c"}],
                        }
                    ]
                }
            },
            "healthy_panic_threshold",
        ),
        ({"router": {"clusterDefaults": {"reconnect_backoff": {"max": 1}}}}, "reconnect_backoff"),
        (
            {"router": {"clusterDefaults": {"connection_pool": {"max_connections": 0}}}},
            "max_connections",
        ),
        (
            {"router": {"clusterDefaults": {"outlier_detection": {"max_ejection_percent": -1}}}},
            "max_ejection_percent",
        ),
        ({"router": {"config": {"listen": "0.0.0.0:1"}}}, "config"),
        ({"mesh": {"istio": {"enabled": True}, "linkerd": {"enabled": True}}}, "mesh"),
        ({"otel": {"sampler": "sometimes"}}, "sampler"),
        # TLS and keys only through router.tls / router.auth, which mount their Secrets.
        ({"router": {"config": {"tls": {"cert_file": "/x"}}}}, "config"),
        ({"router": {"config": {"auth": {"keys": []}}}}, "config"),
        ({"router": {"auth": {"keys": [{"id": "a", "sha256": "0" * 64}]}}}, "keys"),
        ({"router": {"tls": {"secretName": 1}}}, "secretName"),
        ({"router": {"auth": {"enabled": True, "keysSecret": "k", "keys": []}}}, "keys"),
        ({"router": {"auth": {"enabled": True, "keys": [{"id": "a"}]}}}, "keysSecret"),
        # Redis only through the redis values, which mount its password and CA.
        ({"router": {"config": {"redis": {"url": "redis://r:6379"}}}}, "config"),
        ({"redis": {"enabled": True}}, "url"),  # an existing Redis's URL, or deploy one
        ({"redis": {"enabled": True, "url": "http://redis:6379"}}, "url"),
        ({"redis": {"limitsBackend": "memcached"}}, "limitsBackend"),
        (
            {
                "router": {
                    "routes": [
                        {"model": "m", "targets": [{"cluster": "c"}], "cache": {"scope": "all"}}
                    ]
                }
            },
            "scope",
        ),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(values: dict[str, Any], named: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=named):
        chart().validate_schema(values)


@pytest.mark.parametrize("values", ALL_VALUES)
def test_every_manifest_validates_against_kubernetes_schemas(values: str, tmp_path: Path) -> None:
    docs = manifests(values)
    # kubernetes-validate knows the built-in kinds only; the ServiceMonitor (a
    # Prometheus Operator CRD) is checked field by field in its own test.
    builtin = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    result = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", KUBE_VERSION, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if line.startswith("INFO")]
    assert len(passed) == len(builtin), result.stdout


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One checkov run over every values file's manifests (one folder each)."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run `make setup` (scripts/setup.d/40-containers.sh)")
    root = tmp_path_factory.mktemp("checkov")
    for values in ALL_VALUES:
        (root / values).mkdir()
        (root / values / "rendered.yaml").write_text(yaml.safe_dump_all(manifests(values)))
    result = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(root),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
            "--skip-check",
            ",".join(sorted(CHECKOV_SKIPS)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.parametrize("values", ALL_VALUES)
def test_checkov_finds_nothing_beyond_the_justified_skips(
    values: str, checkov_report: dict[str, Any]
) -> None:
    results = checkov_report["results"]
    failed = [
        (f["check_id"], f["resource"])
        for f in results["failed_checks"]
        if f["file_path"].startswith(f"/{values}/")
    ]
    passed = [p for p in results["passed_checks"] if p["file_path"].startswith(f"/{values}/")]
    assert not failed
    assert passed
    skipped = {s["check_id"] for s in results["skipped_checks"]}
    assert skipped <= CHECKOV_SKIPS


# --- configs: rendered values are what the services load ----------------------


@pytest.mark.parametrize("values", ALL_VALUES)
def test_router_config_loads_with_the_router_loader(values: str, tmp_path: Path) -> None:
    docs = manifests(values)
    path = tmp_path / "router.yaml"
    path.write_text(with_secrets(config_of(docs, ROUTER_NAME), tmp_path / "secrets"))
    config = load_router_config(path)

    merged = merged_values(values)
    pools = merged["modelServers"]
    assert set(config.clusters) == {p["name"] for p in pools}
    for pool in pools:
        # Each pool's cluster is its headless Service, resolved with dns:///.
        port = pool.get("port", 50061)
        assert config.clusters[pool["name"]].endpoints == [
            f"dns:///{pool_name(pool['name'])}.{NAMESPACE}.svc.cluster.local:{port}"
        ]
    assert [r.model for r in config.routes] == [r["model"] for r in merged["router"]["routes"]]
    assert config.listen == f"0.0.0.0:{merged['router']['port']}"
    assert config.metrics_listen == f"0.0.0.0:{merged['metrics']['port']}"
    http = merged["router"]["http"]
    assert config.http_listen == (f"0.0.0.0:{http['port']}" if http["enabled"] else None)


def test_router_config_values_reach_the_loaded_config(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(config_of(manifests("everything-values.yaml"), ROUTER_NAME))
    config = load_router_config(path)
    assert config.access_log is False
    assert config.retry.num_retries == 3
    assert config.retry.per_try_timeout_seconds == 30
    # clusterDefaults apply to every pool; a pool's own `cluster` wins.
    assert config.clusters["gpu"].outlier_detection.consecutive_failures == 5
    assert config.clusters["cpu"].outlier_detection.consecutive_failures == 2
    assert config.clusters["cpu"].dns_refresh_seconds == 5
    assert config.clusters["cpu"].outlier_detection.max_ejection_percent == 34  # merged by key
    assert config.clusters["gpu"].reconnect_backoff.max_seconds == 0.5
    assert config.clusters["gpu"].connect_timeout_seconds == 3
    assert config.routes[0].policy == "round_robin"
    assert config.routes[0].healthy_panic_threshold == 25
    assert config.routes[0].max_in_flight == 500
    assert config.clusters["cpu"].connection_pool.max_connections == 4
    assert config.limits.max_in_flight == 2048  # the chart's default
    assert config.routes[1].policy == "prefix_affinity" and config.routes[1].affinity is not None
    assert config.routes[1].affinity.session_metadata_key == "x-session-id"
    assert config.routes[1].affinity.load_factor == 1.5
    assert [(t.cluster, t.priority, t.weight) for t in config.routes[0].targets] == [
        ("gpu", 0, 9),
        ("cpu", 0, 1),
        ("openai", 1, 1),
    ]


def test_a_route_to_a_missing_pool_fails_the_router_loader(tmp_path: Path) -> None:
    """The chart does not duplicate the router's checks: its loader catches this."""
    values = {"router": {"routes": [{"model": "m", "targets": [{"cluster": "gpu"}]}]}}
    docs = documents(render(values))
    path = tmp_path / "router.yaml"
    path.write_text(config_of(docs, ROUTER_NAME))
    with pytest.raises(ConfigError, match="unknown cluster 'gpu'"):
        load_router_config(path)


@pytest.mark.parametrize("values", ALL_VALUES)
def test_modelserver_configs_load_with_the_modelserver_loader(values: str, tmp_path: Path) -> None:
    docs = manifests(values)
    for pool in merged_values(values)["modelServers"]:
        path = tmp_path / f"{pool['name']}.yaml"
        path.write_text(with_secrets(config_of(docs, pool_name(pool["name"])), tmp_path / "s"))
        config = load_modelserver_config(path)
        assert config.backend.kind == pool["backend"]
        assert config.backend.options() == pool.get("backendOptions", {})
        # The backend's own options model accepts them (what the pod does at start).
        backend_class(config.backend.kind).options_model.model_validate(config.backend.options())
        assert config.listen == f"0.0.0.0:{pool.get('port', 50061)}"
        for key, value in pool.get("config", {}).items():
            loaded = getattr(config, key)
            if isinstance(value, dict):  # a section (e.g. limits): the keys the values set
                loaded = {name: getattr(loaded, name) for name in value}
            assert loaded == value


# --- the objects the issue asks for --------------------------------------------


@pytest.mark.parametrize("values", ALL_VALUES)
def test_router_service_port_is_named_grpc_with_app_protocol(values: str) -> None:
    service = find(manifests(values), "Service", ROUTER_NAME)
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["appProtocol"] == "grpc"
    assert grpc_port["targetPort"] == "grpc"


@pytest.mark.parametrize("values", ALL_VALUES)
def test_the_http_front_has_a_container_and_service_port_only_when_enabled(values: str) -> None:
    docs = manifests(values)
    http = merged_values(values)["router"]["http"]
    service_ports = {p["name"]: p for p in find(docs, "Service", ROUTER_NAME)["spec"]["ports"]}
    router = container(find(docs, "Deployment", ROUTER_NAME))
    container_ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    if not http["enabled"]:
        assert "http" not in service_ports and "http" not in container_ports
        return
    assert container_ports["http"] == http["port"]
    assert service_ports["http"] == {
        "name": "http", "port": http["servicePort"], "targetPort": "http",
        "protocol": "TCP", "appProtocol": "http",
    }  # fmt: skip
    if merged_values(values)["networkPolicy"]["enabled"]:
        policy = find(docs, "NetworkPolicy", ROUTER_NAME)
        open_ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
        assert "http" in open_ports


def test_http_probes_check_healthz_and_readyz_over_https_with_tls() -> None:
    values = {"router": {"http": {"enabled": True, "probes": True}, "tls": {"secretName": "t"}}}
    router = container(find(documents(render(values)), "Deployment", ROUTER_NAME))
    assert router["readinessProbe"]["httpGet"] == {
        "path": "/readyz", "port": "http", "scheme": "HTTPS"
    }  # fmt: skip
    assert router["livenessProbe"]["httpGet"]["path"] == "/healthz"
    mutual = {"router": {**values["router"], "tls": {"secretName": "t", "mutual": True}}}
    with pytest.raises(Exception, match="kubelet has no client certificate"):
        render(mutual)


@pytest.mark.parametrize("values", ALL_VALUES)
def test_each_pool_has_a_headless_service_selecting_its_pods(values: str) -> None:
    docs = manifests(values)
    for pool in merged_values(values)["modelServers"]:
        service = find(docs, "Service", pool_name(pool["name"]))
        deployment = find(docs, "Deployment", pool_name(pool["name"]))
        assert service["spec"]["clusterIP"] == "None"
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["appProtocol"] == "grpc"
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        # No other pool's pods behind this name.
        for other in merged_values(values)["modelServers"]:
            if other["name"] != pool["name"]:
                other_pods = find(docs, "Deployment", pool_name(other["name"]))
                other_labels = other_pods["spec"]["template"]["metadata"]["labels"]
                assert not service["spec"]["selector"].items() <= other_labels.items()


@pytest.mark.parametrize("values", ALL_VALUES)
def test_probes_are_native_grpc_and_readiness_checks_the_pool_model(values: str) -> None:
    """Kubernetes' gRPC probes cannot speak TLS: a listener with TLS gets TCP probes."""
    docs = manifests(values)
    merged = merged_values(values)
    router = container(find(docs, "Deployment", ROUTER_NAME))
    router_probe = "tcpSocket" if merged["router"]["tls"]["secretName"] else "grpc"
    http = merged["router"]["http"]
    if http["enabled"] and http["probes"]:  # the HTTP front's /healthz and /readyz
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert router[probe]["httpGet"] == {"path": path, "port": "http", "scheme": "HTTP"}
        router_probe = "httpGet"
    else:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert router[probe][router_probe]["port"] == 50051
    if router_probe == "grpc":
        assert router["readinessProbe"]["grpc"]["service"] == "switchyard.v1.LLMService"
    for pool in merged["modelServers"]:
        server = container(find(docs, "Deployment", pool_name(pool["name"])))
        port = pool.get("port", 50061)
        kind = "tcpSocket" if pool.get("tls", {}).get("secretName") else "grpc"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert set(server[probe]) & {"grpc", "tcpSocket"} == {kind}, probe
            assert server[probe][kind]["port"] == port, probe
        if kind == "grpc":
            expected = pool.get("readinessModel") or "switchyard.v1.LLMService"
            assert server["readinessProbe"]["grpc"]["service"] == expected


def served_names(kind: str, options: dict[str, Any]) -> set[str]:
    """The health names a pool's model server registers: every model's id and aliases
    (read from the backend's own options model; ids defaulted as the backends do)."""
    parsed: Any = backend_class(kind).options_model.model_validate(options)
    if hasattr(parsed, "models"):  # llama.cpp files, hosted models
        return {
            name
            for m in parsed.models
            for name in (getattr(m, "id", None) or m.file.removesuffix(".gguf"), *m.aliases)
        }
    return {parsed.id or parsed.model.rstrip("/").rsplit("/", 1)[-1], *parsed.aliases}


@pytest.mark.parametrize("values", ALL_VALUES)
def test_readiness_checks_a_name_the_pool_registers_in_health(values: str) -> None:
    """A readinessModel the server does not serve would keep every pod unready."""
    docs = manifests(values)
    for pool in merged_values(values)["modelServers"]:
        probe = container(find(docs, "Deployment", pool_name(pool["name"])))["readinessProbe"]
        if "grpc" not in probe:
            continue  # TLS: a TCP probe
        service = probe["grpc"]["service"]
        if service not in ("", "switchyard.v1.LLMService"):
            assert service in served_names(pool["backend"], pool.get("backendOptions", {})), pool[
                "name"
            ]


@pytest.mark.parametrize("values", ALL_VALUES)
def test_every_container_runs_non_root_read_only_without_escalation(values: str) -> None:
    for deployment in of_kind(manifests(values), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        security = container(deployment)["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"] for m in container(deployment)["volumeMounts"]}
        assert "/tmp" in mounts  # the only writable place


def test_router_has_a_disruption_budget_and_an_autoscaler() -> None:
    docs = manifests("defaults")
    pdb = find(docs, "PodDisruptionBudget", ROUTER_NAME)
    hpa = find(docs, "HorizontalPodAutoscaler", ROUTER_NAME)
    deployment = find(docs, "Deployment", ROUTER_NAME)
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": ROUTER_NAME,
    }
    # The autoscaler owns the replica count.
    assert "replicas" not in deployment["spec"]


def test_gpu_pool_requests_gpus_and_tolerates_the_gpu_taint() -> None:
    docs = manifests("gpu-vllm-values.yaml")
    deployment = find(docs, "Deployment", pool_name("gpu"))
    pod = deployment["spec"]["template"]["spec"]
    server = container(deployment)
    assert server["image"] == "registry.example.com/switchyard/modelserver-vllm:0.1.0"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert server["startupProbe"]["failureThreshold"] == 360
    # The CPU pool in the same release asks for no GPU.
    cpu = container(find(docs, "Deployment", pool_name("cpu")))
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]


@pytest.mark.parametrize("values", ALL_VALUES)
def test_files_a_pool_serves_are_on_its_mounted_volumes(values: str) -> None:
    """A vLLM model folder or a llama.cpp models_dir is on a volume the pod mounts."""
    docs = manifests(values)
    for pool in merged_values(values)["modelServers"]:
        options = pool.get("backendOptions", {})
        served = options.get("models_dir") or options.get("model")
        if not served or not served.startswith("/"):
            continue  # a hosted model, or a hub id
        mounts = [
            m["mountPath"]
            for m in container(find(docs, "Deployment", pool_name(pool["name"])))["volumeMounts"]
        ]
        assert any(served == m or served.startswith(m.rstrip("/") + "/") for m in mounts), (
            pool["name"],
            served,
            mounts,
        )


def test_api_keys_come_from_secrets_and_never_appear_in_manifests() -> None:
    docs = manifests("cloud-values.yaml")
    openai = container(find(docs, "Deployment", pool_name("openai")))
    key = next(e for e in openai["env"] if e["name"] == "OPENAI_API_KEY")
    assert key == {
        "name": "OPENAI_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "openai-credentials", "key": "api-key"}},
    }
    anthropic = find(docs, "Deployment", pool_name("anthropic"))
    mount = next(
        m
        for m in container(anthropic)["volumeMounts"]
        if m["mountPath"] == "/var/run/secrets/anthropic"
    )
    assert mount["readOnly"] is True
    volume = next(
        v for v in anthropic["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    assert volume["secret"]["secretName"] == "anthropic-credentials"
    assert not of_kind(docs, "Secret")


def test_network_policies_let_only_the_router_reach_the_pools() -> None:
    docs = manifests("everything-values.yaml")
    metrics_port = {"port": "metrics", "protocol": "TCP"}
    router_labels = find(docs, "Deployment", ROUTER_NAME)["spec"]["template"]["metadata"]["labels"]
    for pool in merged_values("everything-values.yaml")["modelServers"]:
        policy = find(docs, "NetworkPolicy", pool_name(pool["name"]))
        pool_labels = find(docs, "Deployment", pool_name(pool["name"]))["spec"]["template"][
            "metadata"
        ]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pool_labels.items()
        grpc_rules = [
            rule
            for rule in policy["spec"]["ingress"]
            if any(p["port"] == "grpc" for p in rule["ports"])
        ]
        assert len(grpc_rules) == 1
        (peer,) = grpc_rules[0]["from"]
        assert set(peer) == {"podSelector"}
        assert peer["podSelector"]["matchLabels"].items() <= router_labels.items()
        # ...and the selector does not also match the pool's own pods.
        assert not peer["podSelector"]["matchLabels"].items() <= pool_labels.items()
    # Prometheus (networkPolicy.metricsFrom) scrapes the metrics port of every pod.
    metrics_from = merged_values("everything-values.yaml")["networkPolicy"]["metricsFrom"]
    for policy in of_kind(docs, "NetworkPolicy"):
        rules = [r for r in policy["spec"]["ingress"] if r["ports"] == [metrics_port]]
        assert [r["from"] for r in rules] == [metrics_from], policy["metadata"]["name"]
    disabled = chart().render({"networkPolicy": {"enabled": False}}, namespace=NAMESPACE)
    assert "NetworkPolicy" not in "".join(disabled.values())


def test_mesh_switches_add_the_injection_markers() -> None:
    for values, check in [
        ("mesh-values.yaml", "istio"),
        ("linkerd-values.yaml", "linkerd"),
        ("defaults", "none"),
    ]:
        for deployment in of_kind(manifests(values), "Deployment"):
            meta = deployment["spec"]["template"]["metadata"]
            istio = meta["labels"].get("sidecar.istio.io/inject")
            linkerd = meta.get("annotations", {}).get("linkerd.io/inject")
            assert (istio, linkerd) == {
                "istio": ("true", None),
                "linkerd": (None, "enabled"),
                "none": (None, None),
            }[check], (values, deployment["metadata"]["name"])
            # gRPC is HTTP/2 both meshes detect (appProtocol: grpc): no opaque ports.
            assert not any("opaque-ports" in key for key in meta.get("annotations", {}))


def test_otlp_settings_reach_every_container() -> None:
    docs = manifests("everything-values.yaml")
    for deployment in of_kind(docs, "Deployment"):
        env = {e["name"]: e.get("value") for e in container(deployment).get("env", [])}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4317"
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
        assert env["OTEL_SERVICE_NAME"].startswith("switchyard-")
        assert "deployment.environment=staging" in env["OTEL_RESOURCE_ATTRIBUTES"]
        assert env["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] == "true"
    for deployment in of_kind(manifests("defaults"), "Deployment"):
        names = {e["name"] for e in container(deployment).get("env", [])}
        assert not any(n.startswith("OTEL_") for n in names)


def test_service_monitor_scrapes_the_metrics_port_of_router_and_pools() -> None:
    docs = manifests("everything-values.yaml")
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    selected = [
        s["metadata"]["name"]
        for s in of_kind(docs, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert sorted(selected) == sorted(
        [ROUTER_NAME] + [pool_name(p) for p in ("gpu", "cpu", "openai")]
    )
    for name in selected:
        service = find(docs, "Service", name)
        assert "metrics" in [p["name"] for p in service["spec"]["ports"]]
    assert not of_kind(manifests("defaults"), "ServiceMonitor")


def test_notes_print_a_grpcurl_line_for_the_first_route() -> None:
    notes = rendered_files("gpu-vllm-values.yaml")["switchyard/templates/NOTES.txt"]
    line = next(line.strip() for line in notes.splitlines() if "grpcurl" in line)
    assert line.startswith("grpcurl -plaintext -d '")
    request = json.loads(line.split("'")[1])
    assert request["model"] == "llama-3.1-8b-instruct"
    assert line.endswith("localhost:50051 switchyard.v1.LLMService/Generate")
    assert f"port-forward service/{ROUTER_NAME} 50051:50051" in notes


def test_notes_grpcurl_lines_use_tls_and_a_key_when_the_router_asks_for_them() -> None:
    notes = rendered_files("secure-values.yaml")["switchyard/templates/NOTES.txt"]
    lines = [line.strip() for line in notes.splitlines() if line.strip().startswith("grpcurl")]
    assert len(lines) == 2
    for line in lines:
        assert "-plaintext" not in line
        assert f"-cacert ca.crt -authority {ROUTER_NAME}.{NAMESPACE}.svc" in line
        assert "-cert client.crt -key client.key" in line  # router.tls.mutual
        assert '-H "authorization: Bearer $SWITCHYARD_API_KEY"' in line


def test_chart_has_one_template_per_component() -> None:
    templates = sorted(p.name for p in (CHART / "templates").iterdir())
    assert templates == [
        "NOTES.txt",
        "_helpers.tpl",
        "modelservers.yaml",
        "redis.yaml",
        "router.yaml",
        "serviceaccount.yaml",
        "servicemonitor.yaml",
    ]


def test_tls_auth_and_limits_from_values_reach_the_loaded_configs(tmp_path: Path) -> None:
    docs = manifests("secure-values.yaml")
    secrets = tmp_path / "secrets"
    path = tmp_path / "router.yaml"
    path.write_text(with_secrets(config_of(docs, ROUTER_NAME), secrets))
    router = load_router_config(path)
    assert router.tls is not None and router.tls.client_ca_file == secrets / "tls" / "ca.crt"
    assert router.auth is not None
    assert [(k.id, k.models) for k in router.auth.keys] == [
        ("web-app", ["assistant"]),
        ("batch-jobs", None),
    ]
    assert router.auth.keys[0].sha256_file == secrets / "api-keys" / "web-app.sha256"
    assert router.limits.max_request_bytes == 1048576
    upstream = router.clusters["cpu"].tls
    assert upstream is not None  # the pool has TLS, so the router's channel to it does
    assert (upstream.ca_file, upstream.cert_file) == (
        secrets / "upstream-tls" / "ca.crt",
        secrets / "upstream-tls" / "tls.crt",
    )
    path = tmp_path / "cpu.yaml"
    path.write_text(with_secrets(config_of(docs, pool_name("cpu")), secrets))
    server = load_modelserver_config(path)
    assert server.tls is not None and server.tls.client_ca_file == secrets / "tls" / "ca.crt"
    assert server.limits.max_tokens == 1024


def test_files_the_configs_name_are_in_the_secrets_mounted_there() -> None:
    docs = manifests("secure-values.yaml")
    expected = {
        ROUTER_NAME: {
            "tls": "switchyard-router-tls",
            "upstream-tls": "switchyard-router-client",
            "api-keys": "switchyard-api-keys",
        },
        pool_name("cpu"): {"tls": "switchyard-cpu-tls"},
    }
    for name, folders in expected.items():
        deployment = find(docs, "Deployment", name)
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
        named = set(re.findall(rf"{re.escape(SECRETS_DIR)}(\S+)", config_of(docs, name)))
        assert {file.split("/")[0] for file in named} == set(folders)
        for folder, secret in folders.items():
            mount = mounts[SECRETS_DIR + folder]
            assert mount["readOnly"] is True
            assert volumes[mount["name"]]["secret"]["secretName"] == secret


def test_a_pool_with_tls_needs_the_routers_upstream_ca() -> None:
    values = load_values("secure-values.yaml")
    values["router"]["upstreamTLS"] = {"secretName": ""}
    with pytest.raises(Exception, match=r"router\.upstreamTLS\.secretName"):
        render(values)


def test_keys_on_health_would_fail_the_probes_so_the_chart_refuses_them() -> None:
    open_services = ["grpc.reflection.v1.ServerReflection"]
    auth = {"enabled": True, "keysSecret": "keys", "keys": [{"id": "a"}]}
    values: dict[str, Any] = {"router": {"auth": {**auth, "openServices": open_services}}}
    with pytest.raises(Exception, match=r"openServices must include grpc\.health\.v1\.Health"):
        render(values)
    open_services.append("grpc.health.v1.Health")
    assert "grpc.health.v1.Health" in config_of(documents(render(values)), ROUTER_NAME)


# --- compose --------------------------------------------------------------------


def test_compose_file_configs_load_and_point_at_each_other() -> None:
    deploy = ROOT / "deploy"
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"router", "modelserver", "prometheus"}
    for name in ("router", "modelserver"):
        build = services[name]["build"]
        assert (deploy / build["context"] / build["dockerfile"]).is_file()
        assert services[name]["read_only"] is True
    config_mounts = {
        name: next(v.split(":")[0] for v in services[name]["volumes"] if "/etc/switchyard/" in v)
        for name in ("router", "modelserver")
    }
    router = load_router_config(deploy / config_mounts["router"])
    modelserver = load_modelserver_config(deploy / config_mounts["modelserver"])
    (endpoint,) = router.clusters["cpu"].endpoints
    ms_port = modelserver.listen.rpartition(":")[2]
    assert endpoint == f"dns:///modelserver:{ms_port}"
    router_port = router.listen.rpartition(":")[2]
    assert services["router"]["ports"] == [f"${{SWITCHYARD_ROUTER_PORT:-50051}}:{router_port}"]
    healthcheck = "\n".join(services["modelserver"]["healthcheck"]["test"])
    assert f"127.0.0.1:{ms_port}" in healthcheck
    prometheus_mount = services["prometheus"]["volumes"][0].split(":")[0]
    prometheus = yaml.safe_load((deploy / prometheus_mount).read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert router.metrics_listen is not None and modelserver.metrics_listen is not None
    router_target = jobs["switchyard-router"]["static_configs"][0]["targets"][0]
    assert router_target == f"router:{router.metrics_listen.rpartition(':')[2]}"
    (sd,) = jobs["switchyard-modelserver"]["dns_sd_configs"]
    assert sd["names"] == ["modelserver"]
    assert str(sd["port"]) == modelserver.metrics_listen.rpartition(":")[2]


# --- router fleets: Redis --------------------------------------------------------------

REDIS_NAME = f"{ROUTER_NAME.removesuffix('-router')}-redis"


def test_a_fleet_shares_the_redis_the_chart_deploys(tmp_path: Path) -> None:
    docs = manifests("fleet-values.yaml")
    path = tmp_path / "router.yaml"
    path.write_text(with_secrets(config_of(docs, ROUTER_NAME), tmp_path / "secrets"))
    router = load_router_config(path)
    assert router.limits_backend == "redis"
    assert router.redis is not None
    assert router.redis.url == f"redis://{REDIS_NAME}.{NAMESPACE}.svc.cluster.local:6379/0"
    assert router.redis.password_file == tmp_path / "secrets" / "redis" / "password"
    assert router.response_cache.backend == "redis"
    assert router.response_cache.max_entry_bytes == 262144  # router.config's keys stay
    assert router.auth is not None and router.auth.keys[0].token_budget is not None
    assert router.routes[0].cache is not None and router.routes[0].cache.ttl_seconds == 600
    redis = find(docs, "Deployment", REDIS_NAME)
    assert redis["spec"]["replicas"] == 1
    args = container(redis)["args"]
    assert args[args.index("--maxmemory") + 1] == "64mb"
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-ttl"
    assert args[args.index("--save") + 1] == ""  # nothing on disk
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    (password,) = container(redis)["env"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "switchyard-redis", "key": "password"}
    service = find(docs, "Service", REDIS_NAME)
    assert (
        service["spec"]["selector"].items()
        <= redis["spec"]["template"]["metadata"]["labels"].items()
    )
    # The router reads the same Secret as a file.
    deployment = find(docs, "Deployment", ROUTER_NAME)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
    assert volumes[mounts[f"{SECRETS_DIR}redis"]]["secret"]["secretName"] == "switchyard-redis"


def test_only_the_router_reaches_the_deployed_redis() -> None:
    docs = manifests("fleet-values.yaml")
    router_labels = find(docs, "Deployment", ROUTER_NAME)["spec"]["template"]["metadata"]["labels"]
    policy = find(docs, "NetworkPolicy", REDIS_NAME)
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= router_labels.items()
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]


def test_an_existing_redis_is_used_by_its_url_and_none_is_deployed(tmp_path: Path) -> None:
    values = {
        **load_values("fleet-values.yaml"),
        "redis": {
            "enabled": True,
            "url": "rediss://redis.example.internal:6380/2",
            "passwordSecret": "managed-redis",
            "tls": {"caSecret": "managed-redis-ca"},
            "cacheBackend": "memory",
            "whenUnreachable": "refuse",
        },
    }
    docs = documents(render(values))
    assert not [d for d in docs if d["metadata"]["name"] == REDIS_NAME]
    path = tmp_path / "router.yaml"
    path.write_text(with_secrets(config_of(docs, ROUTER_NAME), tmp_path / "secrets"))
    router = load_router_config(path)
    assert router.redis is not None
    assert router.redis.url == "rediss://redis.example.internal:6380/2"
    assert router.redis.when_unreachable == "refuse"
    assert router.redis.tls is not None
    assert router.redis.tls.ca_file == tmp_path / "secrets" / "redis-tls" / "ca.crt"
    assert (router.limits_backend, router.response_cache.backend) == ("redis", "memory")


def test_without_redis_the_router_counts_alone() -> None:
    config = yaml.safe_load(config_of(manifests("defaults"), ROUTER_NAME))
    assert "redis" not in config and "limits_backend" not in config
    assert not [d for d in manifests("defaults") if d["metadata"]["name"] == REDIS_NAME]
