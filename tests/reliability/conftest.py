"""What the reliability tests share: the long/short switch, a sandbox with room for a month, feed servers, daemons.

The long form is ``--long`` (registered in the root conftest, see there why) or the environment variable
``DAEMON115_LONG=1``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest

from daemon115.api.sandbox import Sandbox

SANDBOX_SEED = 115
QUOTA = 10**7  # a month of feeds and drops needs more than the 3000 of the default sandbox
LONG_ENV = os.environ.get("DAEMON115_LONG", "") == "1"
LONG_TIMEOUT = 3600  # seconds per test in the long form (the project's default of 120 s is for the short one)
HERE = Path(__file__).resolve().parent


def _is_long(config: pytest.Config) -> bool:
    return LONG_ENV or bool(config.getoption("--long"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long forms outlive the suite's per-test timeout; give this folder's tests an hour when they run long."""
    if not _is_long(config):
        return
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT))


@pytest.fixture
def long_form(pytestconfig: pytest.Config) -> bool:
    """True with --long or DAEMON115_LONG=1: 500 kills instead of 20, a simulated month instead of a day."""
    return _is_long(pytestconfig)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """The suite's sandbox (same seed, same name, so the root conftest's token-leak check applies), with quota to
    spare; everything else is the sandbox's default, including the gateway's 20-page limit on the task list."""
    with Sandbox("127.0.0.1", 0, seed=SANDBOX_SEED, quota=QUOTA) as running:
        yield running


def _wait_for(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def wait_for() -> Callable[..., object]:
    """``wait_for(predicate, timeout, what)``: the predicate's first truthy value, or an AssertionError naming it."""
    return _wait_for


# --- feeds ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    guid: str
    title: str
    magnet: str
    published: float


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a SIGKILLed daemon resets its keep-alive connection: not news, and no traceback on stderr


class FeedServer:
    """An RSS feed on 127.0.0.1 whose items the test publishes over time; it lists the newest ``window`` items and
    answers ``If-None-Match`` with 304 while nothing new was published, as real trackers do."""

    def __init__(self, window: int = 200) -> None:
        self._window = window
        self._lock = threading.Lock()
        self._items: list[Item] = []
        self.requests = 0
        self.not_modified = 0
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/rss.xml"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="feed-server", daemon=True)
        self._thread.start()

    def publish(self, *, guid: str, title: str, magnet: str, published: float) -> None:
        with self._lock:
            self._items.append(Item(guid, title, magnet, published))

    def published(self) -> list[Item]:
        with self._lock:
            return list(self._items)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _document(self) -> tuple[str, bytes]:
        with self._lock:
            items = self._items[-self._window:]
            etag = f'"{len(self._items)}"'
        body = "".join(
            f"<item><title>{escape(i.title)}</title><link>{escape(i.magnet)}</link>"
            f'<guid isPermaLink="false">{escape(i.guid)}</guid><pubDate>{formatdate(i.published)}</pubDate>'
            f'<enclosure url="{escape(i.magnet)}" type="application/x-bittorrent" length="0"/></item>'
            for i in reversed(items))
        doc = (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>reliability</title>'
               f"<link>{escape(self.url)}</link><description>test feed</description>{body}</channel></rss>")
        return etag, doc.encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        feed = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                etag, body = feed._document()
                feed.requests += 1
                if self.headers.get("If-None-Match") == etag:
                    feed.not_modified += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture
def feed_servers() -> Iterator[Callable[[], FeedServer]]:
    """A factory of started feed servers, all stopped after the test."""
    started: list[FeedServer] = []

    def start() -> FeedServer:
        server = FeedServer()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- the daemon ----------------------------------------------------------------------------------------------------

class Daemon:
    """One `daemon115 run` subprocess; its JSON log goes to a file, so a chatty daemon never blocks on a pipe."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon115", "-c", str(config), "run"],
                                     stdout=self._out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._out.close()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM; the exit code, or an AssertionError when it takes longer than systemd would wait."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the daemon did not exit within {timeout:g} s of SIGTERM") from None
        finally:
            self._out.close()
        return code

    def events(self) -> list[dict[str, Any]]:
        return parse_log(self.log)

    def rss_kib(self) -> int | None:
        """VmRSS from /proc (kB); None once the process is gone."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def fd_count(self) -> int | None:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None


def parse_log(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a daemon log; other lines (a library printing to stderr) are left out."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # the last line of a SIGKILLed daemon may be cut off
    return events


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    """A factory of `daemon115 run` subprocesses; any still running after the test is killed."""
    started: list[Daemon] = []

    def start(config: Path, log: Path, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(config, log, env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.alive():
            daemon.kill()
