"""Tolerant parsing of 115's answers (api-notes.md §1, §2.3-2.6): every observed shape gives one stable value."""

from __future__ import annotations

import pytest

from daemon115.api.models import AddResult, Quota, Task, TaskPage, UserInfo, as_id, as_object, as_optional_float

USER_INFO = {"user_id": 123456789, "user_name": "demo",
             "rt_space_info": {"all_total": {"size": 16492674416640, "size_format": "15TB"},
                               "all_remain": {"size": 1099511627776.0, "size_format": "1TB"},
                               "all_use": {"size": 15393162788864, "size_format": "14TB"}},
             "vip_info": {"level_name": "年费VIP", "expire": 1790000000}}


def test_user_info_turns_the_int_user_id_into_a_string_and_reads_float_sizes():
    info = UserInfo.from_api(USER_INFO)
    assert info.user_id == "123456789"
    assert (info.space_total, info.space_remain, info.space_used) == (16492674416640, 1099511627776, 15393162788864)
    assert info.to_json()["vip"] == {"level_name": "年费VIP", "expire": 1790000000}


@pytest.mark.parametrize("raw, expected", [(42, 42.0), (42.75, 42.75), ("42", 42.0), (None, None), ("", None),
                                           ("n/a", None), (True, None)])
def test_percent_done_may_be_int_float_string_or_null(raw, expected):
    assert as_optional_float(raw) == expected


def test_ids_stay_exact_strings_beyond_float_precision():
    assert as_id(3101234567890123457) == "3101234567890123457"
    assert as_id("3101234567890123457") == "3101234567890123457"
    task = Task.from_api({"info_hash": "ABC", "file_id": 3101234567890123457, "wp_path_id": "0", "status": "2",
                          "percentDone": "100"})
    assert task.file_id == "3101234567890123457"
    assert task.info_hash == "abc" and task.status == 2 and task.percent == 100.0 and task.status_name == "completed"


def test_data_may_be_an_object_an_empty_array_or_a_one_element_array():
    assert as_object({"a": 1}) == {"a": 1}
    assert as_object([]) == {}
    assert as_object([{"a": 1}]) == {"a": 1}
    assert TaskPage.from_api([]).tasks == ()


def test_empty_task_list_as_documented():
    page = TaskPage.from_api({"page": 1, "page_count": 0, "count": 0, "tasks": []})
    assert (page.page, page.page_count, page.count, page.tasks) == (1, 0, 0, ())


def test_quota_packages():
    quota = Quota.from_api({"count": 3000, "used": 12, "surplus": 2988,
                            "package": [{"name": "长期VIP", "count": 3000, "used": 12, "surplus": 2988,
                                         "expire_info": [{"surplus": 1000, "expire_time": 1790000000}]}]})
    assert quota.to_json() == {"count": 3000, "used": 12, "surplus": 2988,
                               "packages": [{"name": "长期VIP", "count": 3000, "used": 12, "surplus": 2988}]}


def test_add_result_items_distinguish_accepted_duplicate_and_invalid():
    ok = AddResult.from_api({"state": True, "code": 0, "message": "", "info_hash": "3F78", "url": "magnet:?a"})
    dup = AddResult.from_api({"state": False, "code": 10008, "message": "任务已存在", "info_hash": "", "url": "m"})
    bad = AddResult.from_api({"state": False, "code": "10004", "message": "错误的链接", "url": "x"})
    assert ok.ok and ok.info_hash == "3f78" and not ok.already_exists
    assert not dup.ok and dup.already_exists and dup.info_hash is None
    assert not bad.ok and bad.code == 10004 and not bad.already_exists
