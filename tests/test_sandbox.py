"""The sandbox behaves like the 115 Open API as api-notes.md describes it, over real HTTP on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests

from daemon115.api.sandbox import Clock, Fault, Sandbox, TokenPair, run_cli

REAL_WORLD = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-world"
DAY = 86400
TIMEOUT = 5


def magnet(n: int, name: str | None = None) -> str:
    return f"magnet:?xt=urn:btih:{btih(n)}&dn={name or f'episode-{n}.mkv'}"


def btih(n: int) -> str:
    return hashlib.sha1(f"torrent {n}".encode()).hexdigest()


class Api:
    """Plain requests against one sandbox, the way a naive client would talk to 115."""

    def __init__(self, sandbox: Sandbox, pair: TokenPair | None = None) -> None:
        self.sandbox = sandbox
        self.pair = pair or sandbox.grant()

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.pair.access_token}"}

    def get(self, path: str, /, token: str | None = None, **params: Any) -> requests.Response:
        return requests.get(self.sandbox.url + path, params=params, headers=self.headers(token), timeout=TIMEOUT)

    def post(self, path: str, data: Any = None, token: str | None = None, **kw: Any) -> requests.Response:
        return requests.post(self.sandbox.url + path, data=data, headers=self.headers(token), timeout=TIMEOUT, **kw)

    def add(self, *urls: str, **form: str) -> dict[str, Any]:
        return self.post("/open/offline/add_task_urls", {"urls": "\n".join(urls), **form}).json()

    def task_page(self, page: int | None = None) -> dict[str, Any]:
        params = {} if page is None else {"page": page}
        return self.get("/open/offline/get_task_list", **params).json()

    def refresh(self, refresh_token: str | None) -> dict[str, Any]:
        data = {} if refresh_token is None else {"refresh_token": refresh_token}
        return requests.post(self.sandbox.url + "/open/refreshToken", data=data, timeout=TIMEOUT).json()


@pytest.fixture
def api(sandbox: Sandbox) -> Api:
    return Api(sandbox)


@pytest.fixture
def make_sandbox() -> Iterator[Any]:
    started: list[Sandbox] = []

    def make(**kw: Any) -> Sandbox:
        sb = Sandbox(seed=7, **kw).start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


def control(sandbox: Sandbox, method: str, name: str, body: Any = None) -> requests.Response:
    return requests.request(method, f"{sandbox.url}/__sandbox/{name}", json=body, timeout=TIMEOUT)


# --- envelopes and account endpoints -------------------------------------------------------------------------------

def test_user_info_has_the_documented_fields_and_types(api):
    body = api.get("/open/user/info").json()
    assert body["state"] is True and body["code"] == 0 and body["message"] == ""
    data = body["data"]
    assert isinstance(data["user_id"], int) and isinstance(data["user_name"], str)
    assert all(isinstance(data[k], str) for k in ("user_face_s", "user_face_m", "user_face_l"))
    space = data["rt_space_info"]
    assert space["all_total"]["size"] == 16 * 2**40 and space["all_total"]["size_format"] == "16TB"
    assert space["all_remain"]["size"] == 15 * 2**40 and space["all_use"]["size"] == 2**40
    assert space["all_use"]["size_format"] == "1TB"
    assert data["vip_info"]["level_name"] == "年费VIP" and isinstance(data["vip_info"]["expire"], int)


def test_quota_info_counts_packages_and_charges_per_accepted_url(api):
    api.add(magnet(1), magnet(2), "not a link")
    data = api.get("/open/offline/get_quota_info").json()["data"]
    assert (data["count"], data["used"], data["surplus"]) == (3000, 2, 2998)
    (package,) = data["package"]
    assert {k: package[k] for k in ("count", "used", "surplus")} == {"count": 3000, "used": 2, "surplus": 2998}
    assert isinstance(package["name"], str) and isinstance(package["expire_info"], list)
    assert set(package["expire_info"][0]) == {"surplus", "expire_time"}


def test_proapi_errors_are_http_200_state_false_with_errno_mirrors_and_list_data(api):
    response = api.get("/open/user/info", token="garbage")
    assert response.status_code == 200
    body = response.json()
    assert body["state"] is False and body["code"] == body["errno"] == 40140123
    assert body["message"] == body["error"] and body["message"]
    assert body["data"] == []


def test_passport_answers_state_as_integer_one_or_zero(api):
    ok = api.refresh(api.pair.refresh_token)
    assert type(ok["state"]) is int and ok["state"] == 1 and ok["code"] == 0
    assert set(ok["data"]) >= {"access_token", "refresh_token", "expires_in"}
    failed = api.refresh("nonsense")
    assert type(failed["state"]) is int and failed["state"] == 0
    assert failed["code"] == failed["errno"] == 40140114 and failed["error"] == failed["message"]


def test_unknown_paths_and_wrong_methods_get_nginx_pages_not_json(api):
    assert api.get("/open/nothing/here").status_code == 404
    wrong = api.get("/open/offline/add_task_urls")
    assert wrong.status_code == 405 and "<center>nginx</center>" in wrong.text


# --- bearer authorization ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer garbage"])
def test_missing_or_garbage_authorization_is_40140123(sandbox, header):
    headers = {} if header is None else {"Authorization": header}
    body = requests.get(sandbox.url + "/open/user/info", headers=headers, timeout=TIMEOUT).json()
    assert body["state"] is False and body["code"] == 40140123


def test_well_formed_but_unknown_access_token_is_40140125(api):
    assert api.get("/open/user/info", token="at_" + "0" * 48).json()["code"] == 40140125


def test_refresh_token_sent_as_bearer_is_a_format_error(api):
    assert api.get("/open/user/info", token=api.pair.refresh_token).json()["code"] == 40140123


def test_access_token_lives_7200_seconds_on_the_sandbox_clock(sandbox, api):
    assert api.pair.expires_in == 7200
    sandbox.clock.advance(7199)
    assert api.get("/open/user/info").json()["state"] is True
    sandbox.clock.advance(1)
    assert api.get("/open/user/info").json()["code"] == 40140125


def test_access_token_superseded_by_a_refresh_is_40140126_even_once_expired(sandbox, api):
    fresh = api.refresh(api.pair.refresh_token)["data"]
    assert api.get("/open/user/info").json()["code"] == 40140126
    assert api.get("/open/user/info", token=fresh["access_token"]).json()["state"] is True
    sandbox.clock.advance(8000)
    assert api.get("/open/user/info").json()["code"] == 40140126  # "reload", not "refresh"


def test_revoked_grant_kills_access_and_refresh(sandbox, api):
    sandbox.revoke(api.pair.refresh_token)
    assert api.get("/open/user/info").json()["code"] == 40140125
    assert api.refresh(api.pair.refresh_token)["code"] == 40140116


def test_expire_access_fault_expires_current_tokens_but_not_later_grants(sandbox, api):
    sandbox.inject(Fault("expire_access"))
    assert api.get("/open/user/info").json()["code"] == 40140125
    assert Api(sandbox).get("/open/user/info").json()["state"] is True


def test_a_fourth_grant_evicts_the_oldest(sandbox):
    first, *rest = [Api(sandbox) for _ in range(4)]
    assert first.get("/open/user/info").json()["code"] == 40140125
    assert first.refresh(first.pair.refresh_token)["code"] == 40140116
    assert all(other.get("/open/user/info").json()["state"] is True for other in rest)


# --- refresh -------------------------------------------------------------------------------------------------------

def test_refresh_rotates_both_tokens_and_the_old_refresh_token_dies_at_once(sandbox, api):
    body = api.refresh(api.pair.refresh_token)
    new = body["data"]
    assert new["expires_in"] == 7200
    assert new["access_token"] != api.pair.access_token and new["refresh_token"] != api.pair.refresh_token
    sandbox.clock.advance(61)
    reused = api.refresh(api.pair.refresh_token)
    assert reused["state"] == 0 and reused["code"] == 40140120
    assert reused["message"] == "refresh_token 检验失败（防篡改）"
    assert api.refresh(new["refresh_token"])["state"] == 1


def test_second_refresh_within_60_seconds_is_40140117_and_rotates_nothing(sandbox, api):
    second = api.refresh(api.pair.refresh_token)["data"]
    sandbox.clock.advance(59)
    too_soon = api.refresh(second["refresh_token"])
    assert too_soon["state"] == 0 and too_soon["code"] == 40140117
    assert api.get("/open/user/info", token=second["access_token"]).json()["state"] is True
    sandbox.clock.advance(1)
    assert api.refresh(second["refresh_token"])["state"] == 1  # the same token still works: nothing rotated


def test_refresh_token_lives_one_year_from_the_grant_and_refreshing_does_not_extend_it(sandbox, api):
    sandbox.clock.advance(364 * DAY)
    late = api.refresh(api.pair.refresh_token)["data"]
    sandbox.clock.advance(DAY)
    expired = api.refresh(late["refresh_token"])
    assert expired["code"] == 40140119


@pytest.mark.parametrize("token, code", [(None, 40100000), ("", 40100000), ("not-a-token", 40140114),
                                         ("rt_" + "0" * 48, 40140120)])
def test_refresh_with_a_missing_malformed_or_never_issued_token(api, token, code):
    assert api.refresh(token)["code"] == code


def test_three_terminal_failures_on_a_grant_escalate_every_later_attempt_to_40140137(sandbox, api):
    current = api.refresh(api.pair.refresh_token)["data"]["refresh_token"]
    sandbox.clock.advance(61)
    assert [api.refresh(api.pair.refresh_token)["code"] for _ in range(2)] == [40140120, 40140120]
    assert api.refresh(current)["state"] == 1  # two failures are not yet a ban
    newest = sandbox.stats()["issued_tokens"][-1]
    assert api.refresh(api.pair.refresh_token)["code"] == 40140120
    sandbox.clock.advance(61)
    assert api.refresh(newest)["code"] == 40140137
    assert api.refresh(api.pair.refresh_token)["code"] == 40140137


def test_revoked_grant_escalates_to_40140137_after_three_attempts(sandbox, api):
    sandbox.revoke(api.pair.refresh_token)
    codes = [api.refresh(api.pair.refresh_token)["code"] for _ in range(4)]
    assert codes == [40140116, 40140116, 40140116, 40140137]


def test_every_refresh_call_is_counted_in_stats(sandbox, api):
    api.refresh(api.pair.refresh_token)
    api.refresh(api.pair.refresh_token)
    api.refresh("junk")
    stats = sandbox.stats()
    assert stats["refresh_calls"] == 3 and stats["refresh_ok"] == 1 and stats["refresh_failed"] == 2
    assert stats["refresh_codes"] == [0, 40140120, 40140114]


def test_refresh_accepts_a_multipart_body_too(sandbox, api):
    body = requests.post(sandbox.url + "/open/refreshToken", files={"refresh_token": (None, api.pair.refresh_token)},
                         timeout=TIMEOUT).json()
    assert body["state"] == 1


def test_refresh_too_frequent_fault_answers_40140117_once_without_rotating(sandbox, api):
    sandbox.inject(Fault("refresh_too_frequent"))
    assert api.get("/open/user/info").json()["state"] is True  # only refreshes are hit
    assert api.refresh(api.pair.refresh_token)["code"] == 40140117
    assert api.refresh(api.pair.refresh_token)["state"] == 1


# --- task list -----------------------------------------------------------------------------------------------------

def test_empty_task_list_is_the_documented_object(api):
    assert api.task_page()["data"] == {"page": 1, "page_count": 0, "count": 0, "tasks": []}


def test_task_list_pages_of_page_size_newest_first(make_sandbox):
    sb = make_sandbox(page_size=5, max_task_pages=3)
    api = Api(sb)
    for n in range(12):
        api.add(magnet(n))
        sb.clock.advance(1)
    pages = [api.task_page(p)["data"] for p in (1, 2, 3)]
    assert [(p["page"], p["page_count"], p["count"], len(p["tasks"])) for p in pages] == [
        (1, 3, 12, 5), (2, 3, 12, 5), (3, 3, 12, 2)]
    hashes = [t["info_hash"] for p in pages for t in p["tasks"]]
    assert hashes == [btih(n) for n in reversed(range(12))]
    assert api.task_page()["data"]["tasks"] == pages[0]["tasks"]  # no page parameter means page 1
    assert api.get("/open/offline/get_task_list", page="x").json()["data"]["page"] == 1


def test_paging_beyond_the_limit_is_an_nginx_405_page(api):
    response = api.get("/open/offline/get_task_list", page=21)
    assert response.status_code == 405
    assert "<title>405 Not Allowed</title>" in response.text and "nginx" in response.text
    assert api.get("/open/offline/get_task_list", page=20).json()["data"]["tasks"] == []


def test_task_items_carry_every_documented_field_with_the_documented_types(sandbox, api):
    api.add(magnet(1), wp_path_id="3099876543210987654")
    sandbox.clock.advance(400)
    (task,) = api.task_page()["data"]["tasks"]
    assert set(task) == {"info_hash", "add_time", "percentDone", "size", "name", "last_update", "file_id",
                         "delete_file_id", "status", "url", "wp_path_id", "def2", "play_long", "can_appeal"}
    for key in ("file_id", "delete_file_id", "wp_path_id"):
        assert isinstance(task[key], str) and re.fullmatch(r"\d{19}", task[key]), key
    for key in ("add_time", "size", "last_update", "status", "def2", "play_long", "can_appeal"):
        assert type(task[key]) is int, key
    assert task["info_hash"] == btih(1) and task["url"] == magnet(1) and task["name"] == "episode-1.mkv"


def test_tasks_progress_on_the_sandbox_clock(make_sandbox):
    sb = make_sandbox(task_duration=100)
    api = Api(sb)
    api.add(magnet(1), magnet(2))
    add_time = sb.tasks()[0]["add_time"]
    queued = sb.tasks()
    assert {(t["status"], t["percentDone"], t["file_id"], t["size"]) for t in queued} == {(0, None, "", 0)}
    sb.clock.advance(55)
    downloading = api.task_page()["data"]["tasks"]
    assert {t["status"] for t in downloading} == {1}
    assert sorted(float(t["percentDone"]) for t in downloading) == pytest.approx([50, 50], abs=0.1)
    assert {type(t["percentDone"]) for t in downloading} == {int, float}  # lenient clients get exercised
    assert {t["last_update"] for t in downloading} == {int(sb.clock.now())}
    assert all(t["file_id"] and t["size"] > 0 for t in downloading)
    sb.clock.advance(45)
    done = api.task_page()["data"]["tasks"]
    assert {(t["status"], t["percentDone"], t["last_update"]) for t in done} == {(2, 100, add_time + 100)}


def test_a_magnet_named_sandbox_fail_ends_failed(make_sandbox):
    sb = make_sandbox(task_duration=100)
    api = Api(sb)
    api.add(magnet(1, "sandbox-fail.mkv"))
    sb.clock.advance(30)
    assert sb.tasks()[0]["status"] == 1
    sb.clock.advance(1000)
    (task,) = sb.tasks()
    assert task["status"] == -1 and 0 < task["percentDone"] < 100


def test_set_task_freezes_a_task_and_foreign_tasks_are_not_charged(sandbox, api):
    api.add(magnet(1))
    sandbox.set_task(btih(1), status=1, percentDone=3)
    foreign = sandbox.add_foreign_task(magnet(2), status=2, percent=100, add_time=sandbox.clock.now() - 4 * DAY)
    sandbox.clock.advance(10 * DAY)
    by_hash = {t["info_hash"]: t for t in sandbox.tasks()}
    assert (by_hash[btih(1)]["status"], by_hash[btih(1)]["percentDone"]) == (1, 3)
    assert foreign == btih(2) and by_hash[foreign]["status"] == 2
    assert by_hash[foreign]["add_time"] < by_hash[btih(1)]["add_time"]
    stats = sandbox.stats()
    assert stats["quota"]["used"] == 1 and magnet(2) not in stats["accepted"]
    with pytest.raises(ValueError, match="colour"):
        sandbox.set_task(btih(1), colour="red")


# --- add_task_urls -------------------------------------------------------------------------------------------------

def test_add_reports_each_url_in_input_order(sandbox, api):
    api.add(magnet(9))
    http = "https://example.org/files/big.iso"
    b32 = base64.b32encode(bytes.fromhex(btih(5))).decode()
    urls = [f"magnet:?xt=urn:btih:{btih(1).upper()}&dn=a", f"magnet:?xt=urn:btih:{b32}", http,
            "ftp://ftp.example.org/pub/x.tar", "ed2k://|file|a.bin|10|E8D635CD815FB4AADB4FA59116809542|/",
            "magnet:?xt=urn:btih:1234", "bittorrent://nope", magnet(9), http]
    body = api.add(*urls)
    assert body["state"] is True and body["code"] == 0
    items = body["data"]
    assert [i["url"] for i in items] == urls
    assert [(i["state"], i["code"]) for i in items] == [
        (True, 0), (True, 0), (True, 0), (True, 0), (True, 0), (False, 10004), (False, 10004), (False, 10008),
        (False, 10008)]
    assert [i["info_hash"] for i in items[:5]] == [btih(1), btih(5), hashlib.sha1(http.encode()).hexdigest(),
                                                   hashlib.sha1(urls[3].encode()).hexdigest(),
                                                   hashlib.sha1(urls[4].encode()).hexdigest()]
    assert items[5]["message"] == "错误的链接" and items[7]["message"] == "任务已存在"
    assert sandbox.stats()["quota"]["used"] == 6


def test_add_trims_urls_and_skips_blank_lines(sandbox, api):
    body = api.add(f"  {magnet(1)}  \r", "", "   ", "\thttp://example.org/a\r\n")
    assert [i["url"] for i in body["data"]] == [magnet(1), "http://example.org/a"]
    assert sandbox.stats()["add_calls"][-1]["url_count"] == 2


def expected_btih(uri: str) -> str | None:
    """The v1 info hash a magnet carries (first xt=urn:btih, 40 hex or 32 base32), as 40 lowercase hex."""
    found = re.search(r"[?&]xt=urn:btih:([^&]*)", unquote(uri), re.IGNORECASE)
    value = found.group(1) if found else ""
    if re.fullmatch(r"[0-9a-fA-F]{40}", value):
        return value.lower()
    if re.fullmatch(r"[A-Za-z2-7]{32}", value):
        return base64.b32decode(value.upper()).hex()
    return None


def test_magnet_vectors_from_the_wild_are_accepted_exactly_when_they_carry_a_btih(api):
    vectors = [v for v in json.loads((REAL_WORLD / "magnets" / "magnet_vectors.json").read_text())["vectors"]
               if v["uri"].strip()]
    items = api.add(*[v["uri"] for v in vectors])["data"]
    seen: set[str] = set()
    for vector, item in zip(vectors, items, strict=True):
        expected = expected_btih(vector["uri"].strip())  # a newline inside a URI is a separator for 115
        stated = re.search(r"(?:infoHash '|info_hashes\.v1 == )([0-9a-f]+)", vector.get("source_states", ""))
        if stated:  # where the source states the hash, the oracle agrees with it
            assert expected is not None and expected.startswith(stated.group(1)), vector["id"]
        if expected is None:
            assert (item["state"], item["code"]) == (False, 10004), vector["id"]
        elif expected in seen:
            assert (item["state"], item["code"]) == (False, 10008), vector["id"]
        else:
            assert (item["state"], item["info_hash"]) == (True, expected), vector["id"]
            seen.add(expected)
    assert len(seen) >= 8


def test_ed2k_vectors_from_the_wild_are_accepted_exactly_when_well_formed(api):
    vectors = json.loads((REAL_WORLD / "magnets" / "ed2k_vectors.json").read_text())["vectors"]
    items = api.add(*[v["link"] for v in vectors])["data"]
    for vector, item in zip(vectors, items, strict=True):
        assert item["state"] is ("false" not in vector["source_states"]), vector["id"]


def test_all_failed_call_answers_state_false_at_top_level_with_the_first_items_code(api):
    api.add(magnet(1))
    duplicate = api.add(magnet(1))
    assert duplicate["state"] is False and duplicate["code"] == 10008 and duplicate["message"] == "任务已存在"
    assert duplicate["data"][0]["url"] == magnet(1)
    invalid = api.add("junk", magnet(1))
    assert (invalid["state"], invalid["code"], invalid["errno"]) == (False, 10004, 10004)
    assert [i["code"] for i in invalid["data"]] == [10004, 10008]


def test_stats_count_each_url_answered_as_a_duplicate(sandbox, api):
    api.add(magnet(1))
    api.add(magnet(1), magnet(2))
    api.add(magnet(1))
    assert sandbox.stats()["duplicates"] == {magnet(1): 2}


def test_more_than_115_urls_fail_the_whole_call_with_1000011(sandbox, api):
    body = api.add(*[magnet(n) for n in range(116)])
    assert (body["state"], body["code"], body["data"]) == (False, 1000011, [])
    assert sandbox.stats()["tasks"] == 0 and sandbox.stats()["quota"]["used"] == 0
    assert all(i["state"] for i in api.add(*[magnet(n) for n in range(115)])["data"])


def test_no_quota_fails_the_whole_call_with_1000012_and_charges_nothing(sandbox, api):
    sandbox.set_quota(0)
    body = api.add(magnet(1))
    assert (body["state"], body["code"]) == (False, 1000012)
    assert sandbox.stats()["tasks"] == 0 and sandbox.stats()["quota"]["used"] == 0


def test_quota_running_out_mid_batch_fails_the_remaining_items_with_1000012(sandbox, api):
    sandbox.set_quota(2)
    body = api.add(magnet(1), "junk", magnet(2), magnet(3), magnet(1))
    assert body["state"] is True
    assert [i["code"] for i in body["data"]] == [0, 10004, 0, 1000012, 10008]
    assert sandbox.stats()["quota"] == {"count": 2, "used": 2, "surplus": 0}


def test_too_little_space_fails_the_whole_call_with_91006(sandbox, api):
    sandbox.set_space(2**30 - 1)
    assert api.add(magnet(1))["code"] == 91006
    assert sandbox.stats()["quota"]["used"] == 0
    sandbox.set_space(2**30)
    assert api.add(magnet(1))["state"] is True


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_add_accepts_both_form_encodings(sandbox, api, encoding):
    form = {"urls": f"{magnet(1)}\n{magnet(2, '中文 名字.mkv')}", "wp_path_id": "3099876543210987654"}
    if encoding == "multipart":
        response = api.post("/open/offline/add_task_urls", files={k: (None, v) for k, v in form.items()})
    else:
        response = api.post("/open/offline/add_task_urls", form)
    assert [i["state"] for i in response.json()["data"]] == [True, True]
    assert {t["wp_path_id"] for t in sandbox.tasks()} == {"3099876543210987654"}
    assert "中文 名字.mkv" in {t["name"] for t in sandbox.tasks()}


def test_add_without_a_form_body_is_a_parameter_error(api):
    assert api.post("/open/offline/add_task_urls", json={"urls": magnet(1)}).json()["code"] == 990002
    assert api.add(magnet(1), wp_path_id="/Downloads")["code"] == 990002


def test_comma_joined_urls_are_one_link_so_only_the_first_hash_is_added(sandbox, api):
    body = api.add(f"{magnet(1)},{magnet(2)}")  # p115client's comma quirk: 115's separator is the newline
    assert [(i["state"], i["info_hash"]) for i in body["data"]] == [(True, btih(1))]
    assert [t["info_hash"] for t in sandbox.tasks()] == [btih(1)]


def test_stats_record_every_add_call_and_how_often_each_url_was_accepted(sandbox, api):
    api.add(magnet(1), magnet(2))
    api.add(magnet(1), magnet(3))
    stats = sandbox.stats()
    assert [(c["url_count"], c["accepted"], c["code"]) for c in stats["add_calls"]] == [(2, 2, 0), (2, 1, 0)]
    assert stats["accepted"] == {magnet(1): 1, magnet(2): 1, magnet(3): 1}
    assert stats["accepted_hashes"] == {btih(1): 1, btih(2): 1, btih(3): 1}


# --- del_task and clear_task ---------------------------------------------------------------------------------------

def test_del_task_removes_the_task_and_is_recorded(sandbox, api):
    api.add(magnet(1), magnet(2))
    body = api.post("/open/offline/del_task", {"info_hash": btih(1), "del_source_file": "1"}).json()
    assert body == {"state": True, "code": 0, "message": "", "data": []}
    assert [t["info_hash"] for t in sandbox.tasks()] == [btih(2)]
    unknown = api.post("/open/offline/del_task", {"info_hash": btih(99)}).json()
    assert unknown["state"] is True
    assert api.post("/open/offline/del_task", {}).json()["code"] == 990002
    assert api.post("/open/offline/del_task", {"info_hash": "xyz"}).json()["code"] == 990002
    calls = sandbox.stats()["del_calls"]
    assert [(c["info_hash"], c["del_source_file"], c["found"]) for c in calls[:2]] == [
        (btih(1), 1, True), (btih(99), 0, False)]
    assert [c["code"] for c in calls] == [0, 0, 990002, 990002]


CLEAR_EXPECTED = {0: {"failed", "queued", "downloading"}, 1: set(), 2: {"done", "queued", "downloading"},
                  3: {"done", "failed"}, 4: {"failed", "queued", "downloading"}, 5: set()}


@pytest.mark.parametrize("flag", sorted(CLEAR_EXPECTED))
def test_clear_task_flags_remove_the_documented_statuses(sandbox, api, flag):
    for n, (name, status) in enumerate({"done": 2, "failed": -1, "queued": 0, "downloading": 1}.items()):
        sandbox.add_foreign_task(magnet(n), status=status, percent=50, name=name)
    body = api.post("/open/offline/clear_task", {"flag": str(flag)}).json()
    assert body["state"] is True and body["data"] == []
    assert {t["name"] for t in sandbox.tasks()} == CLEAR_EXPECTED[flag]
    (call,) = sandbox.stats()["clear_calls"]
    assert call["flag"] == flag and call["delete_files"] is (flag in (4, 5))


@pytest.mark.parametrize("flag", ["6", "-1", "", "all"])
def test_clear_task_outside_0_to_5_is_990002(sandbox, api, flag):
    api.add(magnet(1))
    assert api.post("/open/offline/clear_task", {"flag": flag}).json()["code"] == 990002
    assert len(sandbox.tasks()) == 1


# --- faults --------------------------------------------------------------------------------------------------------

ADD = "/open/offline/add_task_urls"


@pytest.mark.parametrize("kind, status", [("http500", 500), ("http502", 502), ("http503", 503), ("html405", 405)])
def test_http_error_faults_answer_nginx_pages_and_do_nothing(sandbox, api, kind, status):
    sandbox.inject(Fault(kind, endpoint=ADD))
    response = api.post(ADD, {"urls": magnet(1)})
    assert response.status_code == status and "nginx" in response.text
    assert sandbox.tasks() == [] and sandbox.stats()["quota"]["used"] == 0
    assert api.add(magnet(1))["state"] is True  # times=1: the next call is normal


@pytest.mark.parametrize("kind, code, message", [("rate_limit_406", 406, "已达到当前访问上限，请稍后再试"),
                                                 ("rate_limit_770004", 770004, "访问频率过高"),
                                                 ("empty_code", 0, "")])
def test_json_refusal_faults_are_http_200_state_false_and_do_nothing(sandbox, api, kind, code, message):
    sandbox.inject(Fault(kind, endpoint=ADD))
    response = api.post(ADD, {"urls": magnet(1)})
    body = response.json()
    assert response.status_code == 200
    assert (body["state"], body["code"], body["message"], body["data"]) == (False, code, message, [])
    assert sandbox.tasks() == []


def test_empty_code_on_passport_keeps_the_integer_state(sandbox, api):
    sandbox.inject(Fault("empty_code", endpoint="/open/refreshToken"))
    assert api.refresh(api.pair.refresh_token) == {"state": 0, "code": 0, "message": "", "errno": 0, "error": "",
                                                   "data": []}


def test_malformed_fault_sends_truncated_json(sandbox, api):
    sandbox.inject(Fault("malformed"))
    response = api.get("/open/offline/get_quota_info")
    assert response.status_code == 200 and response.text.startswith("{")
    with pytest.raises(ValueError):
        response.json()


def test_drop_before_closes_the_connection_without_doing_anything(sandbox, api):
    sandbox.inject(Fault("drop_before", endpoint=ADD))
    with pytest.raises(requests.ConnectionError):
        api.add(magnet(1))
    assert sandbox.tasks() == [] and sandbox.stats()["calls"][ADD] == 1


def test_drop_after_commits_the_batch_but_never_answers(sandbox, api):
    sandbox.inject(Fault("drop_after", endpoint=ADD))
    with pytest.raises(requests.ConnectionError):
        api.add(magnet(1), magnet(2))
    stats = sandbox.stats()
    assert stats["tasks"] == 2 and stats["quota"]["used"] == 2
    assert stats["accepted"] == {magnet(1): 1, magnet(2): 1}
    assert api.add(magnet(1))["code"] == 10008  # a blind resend finds the task already there


def test_drop_after_on_refresh_rotates_the_tokens_the_client_never_saw(sandbox, api):
    sandbox.inject(Fault("drop_after", endpoint="/open/refreshToken"))
    with pytest.raises(requests.ConnectionError):
        api.refresh(api.pair.refresh_token)
    sandbox.clock.advance(61)
    assert api.refresh(api.pair.refresh_token)["code"] == 40140120


def test_delay_fault_answers_late_but_normally(sandbox, api):
    sandbox.inject(Fault("delay", endpoint="/open/user/info", delay=0.3))
    started = time.monotonic()
    assert api.get("/open/user/info").json()["state"] is True
    assert time.monotonic() - started >= 0.3


def test_faults_hit_only_their_endpoint_and_only_times_requests(sandbox, api):
    sandbox.inject(Fault("http503", endpoint="/open/offline/get_quota_info", times=2))
    assert api.get("/open/user/info").status_code == 200
    assert [api.get("/open/offline/get_quota_info").status_code for _ in range(3)] == [503, 503, 200]


def test_unlimited_faults_last_until_cleared(sandbox, api):
    sandbox.inject(Fault("http500", times=None))
    assert {api.get("/open/user/info").status_code for _ in range(5)} == {500}
    sandbox.clear_faults()
    assert api.get("/open/user/info").status_code == 200


def test_fault_rate_follows_the_seeded_rng(make_sandbox):
    patterns = []
    for _ in range(2):
        sb = make_sandbox()
        sb.inject(Fault("http500", times=None, rate=0.5))
        patterns.append([Api(sb).get("/open/user/info").status_code for _ in range(30)])
    assert patterns[0] == patterns[1]
    assert set(patterns[0]) == {200, 500}


def test_faults_never_touch_the_control_api(sandbox):
    sandbox.inject(Fault("drop_before", times=None))
    assert control(sandbox, "GET", "stats").json()["faults_fired"] == []


@pytest.mark.parametrize("kwargs, field", [({"kind": "explode"}, "kind"), ({"kind": "delay", "times": 0}, "times"),
                                           ({"kind": "http500", "rate": 2}, "rate"),
                                           ({"kind": "http500", "endpoint": "user/info"}, "endpoint"),
                                           ({"kind": "http500", "endpoint": "/__sandbox/stats"}, "endpoint"),
                                           ({"kind": "refresh_too_frequent", "endpoint": "/open/user/info"},
                                            "endpoint")])
def test_bad_faults_are_rejected_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Fault(**kwargs)


# --- folders -------------------------------------------------------------------------------------------------------

def test_folder_get_info_by_path_over_get_or_post_and_by_id(sandbox, api):
    folder_id = sandbox.add_folder("/Downloads/Anime")
    by_get = api.get("/open/folder/get_info", path="/Downloads/Anime").json()["data"]
    by_post = api.post("/open/folder/get_info", {"path": ">Downloads>Anime"}).json()["data"]
    by_id = api.get("/open/folder/get_info", file_id=folder_id).json()["data"]
    assert by_get == by_post == by_id
    assert re.fullmatch(r"\d{19}", folder_id) and by_get["file_id"] == folder_id
    assert by_get["file_category"] == "0" and isinstance(by_get["ptime"], str)
    assert [p["file_name"] for p in by_get["paths"]] == ["根目录", "Downloads"]


def test_folder_not_found_comes_in_both_observed_forms(api):
    assert api.get("/open/folder/get_info", path="/nope").json() == {"state": True, "code": 0, "message": "",
                                                                      "data": []}
    assert api.get("/open/folder/get_info", file_id="1234567890123456789").json()["code"] == 430004
    assert api.get("/open/folder/get_info", path="nope").json()["code"] == 990002


def test_folder_add_creates_and_refuses_a_duplicate_name_with_20004(sandbox, api):
    made = api.post("/open/folder/add", {"pid": "0", "file_name": "Downloads"}).json()
    assert made["state"] is True and made["data"]["file_name"] == "Downloads"
    assert sandbox.add_folder("/Downloads") == made["data"]["file_id"]
    assert api.post("/open/folder/add", {"pid": "0", "file_name": "Downloads"}).json()["code"] == 20004


# --- QR-code (PKCE device) login -----------------------------------------------------------------------------------

VERIFIER = "v3rifier-" + "x" * 55


def challenge(method: str = "sha256", *, urlsafe: bool = True, padded: bool = False) -> str:
    digest = hashlib.new(method, VERIFIER.encode()).digest()
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(digest).decode()
    return text if padded else text.rstrip("=")


def start_login(sandbox: Sandbox, **form: str) -> dict[str, Any]:
    form = {"client_id": "100195123", "code_challenge": challenge(), "code_challenge_method": "sha256", **form}
    return requests.post(sandbox.url + "/open/authDeviceCode", data=form, timeout=TIMEOUT).json()


def poll(sandbox: Sandbox, login: dict[str, Any], **override: str) -> dict[str, Any]:
    params = {k: login[k] for k in ("uid", "time", "sign")} | override
    return requests.get(sandbox.url + "/get/status/", params=params, timeout=TIMEOUT).json()


def exchange(sandbox: Sandbox, uid: str, verifier: str = VERIFIER) -> dict[str, Any]:
    return requests.post(sandbox.url + "/open/deviceCodeToToken", data={"uid": uid, "code_verifier": verifier},
                         timeout=TIMEOUT).json()


def test_qr_login_walks_waiting_scanned_confirmed_then_exchanges_for_a_grant(sandbox):
    started = start_login(sandbox)
    assert started["state"] == 1 and set(started["data"]) == {"uid", "time", "qrcode", "sign"}
    assert isinstance(started["data"]["time"], int)
    login = started["data"]
    assert exchange(sandbox, login["uid"])["code"] == 40140134  # not confirmed yet
    statuses = [poll(sandbox, login) for _ in range(3)]
    assert [s["state"] for s in statuses] == [1, 1, 1]
    assert [s["data"] if s["data"] == [] else s["data"]["status"] for s in statuses] == [[], 1, 2]
    assert exchange(sandbox, login["uid"], "short")["code"] == 40140112
    assert exchange(sandbox, login["uid"], "w" * 64)["code"] == 40140113
    tokens = exchange(sandbox, login["uid"])
    assert tokens["state"] == 1 and tokens["data"]["expires_in"] == 7200
    assert Api(sandbox, TokenPair(**tokens["data"])).get("/open/user/info").json()["state"] is True
    assert exchange(sandbox, login["uid"])["code"] == 40140134  # a login is exchanged once


@pytest.mark.parametrize("method, urlsafe, padded", [("sha256", False, True), ("sha256", True, True),
                                                     ("sha1", True, False), ("md5", False, False)])
def test_qr_login_accepts_std_or_urlsafe_base64_with_or_without_padding(sandbox, method, urlsafe, padded):
    login = start_login(sandbox, code_challenge=challenge(method, urlsafe=urlsafe, padded=padded),
                        code_challenge_method=method)["data"]
    sandbox.qr_action("confirm")
    assert exchange(sandbox, login["uid"])["state"] == 1


@pytest.mark.parametrize("form, code", [({"client_id": ""}, 40100000), ({"code_challenge": ""}, 40140101),
                                        ({"code_challenge_method": "SHA256"}, 40140102)])
def test_qr_login_parameter_errors(sandbox, form, code):
    assert start_login(sandbox, **form)["code"] == code


def test_qr_status_is_a_long_poll_in_manual_mode(make_sandbox):
    sb = make_sandbox(qr_auto=False, qr_poll_timeout=0.3)
    login = start_login(sb)["data"]
    started = time.monotonic()
    assert poll(sb, login)["data"] == []  # the poll timed out: not a failure
    assert time.monotonic() - started >= 0.3
    threading.Timer(0.05, sb.qr_action, args=("scan",)).start()
    started = time.monotonic()
    assert poll(sb, login)["data"]["status"] == 1
    assert time.monotonic() - started < 0.3
    sb.qr_action("expire")
    assert poll(sb, login)["state"] == 0
    assert poll(sb, login, sign="0" * 40)["state"] == 0


def test_qr_expires_after_five_minutes(sandbox):
    login = start_login(sandbox)["data"]
    sandbox.clock.advance(301)
    assert poll(sandbox, login)["state"] == 0


# --- control API, token file, lifecycle ----------------------------------------------------------------------------

def test_control_api_over_http_steers_and_reports(sandbox):
    pair = control(sandbox, "POST", "grant").json()
    api = Api(sandbox, TokenPair(**pair))
    assert control(sandbox, "POST", "fault", {"kind": "http502", "endpoint": "/open/user/info"}).json() == {"ok": True}
    assert api.get("/open/user/info").status_code == 502
    control(sandbox, "POST", "fault", {"kind": "http502", "times": None})
    control(sandbox, "POST", "clear_faults")
    assert api.get("/open/user/info").status_code == 200
    control(sandbox, "POST", "quota", {"surplus": 0})
    assert api.add(magnet(1))["code"] == 1000012
    control(sandbox, "POST", "quota", {"surplus": 5})
    control(sandbox, "POST", "space", {"remain": 0})
    assert api.add(magnet(1))["code"] == 91006
    control(sandbox, "POST", "space", {"remain": 2**40})
    info_hash = control(sandbox, "POST", "task", {"url": magnet(2), "status": 1, "percent": 12.5}).json()["info_hash"]
    control(sandbox, "POST", "set_task", {"info_hash": info_hash, "status": -1})
    assert [(t["info_hash"], t["status"]) for t in control(sandbox, "GET", "tasks").json()] == [(info_hash, -1)]
    now = control(sandbox, "POST", "advance", {"seconds": 7200}).json()["now"]
    assert now == pytest.approx(sandbox.clock.now(), abs=1)
    assert api.get("/open/user/info").json()["code"] == 40140125
    control(sandbox, "POST", "revoke", {"refresh_token": pair["refresh_token"]})
    assert api.refresh(pair["refresh_token"])["code"] == 40140116
    folder = control(sandbox, "POST", "folder", {"path": "/a/b"}).json()["file_id"]
    assert re.fullmatch(r"\d{19}", folder)
    stats = control(sandbox, "GET", "stats").json()
    assert stats["calls"]["/open/user/info"] == 3 and stats["tasks"] == 1
    assert pair["access_token"] in stats["issued_tokens"]


@pytest.mark.parametrize("method, name, body, status, words", [
    ("POST", "fault", {"kind": "explode"}, 400, "kind"), ("POST", "advance", {}, 400, "seconds"),
    ("POST", "advance", {"seconds": -1}, 400, "seconds"), ("POST", "quota", {"surplus": "many"}, 400, "surplus"),
    ("POST", "revoke", {"refresh_token": "rt_x"}, 400, "never issued"), ("GET", "nothing", None, 404, "unknown"),
    ("POST", "set_task", {"info_hash": "00", "status": 1}, 400, "no task")])
def test_control_api_rejects_bad_requests_with_a_clear_error(sandbox, method, name, body, status, words):
    response = control(sandbox, method, name, body)
    assert response.status_code == status and words in response.json()["error"]


def test_write_token_file_writes_a_0600_json_pair_that_works(sandbox, tmp_path):
    path = tmp_path / "deep" / "token.json"
    pair = sandbox.write_token_file(path)
    doc = json.loads(path.read_text())
    assert doc == {"access_token": pair.access_token, "refresh_token": pair.refresh_token,
                   "expires_at": pytest.approx(time.time() + 7200, abs=5)}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Api(sandbox, pair).get("/open/user/info").json()["state"] is True


def test_token_file_fixture_holds_a_live_grant(sandbox, token_file):
    pair = TokenPair(**{k: v for k, v in json.loads(token_file.read_text()).items() if k != "expires_at"},
                     expires_in=7200)
    assert Api(sandbox, pair).get("/open/user/info").json()["state"] is True


def test_token_pair_repr_hides_the_tokens(sandbox):
    pair = sandbox.grant()
    assert pair.access_token not in repr(pair) and pair.refresh_token not in repr(pair)


def test_the_sandbox_prints_nothing_while_serving(sandbox, api, capfd):
    api.get("/open/user/info")
    api.get("/open/user/info", token="garbage")
    api.refresh(api.pair.refresh_token)
    sandbox.inject(Fault("drop_before"))
    with pytest.raises(requests.ConnectionError):
        api.get("/open/user/info")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_clock_moves_only_forward():
    clock = Clock()
    before = clock.now()
    clock.advance(100)
    assert clock.now() - before == pytest.approx(100, abs=1)
    with pytest.raises(ValueError, match="seconds"):
        clock.advance(-1)


def test_stop_closes_the_port_and_ends_idle_keep_alive_connections():
    sb = Sandbox(seed=1).start()
    session = requests.Session()
    pair = sb.grant()
    assert session.get(sb.url + "/open/user/info", headers={"Authorization": f"Bearer {pair.access_token}"},
                       timeout=TIMEOUT).status_code == 200
    started = time.monotonic()
    sb.stop()
    assert time.monotonic() - started < 2
    deadline = time.monotonic() + 2
    while any("process_request" in t.name for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any("process_request" in t.name for t in threading.enumerate())
    with pytest.raises(requests.ConnectionError):
        requests.get(sb.url + "/open/user/info", timeout=TIMEOUT)
    session.close()


@pytest.mark.parametrize("explicit_token_file", [False, True])
def test_run_cli_prints_the_url_first_then_a_ready_token_file_and_exits_0_on_sigterm(tmp_path, explicit_token_file):
    argv = [sys.executable, "-m", "daemon115.api.sandbox", "--seed", "3"]
    if explicit_token_file:
        argv += ["--token-file", str(tmp_path / "t.json")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().rstrip("\n")
        token_path = Path(proc.stdout.readline().rstrip("\n"))
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert token_path == tmp_path / "t.json" if explicit_token_file else token_path.name == "token.json"
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        tokens = json.loads(token_path.read_text())
        body = requests.get(url + "/open/user/info", headers={"Authorization": f"Bearer {tokens['access_token']}"},
                            timeout=TIMEOUT).json()
        assert body["state"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == 0
    assert f"base_url: {url}" in out
    assert tokens["access_token"] not in out + err and tokens["refresh_token"] not in out + err
    assert token_path.exists() is explicit_token_file  # a scratch token file goes away with the sandbox


def test_run_cli_reports_a_busy_port_and_exits_1(sandbox, capsys):
    port = int(sandbox.url.rsplit(":", 1)[1])
    assert run_cli("127.0.0.1", port, None, sys.stdout) == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
