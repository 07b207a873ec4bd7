"""Fixtures shared by the whole suite: a live 115 sandbox on loopback and a token file authorized against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon115.api.sandbox import Sandbox

SANDBOX_SEED = 115


def pytest_addoption(parser: pytest.Parser) -> None:
    """Registered here, not in tests/reliability: pytest takes options only from conftest files it loads before
    parsing the command line, and this one is loaded for ``pytest``, ``pytest tests`` and ``pytest tests/reliability``."""
    parser.addoption("--long", action="store_true", default=False,
                     help="reliability suite: 500 kills instead of 20, a simulated month instead of a day "
                          "(same as DAEMON115_LONG=1)")


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Every test that ran a sandbox fails if any token it issued shows up in what the test printed or logged.

    The check covers captured stdout/stderr, log records and the failure text (exception messages), so a token
    leaking through any output path of daemon115 fails the suite, whichever test it happens in.
    """
    outcome = yield
    report = outcome.get_result()
    running = getattr(item, "funcargs", {}).get("sandbox")
    if report.when != "call" or not isinstance(running, Sandbox):
        return
    text = "\n".join([report.capstdout, report.capstderr, report.caplog, report.longreprtext])
    leaked = [token[:6] + "…" for token in running.stats()["issued_tokens"] if token in text]
    if leaked:
        report.outcome = "failed"
        report.longrepr = f"token values leaked into the test's output: {leaked}"
