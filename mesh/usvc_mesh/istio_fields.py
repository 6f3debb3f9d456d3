"""Every field of the Istio kinds the local mesh meets, and what the local mesh does with it.

The table (docs/istio-fields.md) is derived, not kept by hand: Istio's schema (the
cloudcoil models :mod:`usvc_mesh.validation` loads, plus its ``NEWER_ISTIO_FIELDS``)
gives the fields; the translator's declarations (:data:`usvc_mesh.spec.MESSAGES`, the
``Message`` each ``Spec.only`` call checks) and the kinds :func:`validation.unapplied`
reports give each field's status:

- **applied**: a field of a message's ``supported`` set: the translator reads it;
- **not applied**: any other Istio field, which ``Spec.only`` reports as "an Istio
  field the local mesh does not apply" (``unsupported`` gives the reason where the
  code has one), and every field of a kind that is not applied locally;
- **no local effect**: accepted, with a reason in the code (a message's ``ignored``);
- **not an Istio field**: a name the translator lists that Istio's schema lacks.

A field below one that is not applied (or has no effect) has its parent's status. The
walk fails when the translator reads a message it does not declare at that path, or
declares a path Istio's schema does not have, so the table cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import pydantic

from . import validation
from .spec import MESSAGES, Message

APPLIED = "applied"
NOT_APPLIED = "not applied"
NO_EFFECT = "no local effect"
NOT_ISTIO = "not an Istio field"
STATUSES = (APPLIED, NOT_APPLIED, NO_EFFECT, NOT_ISTIO)

# The kinds of the reference pages istio.io/latest/docs/reference/config/networking/ and
# .../security/ (issue 10's conformance list, with Sidecar), and the apiVersion read.
KINDS = (
    ("VirtualService", "networking.istio.io/v1"),
    ("DestinationRule", "networking.istio.io/v1"),
    ("ServiceEntry", "networking.istio.io/v1"),
    ("Gateway", "networking.istio.io/v1"),
    ("Sidecar", "networking.istio.io/v1"),
    ("AuthorizationPolicy", "security.istio.io/v1"),
    ("PeerAuthentication", "security.istio.io/v1"),
    ("RequestAuthentication", "security.istio.io/v1"),
)
_MAX_DEPTH = 16


@dataclass(frozen=True)
class Row:
    kind: str
    path: str  # below spec: http[].corsPolicy.allowOrigins
    status: str
    reason: str = ""


@dataclass(frozen=True)
class _Field:
    name: str
    suffix: str  # "[]" for a list, ".<name>" for a map, "" else; before the children
    models: tuple[type[pydantic.BaseModel], ...]


def rows() -> list[Row]:
    """The table's rows: every field of every kind of :data:`KINDS`, in schema order."""
    from . import authz, translation  # noqa: F401  (their imports declare every Message)

    out: list[Row] = []
    used: set[tuple[int, str]] = set()
    for kind, api_version in KINDS:
        out += _kind_rows(kind, api_version, used)
    declared = {(id(m), p) for m in MESSAGES for p in m.paths if m.kind in dict(KINDS)}
    unused = sorted(
        f"{m.kind} {m.name} at {path or 'spec'}"
        for m in MESSAGES
        for path in m.paths
        if (id(m), path) in declared - used
    )
    if unused:
        raise LookupError(f"declared where Istio's schema has no such message: {unused}")
    return out


def _kind_rows(kind: str, api_version: str, used: set[tuple[int, str]]) -> list[Row]:
    model = getattr(validation.strict_models(api_version), kind)
    models = validation.model_classes(model.model_fields["spec"].annotation)
    spec = _fields([m for _, m in models], kind, "")
    if kind in validation.APPLIED_KINDS:
        return list(_walk(kind, spec, "", None, used))
    if kind in validation.UNAPPLIED_KINDS:
        effect = validation.UNAPPLIED_KINDS[kind]
        why = f"kind not applied locally (in a cluster it sets {effect}); reported at start"
        return list(_walk(kind, spec, "", (NOT_APPLIED, why), used))
    raise LookupError(f"{kind}: neither applied nor reported by usvc_mesh.validation")


def _walk(
    kind: str,
    fields: Sequence[_Field],
    parent: str,
    inherited: tuple[str, str] | None,
    used: set[tuple[int, str]],
    depth: int = 0,
) -> Iterator[Row]:
    if depth > _MAX_DEPTH:
        raise RecursionError(f"{kind} {parent}: the schema nests deeper than {_MAX_DEPTH}")
    message = None if inherited else _declared(kind, parent, used)
    for field in fields:
        path = f"{parent}.{field.name}" if parent else field.name
        if inherited is not None:
            status, reason = inherited
        else:
            assert message is not None
            status, reason = _status(message, field.name)
        yield Row(kind, path, status, reason)
        if field.models:
            below = inherited
            if below is None and status != APPLIED:
                below = (status, f"inside {path}")
            children = _fields(field.models, kind, path + field.suffix)
            yield from _walk(kind, children, path + field.suffix, below, used, depth + 1)
    if message is not None:
        known = {field.name for field in fields}
        for name in sorted((message.supported | set(message.unsupported)) - known):
            path = f"{parent}.{name}" if parent else name
            listed = "applied" if name in message.supported else "not applied"
            why = f"the translator's {message.name} lists it as {listed}; Istio's schema lacks it"
            yield Row(kind, path, NOT_ISTIO, why)


