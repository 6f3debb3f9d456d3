"""Strict reading of Istio and Kubernetes object specs.

The translator reads every field through a :class:`Spec`, which knows the
object it belongs to and the path that leads to it. Each message type declares
the fields the local mesh honours; any other key is either a field of Istio's
schema that the local mesh does not apply, or not an Istio field at all (a typo),
as Istio's own schema tells (:func:`usvc_mesh.validation.is_istio_field`). Both
raise :class:`UnsupportedField`, with messages that tell them apart, so a field is
never dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NANOS_PER_SECOND = 1_000_000_000
_UNIT_NANOS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": NANOS_PER_SECOND,
    "m": 60 * NANOS_PER_SECOND,
    "h": 3600 * NANOS_PER_SECOND,
}
# Istio's CRDs validate durations with Go's time.ParseDuration grammar ("1m30s",
# "1.5s", "500ms"), not protobuf JSON's seconds-only form.
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


class UnsupportedField(ValueError):
    """A field the local mesh cannot honour, or one Istio does not define.

    The message names the kind, the object's name and the field's path, e.g.
    ``VirtualService middleware-svc: http[0].corsPolicy is not supported by the
    local mesh``.
    """


@dataclass(frozen=True)
class Message:
    """The fields of one Istio message type the translator reads, and where it reads them.

    ``kind`` and ``paths`` say where the message sits (below ``spec``; ``[]`` stands for
    a list index, ``<name>`` for a map key, e.g. ``http[].match[].headers.<name>``).
    ``supported`` are the fields applied locally; of them, ``ignored`` are accepted with
    no local effect (field -> why). ``unsupported`` are fields reported as not applied
    (field -> why, or ""); any other Istio field is reported likewise (Istio's schema
    tells it from a typo). Every message is registered in :data:`MESSAGES`, which
    ``usvc_mesh.istio_fields`` turns into docs/istio-fields.md.
    """

    kind: str
    name: str
    paths: tuple[str, ...]
    supported: frozenset[str]
    unsupported: Mapping[str, str] = field(default_factory=dict)
    ignored: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not set(self.ignored) <= self.supported:
            raise ValueError(f"{self.name}: ignored fields must be supported ones")

    def read_at(self, where: str, path: str) -> bool:
        """Whether ``path`` (``http[0].match[1]``) in object ``where`` is one of :attr:`paths`."""
        return where.split(" ", 1)[0] == self.kind and any(
            pattern.fullmatch(path) for pattern in _patterns(self.paths)
        )


# Every Message the translator declares, in declaration order.
MESSAGES: list[Message] = []


def message(
    kind: str,
    name: str,
    paths: Iterable[str],
    supported: Iterable[str],
    unsupported: Mapping[str, str] | Iterable[str] = (),
    ignored: Mapping[str, str] | None = None,
) -> Message:
    """Declare (and register) the fields the translator reads of one message type."""
    declared = Message(
        kind,
        name,
        tuple(paths),
        frozenset(supported),
        dict(unsupported) if isinstance(unsupported, Mapping) else dict.fromkeys(unsupported, ""),
        dict(ignored or {}),
    )
    MESSAGES.append(declared)
    return declared


def _patterns(paths: tuple[str, ...]) -> list[re.Pattern[str]]:
    return [_pattern(path) for path in paths]


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(path: str) -> re.Pattern[str]:
    if path not in _PATTERNS:
        regex = re.escape(path).replace(r"\[\]", r"\[\d+\]").replace("<name>", ".+")
        _PATTERNS[path] = re.compile(regex)
    return _PATTERNS[path]


@dataclass(frozen=True)
class Spec:
    """One mapping inside an object (``data``), found at ``path`` in ``where``."""

    where: str
    path: str
    data: Mapping[str, Any]

    @classmethod
    def of(cls, where: str, path: str, value: Any) -> Spec:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: {path or 'spec'} must be a mapping, not {value!r}")
        return cls(where, path, value)

    def at(self, key: str | int) -> str:
        """The path of ``key`` below this mapping, as users write it."""
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        if not key:
            return self.path or "spec"
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> ValueError:
        return ValueError(f"{self.where}: {self.at(key)} {message}")

    def unsupported(self, key: str, value: object = None, hint: str = "") -> UnsupportedField:
        """The error for a field (or one value of it) the local mesh cannot honour."""
        shown = "" if value is None else f" {value}"
        hint = f" ({hint})" if hint else ""
        return UnsupportedField(
            f"{self.where}: {self.at(key)}{shown} is not supported by the local mesh{hint}"
        )

    def only(self, message: Message) -> None:
        """Reject every key that is not in ``message.supported``.

        ``message.name`` names the Istio message type, for the typo error.
        """
        # A message read where it is not declared would be missing from docs/istio-fields.md.
        assert message.read_at(self.where, self.path), f"{message.name} at {self.where} {self.path}"
        allowed = message.supported
        known = message.unsupported
        for key, value in self.data.items():
            # null is "unset" to Kubernetes too (kubectl drops it).
            if key in allowed or value is None:
                continue
            if key in known or self._is_istio_field(str(key)):
                raise self.not_applied(str(key))
            raise UnsupportedField(
                f"{self.where}: {self.at(key)} is not an Istio field of {message.name} (misspelt?)"
            )

    def not_applied(self, key: str) -> UnsupportedField:
        """The error for a field Istio defines and the local mesh does not apply."""
        return UnsupportedField(
            f"{self.where}: {self.at(key)} is an Istio field the local mesh does not apply"
        )

    def _is_istio_field(self, key: str) -> bool:
        # Istio's own schema decides (usvc_mesh.validation); loaded only on this error path.
        from .validation import is_istio_field

        kind = self.where.split(" ", 1)[0]
        return is_istio_field(kind, self.path, key)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def child(self, key: str) -> Spec | None:
        value = self.data.get(key)
        if value is None:
            return None
        return Spec.of(self.where, self.at(key), value)

    def children(self, key: str) -> list[Spec]:
        return [
            Spec.of(self.where, f"{self.at(key)}[{index}]", item)
            for index, item in enumerate(self.sequence(key))
        ]

    def sequence(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"must be a list, not {value!r}")
        return value

    def strings(self, key: str) -> list[str]:
        values = self.sequence(key)
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise self.error(key, f"[{index}] must be a string, not {value!r}")
        return values

    def string_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be a mapping of strings, not {value!r}")
        out: dict[str, str] = {}
        for name, item in value.items():
            if not isinstance(name, str) or not isinstance(item, str):
                raise self.error(key, f"must map strings to strings, not {name!r}: {item!r}")
            out[name] = item
        return out

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {value!r}")
        return value

    def required_text(self, key: str) -> str:
        value = self.text(key)
        if not value:
            raise self.error(key, "is required")
        return value

    def integer(self, key: str, default: int | None = None, *, minimum: int = 0) -> int | None:
        value = self.data.get(key)
        if value is None:
            return default
        # bool is an int in Python, and YAML's "yes" would sneak through.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, not {value!r}")
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, not {value}")
        return value

    def flag(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {value!r}")
        return value

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {value!r}")
        return float(value)

    def duration(self, key: str, *, minimum_nanos: int = 0) -> str | None:
        """An Istio duration as an Envoy duration string (``"1.500s"``)."""
        value = self.data.get(key)
        if value is None:
            return None
        nanos = parse_duration(value)
        if nanos is None:
            raise self.error(key, f"is not a duration (like 2s, 500ms, 1.5s, 1m): {value!r}")
        if nanos < minimum_nanos:
            raise self.error(key, f"must be at least {envoy_duration(minimum_nanos)}: {value!r}")
        return envoy_duration(nanos)

    def percent(self, key: str, message: Message) -> float | None:
        """An Istio ``Percent`` message (``{value: 12.5}``) as a number in [0, 100]."""
        spec = self.child(key)
        if spec is None:
            return None
        spec.only(message)
        value = spec.number("value")
        value = 0.0 if value is None else value
        if not 0.0 <= value <= 100.0:
            raise spec.error("value", f"must be between 0 and 100, not {value}")
        return value


def parse_duration(text: object) -> int | None:
    """Nanoseconds in a Go-style duration ("1m30s", "1.5s"), or None if malformed."""
    if not isinstance(text, str) or not text:
        return None
    position = 0
    total = 0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            return None
        number, unit = match.groups()
        whole, _, fraction = number.partition(".")
        unit_nanos = _UNIT_NANOS[unit]
        total += int(whole or "0") * unit_nanos
        if fraction:
            total += int(fraction) * unit_nanos // 10 ** len(fraction)
        position = match.end()
    return total


def envoy_duration(nanos: int) -> str:
    seconds, rest = divmod(nanos, NANOS_PER_SECOND)
    if rest == 0:
        return f"{seconds}s"
    return f"{seconds}.{rest:09d}".rstrip("0") + "s"


def metadata_name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{obj.get('kind', 'object')} without metadata.name: {obj!r:.200}")
    return name


def metadata_namespace(obj: Mapping[str, Any], default: str) -> str:
    metadata = obj.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return namespace if isinstance(namespace, str) and namespace else default
