"""Containers for a project the local mesh runs: images, a private registry, compose.

- :mod:`.images`: build, tag, push and pull the project's images with the
  ``docker`` SDK (``usvc images …``);
- :mod:`.registry`: a private registry with TLS and htpasswd authentication
  (``usvc registry …``);
- :mod:`.compose`: the Envoy configuration and environment ``docker compose``
  runs, generated from the same manifests as ``usvc up`` (``usvc compose …``).

docs/containers.md is the user's guide.
"""
