"""Project tooling: manifests (chart -> k8s/), pictures (the README's dashboards), dashboards (Grafana JSON read without Grafana)."""
