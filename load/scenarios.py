"""The scenarios: which Locust user classes of load/locustfile.py each one runs.

Kept apart from the locustfile, which imports Locust, and Locust patches the
standard library for gevent on import: nothing but the Locust process may
import it.
"""

from __future__ import annotations

SCENARIOS: dict[str, tuple[str, ...]] = {
    # the original demo's stress test: every user sends x-dev-user: stressTest
    "stress": ("StressUser",),
    # 80 % no header, 10 % betaUser, 10 % stressTest (the classes' weights)
    "mixed": ("NoHeaderUser", "BetaUser", "StressUser"),
}
