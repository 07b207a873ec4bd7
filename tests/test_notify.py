"""Notifications: real HTTP to loopback receivers; emit never blocks; limits drop and count; no secret in logs."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import structlog

from daemon115.config import NOTIFY_EVENTS, BarkNotify, TelegramNotify, WebhookNotify
from daemon115.logs import Redactor
from daemon115.notify import AUTH_MESSAGE, TITLES, EventTee, Notifications, compose

BOT_TOKEN = "123456:AAHsecretBotTokenValue_xyz"
DEVICE_KEY = "BarkDeviceKeySecret42"
HOOK_SECRET = "hook-bearer-secret-9f8e7d"
HASH = "d2474e86c95b19b8bcfdb92bc12c9d44667cfa36"
SECRETS = (BOT_TOKEN, DEVICE_KEY, HOOK_SECRET)


# --- loopback receivers -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver(ThreadingHTTPServer):
    """Records every request; answers ``status``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.status = 200
        self.requests: list[Received] = []
        self.changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, request: Received) -> None:
        with self.changed:
            self.requests.append(request)
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.requests) >= count, timeout), \
                f"got {len(self.requests)} requests, expected {count}"
            return list(self.requests)


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.record(Received(self.command, self.path, dict(self.headers), body))
        answer = b'{"ok": true}'
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class Hanging:
    """Accepts connections and never answers."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self.accepted = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._held.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self._held:
            conn.close()
        self._sock.close()


@pytest.fixture
def receivers() -> Iterator[Callable[[], Receiver]]:
    started: list[Receiver] = []

    def start() -> Receiver:
        server = Receiver()
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver(receivers: Callable[[], Receiver]) -> Receiver:
    return receivers()


@pytest.fixture
def hanging() -> Iterator[Hanging]:
    server = Hanging()
    yield server
    server.close()


@pytest.fixture
def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Logs:
    """A real structlog logger writing JSON lines to memory."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.log = structlog.wrap_logger(
            structlog.PrintLogger(self.stream), wrapper_class=structlog.BoundLogger,
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer(ensure_ascii=False)])

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.text.splitlines() if line]
        return [line for line in lines if line["event"] == name]


@pytest.fixture
def logs() -> Logs:
    return Logs()


@pytest.fixture
def notifications(logs: Logs) -> Iterator[Callable[..., Notifications]]:
    made: list[Notifications] = []

    def make(*targets: Any, **options: Any) -> Notifications:
        made.append(Notifications(targets, log=logs.log, **options))
        return made[-1]

    yield make
    for each in made:
        each.close(timeout=1.0)


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def telegram(url: str, **options: Any) -> TelegramNotify:
    return TelegramNotify(bot_token=BOT_TOKEN, chat_id="-100123", api_url=url, **options)


def bark(url: str, **options: Any) -> BarkNotify:
    return BarkNotify(server=url, device_key=DEVICE_KEY, **options)


def webhook(url: str, **options: Any) -> WebhookNotify:
    return WebhookNotify(url=f"{url}/hook", headers={"Authorization": f"Bearer {HOOK_SECRET}"}, **options)


# --- what each service receives -----------------------------------------------------------------------------------

def test_a_webhook_gets_the_event_as_json_with_its_headers(receiver: Receiver, notifications, logs: Logs,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    sent = notifications(webhook(receiver.url), wall_clock=lambda: 1_700_000_000.0)
    sent.emit("submitted", name="Frieren S01E01 1080p", key=HASH, target="/Anime")
    [request] = receiver.wait_for(1)
    assert (request.method, request.path) == ("POST", "/hook")
    assert request.headers["Authorization"] == f"Bearer {HOOK_SECRET}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.json() == {
        "event": "submitted", "title": "已提交 submitted", "message": "Frieren S01E01 1080p",
        "fields": {"name": "Frieren S01E01 1080p", "key": HASH, "target": "/Anime"}, "at": "2023-11-14T22:13:20Z"}
    sent.close(timeout=2.0)
    assert_no_secret(logs.text, *capsys.readouterr())


def test_telegram_gets_send_message_on_the_bot_token_path(receiver: Receiver, notifications, logs: Logs) -> None:
    notifications(telegram(receiver.url)).emit("failed", key=HASH, reason="115 code 10008: 任务已存在")
    [request] = receiver.wait_for(1)
    assert (request.method, request.path) == ("POST", f"/bot{BOT_TOKEN}/sendMessage")
    assert request.json() == {"chat_id": "-100123", "text": f"失败 failed\n{HASH}: 115 code 10008: 任务已存在",
                              "disable_web_page_preview": True}
    assert_no_secret(logs.text)


