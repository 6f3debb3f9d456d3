"""docs/istio-fields.md: generated from the translator's declarations, and kept so.

Each classification asserted here comes from the code (usvc_mesh.istio_fields); the
fields are Istio's (istio.io/latest/docs/reference/config/networking/virtual-service/,
.../destination-rule/, .../gateway/, .../security/authorization-policy/).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools.istio_fields import DOC, main
from usvc_mesh import istio_fields
from usvc_mesh.istio_fields import APPLIED, NO_EFFECT, NOT_APPLIED, Row
from usvc_mesh.spec import MESSAGES, Spec, UnsupportedField, message
from usvc_mesh.translation import translate


@pytest.fixture(scope="module")
def table() -> dict[tuple[str, str], Row]:
    return {(row.kind, row.path): row for row in istio_fields.rows()}


def test_the_committed_table_is_what_the_code_says() -> None:
    assert DOC.read_text(encoding="utf-8") == istio_fields.render(), (
        "docs/istio-fields.md is out of date: run .venv/bin/python -m tools.istio_fields --write"
    )


def test_the_check_command_fails_on_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "istio-fields.md"
    stale.write_text(DOC.read_text(encoding="utf-8").replace("| applied |", "| n/a |", 1))
    monkeypatch.setattr("tools.istio_fields.DOC", stale)
    assert main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--write"]) == 0
    assert main(["--check"]) == 0


@pytest.mark.parametrize(
    ("kind", "path", "status"),
    [
        ("VirtualService", "http[].corsPolicy", APPLIED),
        ("VirtualService", "http[].corsPolicy.allowOrigins[].regex", APPLIED),
        ("VirtualService", "http[].match[].headers.<name>.prefix", APPLIED),
        ("VirtualService", "http[].delegate", NOT_APPLIED),
        ("VirtualService", "http[].delegate.name", NOT_APPLIED),  # inherits its parent's
        ("VirtualService", "http[].match[].sourceLabels", NOT_APPLIED),
        ("VirtualService", "http[].redirect.prefixRewrite", NOT_APPLIED),  # newer than models
        ("VirtualService", "tls[].match[].sniHosts", NOT_APPLIED),
        ("DestinationRule", "trafficPolicy.tls.credentialName", NOT_APPLIED),
        ("DestinationRule", "trafficPolicy.tls.mode", APPLIED),
        ("DestinationRule", "subsets[].trafficPolicy.portLevelSettings[].tls.sni", APPLIED),
        ("DestinationRule", "trafficPolicy.loadBalancer.zoneAwareLbSetting", NOT_APPLIED),
        ("ServiceEntry", "location", NO_EFFECT),
        ("ServiceEntry", "addresses", NO_EFFECT),
        ("ServiceEntry", "endpoints[].locality", NOT_APPLIED),
        ("Gateway", "selector", NO_EFFECT),
        ("Gateway", "servers[].tls.httpsRedirect", APPLIED),
        ("Gateway", "servers[].tls.credentialName", NOT_APPLIED),
        ("Sidecar", "outboundTrafficPolicy.mode", APPLIED),
        ("Sidecar", "ingress", NOT_APPLIED),
        ("AuthorizationPolicy", "rules[].from[].source.principals", NOT_APPLIED),
        ("PeerAuthentication", "mtls.mode", NOT_APPLIED),
        ("RequestAuthentication", "jwtRules[].jwksUri", NOT_APPLIED),
    ],
)
def test_known_classifications(
    table: dict[tuple[str, str], Row], kind: str, path: str, status: str
) -> None:
    assert table[kind, path].status == status


def test_reasons_come_from_the_code(table: dict[tuple[str, str], Row]) -> None:
    assert "delegate" in table["VirtualService", "http[].delegate"].reason
    assert "one gateway" in table["Gateway", "selector"].reason
    # A kind the local mesh does not apply: every field says so, with what it does in a cluster.
    why = table["AuthorizationPolicy", "action"].reason
    assert why.startswith("kind not applied locally") and "callers" in why


def test_every_field_istio_has_is_a_row(table: dict[tuple[str, str], Row]) -> None:
    # A few fields of the reference pages, at depth: nothing reachable from spec is skipped.
    for kind, path in [
        ("VirtualService", "http[].fault.abort.percentage.value"),
        ("DestinationRule", "trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl"),
        ("ServiceEntry", "endpoints[].ports"),
        ("AuthorizationPolicy", "rules[].when[].values"),
    ]:
        assert (kind, path) in table


def test_a_not_applied_row_is_what_the_translator_reports(
    table: dict[tuple[str, str], Row],
) -> None:
    # The table's status and the translator's behaviour are one thing: try one of each.
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "core"},
            "spec": {"selector": {"app": "core"}, "ports": [{"port": 80, "name": "http"}]},
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "core"},
            "spec": {"host": "core", "trafficPolicy": {"tls": {"credentialName": "secret"}}},
        },
    ]
    assert table["DestinationRule", "trafficPolicy.tls.credentialName"].status == NOT_APPLIED
    with pytest.raises(UnsupportedField, match=r"tls\.credentialName is an Istio field the local"):
        translate(objects, endpoints={})


def test_a_message_read_where_it_is_not_declared_is_caught() -> None:
    declared = message("VirtualService", "Example", ["http[].example"], {"a"})
    try:
        Spec("VirtualService x", "http[0].example", {"a": 1}).only(declared)
        with pytest.raises(AssertionError, match="Example at VirtualService x http"):
            Spec("VirtualService x", "http[0].other", {"a": 1}).only(declared)
        # And the generator refuses a declaration at a path Istio's schema lacks.
        with pytest.raises(LookupError, match=re.escape("Example at http[].example")):
            istio_fields.rows()
    finally:
        MESSAGES.remove(declared)
