"""values.schema.json: a wrong value stops `helm install` with a message naming it."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import helm_python
import pytest

from .support import env_of, named, tool


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm_python.HelmValuesError) as error:
        tool.render(values)
    return str(error.value)


def test_default_values_satisfy_the_schema() -> None:
    with helm_python.Chart.load(tool.CHART) as chart:
        chart.validate_schema(chart.values)


@pytest.mark.parametrize(
    ("values", "named_in_message"),
    [
        ({"routing": {"scenario": "canry"}}, "/routing/scenario"),
        ({"image": {"tag": "latest"}}, "/image/tag"),
        ({"image": {"registry": "https://registry.example.com"}}, "/image/registry"),
        ({"routing": {"weights": {"canary": 120}}}, "/routing/weights/canary"),
        ({"routing": {"weights": {"canary": -1}}}, "/routing/weights/canary"),
        ({"routing": {"retries": {"atempts": 3}}}, "atempts"),
        (
            {"routing": {"retries": {"perTryTimeout": "2 seconds"}}},
            "/routing/retries/perTryTimeout",
        ),
        ({"routing": {"match": {"header": "X-Dev-User"}}}, "/routing/match/header"),
        ({"securityContext": {"runAsUser": 0}}, "/securityContext/runAsUser"),
        (
            {"services": {"front": {"workloads": {"front": {"replicas": -1}}}}},
            "/services/front/workloads/front/replicas",
        ),
        ({"services": {"middle": {"callers": ["frnt"]}}}, "/services/middle/callers/0"),
        ({"services": {"core": {"extraEnv": {"PORT": "9090"}}}}, "/services/core/extraEnv/PORT"),
        ({"mesh": {"mtlsMode": "DISABLE"}}, "/mesh/mtlsMode"),
        (
            {"telemetry": {"tracing": {"samplingPercentage": 101}}},
            "/telemetry/tracing/samplingPercentage",
        ),
        (
            {
                "routing": {
                    "stress": {"coreTrafficPolicy": {"outlierDetection": {"consecutive5xx": 5}}}
                }
            },
            "consecutive5xx",
        ),
        ({"replicaCount": 2}, "replicaCount"),
    ],
)
def test_wrong_value_is_refused_naming_it(values: dict[str, Any], named_in_message: str) -> None:
    assert named_in_message in render_error(values)


def test_weights_that_do_not_sum_to_100_are_refused_naming_them() -> None:
    with pytest.raises(
        helm_python.HelmRenderError, match=r"routing.weights: canary \(30\) \+ prod \(80\)"
    ):
        tool.render({"routing": {"weights": {"canary": 30}}})


def test_registry_tag_and_pull_secrets_come_from_values(manifests: ModuleType) -> None:
    objects = manifests.render_objects(
        {
            "image": {"registry": "registry.example.com:5000/team", "tag": "1.2.3"},
            "imagePullSecrets": [{"name": "regcred"}],
        }
    )
    clock = named(objects, "Deployment", "clock")["spec"]["template"]["spec"]
    assert clock["containers"][0]["image"] == "registry.example.com:5000/team/usvc/clock:1.2.3"
    assert clock["imagePullSecrets"] == [{"name": "regcred"}]
    assert named(objects, "ServiceAccount", "clock")["imagePullSecrets"] == [{"name": "regcred"}]


def test_tag_defaults_to_the_chart_app_version(default_objects: list[dict[str, Any]]) -> None:
    with helm_python.Chart.load(tool.CHART) as chart:
        app_version = chart.metadata["appVersion"]
    front = named(default_objects, "Deployment", "front")["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert front["image"] == f"localhost:5000/usvc/front:{app_version}"


def test_replicas_resources_and_env_are_set_per_workload(manifests: ModuleType) -> None:
    objects = manifests.render_objects(
        {
            "services": {
                "middle": {
                    "workloads": {
                        "middle-prod": {
                            "replicas": 3,
                            "resources": {"requests": {"cpu": "100m"}},
                            "extraEnv": {"LOG_LEVEL": "debug"},
                        }
                    }
                }
            }
        }
    )
    prod = named(objects, "Deployment", "middle-prod")
    assert prod["spec"]["replicas"] == 3
    assert prod["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "100m"}
    }
    assert env_of(prod)["LOG_LEVEL"] == "debug"
    assert "LOG_LEVEL" not in env_of(named(objects, "Deployment", "middle-dev"))


def test_otlp_endpoint_turns_the_app_exporter_on(manifests: ModuleType) -> None:
    objects = manifests.render_objects(
        {"telemetry": {"tracing": {"otlpEndpoint": "http://jaeger-collector.istio-system:4318"}}}
    )
    env = env_of(named(objects, "Deployment", "core-test"))
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger-collector.istio-system:4318"


def test_the_ingress_gateway_identity_is_configurable(manifests: ModuleType) -> None:
    objects = manifests.render_objects(
        {"mesh": {"ingressGateway": {"namespace": "gw", "serviceAccount": "edge"}}}
    )
    rules = named(objects, "AuthorizationPolicy", "front")["spec"]["rules"]
    assert rules[0]["from"][0]["source"]["principals"] == ["cluster.local/ns/gw/sa/edge"]
