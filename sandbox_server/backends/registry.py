"""The only place a backend is chosen."""

from __future__ import annotations

from sandbox_server.backends.base import Backend
from sandbox_server.settings import Backend as BackendName
from sandbox_server.settings import Settings


def build_backend(settings: Settings) -> Backend:
    if settings.backend is BackendName.NSJAIL:
        from sandbox_server.backends.nsjail import NsjailBackend

        return NsjailBackend(settings)
    if settings.backend is BackendName.DOCKER:
        from sandbox_server.backends.docker import DockerBackend

        return DockerBackend(settings)
    raise ValueError(f"unknown backend {settings.backend!r}")
