"""Envelopes are judged by state/code, never by the HTTP status alone (api-notes.md §1, §7.1-2, §7.11)."""

from __future__ import annotations

import pytest

from daemon115.api.errors import Api115Error, AuthorizationNeeded, RateLimited
from daemon115.api.transport import CallBudget, CircuitBreaker, BudgetExhausted, check_envelope, is_success


@pytest.mark.parametrize("body", [{"state": True, "code": 0}, {"state": 1, "code": 0}, {"state": "1"}])
def test_success_is_bool_true_on_proapi_and_1_on_passport(body):
    assert is_success(body)
    check_envelope(body, "/x")


@pytest.mark.parametrize("body", [{"state": False, "code": 0}, {"state": 0}, {"state": False, "code": ""},
                                  {"state": False, "code": 0, "message": ""}])
def test_state_false_without_a_code_is_risk_control_not_success(body):
    with pytest.raises(RateLimited):
        check_envelope(body, "/x")


def test_code_zero_with_message_770004_is_a_rate_limit():
    with pytest.raises(RateLimited):
        check_envelope({"state": False, "code": 0, "message": "770004"}, "/x")


@pytest.mark.parametrize("code", [406, 770004, 590075])
def test_rate_limit_codes(code):
    with pytest.raises(RateLimited):
        check_envelope({"state": False, "code": code, "message": "访问频率过高", "data": []}, "/x")


def test_passport_error_read_from_errno_when_code_is_missing():
    with pytest.raises(AuthorizationNeeded) as info:
        check_envelope({"state": 0, "errno": 40140120, "error": "refresh_token 检验失败"}, "/open/refreshToken")
    assert info.value.code == 40140120


def test_error_keeps_the_data_of_an_all_failed_add():
    items = [{"state": False, "code": 10008, "url": "magnet:?x"}]
    with pytest.raises(Api115Error) as info:
        check_envelope({"state": False, "code": 10008, "message": "任务已存在", "data": items}, "/add")
    assert info.value.data == items


def test_breaker_cool_off_grows_while_the_limit_persists_then_probes_one_call():
    now = [1000.0]
    breaker = CircuitBreaker(base=60, ceiling=600, clock=lambda: now[0])
    breaker.trip()
    assert breaker.snapshot().state == "open" and breaker.snapshot().cool_off == 60
    with pytest.raises(RateLimited):
        breaker.before_call("/x")
    now[0] += 61
    breaker.before_call("/x")  # the probe
    with pytest.raises(RateLimited):
        breaker.before_call("/y")  # everyone else waits for the probe
    breaker.trip()  # the probe was rate-limited too
    assert breaker.snapshot().cool_off == 120
    for _ in range(5):
        breaker.trip()
    assert breaker.snapshot().cool_off == 600
    now[0] += 601
    breaker.before_call("/x")
    breaker.record_success()
    assert breaker.snapshot().state == "closed" and breaker.slowed()
    breaker.before_call("/x")


def test_daily_budget_resets_at_midnight_china_time():
    now = [1767196799.0]  # 2025-12-31 23:59:59 +08:00
    budget = CallBudget(2, clock=lambda: now[0])
    budget.take("/a")
    budget.take("/a")
    with pytest.raises(BudgetExhausted):
        budget.take("/a")
    now[0] += 2
    budget.take("/a")


def test_no_budget_means_no_limit():
    budget = CallBudget(None)
    for _ in range(1000):
        budget.take("/a")
