"""The load test's Locust users: who calls the gateway, with which header, how often.

Scenarios (``python -m load --scenario …`` picks the classes, see load/scenarios.py):

* ``stress``, the original demo's stress test: every user sends
  ``x-dev-user: stressTest`` (the route to middle canary/prod and core test).
* ``mixed``: 80 % of users send no header, 10 % ``betaUser``, 10 % ``stressTest``.

Users arrive at the spawn rate (50 a second by default) and each sends one
request every ``--pace`` seconds from then on, so the gateway sees
``users / pace`` requests a second however long a reply takes (up to ``pace``).
Any answer but 200 counts as a failure.
"""

from __future__ import annotations

from typing import Any, ClassVar

from locust import FastHttpUser, constant_pacing, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

PATH = "/"


def _options(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--pace", type=float, default=1.0, help="seconds between one user's requests"
    )


# Locust's EventHook.add_listener carries no annotations.
events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]


class GatewayUser(FastHttpUser):
    """One request to the gateway every ``--pace`` seconds, as ``dev_user`` if set."""

    abstract = True
    dev_user: ClassVar[str | None] = None

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        options: Any = environment.parsed_options
        self._pace = constant_pacing(options.pace if options is not None else 1.0)
        self.headers = {"x-dev-user": self.dev_user} if self.dev_user else {}
        self.label = self.dev_user or "no header"

    def wait_time(self) -> float:
        result: float = self._pace(self)
        return result

    @task
    def call(self) -> None:
        with self.client.get(
            PATH, headers=self.headers, name=f"{PATH} {self.label}", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")


class NoHeaderUser(GatewayUser):
    weight = 8


class BetaUser(GatewayUser):
    weight = 1
    dev_user = "betaUser"


class StressUser(GatewayUser):
    weight = 1
    dev_user = "stressTest"
