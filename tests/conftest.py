"""Fixtures shared by the whole suite: a live 115 sandbox on loopback and a token file authorized against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon115.api.sandbox import Sandbox

SANDBOX_SEED = 115


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A started sandbox on 127.0.0.1 (free port, fixed seed), stopped after the test."""
    with Sandbox("127.0.0.1", 0, seed=SANDBOX_SEED) as running:
        yield running


@pytest.fixture
def token_file(sandbox: Sandbox, tmp_path: Path) -> Path:
    """A 0600 token file holding a fresh grant of ``sandbox``."""
    path = tmp_path / "token.json"
    sandbox.write_token_file(path)
    return path
