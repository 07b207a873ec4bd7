"""/metrics and /healthz over real loopback HTTP, scraped with requests and read back with prometheus_client."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from daemon115.metrics import Metrics, Server, serve

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def healthy() -> tuple[bool, str]:
    return True, ""


@pytest.fixture
def start() -> Iterator[Callable[..., Server]]:
    running: list[Server] = []

    def start_server(metrics: Metrics, health: Callable[[], tuple[bool, str]] = healthy) -> Server:
        running.append(serve(metrics, "127.0.0.1", 0, health=health))
        return running[-1]

    yield start_server
    for server in running:
        server.stop()


def scrape(server: Server) -> Samples:
    response = requests.get(f"{server.url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_counters_are_served_under_their_daemon115_names_and_labels(start: Callable[..., Server]) -> None:
    metrics = Metrics()
    metrics.api_call("/open/offline/add_task_urls", 0, ok=True)
    metrics.api_call("/open/offline/add_task_urls", 0, ok=True)
    metrics.api_call("/open/offline/get_task_list", 40140125, ok=False)
    metrics.api_call("/open/user/info", None, ok=False)
    metrics.submitted(3)
    metrics.submitted(2)
    metrics.feed_poll("frieren", ok=True)
    metrics.feed_poll("frieren", ok=False)
    metrics.feed_poll("frieren", ok=True)
    metrics.cleanup_action("clear-failed", "clear")
    metrics.cleanup_action("stalled", "delete")
    samples = scrape(start(metrics))
    assert value(samples, "daemon115_api_calls_total", endpoint="/open/offline/add_task_urls", code="0") == 2
    assert value(samples, "daemon115_api_calls_total", endpoint="/open/offline/get_task_list", code="40140125") == 1
    assert value(samples, "daemon115_api_errors_total", endpoint="/open/offline/get_task_list", code="40140125") == 1
    assert value(samples, "daemon115_api_errors_total", endpoint="/open/user/info", code="none") == 1
    assert value(samples, "daemon115_api_errors_total", endpoint="/open/offline/add_task_urls", code="0") is None
    assert value(samples, "daemon115_submitted_total") == 5
    assert value(samples, "daemon115_feed_polls_total", feed="frieren", result="ok") == 2
    assert value(samples, "daemon115_feed_polls_total", feed="frieren", result="failed") == 1
    assert value(samples, "daemon115_cleanup_actions_total", policy="clear-failed", kind="clear") == 1
    assert value(samples, "daemon115_cleanup_actions_total", policy="stalled", kind="delete") == 1


def test_links_by_state_and_token_expiry_are_read_when_scraped(start: Callable[..., Server]) -> None:
    counts = {"queued": 4, "submitting": 0, "submitted": 10, "failed": 1}
    expiry: list[float | None] = [1_800_000_000.0]
    server = start(Metrics(links=lambda: dict(counts), token_expires_at=lambda: expiry[0]))
    samples = scrape(server)
    assert {state: value(samples, "daemon115_links", state=state) for state in counts} == counts
    assert value(samples, "daemon115_token_expires_at_seconds") == 1_800_000_000.0
    counts.update(queued=0, submitted=14)
    expiry[0] = None  # the token is gone
    samples = scrape(server)
    assert value(samples, "daemon115_links", state="queued") == 0
    assert value(samples, "daemon115_links", state="submitted") == 14
    assert not any(name == "daemon115_token_expires_at_seconds" for name, _ in samples)


def test_a_failing_callback_leaves_its_gauge_out_and_the_scrape_still_works(start: Callable[..., Server]) -> None:
    def broken() -> Any:
        raise RuntimeError("ledger is closed")

    metrics = Metrics(links=broken, token_expires_at=broken)
    metrics.submitted(1)
    samples = scrape(start(metrics))
    assert value(samples, "daemon115_submitted_total") == 1
    assert not any(name in ("daemon115_links", "daemon115_token_expires_at_seconds") for name, _ in samples)


def test_each_metrics_object_has_its_own_registry_never_the_global_one() -> None:
    first, second = Metrics(), Metrics()
    first.submitted(7)
    assert first.registry.get_sample_value("daemon115_submitted_total") == 7
    assert second.registry.get_sample_value("daemon115_submitted_total") == 0
    assert REGISTRY.get_sample_value("daemon115_submitted_total") is None


def test_endpoint_labels_are_paths_never_urls_or_query_strings() -> None:
    metrics = Metrics()
    metrics.api_call("https://proapi.115.com/open/user/info?access_token=SECRET", 0, ok=True)
    metrics.api_call("/open/offline/get_task_list?page=3", 0, ok=True)
    assert metrics.registry.get_sample_value("daemon115_api_calls_total",
                                             {"endpoint": "/open/user/info", "code": "0"}) == 1
    assert metrics.registry.get_sample_value("daemon115_api_calls_total",
                                             {"endpoint": "/open/offline/get_task_list", "code": "0"}) == 1


def test_openmetrics_is_served_when_the_scraper_asks_for_it(start: Callable[..., Server]) -> None:
    metrics = Metrics(links=lambda: {"queued": 2})
    metrics.submitted(4)
    response = requests.get(f"{start(metrics).url}/metrics", headers={"Accept": "application/openmetrics-text"},
                            timeout=5)
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(response.text)}
    assert families["daemon115_submitted"].samples[0].value == 4
    assert families["daemon115_links"].samples[0].labels == {"state": "queued"}


def test_healthz_says_ok_or_503_with_the_reason(start: Callable[..., Server]) -> None:
    state = {"ok": True, "reason": ""}
    server = start(Metrics(), health=lambda: (state["ok"], state["reason"]))
    response = requests.get(f"{server.url}/healthz", timeout=5)
    assert (response.status_code, response.text) == (200, "ok\n")
    state.update(ok=False, reason="authorization needed: daemon115 auth import")
    response = requests.get(f"{server.url}/healthz", timeout=5)
    assert (response.status_code, response.text) == (503, "authorization needed: daemon115 auth import\n")


def test_a_health_check_that_raises_is_unhealthy(start: Callable[..., Server]) -> None:
    def broken() -> tuple[bool, str]:
        raise KeyError("boom")

    response = requests.get(f"{start(Metrics(), health=broken).url}/healthz", timeout=5)
    assert (response.status_code, response.text) == (503, "health check failed: KeyError\n")


def test_other_paths_are_404(start: Callable[..., Server]) -> None:
    response = requests.get(f"{start(Metrics()).url}/", timeout=5)
    assert response.status_code == 404 and "/metrics" in response.text


def test_the_server_binds_only_where_told_and_stop_releases_the_port() -> None:
    server = serve(Metrics(), "127.0.0.1", 0, health=healthy)
    assert server.host == "127.0.0.1" and server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/healthz", timeout=5)


def test_a_port_in_use_is_a_clear_error_naming_the_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot serve status on 127\.0\.0\.1:{port}: .*in use"):
            serve(Metrics(), "127.0.0.1", port, health=healthy)
