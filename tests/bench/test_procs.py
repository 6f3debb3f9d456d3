"""The benchmark's servers: a server that lost the race for its port says so in one line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench.procs import StartError, python_server, wait_ready

pytestmark = pytest.mark.slow  # starts real processes: not in the fast loop


@pytest.mark.parametrize("build", ["bare", "usvc"])
def test_a_server_whose_port_another_process_took_is_reported_in_one_line(
    build: str, tmp_path: Path
) -> None:
    server = python_server(f"single.{build}", ["-m", "bench.server", build], {}, tmp_path)
    with socket.socket() as taken:  # as an outgoing connection took a port from the kernel's pick
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server.port = taken.getsockname()[1]
        server.start()
        try:
            with pytest.raises(StartError) as raised:
                wait_ready([server], timeout=60)
        finally:
            server.stop()
    assert str(raised.value) == (
        f"single.{build} could not listen on port {server.port}: another process took it "
        "after it was picked as free (address already in use)"
    )
