"""Settings come from the environment, typed; a bad value names itself at start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from usvc import Settings, SettingsError


def test_defaults_apply_when_the_environment_is_empty() -> None:
    settings = Settings.from_env("front", {})
    assert settings.service_name == "front"
    assert settings.port == 8080
    assert settings.passthrough_headers == ("x-dev-user",)
    assert settings.fault_injection is False
    assert settings.otel_propagators == ("tracecontext", "baggage", "b3multi")


def test_values_are_parsed_to_their_types() -> None:
    settings = Settings.from_env(
        "x",
        {
            "SERVICE_NAME": "middle",
            "SERVICE_VERSION": "v2",
            "SERVICE_ENV": "canary",
            "PORT": "9090",
            "UPSTREAM_URI": "http://core-svc/",
            "EGRESS_TIMEOUT": "2.5",
            "EGRESS_RETRIES": "0",
            "PASSTHROUGH_HEADERS": "X-Dev-User, fail",
            "FAULT_INJECTION": "yes",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
            "OTEL_PROPAGATORS": "b3,tracecontext",
        },
    )
    assert (settings.service_name, settings.service_version, settings.service_env) == (
        "middle",
        "v2",
        "canary",
    )
    assert settings.port == 9090
    assert settings.upstream_uri == "http://core-svc/"
    assert settings.egress_timeout == 2.5
    assert settings.egress_retries == 0
    assert settings.passthrough_headers == ("x-dev-user", "fail")
    assert settings.fault_injection is True
    assert settings.otel_traces_sampler_arg == 0.01
    assert settings.otel_propagators == ("b3", "tracecontext")


def test_otel_service_name_overrides_the_trace_name_only() -> None:
    settings = Settings.from_env("front", {"OTEL_SERVICE_NAME": "front-eu"})
    assert settings.trace_service_name == "front-eu"
    assert settings.service_name == "front"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PORT", "eighty", "an integer between 0 and 65535"),
        ("PORT", "70000", "an integer between 0 and 65535"),
        ("UPSTREAM_URI", "core-svc", "an absolute http:// or https:// URL"),
        ("EGRESS_TIMEOUT", "-1", "a number between"),
        ("EGRESS_TIMEOUT", "nan", "a number between"),
        ("EGRESS_RETRIES", "11", "an integer between 0 and 10"),
        ("FAULT_INJECTION", "maybe", "a boolean"),
        ("OTEL_TRACES_SAMPLER", "sometimes", "one of always_off"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", "a number between 0 and 1"),
        ("OTEL_TRACES_EXPORTER", "jaeger", "one of console, none, otlp, zipkin"),
        ("OTEL_PROPAGATORS", "tracecontext,xray", "a comma-separated list of"),
        ("PASSTHROUGH_HEADERS", "x-dev-user, bad header", "HTTP header names"),
        ("LOG_LEVEL", "loud", "one of DEBUG"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_what_was_expected(
    name: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env("x", {name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}={value!r} is invalid")
    assert expected in message


def test_an_egress_timeout_longer_than_the_deadline_is_rejected() -> None:
    with pytest.raises(SettingsError, match=r"EGRESS_TIMEOUT=20 is invalid.*REQUEST_DEADLINE=15"):
        Settings.from_env("x", {"EGRESS_TIMEOUT": "20"})


def test_usvc_run_stops_at_start_with_one_line_naming_the_bad_variable(tmp_path) -> None:
    (tmp_path / "tiny.py").write_text("import usvc\nsvc = usvc.Service('tiny')\n")
    result = subprocess.run(
        [sys.executable, "-m", "usvc", "run", "tiny:svc"],
        cwd=tmp_path,
        env={"PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "usvc: configuration error: PORT='not-a-port' is invalid: "
        "expected an integer between 0 and 65535"
    ]
