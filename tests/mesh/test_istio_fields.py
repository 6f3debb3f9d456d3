"""docs/istio-fields.md: generated from the translator's declarations, and kept so.

Each classification asserted here comes from the code (usvc_mesh.istio_fields); the
fields are Istio's (istio.io/latest/docs/reference/config/networking/virtual-service/,
.../destination-rule/, .../gateway/, .../security/authorization-policy/).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tools.istio_fields import DOC, main
from usvc_mesh import authz, istio_fields
from usvc_mesh.istio_fields import APPLIED, NO_EFFECT, NOT_APPLIED, Row
from usvc_mesh.spec import MESSAGES, Message, Spec, UnsupportedField, message
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
        ("VirtualService", "http[].match[].sourceLabels", APPLIED),
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
        ("Gateway", "servers[].tls.credentialName", APPLIED),
        ("Gateway", "servers[].tls.mode", APPLIED),
        ("Gateway", "servers[].tls.tlsCertificates", NOT_APPLIED),
        ("Sidecar", "outboundTrafficPolicy.mode", APPLIED),
        ("Sidecar", "ingress", NOT_APPLIED),
        ("AuthorizationPolicy", "rules[].from[].source.principals", APPLIED),
        ("AuthorizationPolicy", "rules[].from[].source.requestPrincipals", NOT_APPLIED),
        ("AuthorizationPolicy", "rules[].when[].key", APPLIED),
        ("AuthorizationPolicy", "targetRefs[].name", NOT_APPLIED),
        ("PeerAuthentication", "mtls.mode", APPLIED),
        ("PeerAuthentication", "portLevelMtls.<name>.mode", APPLIED),
        ("RequestAuthentication", "jwtRules[].jwksUri", APPLIED),
        ("RequestAuthentication", "jwtRules[].outputClaimToHeaders[].claim", APPLIED),
        ("RequestAuthentication", "targetRef.name", NOT_APPLIED),
    ],
)
def test_known_classifications(
    table: dict[tuple[str, str], Row], kind: str, path: str, status: str
) -> None:
    assert table[kind, path].status == status


def test_reasons_come_from_the_code(table: dict[tuple[str, str], Row]) -> None:
    assert "delegate" in table["VirtualService", "http[].delegate"].reason
    assert "one gateway" in table["Gateway", "selector"].reason
    # A field reported rather than refused (usvc_mesh.authz) says what it does locally.
    why = table["AuthorizationPolicy", "rules[].from[].source.requestPrincipals"].reason
    assert "validate no JWTs" in why and "ALLOW rules with it never match" in why


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


def _policy(consistent_hash: dict[str, Any], *, ports: bool) -> dict[str, Any]:
    """A trafficPolicy with every section the translator reads, at the top and for port 80."""
    policy: dict[str, Any] = {
        "loadBalancer": {"consistentHash": {"httpCookie": {"name": "c"}, **consistent_hash}},
        "connectionPool": {
            "tcp": {"maxConnections": 5, "tcpKeepalive": {"time": "10s"}},
            "http": {"http1MaxPendingRequests": 5},
        },
        "outlierDetection": {"consecutive5xxErrors": 3},
        "tls": {"mode": "DISABLE"},
    }
    if ports:
        port_policy = _policy(consistent_hash, ports=False)
        policy["portLevelSettings"] = [{"port": {"number": 80}, **port_policy}]
    return policy


def _rule(name: str, host: str, consistent_hash: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name},
        "spec": {
            "host": host,
            "trafficPolicy": _policy(consistent_hash, ports=True),
            "subsets": [
                {
                    "name": "v1",
                    "labels": {"v": "1"},
                    "trafficPolicy": _policy(consistent_hash, ports=True),
                }
            ],
        },
    }


def _networking(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": kind.lower()},
        "spec": spec,
    }


CORE = {"host": "core", "port": {"number": 80}}
EVERY_MESSAGE = [
    {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "core"},
        "spec": {"template": {"metadata": {"labels": {"app": "core", "v": "1"}}}},
    },
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "core"},
        "spec": {"selector": {"app": "core"}, "ports": [{"port": 80, "name": "http"}]},
    },
    _networking(
        "ServiceEntry",
        {
            "hosts": ["ext.example.com"],
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "endpoints": [{"address": "127.0.0.1", "labels": {"v": "1"}}],
        },
    ),
    _rule("ring", "core", {"ringHash": {"minimumRingSize": 64}}),
    _rule("maglev", "ext.example.com", {"maglev": {"tableSize": 7}}),
    _networking(
        "Gateway",
        {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {
                    "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["*"],
                    "tls": {"httpsRedirect": False},
                }
            ],
        },
    ),
    _networking(
        "Sidecar",
        {"egress": [{"hosts": ["*/*"]}], "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}},
    ),
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt"},
        "spec": {
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "jwtRules": [
                {
                    "issuer": "https://issuer.test",
                    "jwks": "-----BEGIN PUBLIC KEY-----",
                    "fromHeaders": [{"name": "x-token", "prefix": "Bearer "}],
                    "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
                }
            ],
        },
    },
    _networking(
        "VirtualService",
        {
            "hosts": ["core"],
            "http": [
                {
                    "match": [
                        {
                            "uri": {"prefix": "/a"},
                            "scheme": {"exact": "http"},
                            "method": {"exact": "GET"},
                            "authority": {"prefix": "core"},
                            "headers": {"x": {"exact": "y"}},
                            "withoutHeaders": {"z": {"prefix": "q"}},
                            "queryParams": {"p": {"exact": "1"}},
                        }
                    ],
                    "route": [
                        {
                            "destination": CORE,
                            "headers": {
                                "request": {"set": {"a": "b"}},
                                "response": {"add": {"c": "d"}},
                            },
                        }
                    ],
                    "headers": {"request": {"remove": ["e"]}, "response": {"set": {"f": "g"}}},
                    "mirror": CORE,
                    "mirrorPercentage": {"value": 10},
                    "rewrite": {"uriRegexRewrite": {"match": "^/a", "rewrite": "/"}},
                    "retries": {"attempts": 2},
                    "fault": {
                        "delay": {"fixedDelay": "1s", "percentage": {"value": 1}},
                        "abort": {"httpStatus": 503, "percentage": {"value": 1}},
                    },
                    "corsPolicy": {"allowOrigins": [{"exact": "http://x"}]},
                },
                {"match": [{"uri": {"prefix": "/r"}}], "redirect": {"uri": "/b"}},
                {
                    "match": [{"uri": {"prefix": "/d"}}],
                    "directResponse": {"status": 200, "body": {"string": "ok"}},
                },
                {
                    "route": [{"destination": {"host": "core"}}],
                    "mirrors": [{"destination": CORE, "percentage": {"value": 5}}],
                },
            ],
        },
    ),
    # Read by usvc_mesh.authz (each workload's inbound listener), not by translate().
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "ext"},
        "spec": {
            "selector": {"matchLabels": {"app": "core"}},
            "action": "CUSTOM",
            "provider": {"name": "opa"},
            "rules": [
                {
                    "from": [{"source": {"principals": ["*"]}}],
                    "to": [{"operation": {"paths": ["/x"]}}],
                    "when": [{"key": "source.namespace", "values": ["a"]}],
                }
            ],
        },
    },
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "core"},
        "spec": {
            "selector": {"matchLabels": {"app": "core"}},
            "mtls": {"mode": "STRICT"},
            "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}},
        },
    },
]


def test_every_declared_message_is_read_where_it_is_declared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Spec.only asserts each message is read at a declared path; this object set makes the
    # translator read every declared message at every declared path, so none is untried.
    read: set[tuple[str, str, str]] = set()
    declared_at = Message.read_at

    def recording(self: Message, where: str, path: str) -> bool:
        found = declared_at(self, where, path)
        read.update(
            (self.kind, self.name, p)
            for p in self.paths
            if declared_at(replace(self, paths=(p,)), where, path)
        )
        return found

    monkeypatch.setattr(Message, "read_at", recording)
    translate(EVERY_MESSAGE, endpoints={"core": ("127.0.0.1", 9001)})
    for obj in EVERY_MESSAGE:
        authz.findings(obj)
    declared = {(m.kind, m.name, p) for m in MESSAGES for p in m.paths}
    assert sorted(declared - read) == []
