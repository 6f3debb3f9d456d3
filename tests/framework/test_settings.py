"""Settings come from the environment, typed; a bad value names itself at start."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from usvc import Settings, SettingsError


def test_defaults_apply_when_the_environment_is_empty() -> None:
    settings = Settings.from_env("front", {})
    assert settings.service_name == "front"
    assert settings.port == 8080
    assert settings.passthrough_headers == ("x-dev-user",)
    assert settings.fault_injection is False
    assert settings.otel_propagators == ("tracecontext", "baggage")


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
        ("PASSTHROUGH_HEADERS", "authorization", "'authorization' must never be forwarded"),
        ("PASSTHROUGH_HEADERS", "x-dev-user,traceparent", "handled by propagation itself"),
        ("REQUEST_HEAD_TIMEOUT", "0", "a number between"),
        ("SERVICE_INSTANCE", "front\x00", "a non-empty printable string"),
        ("LOG_LEVEL", "loud", "one of DEBUG"),
        ("TELEMETRY_EXCLUDED_PATHS", "/healthz,metrics", "each starting with /"),
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


def test_request_deadline_alone_shortens_the_default_egress_timeout() -> None:
    settings = Settings.from_env("x", {"REQUEST_DEADLINE": "2"})
    assert (settings.request_deadline, settings.egress_timeout) == (2.0, 2.0)
    assert Settings.from_env("x", {"REQUEST_DEADLINE": "30"}).egress_timeout == 10.0


def test_an_egress_timeout_above_the_default_deadline_says_the_deadline_is_the_default() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env("x", {"EGRESS_TIMEOUT": "20"})
    assert str(caught.value) == (
        "EGRESS_TIMEOUT='20' is invalid: expected at most REQUEST_DEADLINE (15 s, the default), "
        "the budget of all attempts; lower EGRESS_TIMEOUT or raise REQUEST_DEADLINE to at least 20"
    )


def test_an_egress_timeout_above_a_given_deadline_names_both_values() -> None:
    with pytest.raises(
        SettingsError, match=r"^EGRESS_TIMEOUT='5' is invalid: .*REQUEST_DEADLINE='2'"
    ):
        Settings.from_env("x", {"EGRESS_TIMEOUT": "5", "REQUEST_DEADLINE": "2"})


def test_repr_of_settings_leaves_out_the_process_environment() -> None:
    settings = Settings.from_env("x", {"DB_PASSWORD": "hunter2", "PORT": "9090"})
    assert "hunter2" not in repr(settings)
    assert "port=9090" in repr(settings)
    assert settings.env.get("DB_PASSWORD", lambda _, raw: raw, "") == "hunter2"


def test_service_instance_defaults_to_the_hostname() -> None:
    assert Settings.from_env("x", {}).service_instance == socket.gethostname()
    assert Settings.from_env("x", {"SERVICE_INSTANCE": "front-1"}).service_instance == "front-1"


TINY_SERVICE = """
import usvc

svc = usvc.Service("tiny")
FALLBACK = svc.settings.env.url("FALLBACK_URI")  # a service's own variable

if __name__ == "__main__":
    svc.run()
"""


@pytest.fixture
def port_in_use() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


BAD_ENVIRONMENTS = {
    "bad port": ({"PORT": "not-a-port"}, "PORT='not-a-port' is invalid: expected an integer"),
    "credential passthrough": (
        {"PASSTHROUGH_HEADERS": "authorization"},
        "PASSTHROUGH_HEADERS='authorization' is invalid: ",
    ),
    "timeout above deadline": (
        {"REQUEST_DEADLINE": "2", "EGRESS_TIMEOUT": "5"},
        "EGRESS_TIMEOUT='5' is invalid: expected at most REQUEST_DEADLINE='2'",
    ),
    "service variable": (
        {"FALLBACK_URI": "clock-svc"},
        "FALLBACK_URI='clock-svc' is invalid: expected an absolute http:// or https:// URL",
    ),
    # TEST-NET-1 (RFC 5737): no local interface has it, so binding fails at once.
    "host not local": ({"HOST": "192.0.2.1"}, "HOST='192.0.2.1' is invalid: cannot listen on"),
}


@pytest.mark.parametrize("how", ["usvc run", "python file.py"])
@pytest.mark.parametrize("case", [*BAD_ENVIRONMENTS, "port in use"])
def test_every_bad_value_stops_the_process_with_one_line_and_exit_2(
    tmp_path: Path, port_in_use: int, how: str, case: str
) -> None:
    (tmp_path / "tiny.py").write_text(TINY_SERVICE)
    if case == "port in use":
        env, starts = {"PORT": str(port_in_use)}, f"PORT='{port_in_use}' is invalid: cannot listen"
    else:
        env, starts = BAD_ENVIRONMENTS[case]
    argv = ["-m", "usvc", "run", "tiny:svc"] if how == "usvc run" else ["tiny.py"]
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "none", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"usvc: configuration error: {starts}"), result.stderr


@pytest.mark.slow
def test_usvc_run_stops_at_start_with_one_line_naming_the_bad_variable(tmp_path: Path) -> None:
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


def test_an_exporter_that_is_not_installed_is_one_line_naming_otel_traces_exporter(
    tmp_path: Path,
) -> None:
    (tmp_path / "tiny.py").write_text(TINY_SERVICE)
    # None in sys.modules makes the import fail as if the package were absent.
    code = (
        "import sys; sys.modules['opentelemetry.exporter.zipkin.json'] = None; "
        "from usvc.cli import main; sys.exit(main(['run', 'tiny:svc']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "zipkin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "usvc: configuration error: OTEL_TRACES_EXPORTER='zipkin' is invalid here: its exporter "
        "(opentelemetry.exporter.zipkin.json) is not installed; pip install 'usvc[zipkin]'"
    ]


def test_a_port_flag_out_of_range_is_one_line_naming_port(tmp_path: Path) -> None:
    (tmp_path / "tiny.py").write_text(TINY_SERVICE)
    result = subprocess.run(
        [sys.executable, "-m", "usvc", "run", "tiny:svc", "--port", "70000"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "none"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line == (
        "usvc: configuration error: "
        "PORT='70000' is invalid: expected an integer between 0 and 65535"
    )
