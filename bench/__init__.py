"""Benchmarks of usvc against bare aiohttp and OpenTelemetry's auto-instrumentation.

``python -m bench`` (``./dev bench``) runs them; bench/README.md has the
command, the method and the latest table.
"""
