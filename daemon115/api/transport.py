"""HTTP to 115: one session, pacing, retries, the account-wide circuit breaker and the daily call budget.

115 reports errors inside HTTP 200 bodies and rate-limits with JSON codes rather than 429 (api-notes.md §1, §4), so
this layer judges every answer by its envelope. It knows nothing of tokens or endpoints' meanings.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import requests

from daemon115.api.errors import (
    RATE_LIMIT_CODES,
    Api115Error,
    RateLimited,
    TransientError,
    error_from_response,
    parse_code,
)

CHINA = timezone(timedelta(hours=8))
TASK_LIST = "/open/offline/get_task_list"  # 115's day, for the daily budget


class OutcomeUnknown(TransientError):
    """The request was sent but no answer came back: 115 may have acted on it (api-notes.md §2.6)."""


class BudgetExhausted(RateLimited):
    """``api.daily_call_budget`` is spent for today."""


@dataclass(frozen=True)
class BreakerState:
    state: str  # "closed" | "open" | "half-open"
    open_until: float
    cool_off: float
    trips: int


class CircuitBreaker:
    """Pauses every call of the account while 115 rate-limits, with a cool-off that grows while the limit persists.

    After the cool-off, one probe call is let through (half-open); success closes the breaker but keeps the pace slow
    for a while (``slow_until``) so traffic resumes gently instead of re-triggering the limit at once.
    """

    def __init__(self, *, base: float = 60.0, ceiling: float = 1800.0, clock: Callable[[], float] = time.time) -> None:
        self._base = base
        self._ceiling = ceiling
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._cool_off = 0.0
        self._trips = 0
        self._probing = False
        self.slow_until = 0.0

    def before_call(self, endpoint: str) -> None:
        with self._lock:
            now = self._clock()
            if now < self._open_until:
                raise RateLimited(None, f"paused by the circuit breaker for {self._open_until - now:.0f} s more "
                                        "after 115 rate-limited this account", endpoint)
            if self._trips and self._probing:
                raise RateLimited(None, "waiting for the probe call after a rate-limit pause", endpoint)
            if self._trips:
                self._probing = True

    def record_success(self) -> None:
        with self._lock:
            if self._trips:
                self.slow_until = self._clock() + self._cool_off
            self._trips = 0
            self._cool_off = 0.0
            self._probing = False

    def record_failure(self) -> None:
        """Any non-rate-limit outcome of a probe ends the probe without closing or growing the pause."""
        with self._lock:
            self._probing = False

    def trip(self) -> None:
        with self._lock:
            self._trips += 1
            self._cool_off = min(self._ceiling, self._base * (2 ** (self._trips - 1)))
            self._open_until = self._clock() + self._cool_off
            self._probing = False

    def slowed(self) -> bool:
        return self._clock() < self.slow_until

    def snapshot(self) -> BreakerState:
        with self._lock:
            now = self._clock()
            if now < self._open_until:
                state = "open"
            elif self._trips:
                state = "half-open"
            else:
                state = "closed"
            return BreakerState(state, self._open_until, self._cool_off, self._trips)


class CallBudget:
    """Counts calls per 115 day (China time) so the account stays under 115's unpublished daily caps."""

    def __init__(self, limit: int | None, *, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._day = ""
        self.used = 0

    def take(self, endpoint: str) -> None:
        if self.limit is None:
            return
        with self._lock:
            day = datetime.fromtimestamp(self._clock(), CHINA).strftime("%Y-%m-%d")
            if day != self._day:
                self._day, self.used = day, 0
            if self.used >= self.limit:
                raise BudgetExhausted(None, f"the daily call budget of {self.limit} calls is spent "
                                            "(api.daily_call_budget); calls resume after midnight China time", endpoint)
            self.used += 1


@dataclass(frozen=True)
class Pacing:
    timeout: float = 30.0
    min_interval: float = 0.5
    max_retries: int = 4
    backoff_base: float = 1.0
    backoff_cap: float = 30.0


class Transport:
    """Sends one request and returns the parsed envelope, or raises an Api115Error subclass."""

    def __init__(self, pacing: Pacing = Pacing(), *, budget: CallBudget | None = None,
                 breaker: CircuitBreaker | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, user_agent: str = "daemon115",
                 observer: Callable[[str, int | None, bool], None] | None = None) -> None:
        self.pacing = pacing
        self._observer = observer  # metrics: (endpoint, code or None when no answer came, ok)
        self.budget = budget or CallBudget(None)
        self.breaker = breaker or CircuitBreaker()
        self._clock = clock
        self._sleep = sleep
        self._session = requests.Session()
        self._session.headers["User-Agent"] = user_agent
        self._pace_lock = threading.Lock()
        self._last_call = float("-inf")
        self.calls = 0

    def close(self) -> None:
        self._session.close()

    def request(self, method: str, url: str, endpoint: str, *, headers: Mapping[str, str] | None = None,
                params: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
                idempotent: bool = True) -> dict[str, Any]:
        """Retries what is safe to retry; a non-idempotent call whose answer was lost raises OutcomeUnknown."""
        attempt = 0
        while True:
            try:
                return self._once(method, url, endpoint, headers, params, data, idempotent)
            except (RateLimited, OutcomeUnknown):
                raise
            except TransientError as exc:
                if exc.code is not None:
                    raise  # 115 answered with a code: the caller decides when to try again
                attempt += 1
                if attempt > self.pacing.max_retries:
                    raise
                self._sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.pacing.backoff_cap, self.pacing.backoff_base * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)

    def _pace(self) -> None:
        interval = self.pacing.min_interval
        if self.breaker.slowed():
            interval = max(interval * 4, 1.0)
        with self._pace_lock:
            wait = self._last_call + interval - self._clock()
            if wait > 0:
                self._sleep(wait)
            self._last_call = self._clock()

    def _once(self, method: str, url: str, endpoint: str, headers: Mapping[str, str] | None,
              params: Mapping[str, Any] | None, data: Mapping[str, Any] | None, idempotent: bool) -> dict[str, Any]:
        if self._observer is None:
            return self._send(method, url, endpoint, headers, params, data, idempotent)
        try:
            body = self._send(method, url, endpoint, headers, params, data, idempotent)
        except Api115Error as exc:
            self._observer(endpoint, exc.code, False)
            raise
        self._observer(endpoint, 0, True)
        return body

    def _send(self, method: str, url: str, endpoint: str, headers: Mapping[str, str] | None,
              params: Mapping[str, Any] | None, data: Mapping[str, Any] | None, idempotent: bool) -> dict[str, Any]:
        self.budget.take(endpoint)
        self.breaker.before_call(endpoint)
        self._pace()
        self.calls += 1
        try:
            response = self._session.request(method, url, headers=dict(headers or {}), params=params, data=data,
                                             timeout=self.pacing.timeout)
        except (requests.ConnectTimeout, requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
            self.breaker.record_failure()
            raise TransientError(None, f"could not connect: {type(exc).__name__}", endpoint) from None
        except requests.ConnectionError as exc:
            self.breaker.record_failure()
            if _never_sent(exc) or idempotent:
                raise TransientError(None, f"connection failed: {_reason(exc)}", endpoint) from None
            raise OutcomeUnknown(None, f"the connection dropped before 115 answered: {_reason(exc)}",
                                 endpoint) from None
        except requests.Timeout:
            self.breaker.record_failure()
            if idempotent:
                raise TransientError(None, f"no answer within {self.pacing.timeout:g} s", endpoint) from None
            raise OutcomeUnknown(None, f"no answer within {self.pacing.timeout:g} s", endpoint) from None
        except requests.RequestException as exc:
            self.breaker.record_failure()
            raise TransientError(None, f"request failed: {type(exc).__name__}", endpoint) from None
        deep_page = endpoint == TASK_LIST and str((params or {}).get("page", "1")) not in ("1", "")
        return self._judge(response, endpoint, deep_page)

    def _judge(self, response: requests.Response, endpoint: str, deep_page: bool = False) -> dict[str, Any]:
        try:
            body = _parse_body(response, endpoint)
            check_envelope(body, endpoint)
        except RateLimited:
            if response.status_code == 405 and deep_page:
                self.breaker.record_failure()  # 115 refuses deep task-list pages; that is no account-wide limit
            else:
                self.breaker.trip()
            raise
        except Api115Error:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return body


def _parse_body(response: requests.Response, endpoint: str) -> dict[str, Any]:
    status = response.status_code
    body = json_or_none(response)
    if isinstance(body, dict):
        return body
    kind = "an HTML page" if "<html" in response.text[:512].lower() else "a body that is not a JSON object"
    if status == 405:
        # nginx "405 Not Allowed": deep paging or risk control (api-notes.md §2.4, §5)
        raise RateLimited(None, f"HTTP 405 with {kind} (115's risk control)", endpoint)
    raise TransientError(None, f"HTTP {status} with {kind}", endpoint)


def json_or_none(response: requests.Response) -> object:
    """The parsed body, or None when it is no JSON: malformed, or nested too deep for the parser (RecursionError)."""
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None


def is_success(body: Mapping[str, Any]) -> bool:
    """proapi says ``state: true``; passport and qrcode say ``state: 1``."""
    state = body.get("state")
    return state is True or (not isinstance(state, bool) and state in (1, "1"))


def check_envelope(body: Mapping[str, Any], endpoint: str) -> None:
    """Raise the matching Api115Error for a ``state: false`` body; an empty or zero code there means risk control."""
    if is_success(body):
        return
    code = parse_code(body.get("code")) or parse_code(body.get("errno"))
    message = str(body.get("message") or body.get("error") or "")
    if not code and message.strip() in {str(c) for c in RATE_LIMIT_CODES}:
        code = int(message.strip())
    if not code:
        raise RateLimited(None, message or "state false without an error code (115's risk control)", endpoint)
    error = error_from_response(code, message, endpoint)
    error.data = body.get("data")  # an all-failed add_task_urls still lists its URLs here
    raise error


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("RemoteDisconnected", "Connection aborted", "Connection refused", "Connection reset",
                   "IncompleteRead", "BadStatusLine"):
        if marker in text:
            return marker
    return type(exc).__name__


def _never_sent(exc: requests.ConnectionError) -> bool:
    """Refused or unresolvable: the request never reached 115, so a retry cannot duplicate anything."""
    text = str(exc)
    return any(m in text for m in ("Connection refused", "NewConnectionError", "Name or service not known",
                                   "Failed to resolve", "No route to host"))
