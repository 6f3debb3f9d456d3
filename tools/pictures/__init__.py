"""The README's pictures, from real data measured on this machine.

``python -m tools.pictures`` runs the local chain with telemetry
(usvc_mesh.telemetry: the same Prometheus configuration and rules as
``usvc up --telemetry``), drives mixed traffic through it for a minute — with
worldtimeapi's stand-in stopped for the middle third, so that core falls
back to clock — then asks Prometheus every panel's query of each local
dashboard (helm/usvc/dashboards/*.json) over that minute and draws the panels
with matplotlib, since there is no Grafana here: docs/img/<dashboard>.png.
It also writes the waterfall of one betaUser request, as ``usvc trace``
prints it, to docs/img/trace.txt.

The cluster dashboard (usvc-istio) needs Istio's sidecars and is not drawn:
there is no cluster here, and pictures come from real data only.
"""
