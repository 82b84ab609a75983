"""Shared fixtures: repository paths and a small demo config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def demo_config_path() -> Path:
    return REPO / "configs" / "demo.yaml"