def test_bark_gets_title_and_body_as_path_segments_after_the_device_key(receiver: Receiver, notifications) -> None:
    notifications(bark(receiver.url)).emit("completed", name="Show/Season 1 [1080p]")
    [request] = receiver.wait_for(1)
    url = urlsplit(request.path)
    key, title, body = url.path.lstrip("/").split("/")
    assert request.method == "GET"
    assert (key, unquote(title), unquote(body)) == (DEVICE_KEY, "已完成 completed", "Show/Season 1 [1080p]")
    assert parse_qs(url.query) == {"group": ["daemon115"]}


def test_a_notifier_gets_only_the_events_it_names(receivers: Callable[[], Receiver], notifications) -> None:
    everything, failures = receivers(), receivers()
    sent = notifications(webhook(everything.url), webhook(failures.url, events=("failed", "authorization_needed")))
    for event in ("submitted", "completed", "failed", "authorization_needed", "submission_paused"):
        sent.emit(event, name="x")
    sent.close(timeout=3.0)
    assert [r.json()["event"] for r in everything.requests] == list(NOTIFY_EVENTS)
    assert [r.json()["event"] for r in failures.requests] == ["failed", "authorization_needed"]


# --- nothing blocks -----------------------------------------------------------------------------------------------

def test_a_hanging_and_a_refusing_notifier_block_neither_emit_nor_the_others(
        receiver: Receiver, notifications, hanging: Hanging, refused_url: str, logs: Logs) -> None:
    sent = notifications(telegram(hanging.url, timeout=5.0), bark(refused_url), webhook(receiver.url))
    started = time.monotonic()
    for i in range(20):
        sent.emit("submitted", name=f"episode {i}")
    assert time.monotonic() - started < 0.5
    assert [r.json()["message"] for r in receiver.wait_for(20)] == [f"episode {i}" for i in range(20)]
    assert hanging.accepted.wait(2.0)
    started = time.monotonic()
    sent.close(timeout=0.5)
    assert time.monotonic() - started < 1.5
    [refused] = logs.events("notifier_failed")
    assert (refused["notifier"], refused["entry"], refused["error"]) == ("bark", "notify[1]", "connection refused")
    assert logs.events("notifier_still_busy")[0]["notifier"] == "telegram"
    assert_no_secret(logs.text)


def test_a_full_queue_drops_events_instead_of_blocking(notifications, hanging: Hanging, logs: Logs) -> None:
    sent = notifications(telegram(hanging.url, timeout=5.0, max_per_hour=1000), queue_size=2)
    sent.emit("submitted", name="first")
    assert hanging.accepted.wait(2.0)  # the worker is now stuck sending the first one
    started = time.monotonic()
    for i in range(10):
        sent.emit("submitted", name=f"more {i}")
    assert time.monotonic() - started < 0.5
    assert sent.stats() == [{"entry": "notify[0]", "notifier": "telegram", "sent": 0, "failed": 0, "dropped": 8}]
    [line] = logs.events("notifications_dropped")
    assert (line["dropped"], line["reasons"]) == (1, {"queue_full": 1})  # at once; the rest waits for the hour


def test_past_the_hourly_limit_events_are_dropped_and_the_count_logged_once_an_hour(
        receiver: Receiver, notifications, logs: Logs) -> None:
    clock = ManualClock()
    sent = notifications(webhook(receiver.url, max_per_hour=3), clock=clock)
    for i in range(6):
        sent.emit("failed", name=f"link {i}")
    receiver.wait_for(3)
    assert [line["reasons"] for line in logs.events("notifications_dropped")] == [{"rate_limit": 1}]
    clock.now += 3601
    sent.emit("failed", name="an hour later")
    assert receiver.wait_for(4)[-1].json()["message"] == "an hour later"
    wait_until(lambda: len(logs.events("notifications_dropped")) == 2 and sent.stats()[0]["sent"] == 4)
    assert logs.events("notifications_dropped")[1]["dropped"] == 2
    assert sent.stats()[0] == {"entry": "notify[0]", "notifier": "webhook", "sent": 4, "failed": 0, "dropped": 3}


def test_close_sends_what_is_queued_and_later_events_are_not_sent(receiver: Receiver, notifications) -> None:
    sent = notifications(webhook(receiver.url))
    for i in range(5):
        sent.emit("submitted", name=str(i))
    sent.close(timeout=3.0)
    assert len(receiver.requests) == 5
    sent.emit("submitted", name="after close")
    time.sleep(0.1)
    assert len(receiver.requests) == 5
    assert sent.stats()[0]["dropped"] == 1


def test_without_notifiers_emit_does_nothing() -> None:
    quiet = Notifications([])
    assert not quiet.enabled
    quiet.emit("submitted", name="x")
    quiet.close(timeout=0.1)


# --- failures are logged calmly and without secrets ---------------------------------------------------------------

