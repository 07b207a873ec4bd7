"""The security review (docs/SECURITY.md), one test per point, on real files, sockets and processes.

Token and ledger files stay owner-only whatever the umask; secrets never reach a log line, an exception text, a
notification or `status`; watch folders never follow a symlink out; no shell, eval or unpickling anywhere in
daemon115/; outside data is read only up to its cap; servers listen only where they are told.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon115 import cli
from daemon115.api.auth import Tokens, read_tokens, write_tokens
from daemon115.api.errors import Api115Error
from daemon115.api.sandbox import Fault, Sandbox
from daemon115.api.transport import Pacing, Transport
from daemon115.config import BarkNotify, ConfigError, Feed, TelegramNotify, WatchFolder, WebhookNotify, load, loads
from daemon115.ledger import Ledger
from daemon115.links import MAX_TORRENT_SIZE, LinkError, parse_link
from daemon115.logs import configure, get_logger
from daemon115.metrics import Metrics, serve
from daemon115.notify import Notifications
from daemon115.sources.feeds import FeedPoller
from daemon115.sources.watch import (MAX_TEXT_SIZE, DropError, Resolver, WatchSource, move_aside, process_drop,
                                     read_drop)

REPO = Path(__file__).resolve().parents[1]
PASSKEY = "pk0123456789abcdef0123"
TOKEN = "at_" + "5" * 48
SECRET = "s3cr3t0123456789"


def magnet(n: int) -> str:
    return f"magnet:?xt=urn:btih:{n:040x}&dn=file{n}"


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)
    return value


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_python(code: str, *args: str, umask: int = 0o000, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter under ``umask``: the umask is per process, so it cannot leak into others."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, umask=umask,
                          timeout=timeout, check=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def log_lines() -> Iterator[Callable[[str], tuple[io.StringIO, Any]]]:
    """configure(fmt) onto a buffer; structlog's global configuration is reset afterwards."""
    def start(fmt: str) -> tuple[io.StringIO, Any]:
        stream = io.StringIO()
        return stream, configure("debug", fmt, stream=stream)

    yield start
    structlog.reset_defaults()


# ================================================================ token and ledger files

WRITE_TOKENS = """
import sys
from pathlib import Path
from daemon115.api.auth import Tokens, import_tokens, mark_dead
path = Path(sys.argv[1])
import_tokens(path, Tokens("at_" + "1" * 48, "rt_" + "2" * 48, 2e9))
mark_dead(path, "rt_" + "2" * 48)
"""


def test_the_token_file_its_lock_and_its_dead_marker_are_0600_even_under_umask_000(tmp_path: Path) -> None:
    path = tmp_path / "state" / "token.json"
    run_python(WRITE_TOKENS, str(path))
    assert read_tokens(path).refresh_token == "rt_" + "2" * 48
    for name in ("token.json", "token.json.lock", "token.json.dead"):
        assert mode(path.parent / name) == 0o600, name


def test_folders_made_for_the_token_file_are_not_writable_by_others_even_under_umask_000(tmp_path: Path) -> None:
    path = tmp_path / "state" / "daemon115" / "token.json"
    run_python(WRITE_TOKENS, str(path))
    for directory in (path.parent, path.parent.parent):
        assert mode(directory) & 0o022 == 0, f"{directory} is {oct(mode(directory))}: others could swap token.json"


REWRITE_TOKENS = """
import sys
from pathlib import Path
from daemon115.api.auth import Tokens, import_tokens
for i in range(1, int(sys.argv[2]) + 1):
    import_tokens(Path(sys.argv[1]), Tokens(f"at_{i:048d}", f"rt_{i:048d}", 2e9))
"""


