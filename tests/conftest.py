"""Shared fixtures: keep every test away from the user's real STORYTELLER_HOME and the network."""
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