def test_a_failing_notifier_logs_its_kind_and_status_once_then_its_recovery(
        receiver: Receiver, notifications, logs: Logs) -> None:
    receiver.status = 500
    sent = notifications(telegram(receiver.url), bark(receiver.url))
    for i in range(3):
        sent.emit("failed", name=str(i))
    receiver.wait_for(6)
    wait_until(lambda: len(logs.events("notifier_failed")) == 2)
    receiver.status = 200
    sent.emit("failed", name="better")
    receiver.wait_for(8)
    wait_until(lambda: len(logs.events("notifier_recovered")) == 2)
    failed = {line["notifier"]: line for line in logs.events("notifier_failed")}
    assert {k: (v["error"], v["failures"], v["level"]) for k, v in failed.items()} == {
        "telegram": ("HTTP 500", 1, "warning"), "bark": ("HTTP 500", 1, "warning")}
    assert {line["after_failures"] for line in logs.events("notifier_recovered")} == {3}
    assert [s["failed"] for s in sent.stats()] == [3, 3]
    assert_no_secret(logs.text)


def test_a_timeout_is_logged_as_no_answer_without_the_url(notifications, hanging: Hanging, logs: Logs) -> None:
    notifications(bark(hanging.url, timeout=0.2)).emit("failed", name="x")
    wait_until(lambda: logs.events("notifier_failed"))
    assert logs.events("notifier_failed")[0]["error"] == "no answer within 0.2 s"
    assert_no_secret(logs.text)


# --- what is sent is safe -----------------------------------------------------------------------------------------

def test_tracker_urls_and_magnet_trackers_lose_their_passkeys_before_they_leave(
        receiver: Receiver, notifications) -> None:
    sent = notifications(webhook(receiver.url), redactor=Redactor(["remembered-secret-value"]))
    sent.emit("failed", key="https://tracker.example/dl/42/PASSKEY123/Show.S01E01.torrent?uid=PASSKEY123",
              reason="could not fetch https://tracker.example/rss?passkey=PASSKEY123 (remembered-secret-value)",
              magnet=f"magnet:?xt=urn:btih:{HASH}&dn=Show&tr=https%3A%2F%2Ft.example%2Fannounce%2FPASSKEY123",
              access_token="raw-access-token", header="Bearer raw-bearer")
    body = receiver.wait_for(1)[0].body.decode()
    for secret in ("PASSKEY123", "remembered-secret-value", "raw-access-token", "raw-bearer"):
        assert secret not in body
    fields = json.loads(body)["fields"]
    assert fields["key"] == "https://tracker.example/…/Show.S01E01.torrent"
    assert fields["reason"] == "could not fetch https://tracker.example/… (<redacted>)"
    assert fields["magnet"] == f"magnet:?xt=urn:btih:{HASH}&dn=Show"
    assert fields["access_token"] == "<redacted>"


@pytest.mark.parametrize("event", NOTIFY_EVENTS)
def test_every_event_has_a_bilingual_title(event: str) -> None:
    title = compose(event, {"name": "n"}, 0.0).title
    assert title == TITLES[event] and event.replace("_", " ") in title and not title.isascii()


def test_messages_name_the_link_give_the_failure_reason_and_tell_how_to_reauthorize() -> None:
    assert compose("submitted", {"key": HASH}, 0.0).message == HASH
    assert compose("submitted", {"name": "Name", "key": HASH}, 0.0).message == "Name"
    assert compose("failed", {"name": "Name", "reason": "quota"}, 0.0).message == "Name: quota"
    assert compose("authorization_needed", {"error": "refresh token expired"}, 0.0).message == AUTH_MESSAGE
    assert "daemon115 auth import" in AUTH_MESSAGE
    assert len(compose("completed", {"name": "x" * 5000}, 0.0).message) <= 200


# --- the tee ------------------------------------------------------------------------------------------------------

def test_the_tee_logs_every_event_and_forwards_the_mapped_ones(receiver: Receiver, notifications,
                                                               logs: Logs) -> None:
    log = EventTee(logs.log, notifications(webhook(receiver.url)))
    log.info("link_submitted", key=HASH, target="0", info_hash=HASH)
    log.info("drop_queued", path="/drop/a.magnet")
    log.warning("link_failed", key=HASH, reason="bad link")
    log.info("task_completed", name="Done", info_hash=HASH)
    log.error("authorization_needed", error="refresh token expired")
    events = [r.json()["event"] for r in receiver.wait_for(4)]
    assert events == ["submitted", "failed", "completed", "authorization_needed"]
    assert [json.loads(line)["event"] for line in logs.text.splitlines()] == [
        "link_submitted", "drop_queued", "link_failed", "task_completed", "authorization_needed"]


def test_a_bound_tee_forwards_its_bound_fields_too(receiver: Receiver, notifications, logs: Logs) -> None:
    log = EventTee(logs.log, notifications(webhook(receiver.url))).bind(name="Bound Name")
    log.info("link_submitted", key=HASH)
    assert receiver.wait_for(1)[0].json()["message"] == "Bound Name"
    assert json.loads(logs.text)["name"] == "Bound Name"
