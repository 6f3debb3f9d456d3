"""The load test: Locust against the gateway, gated on service levels read from Prometheus.

``python -m load`` (or ``./dev load``) runs one scenario headless, writes
Locust's CSV and HTML reports into a run directory, reads the RED metrics the
services exposed during the run back from Prometheus, and exits non-zero when
a service level of ``load/slo.yaml`` is breached. See docs/load.md.
"""