def _declared(kind: str, path: str, used: set[tuple[int, str]]) -> Message:
    found = [m for m in MESSAGES if m.kind == kind and path in m.paths]
    if len(found) != 1:
        where = f"{kind} {path or 'spec'}"
        raise LookupError(f"{where}: {len(found)} Messages declared there, not one (Spec.only)")
    used.add((id(found[0]), path))
    return found[0]


def _status(message: Message, name: str) -> tuple[str, str]:
    if name in message.ignored:
        return NO_EFFECT, message.ignored[name]
    if name in message.supported:
        return APPLIED, ""
    return NOT_APPLIED, message.unsupported.get(name, "")


def _fields(models: Sequence[type[pydantic.BaseModel]], kind: str, path: str) -> list[_Field]:
    """The fields of a message: the union over a oneOf's member models, in schema order."""
    by_name: dict[str, tuple[str, list[type[pydantic.BaseModel]]]] = {}
    for model in models:
        for attribute, info in model.model_fields.items():
            name = info.alias or attribute
            suffix, below = _shape(info.annotation)
            _, known = by_name.setdefault(name, (suffix, []))
            known += [m for m in below if m not in known]
    out = [_Field(name, suffix, tuple(below)) for name, (suffix, below) in by_name.items()]
    # Fields Istio added after the models (validation.NEWER_ISTIO_FIELDS): leaves here.
    parents = validation._segments(path.replace("[]", "").replace(validation.MAP_VALUES, ""))
    for newer_kind, _, name in sorted(validation.NEWER_ISTIO_FIELDS):
        if (
            newer_kind == kind
            and name not in by_name
            and validation._newer_field(kind, parents, name)
        ):
            out.append(_Field(name, "", ()))
    return out


def _shape(annotation: Any) -> tuple[str, list[type[pydantic.BaseModel]]]:
    found = list(validation.model_classes(annotation))
    suffixes = {suffix for suffix, _ in found}
    if len(suffixes) > 1:
        raise TypeError(f"{annotation}: models in different containers {sorted(suffixes)}")
    return (found[0][0] if found else ""), [m for _, m in found]


# -- the document ----------------------------------------------------------------------

REGENERATE = ".venv/bin/python -m tools.istio_fields --write"


def render(table: Sequence[Row] | None = None) -> str:
    """docs/istio-fields.md."""
    table = rows() if table is None else table
    models = version("cloudcoil-models-istio")
    lines = [
        "# Istio fields: what the local mesh does with each",
        "",
        "<!-- Generated from the code; do not edit. Regenerate with "
        f"`{REGENERATE}`; tests/mesh/test_istio_fields.py fails when this file differs. -->",
        "",
        "Generated by `python -m tools.istio_fields` (`usvc_mesh/istio_fields.py`): do not edit,",
        f"regenerate with `{REGENERATE}`.",
        "`tests/mesh/test_istio_fields.py` fails when the code and this file disagree.",
        "",
        "Every field of every message below `spec`, from Istio's",
        f"schema (`cloudcoil-models-istio` {models}, plus `validation.NEWER_ISTIO_FIELDS`); each",
        "status comes from the translator's declarations (`usvc_mesh.spec.MESSAGES`, the",
        "`Message` every `Spec.only` checks) and the kinds `validation.unapplied` reports:",
        "",
        "- **applied**: the translator reads it ([istio-envoy.md](istio-envoy.md) says into what);",
        '- **not applied**: an object that sets it is refused with "an Istio field the local',
        '  mesh does not apply" (`usvc up`, `tools.manifests validate`); every field of a kind',
        "  the local mesh does not apply is listed here too: such objects are reported at start",
        "  and `usvc up --strict` refuses them ([istio-validation.md](istio-validation.md)).",
        "  AuthorizationPolicy's are reported at start instead of refused, and the rule that",
        "  sets one fails closed (an ALLOW rule is dropped, a DENY rule matches without it, as",
        "  istiod treats a condition a proxy cannot check);",
        "- **no local effect**: accepted, with no effect locally (the reason says why);",
        "- **not an Istio field**: a name the translator lists that Istio's schema lacks. Any",
        '  other key is refused as "not an Istio field (misspelt?)".',
        "",
        "Paths are below `spec`, as errors write them: `[]` is a list item, `<name>` a map key. A",
        "field inside one that is not applied shares its status. Some applied fields accept only",
        "some values (e.g. `tls.mode`, a Gateway port's `protocol`); istio-envoy.md lists those.",
        "",
        "| kind | " + " | ".join(STATUSES) + " | fields |",
        "|---|" + "---:|" * (len(STATUSES) + 1),
    ]
    kinds = list(dict.fromkeys(row.kind for row in table))
    for kind in [*kinds, ""]:
        chosen = [row for row in table if row.kind == kind or not kind]
        counts = [sum(row.status == status for row in chosen) for status in STATUSES]
        name = kind or "**total**"
        lines.append(f"| {name} | " + " | ".join(map(str, counts)) + f" | {len(chosen)} |")
    api = dict(KINDS)
    for kind in kinds:
        lines += ["", f"## {kind} ({api[kind]})", "", "| field | status | why |", "|---|---|---|"]
        for row in table:
            if row.kind == kind:
                reason = row.reason.replace("|", "\\|")
                lines.append(f"| `{row.path}` | {row.status} | {reason} |")
    return "\n".join(lines) + "\n"
