"""Images the integration tests use, built locally by fleetimg's lab helpers."""

from __future__ import annotations

import docker

from fleetimg.lab.baseimage import app_image, ensure_minimal_base


def ensure_arm64_mini_image(client: docker.DockerClient) -> str:
    return ensure_minimal_base(client)


def build_app_image(tag: str, *, app: str, l4t: str = "R32.7.1", blob_mb: int = 0,
                    target: str = "test-app") -> str:
    return app_image(docker.from_env(), tag, app=app, l4t=l4t, blob_mb=blob_mb,
                     target=target)
