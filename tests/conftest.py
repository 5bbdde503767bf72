"""Shared fixtures: keep every test away from the user's real STORYTELLER_HOME and the network; the gpu-profile run
only when asked for by name."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def storyteller_home(tmp_path, monkeypatch):
    "A fresh STORYTELLER_HOME per test, and the cpu profile."
    monkeypatch.setenv("STORYTELLER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STORYTELLER_PROFILE", "cpu")
    return tmp_path / "home"


def pytest_collection_modifyitems(config, items):
    """Deselect the `gpu_smoke` tests unless the `-m` expression names them: `-m "not book"` must not start the
    18-minute gpu-profile run, as a `-m` in `addopts` would let it (the last `-m` given wins)."""
    if "gpu_smoke" in config.getoption("markexpr"):
        return
    smoke = [item for item in items if item.get_closest_marker("gpu_smoke")]
    if smoke:
        config.hook.pytest_deselected(items=smoke)
        items[:] = [item for item in items if not item.get_closest_marker("gpu_smoke")]