def test_replacing_the_token_file_is_atomic_and_never_shows_a_readable_file_even_under_umask_000(
        tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    write_tokens(path, Tokens("at_" + "0" * 48, "rt_" + "0" * 48, 2e9))
    original = open(path, "rb")  # held open, so its inode cannot be reused by a later file
    writer = subprocess.Popen([sys.executable, "-c", REWRITE_TOKENS, str(path), "400"], umask=0)
    pairs: set[str] = set()
    try:
        while writer.poll() is None:
            tokens = read_tokens(path)  # never missing, empty or torn: that would raise AuthorizationNeeded
            assert tokens.access_token[3:] == tokens.refresh_token[3:], "a half-written pair"
            pairs.add(tokens.access_token)
            for entry in os.scandir(tmp_path):
                try:
                    entry_mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                except FileNotFoundError:
                    continue  # a temporary file renamed away between listing and looking
                assert entry_mode & 0o077 == 0, f"{entry.name} was {oct(entry_mode)}"
    finally:
        writer.wait(60)
    with original:
        assert json.loads(original.read())["access_token"] == "at_" + "0" * 48, "rewritten in place"
        assert os.fstat(original.fileno()).st_nlink == 0 and os.fstat(original.fileno()).st_ino != \
            os.lstat(path).st_ino, "not replaced by a rename"
    assert writer.returncode == 0
    assert read_tokens(path).access_token == f"at_{400:048d}"
    assert len(pairs) > 2, "the reader never overlapped the writer"
    assert not list(tmp_path.glob(".token.json.*.tmp"))


KEEP_LEDGER_OPEN = """
import sys
from pathlib import Path
from daemon115.intake import candidate
from daemon115.ledger import Ledger
from daemon115.links import parse_link
with Ledger(Path(sys.argv[1])) as ledger:
    ledger.record([candidate(parse_link("magnet:?xt=urn:btih:" + "b" * 40), target="0", source="test")])
    ledger.meta_set("x", "y")
    print("open", flush=True)
    sys.stdin.readline()
"""


def test_the_ledger_and_its_wal_and_shm_files_are_owner_only_even_under_umask_000(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.sqlite3"
    holder = subprocess.Popen([sys.executable, "-c", KEEP_LEDGER_OPEN, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, umask=0)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        files = {p.name: mode(p) for p in path.parent.iterdir()}
    finally:
        holder.communicate("\n", timeout=30)
    assert {"ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"} <= set(files)
    assert {name: m for name, m in files.items() if m & 0o077} == {}
    assert mode(path.parent) == 0o700


def test_every_file_a_cli_run_leaves_in_the_state_folder_is_owner_only_under_umask_000(
        sandbox: Sandbox, tmp_path: Path) -> None:
    state = tmp_path / "state"
    sandbox.write_token_file(state / "token.json")
    sandbox.inject(Fault("expire_access"))  # the run must refresh, so it rewrites the token file itself
    config = tmp_path / "config.yaml"
    config.write_text(f"api: {{base_url: '{sandbox.url}', passport_url: '{sandbox.url}', min_interval: 0s}}\n"
                      f"auth: {{token_file: '{state / 'token.json'}'}}\n"
                      f"ledger: {{path: '{state / 'db' / 'ledger.sqlite3'}'}}\n")
    result = subprocess.run([sys.executable, "-m", "daemon115", "-c", str(config), "add", magnet(7)],
                            capture_output=True, text=True, umask=0, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sandbox.stats()["issued_tokens"] and read_tokens(state / "token.json").access_token in \
        sandbox.stats()["issued_tokens"]
    made = {str(p.relative_to(state)): mode(p) for p in state.rglob("*")}
    assert "db/ledger.sqlite3" in made and "token.json.lock" in made
    assert {name: oct(m) for name, m in made.items() if m & 0o077} == {}


# ================================================================ redaction in every log path


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_both_renderers_redact_secret_keys_bearer_values_known_tokens_and_exception_text(
        log_lines: Callable[[str], tuple[io.StringIO, Any]], fmt: str) -> None:
    stream, redactor = log_lines(fmt)
    refresh = "rt_" + "6" * 48
    redactor.remember(TOKEN, refresh)
    log = get_logger("daemon115.test")
    log.info("call", authorization=f"Bearer {TOKEN}", headers={"Cookie": f"passkey={PASSKEY}"},
             access_token=TOKEN, detail=f"retrying with {refresh}", note=f"sent Bearer {SECRET}")
    try:
        raise RuntimeError(f"refresh of {refresh} failed (Authorization: Bearer {TOKEN})")
    except RuntimeError as exc:
        log.exception("refresh_failed", error=str(exc))
    text = stream.getvalue()
    assert "refresh_failed" in text and "Traceback" in text and "<redacted>" in text
    for secret in (TOKEN, refresh, PASSKEY, SECRET):
        assert secret not in text


def test_a_requests_error_whose_message_holds_a_passkey_url_is_logged_without_the_passkey(
        log_lines: Callable[[str], tuple[io.StringIO, Any]]) -> None:
    stream, _ = log_lines("json")
    url = f"http://127.0.0.1:{closed_port()}/rss?passkey={PASSKEY}&access_token={TOKEN}"
    with pytest.raises(requests.ConnectionError) as caught:
        requests.get(url, timeout=5)
    assert PASSKEY in str(caught.value)  # requests names the URL, query and all
    log = get_logger("daemon115.test")
    log.error("fetch_failed", error=str(caught.value))
    try:
        raise caught.value
    except requests.ConnectionError:
        log.exception("fetch_crashed")
    text = stream.getvalue()
    assert "fetch_failed" in text and "fetch_crashed" in text
    assert PASSKEY not in text and TOKEN not in text


class Routes:
    """A loopback HTTP server: path -> handler(request) giving (status, headers, body chunks)."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], tuple[int, dict[str, str], Iterable[bytes]]]] = {}
        self.sent: dict[str, int] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                route = owner.routes.get(path)
                status, headers, chunks = route(self) if route else (404, {}, [b"not found"])
                sent = 0
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for chunk in chunks:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    owner.sent[path] = owner.sent.get(path, 0) + sent

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def routes() -> Iterator[Routes]:
    server = Routes()
    yield server
    server.close()


def echoing(status: int, content_type: str) -> Callable[[BaseHTTPRequestHandler], tuple[int, dict, list[bytes]]]:
    """An answer that repeats the request's path and headers back, as error pages of some proxies do."""
    def answer(request: BaseHTTPRequestHandler) -> tuple[int, dict, list[bytes]]:
        body = f"<html><body>{request.path}\n{request.headers}</body></html>".encode()
        return status, {"Content-Type": content_type, "Content-Length": str(len(body))}, [body]
    return answer


def test_transport_errors_never_carry_the_token_the_url_or_what_the_server_echoed(routes: Routes) -> None:
    routes.routes["/html"] = echoing(502, "text/html")
    routes.routes["/text"] = echoing(200, "text/plain")
    routes.routes["/slow"] = lambda request: (time.sleep(1.5), (200, {"Content-Length": "2"}, [b"{}"]))[1]
    transport = Transport(Pacing(timeout=0.5, min_interval=0, max_retries=0))
    urls = [f"http://127.0.0.1:{closed_port()}/open/x", routes.url + "/html", routes.url + "/text",
            routes.url + "/slow"]
    messages = []
    try:
        for url in urls:
            for idempotent in (True, False):
                with pytest.raises(Api115Error) as caught:
                    transport.request("POST", f"{url}?access_token={TOKEN}&sign={SECRET}", "/open/x",
                                      headers={"Authorization": f"Bearer {TOKEN}"}, data={"passkey": PASSKEY},
                                      idempotent=idempotent)
                messages.append(f"{caught.value} {caught.value!r} {caught.value.server_message}")
    finally:
        transport.close()
    assert len(messages) == 8
    for message in messages:
        assert TOKEN not in message and SECRET not in message and PASSKEY not in message and "127.0.0.1" not in message


def test_notifier_failures_are_logged_without_their_urls_and_what_is_sent_loses_passkeys(
        routes: Routes, log_lines: Callable[[str], tuple[io.StringIO, Any]]) -> None:
    stream, redactor = log_lines("json")
    received: list[bytes] = []

    def hook(request: BaseHTTPRequestHandler) -> tuple[int, dict, list[bytes]]:
        received.append(request.body)  # type: ignore[attr-defined]
        return 204, {"Content-Length": "0"}, []

    routes.routes["/hook"] = hook
    routes.routes[f"/bot123:{SECRET}/sendMessage"] = echoing(500, "text/html")
    dead = f"http://127.0.0.1:{closed_port()}"
    notes = Notifications([
        WebhookNotify(url=f"{routes.url}/hook?key={SECRET}"),
        WebhookNotify(url=f"{dead}/hook/{SECRET}?key={SECRET}", headers={"X-Token": SECRET}),
        TelegramNotify(bot_token=f"123:{SECRET}", chat_id="1", api_url=routes.url),
        BarkNotify(server=dead, device_key=SECRET)], log=get_logger("daemon115.notify"), redactor=redactor)
    notes.emit("failed", name="Show S01E01", url=f"http://tracker.example/dl/1.torrent?passkey={PASSKEY}",
               reason=f"HTTP 500 from http://tracker.example/rss?passkey={PASSKEY}",
               magnet=f"magnet:?xt=urn:btih:{'a' * 40}&tr=http%3A%2F%2Ft.example%2Fannounce%3Fpasskey%3D{PASSKEY}")
    notes.close(timeout=10)
    text = stream.getvalue()
    assert text.count("notifier_failed") == 3, text
    assert len(received) == 1 and b"Show S01E01" in received[0]
    for secret in (SECRET, PASSKEY):
        assert secret not in text and secret.encode() not in received[0]


def test_feed_failures_and_status_output_never_show_a_passkey_or_a_token(
        sandbox: Sandbox, token_file: Path, tmp_path: Path, routes: Routes,
        log_lines: Callable[[str], tuple[io.StringIO, Any]]) -> None:
    stream, _ = log_lines("json")
    routes.routes["/rss"] = echoing(500, "text/html")
    routes.routes["/moved"] = lambda request: (302, {"Location": f"http://127.0.0.1:{closed_port()}/rss?passkey="
                                                                 f"{PASSKEY}", "Content-Length": "0"}, [])
    config = tmp_path / "config.yaml"
    config.write_text(
        f"api: {{base_url: '{sandbox.url}', passport_url: '{sandbox.url}', min_interval: 0s}}\n"
        f"auth: {{token_file: '{token_file}'}}\nledger: {{path: '{tmp_path / 'l.sqlite3'}'}}\n"
        "feeds:\n"
        f"  - {{name: echo, url: '{routes.url}/rss?passkey={PASSKEY}', accept_all: true,"
        f" headers: {{X-Api-Key: '{SECRET}'}}, cookies: {{pass: '{SECRET}'}}}}\n"
        f"  - {{name: dead, url: 'http://127.0.0.1:{closed_port()}/rss?passkey={PASSKEY}', accept_all: true}}\n"
        f"  - {{name: moved, url: '{routes.url}/moved?passkey={PASSKEY}', accept_all: true}}\n")
    cfg = load(config)
    with Ledger(cfg.ledger.path) as ledger, FeedPoller(cfg.feeds, ledger, host_gap=0) as poller:
        results = poller.poll_all(force=True)
    assert [r.status for r in results] == ["error"] * 3
    outputs = [stream.getvalue(), *(r.error or "" for r in results)]
    for argv in (["status"], ["status", "--json"], ["rss", "test"], ["rss", "test", "--json"]):
        out, err = io.StringIO(), io.StringIO()
        cli.main(["-c", str(config), *argv], out=out, err=err)
        outputs += [out.getvalue(), err.getvalue()]
    assert "FAILING x1: HTTP 500" in outputs[1 + len(results)]  # `status` shows each feed's last error
    tokens = read_tokens(token_file)
    for text in outputs:
        for secret in (PASSKEY, SECRET, tokens.access_token, tokens.refresh_token):
            assert secret not in text


# ================================================================ watch folders and symlinks


class OpenSpy(FileSystemEventHandler):
    """inotify on a folder outside the watch folder: every open, move or delete of what is in it."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.events: list[tuple[str, str]] = []
        self._observer = Observer()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "moved", "deleted", "modified", "created"):
            self.events.append((event.event_type, os.fsdecode(event.src_path)))

    def __enter__(self) -> OpenSpy:
        self._observer.schedule(self, str(self.folder), recursive=True)
        self._observer.start()
        self._control()
        self.events.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        self._observer.stop()
        self._observer.join(5)

    def touched(self) -> list[tuple[str, str]]:
        """What happened outside since the spy started; a control open of our own comes last, so a spy that
        hears nothing fails the test instead of passing it."""
        self._control()
        ours = {str(self.folder / "control.txt"), str(self.folder)}  # the folder is "modified" by the control file
        return [e for e in self.events if e[1] not in ours or e[0] != "modified" and e[1] == str(self.folder)]

    def _control(self) -> None:
        control = self.folder / "control.txt"
        control.write_text("x")
        before = len(self.events)
        control.read_text()
        wait_for(lambda: ("opened", str(control)) in self.events[before:])


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.magnet").write_text(magnet(99))
    return folder


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.sqlite3") as opened:
        yield opened


@contextmanager
def watching(folder: WatchFolder, ledger: Ledger) -> Iterator[WatchSource]:
    source = WatchSource([folder], ledger)
    source.start()
    try:
        yield source
    finally:
        source.stop()


def test_a_symlink_to_a_file_outside_is_never_opened_or_moved(drop: Path, outside: Path, ledger: Ledger) -> None:
    with OpenSpy(outside) as spy:
        (drop / "link.magnet").symlink_to(outside / "secret.magnet")
        with watching(WatchFolder(drop, settle=0.1), ledger):
            wait_for(lambda: os.path.lexists(drop / ".failed" / "link.magnet"))
        assert spy.touched() == []
    assert (drop / ".failed" / "link.magnet").is_symlink()
    assert (outside / "secret.magnet").read_text() == magnet(99) and ledger.entries() == []


def test_a_symlinked_subfolder_of_a_recursive_watch_is_never_entered(drop: Path, outside: Path,
                                                                    ledger: Ledger) -> None:
    (drop / "real").mkdir()
    with OpenSpy(outside) as spy:
        (drop / "sub").symlink_to(outside, target_is_directory=True)
        (drop / "evil.magnet").symlink_to(outside, target_is_directory=True)
        with watching(WatchFolder(drop, settle=0.1, recursive=True), ledger) as source:
            (drop / "real" / "b.magnet").write_text(magnet(2))
            wait_for(lambda: (drop / ".done" / "real" / "b.magnet").exists())
            source.scan()
        assert spy.touched() == []
    assert {e.key for e in ledger.entries()} == {parse_link(magnet(2)).key}
    assert sorted(os.listdir(outside)) == ["control.txt", "secret.magnet"]
    assert (drop / "sub").is_symlink() and (drop / ".failed" / "evil.magnet").is_symlink()


def test_a_symlink_swapped_in_after_the_event_is_never_followed(drop: Path, outside: Path, ledger: Ledger) -> None:
    with OpenSpy(outside) as spy:
        with watching(WatchFolder(drop, settle=1.0), ledger):
            time.sleep(0.3)  # the start-up scan is done: the file below arrives by its event
            with open(drop / "x.magnet", "w") as writer:  # written and not yet closed: noted, not taken
                writer.write(magnet(3))
                writer.flush()
                time.sleep(0.4)
                (drop / ".swap").symlink_to(outside / "secret.magnet")
                os.rename(drop / ".swap", drop / "x.magnet")
            wait_for(lambda: os.path.lexists(drop / ".failed" / "x.magnet"))
        assert spy.touched() == []
    assert ledger.entries() == [] and (outside / "secret.magnet").read_text() == magnet(99)


def test_a_symlink_swapped_in_at_any_moment_of_a_read_is_never_followed(drop: Path, outside: Path) -> None:
    folder, path = WatchFolder(drop), drop / "x.magnet"
    secret_key = parse_link(magnet(99)).key
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            (drop / ".real").write_text(magnet(4))
            os.rename(drop / ".real", path)
            os.symlink(outside / "secret.magnet", drop / ".link")
            os.rename(drop / ".link", path)

    outcomes = {"read": 0, "refused": 0}
    with OpenSpy(outside) as spy:
        flipper = threading.Thread(target=flip)
        flipper.start()
        try:
            for _ in range(3000):
                try:
                    parsed = read_drop(path, folder)
                except DropError:
                    outcomes["refused"] += 1
                    continue
                assert secret_key not in {link.key for link in parsed.links}
                outcomes["read"] += 1
        finally:
            stop.set()
            flipper.join()
        assert spy.touched() == []
    assert outcomes["read"] and outcomes["refused"], outcomes


@pytest.mark.parametrize("bucket, content", [(".done", magnet(5)), (".failed", "not a link\n")])
def test_a_done_or_failed_folder_that_is_a_symlink_never_takes_drops_out_of_the_watch_folder(
        drop: Path, outside: Path, ledger: Ledger, bucket: str, content: str) -> None:
    (drop / bucket).symlink_to(outside, target_is_directory=True)
    (drop / "x.magnet").write_text(content)
    process_drop(drop / "x.magnet", WatchFolder(drop), ledger)
    assert sorted(os.listdir(outside)) == ["secret.magnet"], f"written through the {bucket} symlink"


def test_a_done_folder_swapped_for_a_symlink_while_drops_move_never_takes_one_out(
        drop: Path, outside: Path) -> None:
    """A local user races the move: .done/ flips between a real folder and a symlink to outside."""
    folder = WatchFolder(drop)
    stop = threading.Event()

    def swap() -> None:
        real, link = drop / "parked", drop / "link"
        real.mkdir()
        link.symlink_to(outside, target_is_directory=True)
        while not stop.is_set():
            for parked in (real, link):
                try:
                    os.rename(parked, drop / ".done")  # in place of nothing: .done/ was just parked
                    os.rename(drop / ".done", parked)
                except OSError:
                    with contextlib.suppress(OSError):  # move_aside made a .done of its own meanwhile
                        os.rename(drop / ".done", drop / f"made-{time.monotonic_ns()}")

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        for n in range(400):
            (drop / f"{n}.magnet").write_text(magnet(n))
            with contextlib.suppress(OSError):
                move_aside(drop / f"{n}.magnet", folder, ".done")
    finally:
        stop.set()
        swapper.join()
    assert sorted(os.listdir(outside)) == ["secret.magnet"], "a drop went through the symlink"


# ================================================================ no shell, eval or unpickling


FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__", "breakpoint"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
FORBIDDEN_CALLS = {"os.system", "os.popen", "os.execl", "os.execle", "os.execlp", "os.execv", "os.execve",
                   "os.execvp", "os.execvpe", "os.spawnl", "os.spawnv", "os.posix_spawn", "os.posix_spawnp",
                   "pty.spawn", "yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all",
                   "yaml.full_load", "yaml.full_load_all", "subprocess.getoutput", "subprocess.getstatusoutput"}
UNSAFE_LOADERS = {"yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader", "yaml.CUnsafeLoader",
                  "yaml.CFullLoader"}


class _Scanner(ast.NodeVisitor):
    """Calls that run or unpickle data, by their real dotted names (import aliases resolved)."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.found: list[tuple[int, str]] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.aliases[(alias.asname or alias.name).split(".")[0]] = alias.asname and alias.name or \
                alias.name.split(".")[0]
            self._module(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        self._module(node, node.module or "")

    def _module(self, node: ast.AST, name: str) -> None:
        if name.split(".")[0] in FORBIDDEN_MODULES:
            self.found.append((node.lineno, f"import {name}"))

    def dotted(self, node: ast.AST) -> str:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            return f"{self.dotted(node.value)}.{node.attr}"
        return "?"

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func)
        if (isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_NAMES and node.func.id not in self.aliases) \
                or name in FORBIDDEN_CALLS:
            self.found.append((node.lineno, name))
        for keyword in node.keywords:
            shell = keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant)
                                                    and keyword.value.value is False)
            if shell and name.startswith(("subprocess.", "asyncio.")):
                self.found.append((node.lineno, f"{name}(shell=...)"))
            if keyword.arg == "Loader" and self.dotted(keyword.value) in UNSAFE_LOADERS:
                self.found.append((node.lineno, f"{name}(Loader={self.dotted(keyword.value)})"))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self.dotted(node) in UNSAFE_LOADERS:
            self.found.append((node.lineno, self.dotted(node)))
        self.generic_visit(node)


def dangerous(source: str) -> list[tuple[int, str]]:
    scanner = _Scanner()
    scanner.visit(ast.parse(source))
    return sorted(set(scanner.found))


def test_the_scanner_finds_every_forbidden_construct_and_ignores_comments_and_strings() -> None:
    source = """
import subprocess as sp, yaml, os
from os import system as run
import pickle
# eval(x) in a comment, and os.system("x") in a string:
text = "yaml.load(x) eval(y)"
eval(x)
run("ls")
sp.run("ls", shell=True)
sp.run(["ls"], shell=False)
yaml.load(x, Loader=yaml.Loader)
yaml.safe_load(x)
yaml.compose(x, Loader=yaml.SafeLoader)
os.popen("ls")
"""
    assert dangerous(source) == [(4, "import pickle"), (7, "eval"), (8, "os.system"), (9, "subprocess.run(shell=...)"),
                                 (11, "yaml.Loader"), (11, "yaml.load"), (11, "yaml.load(Loader=yaml.Loader)"),
                                 (14, "os.popen")]


def test_no_module_of_daemon115_runs_a_shell_evals_or_unpickles_anything() -> None:
    found = {str(path.relative_to(REPO)): dangerous(path.read_text(encoding="utf-8"))
             for path in sorted((REPO / "daemon115").rglob("*.py"))}
    assert len(found) > 30
    assert {path: hits for path, hits in found.items() if hits} == {}


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch {flag}']",
                                 "!!python/object/new:subprocess.Popen [['touch', '{flag}']]",
                                 "!!python/name:os.system"])
