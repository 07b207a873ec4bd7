"""Every endpoint of the official pages, over real HTTP against the sandbox, with the faults 115 is known for."""

from __future__ import annotations

import pytest

from daemon115.api.client import Endpoints, connect
from daemon115.api.errors import Api115Error, RateLimited, TransientError
from daemon115.api.sandbox import Fault
from daemon115.api.transport import OutcomeUnknown, Pacing

FAST = Pacing(timeout=3, min_interval=0, max_retries=2, backoff_base=0.01, backoff_cap=0.05)
HEX = "d2474e86c95b19b8bcfdb92bc12c9d44667cfa36"


def magnet(i: int) -> str:
    return f"magnet:?xt=urn:btih:{i:040x}&dn=item-{i}"


@pytest.fixture
def conn(sandbox, token_file):
    return connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url), pacing=FAST)


@pytest.fixture
def client(conn):
    return conn.client


def test_user_info_is_typed(client):
    info = client.user_info()
    assert info.user_id.isdigit() and info.user_name
    assert info.space_total == info.space_used + info.space_remain
    assert info.vip_level_name


def test_quota_counts_each_accepted_link(client):
    before = client.quota()
    client.add_task_urls([magnet(1), magnet(2)])
    after = client.quota()
    assert (after.used - before.used, before.surplus - after.surplus) == (2, 2)
    assert after.packages and after.packages[0].name


def test_task_list_reads_every_page(client, sandbox):
    for start in range(0, 70, 35):
        client.add_task_urls([magnet(i) for i in range(start, start + 35)], "0")
    tasks = client.tasks()
    assert len(tasks) == 70
    assert len({t.info_hash for t in tasks}) == 70
    assert sandbox.stats()["calls"]["/open/offline/get_task_list"] == 3  # 30 per page
    assert all(t.wp_path_id == "0" and isinstance(t.file_id, str) for t in tasks)


def test_add_reports_each_url_outcome(client):
    client.add_task_urls([magnet(7)])
    results = client.add_task_urls([magnet(8), magnet(7), "magnet:?xt=urn:btih:nothex", f"magnet:?xt=urn:btih:{HEX}"],
                                   "0")
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[0].info_hash == f"{8:040x}"
    assert results[1].already_exists
    assert results[2].code == 10004 and not results[2].already_exists
    assert results[3].info_hash == HEX


def test_all_failed_add_answers_at_top_level_and_still_yields_per_url_results(client):
    client.add_task_urls([magnet(3)])
    [result] = client.add_task_urls([magnet(3)])
    assert result.already_exists and result.url == magnet(3)


def test_more_than_115_urls_is_refused_before_sending(client, sandbox):
    with pytest.raises(ValueError):
        client.add_task_urls([magnet(i) for i in range(116)])
    assert "/open/offline/add_task_urls" not in sandbox.stats()["calls"]


def test_quota_exhausted_and_no_space_are_whole_call_errors(client, sandbox):
    sandbox.set_quota(0)
    with pytest.raises(Api115Error) as info:
        client.add_task_urls([magnet(1)])
    assert info.value.code == 1000012
    sandbox.set_quota(10)
    sandbox.set_space(0)
    with pytest.raises(Api115Error) as info:
        client.add_task_urls([magnet(1)])
    assert info.value.code == 91006


def test_del_task_with_and_without_source_files(client, sandbox):
    client.add_task_urls([magnet(1), magnet(2)])
    client.del_task(f"{1:040x}")
    client.del_task(f"{2:040x}", delete_files=True)
    assert client.tasks() == []
    dels = sandbox.stats()["del_calls"]
    assert [(d["info_hash"], int(d["del_source_file"])) for d in dels] == [(f"{1:040x}", 0), (f"{2:040x}", 1)]


def test_clear_task_sends_the_flag(client, sandbox):
    client.add_task_urls([magnet(1)])
    client.clear_task(1)
    assert client.tasks() == []
    with pytest.raises(ValueError):
        client.clear_task(6)


@pytest.mark.parametrize("kind", ["http500", "http502", "malformed", "drop_before"])
def test_transient_faults_on_reads_are_retried(client, sandbox, kind):
    sandbox.inject(Fault(kind, endpoint="/open/user/info", times=1))
    assert client.user_info().user_name
    assert sandbox.stats()["calls"]["/open/user/info"] == 2


def test_persistent_5xx_gives_up_with_a_transient_error(client, sandbox):
    sandbox.inject(Fault("http503", endpoint="/open/offline/get_quota_info", times=None))
    with pytest.raises(TransientError) as info:
        client.quota()
    assert info.value.code is None and "503" in str(info.value)


def test_a_lost_add_answer_is_an_unknown_outcome_not_a_failure(client, sandbox):
    sandbox.inject(Fault("drop_after", endpoint="/open/offline/add_task_urls"))
    with pytest.raises(OutcomeUnknown):
        client.add_task_urls([magnet(5)])
    assert [t.info_hash for t in client.tasks()] == [f"{5:040x}"]  # 115 had accepted it
    assert sandbox.stats()["calls"]["/open/offline/add_task_urls"] == 1  # never resent blindly


def test_add_timeout_is_an_unknown_outcome(sandbox, token_file):
    slow = Pacing(timeout=0.3, min_interval=0, max_retries=2, backoff_base=0.01)
    client = connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url),
                     pacing=slow).client
    client.user_info()
    sandbox.inject(Fault("delay", endpoint="/open/offline/add_task_urls", delay=1.0))
    with pytest.raises(OutcomeUnknown):
        client.add_task_urls([magnet(6)])


@pytest.mark.parametrize("kind", ["rate_limit_406", "rate_limit_770004", "empty_code", "html405"])
def test_rate_limits_open_the_circuit_breaker_for_every_call(conn, sandbox, kind):
    sandbox.inject(Fault(kind, endpoint="/open/offline/get_quota_info"))
    with pytest.raises(RateLimited):
        conn.client.quota()
    calls = sum(sandbox.stats()["calls"].values())
    with pytest.raises(RateLimited):
        conn.client.user_info()  # paused without touching the network
    assert sum(sandbox.stats()["calls"].values()) == calls
    assert conn.transport.breaker.snapshot().state == "open"


def test_minimum_interval_between_calls(sandbox, token_file):
    import time

    paced = Pacing(min_interval=0.2, max_retries=0)
    client = connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url),
                     pacing=paced).client
    start = time.monotonic()
    for _ in range(4):
        client.quota()
    assert time.monotonic() - start >= 0.6


def test_daily_call_budget_stops_calls(sandbox, token_file):
    from daemon115.api.transport import BudgetExhausted

    client = connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url),
                     pacing=FAST, daily_call_budget=2).client
    client.quota()
    client.quota()
    with pytest.raises(BudgetExhausted):
        client.quota()
