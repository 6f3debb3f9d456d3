"""The chart's Istio objects through the local mesh's one Istio validator
(usvc_mesh.validation), in every scenario. The validator's own rules are tested
beside it, in tests/mesh/test_validation.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from usvc_mesh import validation

from .support import named, tool


def istio_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if validation.is_istio(o)]


def errors(objects: list[dict[str, Any]]) -> list[str]:
    return [str(f) for o in objects for f in validation.validate_object(o)]


def test_every_istio_object_passes_validation(
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
    assert errors(objects) == []


def test_every_scenario_passes_the_translator_checks(
    scenario_objects: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    findings = validation.validate_objects(scenario_objects[scenario], namespace=tool.NAMESPACE)
    assert [str(f) for f in findings if f.level == validation.ERROR] == []


def test_only_the_telemetry_objects_are_reported_as_not_applied_locally(
    default_objects: list[dict[str, Any]],
) -> None:
    # PeerAuthentication and AuthorizationPolicy apply at the inbound listeners (usvc_mesh.authz).
    reported = {f.where for f in validation.unapplied(default_objects)}
    assert reported == {
        f"{o['kind']} {o['metadata']['name']}" for o in default_objects if o["kind"] == "Telemetry"
    }


def test_optional_istio_objects_pass_validation(
    everything_on_objects: list[dict[str, Any]],
) -> None:
    objects = istio_objects(everything_on_objects)
    assert any(o["metadata"]["name"] == "addon-grafana" for o in objects)
    assert errors(objects) == []


@pytest.mark.parametrize(
    ("kind", "name", "mutate", "expected"),
    [
        (
            "ServiceEntry",
            "worldtimeapi",
            lambda o: o["spec"].update(resolution="DNZ"),
            "resolution",
        ),
        (
            "PeerAuthentication",
            "default",
            lambda o: o["spec"]["mtls"].update(mode="STRICTER"),
            "mtls.mode",
        ),
        (
            "AuthorizationPolicy",
            "front",
            lambda o: o["spec"].update(action="PERMIT"),
            "action",
        ),
        (
            "DestinationRule",
            "core-svc",
            lambda o: o["spec"]["subsets"][0].update(lables={}),
            "subsets[0].lables: not an Istio field (misspelt?)",
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
def test_a_wrong_field_of_a_chart_object_is_rejected_with_its_path(
    default_objects: list[dict[str, Any]], kind: str, name: str, mutate: Any, expected: str
) -> None:
    obj = copy.deepcopy(named(default_objects, kind, name))
    mutate(obj)
    found = validation.validate_object(obj)
    assert found and all(f.where == f"{kind} {name}" for f in found)
    assert any(expected in f.message for f in found), found


def test_a_misspelt_retry_field_of_the_retry_scenario_is_rejected(
    scenario_objects: dict[str, list[dict[str, Any]]],
) -> None:
    vs = copy.deepcopy(named(scenario_objects["retry"], "VirtualService", "middleware-svc"))
    retries = vs["spec"]["http"][0]["retries"]
    retries["atempts"] = retries.pop("attempts")
    assert (
        "VirtualService middleware-svc: http[0].retries.atempts: not an Istio field (misspelt?)"
        in errors([vs])
    )
