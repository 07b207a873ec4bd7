"""Prometheus metrics and a health check, served on ``status.listen`` only when that is set.

The registry is this object's own, never prometheus_client's global one, so two daemons in one process (the tests)
do not mix their numbers. Counters are bumped by the parts that act; the links-by-state and token-expiry gauges are
read from callbacks at scrape time, so they cannot go stale and cost nothing between scrapes.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

NO_CODE = "none"  # the code label of a call that got no answer
Health = Callable[[], tuple[bool, str]]


class Metrics:
    """What the daemon counts; the lead's call sites say when."""

    def __init__(self, *, links: Callable[[], Mapping[str, int]] | None = None,
                 token_expires_at: Callable[[], float | None] | None = None) -> None:
        self.registry = CollectorRegistry()
        self._api_calls = Counter("daemon115_api_calls", "115 API calls by endpoint and answer code",
                                  ("endpoint", "code"), registry=self.registry)
        self._api_errors = Counter("daemon115_api_errors", "115 API calls that failed, by endpoint and code",
                                   ("endpoint", "code"), registry=self.registry)
        self._submitted = Counter("daemon115_submitted", "Links 115 accepted", registry=self.registry)
        self._feed_polls = Counter("daemon115_feed_polls", "Feed polls by feed and result (ok, failed)",
                                   ("feed", "result"), registry=self.registry)
        self._cleanup = Counter("daemon115_cleanup_actions", "Cleanup actions by policy and kind",
                                ("policy", "kind"), registry=self.registry)
        self.registry.register(_Gauges(links, token_expires_at))

    def api_call(self, endpoint: str, code: int | None, ok: bool) -> None:
        labels = (_endpoint(endpoint), NO_CODE if code is None else str(code))
        self._api_calls.labels(*labels).inc()
        if not ok:
            self._api_errors.labels(*labels).inc()

    def submitted(self, n: int = 1) -> None:
        self._submitted.inc(n)

    def feed_poll(self, feed: str, ok: bool) -> None:
        self._feed_polls.labels(feed, "ok" if ok else "failed").inc()

    def cleanup_action(self, policy: str, kind: str) -> None:
        self._cleanup.labels(policy, kind).inc()


def _endpoint(endpoint: str) -> str:
    """A path, never a whole URL: labels are bounded, and a query string could carry a token."""
    parts = urlsplit(endpoint)
    return parts.path or endpoint.split("?", 1)[0]


class _Gauges(Collector):
    """Gauges read at scrape time; a callback that fails leaves its gauge out of that scrape instead of failing it."""

    def __init__(self, links: Callable[[], Mapping[str, int]] | None,
                 token_expires_at: Callable[[], float | None] | None) -> None:
        self._links = links
        self._token_expires_at = token_expires_at

    def describe(self) -> list[Metric]:
        return [self._links_family(), self._token_family()]

    def collect(self) -> Iterator[Metric]:
        if self._links is not None:
            family = self._links_family()
            try:
                counts = self._links()
            except Exception:  # noqa: BLE001 - e.g. the ledger is busy or closing: skip, the next scrape retries
                counts = None
            if counts is not None:
                for state, count in sorted(counts.items()):
                    family.add_metric([state], count)
                yield family
        if self._token_expires_at is not None:
            family = self._token_family()
            try:
                expires_at = self._token_expires_at()
            except Exception:  # noqa: BLE001 - the token file may be mid-replacement
                expires_at = None
            if expires_at is not None:
                family.add_metric([], expires_at)
                yield family

    @staticmethod
    def _links_family() -> GaugeMetricFamily:
        return GaugeMetricFamily("daemon115_links", "Links in the ledger by state", labels=["state"])

    @staticmethod
    def _token_family() -> GaugeMetricFamily:
        return GaugeMetricFamily("daemon115_token_expires_at_seconds",
                                 "When the access token expires (Unix time); absent without a token")


# --- the HTTP side ------------------------------------------------------------------------------------------------

class _StatusServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics, health: Health) -> None:
        self.metrics = metrics
        self.health = health
        super().__init__(address, _Handler)


class _StatusServer6(_StatusServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _StatusServer
    timeout = 10  # a client that connects and says nothing does not keep its thread
    server_version = "daemon115"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._metrics()
        elif path == "/healthz":
            self._healthz()
        else:
            self._reply(404, b"not found: try /metrics or /healthz\n")

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            body = encoder(self.server.metrics.registry)
        except Exception as exc:  # noqa: BLE001 - a broken collector must not take the server down
            self._reply(500, f"metrics failed: {type(exc).__name__}\n".encode())
            return
        self._reply(200, body, content_type)

    def _healthz(self) -> None:
        try:
            ok, reason = self.server.health()
        except Exception as exc:  # noqa: BLE001 - a failing check is itself unhealthy
            ok, reason = False, f"health check failed: {type(exc).__name__}"
        self._reply(200, b"ok\n") if ok else self._reply(503, f"{reason or 'unhealthy'}\n".encode())

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """Quiet: Prometheus scrapes every few seconds, and journald needs none of it."""


class Server:
    """The running status server; ``port`` is the bound one (useful with port 0)."""

    def __init__(self, httpd: _StatusServer) -> None:
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="status-http", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 2.0) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(metrics: Metrics, host: str, port: int, *, health: Health) -> Server:
    """Listen on exactly ``host:port``; an address that cannot be bound raises OSError saying which."""
    cls = _StatusServer6 if ":" in host else _StatusServer
    try:
        httpd = cls((host, port), metrics, health)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve status on {host}:{port}: {exc.strerror or exc}") from None
    return Server(httpd)
