from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from daemon115.api.errors import (
    TABLE,
    Api115Error,
    AuthorizationNeeded,
    Kind,
    RateLimited,
    TransientError,
    error_from_response,
    exit_code_for,
    lookup,
    parse_code,
)

DOCS = Path(__file__).resolve().parents[2] / "shared" / "docs"
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def official_auth_table() -> dict[int, tuple[str, str]]:
    """code -> (描述, 建议), parsed from the 授权错误码 section of the official docs."""
    text = (DOCS / "115-open-api.zh.md").read_text(encoding="utf-8")
    section = text.split("## 授权错误码", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|([^|]*)\|([^|]*)\|", section, flags=re.MULTILINE)
    return {int(code): (zh.strip(), advice.strip()) for code, zh, advice in rows}


def test_the_official_table_parses_to_every_row_of_the_doc() -> None:
    official = official_auth_table()
    assert len(official) == 40 and min(official) == 40100000 and max(official) == 40140136


@pytest.mark.parametrize("code", sorted(official_auth_table()))
def test_every_official_code_is_in_the_table_with_its_chinese_text_verbatim(code: int) -> None:
    zh, advice = official_auth_table()[code]
    info = lookup(code)
    assert info is not None and info.code == code
    assert info.zh == zh
    if advice:
        assert "official advice" in info.action.lower() or "115's own advice" in info.action


def test_the_codes_from_the_api_notes_carry_their_documented_chinese_text() -> None:
    expected = {
        40140137: "refresh_token 已失效，请停止重试并重新授权", 91006: "存储空间不足", 980004: "操作失败",
        990002: "参数错误", 1000011: "链接数量超过115个", 1000012: "云下载配额已用完", 10008: "任务已存在",
        10004: "错误的链接", 20004: "该目录名称已存在。", 430004: "文件（夹）不存在或已删除。",
        406: "已达到当前访问上限…", 770004: "访问频率过高", 590075: "操作太频繁，请稍候再试", 99: "请重新登录",
    }
    assert {code: TABLE[code].zh for code in expected} == expected
    assert 10007 in TABLE and 10010 in TABLE


def test_every_entry_explains_itself_in_english_for_readers_without_chinese() -> None:
    for code, info in TABLE.items():
        assert info.code == code
        assert len(info.en) > 20 and len(info.action) > 20, code
        assert not CJK.search(info.en) and not CJK.search(info.action), code


def test_the_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TABLE[1] = TABLE[99]  # type: ignore[index]


@pytest.mark.parametrize(("codes", "kind"), [
    ((40140114, 40140115, 40140116, 40140118, 40140119, 40140120, 40140137), Kind.REAUTHORIZE),
    ((40140123, 40140124, 40140125, 40140126, 99), Kind.REFRESH),
    ((40140117, 40140121, 40110000, 980004, 91006, 1000012, 10007, 10010, 406, 770004, 590075), Kind.RETRY_LATER),
    ((10008, 10004, 990002, 1000011, 20004, 430004, *range(40140101, 40140114)), Kind.PERMANENT),
])
def test_important_codes_have_the_kind_that_decides_what_callers_do(codes: tuple[int, ...], kind: Kind) -> None:
    assert {code: TABLE[code].kind for code in codes} == {code: kind for code in codes}


def test_a_duplicate_task_is_explained_as_success() -> None:
    assert "already exists" in TABLE[10008].en and "success" in TABLE[10008].en


@pytest.mark.parametrize(("raw", "expected"), [
    (40140125, 40140125), ("40140125", 40140125), (" 406 ", 406), (0, 0), ("0", 0), (406.0, 406),
    ("", None), (None, None), ("abc", None), ("4o6", None), (True, None), (False, None), ([406], None), (1.5, None),
])
def test_parse_code_accepts_ints_and_numeric_strings_only(raw: object, expected: int | None) -> None:
    assert parse_code(raw) == expected


@pytest.mark.parametrize(("code", "cls"), [
    (40140116, AuthorizationNeeded), (40140137, AuthorizationNeeded), (406, RateLimited), (770004, RateLimited),
    (590075, RateLimited), (None, RateLimited), (0, RateLimited), (980004, TransientError),
    (40140121, TransientError), (40110000, TransientError), (40140117, TransientError), (40140125, Api115Error),
    (10008, Api115Error), (123456, Api115Error),
])
def test_error_from_response_picks_the_subclass_callers_catch(code: int | None, cls: type[Api115Error]) -> None:
    exc = error_from_response(code, "msg", "/open/x")
    assert type(exc) is cls
    assert (exc.code, exc.server_message, exc.endpoint) == (code, "msg", "/open/x")


@pytest.mark.parametrize(("code", "kind"), [
    (None, Kind.RETRY_LATER), (0, Kind.RETRY_LATER), (40149999, Kind.REFRESH), (40100001, Kind.REFRESH),
    (123456, Kind.PERMANENT), (401, Kind.PERMANENT),
])
def test_unknown_codes_get_a_safe_kind(code: int | None, kind: Kind) -> None:
    exc = Api115Error(code, "", "/x")
    assert exc.info is None and exc.kind is kind


def test_subclasses_pin_their_kind_whatever_the_code() -> None:
    assert AuthorizationNeeded(40140126, "newer grant", "token file").kind is Kind.REAUTHORIZE
    assert RateLimited(40140117, "paused").kind is Kind.RETRY_LATER
    assert TransientError(None, "HTTP 502").kind is Kind.RETRY_LATER


def test_a_known_code_message_has_code_endpoint_chinese_english_and_action() -> None:
    text = str(error_from_response(40140125, "", "/open/user/info"))
    info = TABLE[40140125]
    assert text.startswith("115 error 40140125 on /open/user/info: access_token 无效（已过期或者已解除授权） — ")
    assert info.en in text and f"Action: {info.action}" in text


def test_a_differing_server_message_is_shown_beside_the_official_text() -> None:
    text = str(error_from_response(40140116, "no auth", "/open/refreshToken"))
    assert "refresh_token 无效（已解除授权）" in text and "no auth" in text


def test_an_unknown_code_still_shows_its_number_and_the_server_message() -> None:
    text = str(error_from_response(123456, "奇怪的错误", "/x"))
    assert text.startswith("115 error 123456 on /x: 奇怪的错误 (not in daemon115's table)")
    assert "Action: " in text


def test_a_codeless_failure_names_what_went_wrong() -> None:
    text = str(TransientError(None, "HTTP 502 with an HTML page", "/open/offline/get_task_list"))
    assert "/open/offline/get_task_list" in text and "HTTP 502 with an HTML page" in text and "Action: " in text


@pytest.mark.parametrize("exc", [
    error_from_response(40140120, "", "/open/refreshToken"),
    error_from_response(40140137, "", "/open/refreshToken"),
    AuthorizationNeeded(None, "no token file at /tmp/t.json", "token file"),
    AuthorizationNeeded(40140126, "the token file still holds the old pair", "token file"),
])
def test_authorization_messages_end_with_how_to_reauthorize(exc: Api115Error) -> None:
    text = str(exc)
    assert exc.server_message in text
    tail = text[text.index("To re-authorize"):]
    assert text.endswith(tail) and "daemon115 auth import --access-token" in tail and "daemon115 auth login" in tail


@pytest.mark.parametrize(("exc", "status"), [
    (AuthorizationNeeded(None, "no token file", "token file"), 3),
    (error_from_response(40140119, "", "/open/refreshToken"), 3),
    (RateLimited(406, ""), 1), (TransientError(None, "timeout"), 1), (Api115Error(10004, ""), 1),
    (error_from_response(40140125, "", "/open/user/info"), 1), (ValueError("x"), 1),
])
def test_exit_code_is_3_only_when_reauthorization_is_needed(exc: BaseException, status: int) -> None:
    assert exit_code_for(exc) == status


def test_errors_survive_pickling_with_their_fields() -> None:
    exc = error_from_response(406, "已达到当前访问上限，请稍后再试", "/open/offline/add_task_urls")
    exc.data = []
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is RateLimited and str(copy) == str(exc) and copy.data == [] and copy.code == 406
