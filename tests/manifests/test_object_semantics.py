"""What schemas cannot see: the rendered objects fit together and are secure."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .support import REPO, containers, env_of, named, of_kind, tool

NAMESPACE = tool.NAMESPACE


def pods(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    """(Deployment name, pod labels) of every workload."""
    return [
        (d["metadata"]["name"], d["spec"]["template"]["metadata"]["labels"])
        for d in of_kind(objects, "Deployment")
    ]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def service_for(objects: list[dict[str, Any]], host: str) -> dict[str, Any]:
    return named(objects, "Service", host)


def all_renders(
    scenario_objects: dict[str, list[dict[str, Any]]], everything_on: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    return {**scenario_objects, "everything-on": everything_on}


@pytest.fixture(scope="module")
def renders(
    scenario_objects: dict[str, list[dict[str, Any]]], everything_on_objects: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    return all_renders(scenario_objects, everything_on_objects)


# --- routing fits the workloads ---------------------------------------------


def test_every_virtualservice_subset_exists_in_a_destinationrule(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    for label, objects in renders.items():
        subsets = {
            (dr["spec"]["host"], s["name"])
            for dr in of_kind(objects, "DestinationRule")
            for s in dr["spec"].get("subsets", [])
        }
        for vs in of_kind(objects, "VirtualService"):
            for http in vs["spec"]["http"]:
                for route in http["route"]:
                    destination = route["destination"]
                    if "subset" in destination:
                        assert (destination["host"], destination["subset"]) in subsets, (
                            label,
                            vs["metadata"]["name"],
                            destination,
                        )


def test_every_subset_selects_a_workload_behind_its_host(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    for label, objects in renders.items():
        for dr in of_kind(objects, "DestinationRule"):
            service = service_for(objects, dr["spec"]["host"])
            for subset in dr["spec"].get("subsets", []):
                selector = {**service["spec"]["selector"], **subset["labels"]}
                selected = [name for name, labels in pods(objects) if selects(selector, labels)]
                assert len(selected) == 1, (label, dr["metadata"]["name"], subset["name"], selected)


def test_every_mesh_destination_is_a_service_or_service_entry(
    scenario_objects: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    objects = scenario_objects[scenario]
    known = {s["metadata"]["name"] for s in of_kind(objects, "Service")}
    known |= {h for se in of_kind(objects, "ServiceEntry") for h in se["spec"]["hosts"]}
    hosts = {
        r["destination"]["host"]
        for vs in of_kind(objects, "VirtualService")
        for http in vs["spec"]["http"]
        for r in http["route"]
    }
    hosts |= {dr["spec"]["host"] for dr in of_kind(objects, "DestinationRule")}
    assert hosts <= known
    # Short names: the rules read the same here and in the local mesh.
    assert all("." not in h for h in hosts - {"worldtimeapi.org"})


def test_every_workload_is_distinct_by_app_and_env(default_objects: list[dict[str, Any]]) -> None:
    keys = [(labels["app"], labels["env"]) for _, labels in pods(default_objects)]
    assert len(keys) == len(set(keys)) == 7


WORKLOADS = {
    # Deployment: (app, version, env, UPSTREAM_URI or None, extra env)
    "front": ("front", "v1", "prod", "http://middleware-svc/", {}),
    "middle-dev": ("middle", "v3", "dev", "http://core-svc/", {}),
    "middle-canary": ("middle", "v2", "canary", "http://core-svc/", {}),
    "middle-prod": ("middle", "v1", "prod", "http://core-svc/", {}),
    "core-prod": (
        "core",
        "v1",
        "prod",
        "http://worldtimeapi.org/api/timezone/Asia/Jakarta",
        {"FALLBACK_URI": "http://clock-svc/"},
    ),
    "core-test": ("core", "v2", "test", "http://clock-svc/", {}),
    "clock": ("clock", "v1", "prod", None, {}),
}


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workload_has_its_labels_and_environment(
    default_objects: list[dict[str, Any]], name: str
) -> None:
    app, version, env, upstream, extra = WORKLOADS[name]
    deployment = named(default_objects, "Deployment", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert (labels["app"], labels["version"], labels["env"]) == (app, version, env)
    expected = {
        "SERVICE_NAME": app,
        "SERVICE_VERSION": version,
        "SERVICE_ENV": env,
        "HOST": "0.0.0.0",
        "PORT": "8080",
        "EGRESS_RETRIES": "0",
        "PASSTHROUGH_HEADERS": "x-dev-user",
        "FAULT_INJECTION": "false",
        "DRAIN_SECONDS": "5",
        "SHUTDOWN_TIMEOUT": "15",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_PROPAGATORS": "tracecontext,baggage",
        **({"UPSTREAM_URI": upstream} if upstream else {}),
        **extra,
    }
    assert env_of(deployment) == expected


def test_deployment_selectors_match_their_pods(default_objects: list[dict[str, Any]]) -> None:
    for d in of_kind(default_objects, "Deployment"):
        assert selects(
            d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]
        )


@pytest.mark.parametrize(
    ("service", "host"),
    [
        ("front", "front-svc"),
        ("middle", "middleware-svc"),
        ("core", "core-svc"),
        ("clock", "clock-svc"),
    ],
)
def test_each_service_has_a_service_account_service_and_pdb(
    default_objects: list[dict[str, Any]], service: str, host: str
) -> None:
    svc = named(default_objects, "Service", host)["spec"]
    assert svc["selector"] == {"app": service}
    assert svc["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]
    assert (
        named(default_objects, "ServiceAccount", service)["automountServiceAccountToken"] is False
    )
    pdb = named(default_objects, "PodDisruptionBudget", service)["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": {"app": service}}}
    for d in of_kind(default_objects, "Deployment"):
        if d["spec"]["template"]["metadata"]["labels"]["app"] == service:
            assert d["spec"]["template"]["spec"]["serviceAccountName"] == service


# --- security --------------------------------------------------------------------


def gateway_identity_installed_by_the_scripts() -> str:
    common = (REPO / "scripts" / "cluster" / "common.sh").read_text()
    namespace = re.search(r"^GATEWAY_NAMESPACE=\$\{GATEWAY_NAMESPACE:-([\w-]+)\}", common, re.M)
    release = re.search(r"^GATEWAY_RELEASE=\$\{GATEWAY_RELEASE:-([\w-]+)\}", common, re.M)
    assert namespace and release
    # Istio's gateway chart names the ServiceAccount after the release.
    return f"cluster.local/ns/{namespace[1]}/sa/{release[1]}"


def principals(policy: dict[str, Any]) -> list[str]:
    return [
        p
        for rule in policy["spec"].get("rules", [])
        for f in rule.get("from", [])
        for p in f["source"].get("principals", [])
    ]


def test_every_principal_names_an_existing_service_account(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    for label, objects in renders.items():
        accounts = {
            f"cluster.local/ns/{NAMESPACE}/sa/{sa['metadata']['name']}"
            for sa in of_kind(objects, "ServiceAccount")
        }
        accounts.add(gateway_identity_installed_by_the_scripts())
        for policy in of_kind(objects, "AuthorizationPolicy"):
            assert set(principals(policy)) <= accounts, (label, policy["metadata"]["name"])


CALLERS = {
    "front": ["cluster.local/ns/istio-ingress/sa/istio-ingressgateway"],
    "middle": [f"cluster.local/ns/{NAMESPACE}/sa/front"],
    "core": [f"cluster.local/ns/{NAMESPACE}/sa/middle"],
    "clock": [f"cluster.local/ns/{NAMESPACE}/sa/core"],
}


@pytest.mark.parametrize("service", sorted(CALLERS))
def test_each_service_accepts_only_its_caller_and_metrics_scraping(
    default_objects: list[dict[str, Any]], service: str
) -> None:
    policy = named(default_objects, "AuthorizationPolicy", service)["spec"]
    assert policy["selector"] == {"matchLabels": {"app": service}}
    assert policy["action"] == "ALLOW"
    caller_rule, metrics_rule = policy["rules"]
    assert caller_rule == {"from": [{"source": {"principals": CALLERS[service]}}]}
    assert metrics_rule == {
        "from": [{"source": {"namespaces": ["istio-system"]}}],
        "to": [{"operation": {"methods": ["GET"], "paths": ["/metrics"]}}],
    }


def test_everything_else_is_denied_and_mtls_is_strict(
    default_objects: list[dict[str, Any]],
) -> None:
    assert named(default_objects, "AuthorizationPolicy", "allow-nothing")["spec"] == {}
    (peer,) = of_kind(default_objects, "PeerAuthentication")
    assert peer["spec"] == {"mtls": {"mode": "STRICT"}}
    policies = [p for p in of_kind(default_objects, "AuthorizationPolicy") if p["spec"]]
    assert all(
        any(
            selects(p["spec"]["selector"]["matchLabels"], labels)
            for _, labels in pods(default_objects)
        )
        for p in policies
    )


CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_every_container_runs_locked_down(renders: dict[str, list[dict[str, Any]]]) -> None:
    for label, objects in renders.items():
        found = containers(objects)
        assert len(found) == 7
        for deployment, container in found:
            assert container["securityContext"] == CONTAINER_SECURITY, (label, deployment)
            assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
        for d in of_kind(objects, "Deployment"):
            spec = d["spec"]["template"]["spec"]
            assert spec["securityContext"] == {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            }
            assert spec["automountServiceAccountToken"] is False
            assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
            assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)


def test_no_image_is_latest_or_untagged(renders: dict[str, list[dict[str, Any]]]) -> None:
    for label, objects in renders.items():
        for deployment, container in containers(objects):
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert "/" not in tag and tag and tag != "latest", (label, deployment, image)
            assert re.fullmatch(r"localhost:5000/usvc/(front|middle|core|clock)", name), image


SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(password|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|client[_-]?secret)\b\s*[:=]\s*[\"']?[^\s\"'{}\[\],]{4,}"
)


def test_no_secret_objects_are_rendered(renders: dict[str, list[dict[str, Any]]]) -> None:
    assert all(o["kind"] != "Secret" for objects in renders.values() for o in objects)


def test_no_secret_values_are_in_the_chart_or_manifests() -> None:
    files = [p for p in [*tool.CHART.rglob("*"), *tool.K8S.rglob("*")] if p.is_file()]
    assert files
    for path in files:
        text = path.read_text()
        assert "-----BEGIN" not in text, path
        assert SECRET_ASSIGNMENT.search(text) is None, (path, SECRET_ASSIGNMENT.search(text))


def test_secret_scan_would_catch_a_credential() -> None:
    assert SECRET_ASSIGNMENT.search("    password: hunter22")
    assert SECRET_ASSIGNMENT.search("API_KEY=abcd1234")
    assert SECRET_ASSIGNMENT.search("imagePullSecrets: []") is None
    assert SECRET_ASSIGNMENT.search("automountServiceAccountToken: false") is None


def test_no_env_variable_carries_a_credential(renders: dict[str, list[dict[str, Any]]]) -> None:
    for objects in renders.values():
        for _, container in containers(objects):
            for variable in container["env"]:
                assert not re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", variable["name"]), variable


# --- lifecycle, health, metrics ------------------------------------------------------


def seconds(duration: str) -> float:
    value: float | None = tool.duration_seconds(duration)
    assert value is not None
    return value


@pytest.mark.parametrize(
    "values", [{}, {"lifecycle": {"preStopSleepSeconds": 3, "drainSeconds": 10}}]
)
def test_grace_period_outlasts_drain_and_shutdown_and_the_sidecar_outlives_the_app(
    values: dict[str, Any],
) -> None:
    for d in of_kind(tool.render_objects(values), "Deployment"):
        spec = d["spec"]["template"]["spec"]
        env = env_of(d)
        (container,) = spec["containers"]
        pre_stop = (
            container.get("lifecycle", {})
            .get("preStop", {})
            .get("exec", {})
            .get("command", ["sleep", "0"])
        )
        app_needs = int(pre_stop[1]) + int(env["DRAIN_SECONDS"]) + int(env["SHUTDOWN_TIMEOUT"])
        assert spec["terminationGracePeriodSeconds"] > app_needs
        proxy = dict(
            line.split(": ")
            for line in d["spec"]["template"]["metadata"]["annotations"][
                "proxy.istio.io/config"
            ].splitlines()
        )
        assert proxy["holdApplicationUntilProxyStarts"] == "true"
        assert seconds(proxy["terminationDrainDuration"]) >= int(env["DRAIN_SECONDS"]) + int(
            env["SHUTDOWN_TIMEOUT"]
        )


@pytest.mark.parametrize(
    "lifecycle",
    [
        {},
        {"preStopSleepSeconds": 3, "drainSeconds": 10, "shutdownTimeoutSeconds": 20},
        {"drainSeconds": 0, "shutdownTimeoutSeconds": 1, "terminationMarginSeconds": 2},
    ],
)
def test_grace_period_is_the_prestop_sleep_plus_the_apps_shutdown_bound_plus_the_margin(
    lifecycle: dict[str, int],
) -> None:
    # usvc.serve() ends within DRAIN_SECONDS + SHUTDOWN_TIMEOUT of SIGTERM, and
    # Kubernetes sends SIGTERM once the preStop hook is done: the grace period
    # must cover both, plus the margin for the process to exit.
    margin = lifecycle.get("terminationMarginSeconds", 10)
    for d in of_kind(tool.render_objects({"lifecycle": lifecycle}), "Deployment"):
        spec = d["spec"]["template"]["spec"]
        env = env_of(d)
        (container,) = spec["containers"]
        hook = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        pre_stop = int(hook["command"][1]) if hook else 0
        assert pre_stop == lifecycle.get("preStopSleepSeconds", 0)
        bound = int(env["DRAIN_SECONDS"]) + int(env["SHUTDOWN_TIMEOUT"])
        assert bound == lifecycle.get("drainSeconds", 5) + lifecycle.get(
            "shutdownTimeoutSeconds", 15
        )
        assert spec["terminationGracePeriodSeconds"] == pre_stop + bound + margin


def test_no_prestop_hook_by_default(default_objects: list[dict[str, Any]]) -> None:
    assert all("lifecycle" not in c for _, c in containers(default_objects))


def test_probes_use_healthz_and_readyz_on_the_http_port(
    default_objects: list[dict[str, Any]],
) -> None:
    for _, container in containers(default_objects):
        assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_each_container_runs_its_service_module_with_usvc_run(
    default_objects: list[dict[str, Any]],
) -> None:
    # The local mesh starts exactly this command, so it is spelt out in the manifest.
    for deployment in of_kind(default_objects, "Deployment"):
        app = deployment["spec"]["template"]["metadata"]["labels"]["app"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", "usvc", "run"]
        assert container["args"] == [f"services.{app}.app:svc"]


def test_pods_are_annotated_for_metrics_merging_and_sidecar_injection(
    default_objects: list[dict[str, Any]],
) -> None:
    for d in of_kind(default_objects, "Deployment"):
        template = d["spec"]["template"]["metadata"]
        annotations = template["annotations"]
        assert (
            annotations["prometheus.io/scrape"],
            annotations["prometheus.io/port"],
            annotations["prometheus.io/path"],
        ) == ("true", "8080", "/metrics")
        assert template["labels"]["sidecar.istio.io/inject"] == "true"


def test_sampling_is_set_by_the_telemetry_api(default_objects: list[dict[str, Any]]) -> None:
    (telemetry,) = of_kind(default_objects, "Telemetry")
    assert telemetry["spec"] == {"tracing": [{"randomSamplingPercentage": 100}]}


def test_addons_are_not_exposed_by_default(
    default_objects: list[dict[str, Any]], everything_on_objects: list[dict[str, Any]]
) -> None:
    def addon_routes(objects: list[dict[str, Any]]) -> set[str]:
        return {
            vs["metadata"]["name"]
            for vs in of_kind(objects, "VirtualService")
            if vs["metadata"]["name"].startswith("addon-")
        }

    assert addon_routes(default_objects) == set()
    assert addon_routes(everything_on_objects) == {"addon-grafana", "addon-kiali", "addon-jaeger"}


def test_the_framework_accepts_every_workload_environment(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    settings = pytest.importorskip("usvc.settings")
    for label, objects in renders.items():
        for d in of_kind(objects, "Deployment"):
            loaded = settings.Settings.from_env(d["metadata"]["name"], env_of(d))
            assert loaded.port == 8080, (label, d["metadata"]["name"])
            assert loaded.egress_retries == 0
