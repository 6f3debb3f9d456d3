"""Istio objects against Istio's schemas (cloudcoil's models, unknown fields
forbidden) and against the rules only Istio's CEL and webhook would check."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .support import named, tool


def istio_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if tool.is_istio(o)]


def test_every_istio_object_passes_strict_validation(
    scenario_objects: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    objects = istio_objects(scenario_objects[scenario])
    assert {o["kind"] for o in objects} == {
        "Gateway",
        "VirtualService",
        "DestinationRule",
        "ServiceEntry",
        "Sidecar",
        "PeerAuthentication",
        "AuthorizationPolicy",
        "Telemetry",
    }
    assert [e for o in objects for e in tool.validate_istio(o)] == []


def test_optional_istio_objects_pass_strict_validation(
    everything_on_objects: list[dict[str, Any]],
) -> None:
    objects = istio_objects(everything_on_objects)
    assert any(o["metadata"]["name"] == "addon-grafana" for o in objects)
    assert [e for o in objects for e in tool.validate_istio(o)] == []


@pytest.fixture
def retry_vs(scenario_objects: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return copy.deepcopy(named(scenario_objects["retry"], "VirtualService", "middleware-svc"))


def test_misspelt_retries_attempts_is_rejected(retry_vs: dict[str, Any]) -> None:
    retry_vs["spec"]["http"][0]["retries"]["atempts"] = retry_vs["spec"]["http"][0]["retries"].pop(
        "attempts"
    )
    errors = tool.validate_istio(retry_vs)
    assert errors == [
        "VirtualService/middleware-svc: spec.http.0.retries.atempts: Extra inputs are not permitted"
    ]


def test_misspelt_route_weight_is_rejected(retry_vs: dict[str, Any]) -> None:
    split = retry_vs["spec"]["http"][1]
    split["route"][0]["wieght"] = split["route"][0].pop("weight")
    errors = tool.validate_istio(retry_vs)
    assert (
        "VirtualService/middleware-svc: spec.http.1.route.0.wieght: Extra inputs are not permitted"
        in errors
    )


@pytest.mark.parametrize(
    ("kind", "name", "mutate", "expected"),
    [
        (
            "ServiceEntry",
            "worldtimeapi",
            lambda o: o["spec"].update(resolution="DNZ"),
            "spec.resolution",
        ),
        (
            "PeerAuthentication",
            "default",
            lambda o: o["spec"]["mtls"].update(mode="STRICTER"),
            "spec.mtls.mode",
        ),
        (
            "AuthorizationPolicy",
            "front",
            lambda o: o["spec"].update(action="PERMIT"),
            "spec.action",
        ),
        (
            "DestinationRule",
            "core-svc",
            lambda o: o["spec"]["subsets"][0].update(lables={}),
            "lables",
        ),
        (
            "Gateway",
            "usvc-gateway",
            lambda o: o["spec"]["servers"][0]["port"].update(number="eighty"),
            "number",
        ),
        (
            "Telemetry",
            "tracing",
            lambda o: o["spec"]["tracing"][0].update(samplingRate=5),
            "samplingRate",
        ),
        (
            "VirtualService",
            "core-svc",
            lambda o: o["metadata"].update(lables={}),
            "metadata.lables",
        ),
    ],
)
def test_wrong_istio_fields_are_rejected_with_their_path(
    default_objects: list[dict[str, Any]], kind: str, name: str, mutate: Any, expected: str
) -> None:
    obj = copy.deepcopy(named(default_objects, kind, name))
    mutate(obj)
    errors = tool.validate_istio(obj)
    assert errors and all(f"{kind}/{name}" in e for e in errors)
    assert any(expected in e for e in errors), errors


def test_strict_models_are_a_private_copy() -> None:
    # Forbidding extra fields on cloudcoil's own classes would change them for
    # every other user in the process (the local mesh may parse with them too).
    import cloudcoil.models.istio.networking.v1 as shared

    strict = tool.strict_istio_module("networking.istio.io/v1")
    assert strict.VirtualService is not shared.VirtualService
    assert strict.Retries.model_config.get("extra") == "forbid"
    assert shared.Retries.model_config.get("extra") != "forbid"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2s", 2.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("1h", 3600.0),
        ("250us", 0.00025),
    ],
)
def test_go_durations_are_understood(text: str, seconds: float) -> None:
    assert tool.duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2", "2 s", "two seconds", "-1s", "s", "1d", ""])
def test_malformed_durations_are_not(text: str) -> None:
    assert tool.duration_seconds(text) is None


def vs_with(route: list[dict[str, Any]], **http: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "x"},
        "spec": {"hosts": ["x"], "http": [{"route": route, **http}]},
    }


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (vs_with([{"destination": {"host": "x"}}], timeout="5"), "not a duration"),
        (
            vs_with([{"destination": {"host": "x"}}], timeout="500us"),
            "below Istio's minimum of 1ms",
        ),
        (
            vs_with(
                [{"destination": {"host": "x"}}], retries={"attempts": 2, "perTryTimeout": "2sec"}
            ),
            "spec.http[0].retries.perTryTimeout",
        ),
        (
            vs_with(
                [
                    {"destination": {"host": "x", "subset": "a"}, "weight": -20},
                    {"destination": {"host": "x", "subset": "b"}, "weight": 120},
                ]
            ),
            "non-negative",
        ),
        (
            vs_with(
                [
                    {"destination": {"host": "x", "subset": "a"}, "weight": 20},
                    {"destination": {"host": "x", "subset": "b"}, "weight": 70},
                ]
            ),
            "do not sum to 100",
        ),
        (
            vs_with(
                [{"destination": {"host": "x"}}],
                retries={"attempts": 2, "retryOn": "5xx,gateway-eror"},
            ),
            "gateway-eror",
        ),
        (
            vs_with(
                [{"destination": {"host": "x"}}],
                match=[{"headers": {"X-Dev-User": {"exact": "betaUser"}}}],
            ),
            "must be lower case",
        ),
        (
            vs_with(
                [{"destination": {"host": "x"}}],
                fault={"abort": {"httpStatus": 503, "percentage": {"value": 150}}},
            ),
            "not within 0-100",
        ),
    ],
)
def test_rules_beyond_the_schema_are_checked(obj: dict[str, Any], expected: str) -> None:
    errors = tool.validate_istio(obj)
    assert any(expected in e for e in errors), errors


def test_a_valid_object_has_no_rule_errors() -> None:
    obj = vs_with(
        [
            {"destination": {"host": "x", "subset": "a"}, "weight": 20},
            {"destination": {"host": "x", "subset": "b"}, "weight": 80},
        ],
        timeout="1m30s",
        retries={"attempts": 2, "perTryTimeout": "500ms", "retryOn": "5xx,503,reset"},
    )
    assert tool.validate_istio(obj) == []
