"""Notifications to a webhook, a Telegram bot or Bark: fire and forget, so a dead notifier never slows the daemon.

``emit`` only composes a short message and offers it to each notifier's bounded queue; one daemon thread per notifier
delivers it. A full queue or a spent hourly allowance drops the event and counts it, and the count is logged at most
once an hour. What is sent is scrubbed like a log line, and URLs in it are cut to their host (a private tracker's
torrent URL or a magnet's announce URL holds a passkey). Delivery errors are logged as the notifier's kind and an HTTP
status or a short reason only: the Telegram URL holds the bot token, the Bark URL the device key, and a webhook URL
may hold a secret of its own.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import requests

from daemon115.config import BarkNotify, NotifyTarget, TelegramNotify, WebhookNotify
from daemon115.logs import Redactor, get_logger

# log event -> notification event: what EventTee forwards
EVENT_MAP: Mapping[str, str] = MappingProxyType({
    "link_submitted": "submitted",
    "link_failed": "failed",
    "task_completed": "completed",
    "task_failed": "failed",
    "authorization_needed": "authorization_needed",
})
TITLES: Mapping[str, str] = MappingProxyType({
    "submitted": "已提交 submitted",
    "completed": "已完成 completed",
    "failed": "失败 failed",
    "authorization_needed": "需要重新授权 authorization needed",
})
AUTH_MESSAGE = "运行 run `daemon115 auth import`; 队列中的链接会保留 queued links are kept"
BARK_GROUP = "daemon115"
REPORT_EVERY = 3600.0  # drops and repeated failures are logged at most this often, per notifier
HOUR = 3600.0
QUEUE_SIZE = 100
IDLE_WAKE = 60.0  # an idle worker still wakes this often to log drops that are due
MAX_SUBJECT = 200
MAX_MESSAGE = 500
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"']+", re.IGNORECASE)
_MAGNET = re.compile(r"\bmagnet:\?[^\s<>\"']+", re.IGNORECASE)
_FILE_NAME = re.compile(r"[^/]{1,100}\.[A-Za-z0-9]{1,10}")


# --- what is sent (pure) ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Note:
    """One event as every notifier sends it."""

    event: str
    title: str
    message: str
    fields: Mapping[str, Any]
    at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class Delivery:
    """One HTTP request to a notifier; the URL and headers hold secrets, so neither is in repr."""

    method: str
    url: str = field(repr=False)
    json: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


def compose(event: str, fields: Mapping[str, Any], at: float, scrub: Callable[[Any], Any] | None = None) -> Note:
    """A short, mostly bilingual message; ``fields`` go through ``scrub`` (a log Redactor's) and lose URL secrets."""
    safe = (scrub or Redactor().scrub)(_safe(_jsonable(dict(fields))))  # cut URLs first, then redact the rest
    subject = _subject(safe)
    title = TITLES.get(event, event)
    if event == "authorization_needed":
        message = AUTH_MESSAGE
    elif event == "failed" and isinstance(safe.get("reason") or safe.get("error"), str):
        message = f"{subject or '?'}: {safe.get('reason') or safe.get('error')}"
    else:
        message = subject or event
    stamp = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return Note(event, title, _cut(message, MAX_MESSAGE), safe, stamp)


def delivery_for(target: NotifyTarget, note: Note) -> Delivery:
    if isinstance(target, WebhookNotify):
        body = {"event": note.event, "title": note.title, "message": note.message, "fields": dict(note.fields),
                "at": note.at}
        return Delivery("POST", target.url, body, dict(target.headers))
    if isinstance(target, TelegramNotify):
        body = {"chat_id": target.chat_id, "text": f"{note.title}\n{note.message}",
                "disable_web_page_preview": True}
        return Delivery("POST", f"{target.api_url}/bot{target.bot_token}/sendMessage", body)
    if isinstance(target, BarkNotify):
        path = "/".join(quote(part, safe="") for part in (target.device_key, note.title, note.message))
        return Delivery("GET", f"{target.server}/{path}?{urlencode({'group': BARK_GROUP})}")
    raise TypeError(f"not a notifier config: {type(target).__name__}")


def _subject(fields: Mapping[str, Any]) -> str:
    """What the event is about: a name when there is one, else the link's key (already cut to safety)."""
    for key in ("name", "task_name", "title", "key", "url", "info_hash", "feed", "path"):
        value = fields.get(key)
        if isinstance(value, str) and value.strip():
            return _cut(value.strip(), MAX_SUBJECT)
    return ""


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return _MAGNET.sub(_magnet_hash_only, _URL.sub(_url_host_only, value))
    if isinstance(value, dict):
        return {k: _safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_safe(v) for v in value]
    return value


def _url_host_only(match: re.Match[str]) -> str:
    """``https://host/…/name.torrent``: no user, query or path segments, where passkeys live."""
    try:
        parts = urlsplit(match[0])
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<url>"
    last = parts.path.rsplit("/", 1)[-1]
    tail = f"/…/{last}" if _FILE_NAME.fullmatch(last) else "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{tail}"


def _magnet_hash_only(match: re.Match[str]) -> str:
    """A magnet's trackers (``tr=``) may hold a passkey; its hash and name do not."""
    kept = [(k, v) for k, v in parse_qsl(match[0][len("magnet:?"):]) if k in ("xt", "dn")]
    return "magnet:?" + urlencode(kept, safe=":")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- limits and counts (pure) -------------------------------------------------------------------------------------

class HourlyLimit:
    """At most ``limit`` events in any sliding hour."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._times: list[float] = []

    def allow(self, now: float) -> bool:
        self._times = [t for t in self._times if now - t < HOUR]
        if len(self._times) >= self._limit:
            return False
        self._times.append(now)
        return True


class DropCount:
    """Dropped events by reason, and whether it is time to say so (at once the first time, then hourly)."""

    def __init__(self) -> None:
        self.total = 0
        self._pending: Counter[str] = Counter()
        self._last_report: float | None = None

    def add(self, reason: str) -> None:
        self.total += 1
        self._pending[reason] += 1

    def take_due(self, now: float, *, force: bool = False) -> dict[str, int] | None:
        """The counts not reported yet, if a report is due; taking them starts the next hour."""
        if not self._pending:
            return None
        if not force and self._last_report is not None and now - self._last_report < REPORT_EVERY:
            return None
        self._last_report = now
        taken, self._pending = dict(self._pending), Counter()
        return taken


# --- delivery (I/O) -----------------------------------------------------------------------------------------------

def _failure_reason(exc: BaseException, timeout: float) -> str:
    """Why a request failed, in words that never include its URL (requests puts the URL in its messages)."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, requests.RequestException) and current.strerror:
            return current.strerror.lower()
        pending.extend([getattr(current, "reason", None), current.__cause__, current.__context__,
                        *[a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]])
    return f"request failed ({type(exc).__name__})"


class _Worker:
    """One notifier: its queue, its thread, its hourly allowance, and the log lines about it."""

    def __init__(self, target: NotifyTarget, entry: str, session: requests.Session, log: Any,
                 clock: Callable[[], float], queue_size: int) -> None:
        self.target = target
        self.entry = entry
        self._session = session
        self._log = log
        self._clock = clock
        self._queue: queue.Queue[Note | None] = queue.Queue(queue_size)
        self._limit = HourlyLimit(target.max_per_hour)
        self._drops = DropCount()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.sent = 0
        self.failed = 0
        self._failures = 0  # in a row
        self._last_failure_log = float("-inf")
        self._thread = threading.Thread(target=self._run, name=f"notify-{entry}", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self._drops.total

    def offer(self, note: Note) -> None:
        if note.event not in self.target.events:
            return
        with self._lock:
            now = self._clock()
            if self._closed.is_set():
                reason = "closed"
            elif self._queue.full():  # only offer() puts, under this lock, so put_nowait below cannot fail
                reason = "queue_full"
            elif not self._limit.allow(now):
                reason = "rate_limit"
            else:
                self._queue.put_nowait(note)
                return
            self._drops.add(reason)
            report = self._drops.take_due(now)
        self._report_drops(report)

    def close(self) -> None:
        self._closed.set()
        try:
            self._queue.put_nowait(None)  # wakes an idle worker; a busy one sees _closed once the queue is empty
        except queue.Full:
            pass

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._log.warning("notifier_still_busy", notifier=self.target.type, entry=self.entry,
                              unsent=self._queue.qsize())
        with self._lock:
            report = self._drops.take_due(self._clock(), force=True)
        self._report_drops(report)

    def _run(self) -> None:
        try:
            while not (self._closed.is_set() and self._queue.empty()):
                try:
                    note = self._queue.get(timeout=IDLE_WAKE)
                except queue.Empty:
                    note = None
                if note is not None:
                    self._deliver(note)
                with self._lock:
                    report = self._drops.take_due(self._clock())
                self._report_drops(report)
        finally:
            self._session.close()

    def _deliver(self, note: Note) -> None:
        try:
            error = self._send(delivery_for(self.target, note))
        except Exception as exc:  # noqa: BLE001 - the worker outlives any one bad event
            error = f"could not send ({type(exc).__name__})"
        if error is None:
            self.sent += 1
            if self._failures:
                self._log.info("notifier_recovered", notifier=self.target.type, entry=self.entry,
                               after_failures=self._failures)
            self._failures = 0
            return
        self.failed += 1
        self._failures += 1
        now = self._clock()
        if self._failures == 1 or now - self._last_failure_log >= REPORT_EVERY:
            self._last_failure_log = now
            self._log.warning("notifier_failed", notifier=self.target.type, entry=self.entry, error=error,
                              failures=self._failures, notification=note.event)

    def _send(self, delivery: Delivery) -> str | None:
        """None when delivered, else why not."""
        timeout = self.target.timeout
        try:
            response = self._session.request(delivery.method, delivery.url, json=delivery.json,
                                             headers=dict(delivery.headers), timeout=(timeout, timeout),
                                             allow_redirects=False, stream=True)
        except requests.RequestException as exc:
            return _failure_reason(exc, timeout)
        with response:
            status = response.status_code
        if 200 <= status < 300:
            return None
        return f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")

    def _report_drops(self, report: dict[str, int] | None) -> None:
        if report:
            self._log.warning("notifications_dropped", notifier=self.target.type, entry=self.entry,
                              dropped=sum(report.values()), reasons=report,
                              max_per_hour=self.target.max_per_hour)


class Notifications:
    """All configured notifiers; with none configured, ``emit`` does nothing.

    Call ``emit`` from any thread: it never blocks and never raises. ``close`` gives queued events until ``timeout``
    to go out; a notifier still stuck after that is abandoned (its thread is a daemon thread).
    """

    def __init__(self, configs: Sequence[NotifyTarget], *, log: Any = None,
                 session_factory: Callable[[], requests.Session] = requests.Session,
                 redactor: Redactor | None = None, queue_size: int = QUEUE_SIZE,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        self._log = log if log is not None else get_logger("daemon115.notify")
        self._scrub = (redactor or Redactor()).scrub
        self._wall_clock = wall_clock
        self._workers = [_Worker(target, f"notify[{i}]", session_factory(), self._log, clock, queue_size)
                         for i, target in enumerate(configs)]

    @property
    def enabled(self) -> bool:
        return bool(self._workers)

    def emit(self, event: str, /, **fields: Any) -> None:
        if not self._workers:
            return
        try:
            note = compose(event, fields, self._wall_clock(), self._scrub)
            for worker in self._workers:
                worker.offer(note)
        except Exception as exc:  # noqa: BLE001 - a notification is never worth failing the caller
            self._log.warning("notification_not_composed", notification=event, error=type(exc).__name__)

    def stats(self) -> list[dict[str, object]]:
        """Per notifier, for `status`: what was sent, what failed, what was dropped."""
        return [{"entry": w.entry, "notifier": w.target.type, "sent": w.sent, "failed": w.failed,
                 "dropped": w.dropped} for w in self._workers]

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.close()
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Notifications:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventTee:
    """A logger that also turns some log events into notifications, so the daemon passes it wherever it passes `log`.

    Every call goes to the wrapped logger unchanged; events named in ``mapping`` are emitted too, whatever the log
    level filters out.
    """

    def __init__(self, log: Any, notifications: Notifications, mapping: Mapping[str, str] = EVENT_MAP,
                 context: Mapping[str, Any] | None = None) -> None:
        self._log = log
        self._notifications = notifications
        self._mapping = mapping
        self._context = dict(context or {})

    def debug(self, event: str, /, **fields: Any) -> Any:
        return self._tee("debug", event, fields)

    def info(self, event: str, /, **fields: Any) -> Any:
        return self._tee("info", event, fields)

    def warning(self, event: str, /, **fields: Any) -> Any:
        return self._tee("warning", event, fields)

    def error(self, event: str, /, **fields: Any) -> Any:
        return self._tee("error", event, fields)

    def critical(self, event: str, /, **fields: Any) -> Any:
        return self._tee("critical", event, fields)

    def exception(self, event: str, /, **fields: Any) -> Any:
        return self._tee("exception", event, fields)

    def bind(self, **context: Any) -> EventTee:
        return EventTee(self._log.bind(**context), self._notifications, self._mapping, {**self._context, **context})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not yet set (copy, pickle): no recursion through self._log
            raise AttributeError(name)
        return getattr(self._log, name)

    def _tee(self, level: str, event: str, fields: dict[str, Any]) -> Any:
        result = getattr(self._log, level)(event, **fields)
        notification = self._mapping.get(event)
        if notification is not None:
            self._notifications.emit(notification, **{**self._context, **fields})
        return result
