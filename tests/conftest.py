from __future__ import annotations

import os
from pathlib import Path

import pytest

# testcontainers must never try to pull its reaper image: nothing may be pulled here.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

DATA = Path(__file__).parent / "data"

# Jetson-like SD card images and inventories, shared by tests/sdcard and tests/integration.
pytest_plugins = ["tests.sdcard.fixtures"]


@pytest.fixture(autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep fleetimg's known_hosts, logs and labs out of the user's home during tests."""
    state = tmp_path_factory.getbasetemp() / "fleetimg-state"
    state.mkdir(exist_ok=True)
    monkeypatch.setenv("FLEETIMG_STATE_DIR", str(state))
    monkeypatch.delenv("FLEETIMG_INVENTORY", raising=False)
    return state