def test_yaml_tags_that_would_run_code_are_refused_and_nothing_runs(tmp_path: Path, tag: str) -> None:
    flag = tmp_path / "ran"
    config = tmp_path / "config.yaml"
    config.write_text(f"api: {tag.format(flag=flag)}\n")
    with pytest.raises(ConfigError, match="YAML"):
        load(config)
    with pytest.raises(ConfigError):
        loads(f"feeds: [{tag.format(flag=flag)}]\n")
    time.sleep(0.1)
    assert not flag.exists()


# ================================================================ size caps


def chunked(*parts: bytes, zeros: int = 0) -> Iterator[bytes]:
    """A chunked body of ``parts`` then ``zeros`` zero bytes, made as it is sent (the server holds 1 MiB at a time)."""
    for part in parts:
        yield b"%x\r\n%s\r\n" % (len(part), part)
    block = b"\0" * (1 << 20)
    for _ in range(zeros >> 20):
        yield b"%x\r\n%s\r\n" % (len(block), block)
    yield b"0\r\n\r\n"


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """The peak of Python's allocations inside the block, in bytes (tracemalloc)."""
    result: list[int] = []
    tracemalloc.start()
    try:
        yield result
    finally:
        result.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def gzip_bomb(total: int) -> bytes:
    """``total`` zero bytes as concatenated gzip members (each 1 MiB of zeros): ~1 KB per MiB, built in ms."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = packer.compress(b"\0" * (1 << 20)) + packer.flush()
    return member * (total >> 20)


def test_a_50_mb_feed_body_stops_at_the_cap_with_memory_bounded(routes: Routes, ledger: Ledger) -> None:
    routes.routes["/big"] = lambda request: (200, {"Transfer-Encoding": "chunked"}, chunked(b"<rss>", zeros=50 << 20))
    feed = Feed(name="big", url=routes.url + "/big", max_size=5_000_000, accept_all=True, timeout=10)
    with FeedPoller([feed], ledger, host_gap=0) as poller, peak_memory() as peak:
        result = poller.poll(feed)
    assert result.status == "error" and "larger than the cap of 5 MB" in (result.error or "")
    assert peak[0] < 15_000_000, f"peak {peak[0]:,} bytes for a 5 MB cap"
    assert routes.sent["/big"] < 40 << 20, "the whole body was read"


def test_a_gzip_bomb_stops_at_the_cap_counted_after_decompression_with_memory_bounded(routes: Routes,
                                                                                      ledger: Ledger) -> None:
    bomb = gzip_bomb(1 << 30)
    routes.routes["/bomb"] = lambda request: (200, {"Content-Encoding": "gzip", "Content-Length": str(len(bomb))},
                                              [bomb])
    feed = Feed(name="bomb", url=routes.url + "/bomb", max_size=5_000_000, accept_all=True, timeout=10)
    with FeedPoller([feed], ledger, host_gap=0) as poller, peak_memory() as peak:
        result = poller.poll(feed)
    assert result.status == "error" and "counted after decompression" in (result.error or "")
    assert peak[0] < 20_000_000, f"peak {peak[0]:,} bytes for a 5 MB cap on a 1 GiB bomb"


def test_a_torrent_behind_a_feed_or_a_torrent_link_is_read_only_up_to_its_cap(routes: Routes, ledger: Ledger) -> None:
    routes.routes["/big.torrent"] = lambda request: (200, {"Transfer-Encoding": "chunked"},
                                                     chunked(b"d4:info", zeros=50 << 20))
    routes.routes["/feed"] = lambda request: (200, {}, [(
        '<rss version="2.0"><channel><item><title>Big</title>'
        f'<enclosure url="{routes.url}/big.torrent" type="application/x-bittorrent"/></item></channel></rss>'
    ).encode()])
    feed = Feed(name="f", url=routes.url + "/feed", accept_all=True, resolve_torrents=True, timeout=10)
    with FeedPoller([feed], ledger, host_gap=0) as poller, peak_memory() as peak:
        result = poller.poll(feed)
    assert result.status == "ok" and not result.verdicts[0].grab
    assert "larger than the cap of" in result.verdicts[0].reason
    assert peak[0] < 3 * MAX_TORRENT_SIZE, f"peak {peak[0]:,} bytes"
    resolver = Resolver(timeout=10)
    try:
        with peak_memory() as peak, pytest.raises(LinkError, match=f"over the {MAX_TORRENT_SIZE}-byte limit"):
            resolver.resolve(parse_link(routes.url + "/big.torrent"), torrents=True)
    finally:
        resolver.close()
    assert peak[0] < 3 * MAX_TORRENT_SIZE, f"peak {peak[0]:,} bytes"


@pytest.mark.parametrize("name, size, limit", [("big.magnet", MAX_TEXT_SIZE + 1, MAX_TEXT_SIZE),
                                               ("big.torrent-link", MAX_TEXT_SIZE + 1, MAX_TEXT_SIZE),
                                               ("big.torrent", MAX_TORRENT_SIZE + 1, MAX_TORRENT_SIZE),
                                               ("sparse.torrent", 50 << 30, MAX_TORRENT_SIZE)])
def test_a_drop_over_its_size_cap_fails_without_being_read(drop: Path, ledger: Ledger, name: str, size: int,
                                                           limit: int) -> None:
    with open(drop / name, "wb") as sparse:
        sparse.truncate(size)  # a hole: as large as it says, without the disk space
    with peak_memory() as peak:
        outcome = process_drop(drop / name, WatchFolder(drop), ledger)
    assert outcome.action == "failed" and f"{size} bytes, over the {limit}-byte limit" in outcome.reason
    assert peak[0] < 1_000_000, f"peak {peak[0]:,} bytes: the file was read"
    assert ledger.entries() == []


# ================================================================ servers bind only where told


def listening_on(port: int) -> set[str]:
    """Every local address with a socket listening on ``port``, as the kernel reports them."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, port_hex = local.rpartition(":")
            if state == "0A" and int(port_hex, 16) == port:
                raw = bytes.fromhex(address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words))
    return found


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_the_status_server_listens_on_exactly_the_address_it_is_given() -> None:
    with serve(Metrics(), "127.0.0.2", 0, health=lambda: (True, "")) as server:
        assert listening_on(server.port) == {"127.0.0.2"}
        assert requests.get(f"http://127.0.0.2:{server.port}/healthz", timeout=5).status_code == 200
        assert refused("127.0.0.1", server.port)


