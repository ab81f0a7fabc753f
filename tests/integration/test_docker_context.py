"""fleetimg talks to the engine the docker CLI talks to: both follow the CLI's current
context (docker-py >= 7.2), so a build by the CLI and an image read through the SDK never
land on two engines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import docker
import pytest

from fleetimg.errors import PushError
from fleetimg.localimage import docker_client

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI")
def test_the_sdk_follows_the_clis_current_context(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "docker-config"
    config.mkdir()
    endpoint = f"unix://{tmp_path}/elsewhere.sock"
    env = {**os.environ, "DOCKER_CONFIG": str(config)}
    env.pop("DOCKER_HOST", None)
    env.pop("DOCKER_CONTEXT", None)
    subprocess.run(["docker", "context", "create", "elsewhere", "--docker",
                    f"host={endpoint}"], env=env, check=True, capture_output=True)
    subprocess.run(["docker", "context", "use", "elsewhere"], env=env, check=True,
                   capture_output=True)
    assert json.loads((config / "config.json").read_text())["currentContext"] == "elsewhere"
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    # The engine this machine runs answers where the context is not followed...
    assert docker.from_env(use_context=False).ping()
    # ...but fleetimg follows it, as the CLI does: to a socket where nothing listens.
    with pytest.raises(PushError, match="Docker engine not reachable"):
        docker_client()
