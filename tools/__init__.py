"""Project tooling.

manifests: the chart rendered into k8s/; pictures: the README's dashboards;
dashboards: Grafana JSON read without a Grafana; istio_fields: docs/istio-fields.md.
"""