def test_the_sandbox_listens_on_exactly_the_address_it_is_given() -> None:
    with Sandbox("127.0.0.2", 0) as sandbox:
        assert listening_on(sandbox.port) == {"127.0.0.2"}
        assert refused("127.0.0.1", sandbox.port)


def test_the_sandbox_command_listens_on_loopback_only_by_default(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "daemon115", "sandbox", "--token-file",
                                str(tmp_path / "token.json")], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        port = int(url.rsplit(":", 1)[1])
        assert url.startswith("http://127.0.0.1:") and listening_on(port) == {"127.0.0.1"}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0


def test_a_bare_status_port_means_loopback_and_a_reachable_address_is_warned_about() -> None:
    from daemon115.config import warnings

    assert loads("status: {listen: 8115}").status.host == "127.0.0.1"
    assert any("can be reached from other machines" in w for w in warnings(loads("status: {listen: '0.0.0.0:8115'}")))


def test_every_test_the_review_names_exists() -> None:
    """docs/SECURITY.md proves each point by naming a test; a renamed or deleted test must not leave a dead proof."""
    root = Path(__file__).resolve().parents[1]
    named = set(re.findall(r"\b(test_[a-z0-9_]+)\b(?!\.py)", (root / "docs" / "SECURITY.md").read_text()))
    modules = {path.stem for path in (root / "tests").rglob("test_*.py")}
    defined = set(re.findall(r"^def (test_[a-z0-9_]+)", "\n".join(p.read_text() for p in (root / "tests").rglob("*.py")),
                             re.MULTILINE))
    assert named - modules - defined == set()
    assert len(named & defined) >= 40
