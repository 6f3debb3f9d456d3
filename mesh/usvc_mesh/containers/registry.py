"""``usvc registry``: a private image registry with TLS and htpasswd authentication.

Everything it needs is made at set-up time in its own directory (default
``.run/registry/``, ignored by git): a CA and a server certificate for the
registry's host name (openssl), an htpasswd file with one bcrypt entry
(``htpasswd -B``) and the registry's ``config.yml``. The password is asked
for or generated, never a default, and stored only in that directory
(``password``, mode 0600) for ``docker login``.

The registry itself is the CNCF distribution registry: Debian's
``docker-registry`` run as a process here, or the official ``registry:2``
image (docs/containers.md shows both).

An engine trusts the CA from ``/etc/docker/certs.d/HOST:PORT/ca.crt``. It
does *not* check TLS for registries on 127.0.0.0/8 (it treats them as
insecure), so the registry listens under a name (``registry.usvc.test`` by
default, resolved to ``::1``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..procs import is_ip_address

DEFAULT_HOST = "registry.usvc.test"
DEFAULT_LISTEN = ("::1", 5443)
DEFAULT_DIR = Path(".run/registry")
DEFAULT_USER = "usvc"
REALM = "usvc-registry"
CERT_DAYS = 90


class RegistryError(RuntimeError):
    """The registry cannot be set up, started or stopped; the message says why."""


@dataclass(frozen=True)
class Registry:
    """A registry's files (all in ``directory``) and where it listens."""

    directory: Path
    host: str = DEFAULT_HOST
    listen: tuple[str, int] = DEFAULT_LISTEN

    @property
    def address(self) -> str:
        """``HOST:PORT``, as image names and ``docker login`` spell it."""
        return f"{self.host}:{self.listen[1]}"

    @property
    def ca_certificate(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def password_file(self) -> Path:
        return self.directory / "password"

    @property
    def config_file(self) -> Path:
        return self.directory / "config.yml"

    @property
    def pid_file(self) -> Path:
        return self.directory / "registry.pid"

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def username(self) -> str:
        return (self.directory / "htpasswd").read_text().split(":", 1)[0]

    def certs_d(self, root: Path = Path("/etc/docker/certs.d")) -> Path:
        """Where an engine looks for this registry's CA."""
        return root / self.address / "ca.crt"


def set_up(registry: Registry, *, username: str = DEFAULT_USER, password: str | None = None) -> str:
    """Make the CA, the certificate, the htpasswd file and config.yml; returns the password.

    Existing files are replaced: a new CA, a new password.
    """
    for tool in ("openssl", "htpasswd"):
        if shutil.which(tool) is None:
            raise RegistryError(f"{tool} is not installed (apt-get install openssl apache2-utils)")
    if password is not None and len(password) < 12:
        raise RegistryError("the password must have at least 12 characters")
    chosen = password or secrets.token_urlsafe(24)
    directory = registry.directory
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    _make_certificates(registry)
    result = subprocess.run(
        ["htpasswd", "-B", "-C", "10", "-i", "-n", username],
        input=chosen,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RegistryError(f"htpasswd failed: {result.stderr.strip()}")
    _private(directory / "htpasswd", result.stdout.strip() + "\n")
    _private(registry.password_file, chosen + "\n")
    (directory / "data").mkdir(exist_ok=True)
    host, port = registry.listen
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    registry.config_file.write_text(
        "# Written by `usvc registry up`; docs/containers.md.\n"
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {directory.resolve() / 'data'}\n"
        "  delete:\n    enabled: true\n"
        "http:\n"
        f'  addr: "{listen}"\n'
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
        "  tls:\n"
        f"    certificate: {directory.resolve() / 'server.crt'}\n"
        f"    key: {directory.resolve() / 'server.key'}\n"
        "auth:\n"
        "  htpasswd:\n"
        f"    realm: {REALM}\n"
        f"    path: {directory.resolve() / 'htpasswd'}\n"
    )
    return chosen


def start(registry: Registry, timeout: float = 20.0) -> subprocess.Popen[bytes]:
    """Run Debian's ``docker-registry serve`` on the config; returns once it answers TLS."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RegistryError(
            "docker-registry is not installed (apt-get install docker-registry),"
            " or run the registry:2 image (docs/containers.md)"
        )
    if not registry.config_file.is_file():
        raise RegistryError(f"no {registry.config_file}: usvc registry up sets it up first")
    log = (registry.directory / "registry.log").open("ab")
    process = subprocess.Popen(
        [binary, "serve", str(registry.config_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    registry.pid_file.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while not answers(registry):
        if process.poll() is not None:
            tail = (registry.directory / "registry.log").read_text(errors="replace")[-800:]
            raise RegistryError(f"docker-registry exited with {process.returncode}: {tail}")
        if time.monotonic() > deadline:
            stop(registry)
            raise RegistryError(f"the registry did not answer on {registry.listen} in {timeout}s")
        time.sleep(0.1)
    return process


def answers(registry: Registry) -> bool:
    """Whether the registry completes a TLS handshake checked against its own CA."""
    context = ssl.create_default_context(cafile=str(registry.ca_certificate))
    try:
        with socket.create_connection(registry.listen, timeout=1) as raw:
            with context.wrap_socket(raw, server_hostname=registry.host):
                return True
    except OSError:
        return False


def stop(registry: Registry, timeout: float = 10.0) -> bool:
    """Stop the registry whose pid ``up`` recorded; False if none was running."""
    try:
        pid = int(registry.pid_file.read_text())
    except (OSError, ValueError):
        return False
    registry.pid_file.unlink(missing_ok=True)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


def trust(registry: Registry, certs_root: Path = Path("/etc/docker/certs.d")) -> Path:
    """Install the CA where an engine reads it (no engine restart needed); returns the path."""
    target = registry.certs_d(certs_root)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(registry.ca_certificate, target)
    target.chmod(0o644)
    return target


# -- helpers -------------------------------------------------------------------


def _make_certificates(registry: Registry) -> None:
    directory = registry.directory
    names = [f"DNS:{registry.host}"]
    if is_ip_address(registry.host):
        names = [f"IP:{registry.host}"]
    steps = [
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", str(CERT_DAYS),
            "-subj", "/CN=usvc registry CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        [
            "openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", f"/CN={registry.host}",
        ],
        [
            "openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", str(CERT_DAYS), "-extfile",
            "server.ext",
        ],
    ]  # fmt: skip
    (directory / "server.ext").write_text(
        f"subjectAltName={','.join(names)}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    old_umask = os.umask(0o077)  # keys readable by their owner only
    try:
        for step in steps:
            result = subprocess.run(
                step, cwd=directory, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise RegistryError(f"openssl failed: {result.stderr.strip().splitlines()[-1]}")
    finally:
        os.umask(old_umask)
    (directory / "ca.crt").chmod(0o644)
    # The CA's key has signed the one certificate it is for; nothing else may be signed.
    (directory / "ca.key").unlink()
    for leftover in ("server.csr", "server.ext", "ca.srl"):
        (directory / leftover).unlink(missing_ok=True)


def _private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
