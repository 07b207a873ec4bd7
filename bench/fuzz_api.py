"""Fuzz the reading of 115's answers with atheris: an HTTP body through the transport's envelope checks and every
typed model built from it, including the pairing of add_task_urls results with the links sent.

    .venv/bin/python bench/fuzz_api.py [libFuzzer options] [CORPUS_DIR ...]
    .venv/bin/python bench/fuzz_api.py -max_total_time=120

Without a corpus directory a temporary one is used, seeded with envelopes of every shape api-notes.md records
(proapi ``state: true``, passport ``state: 1``, per-URL add results, ``data: []``, ids as ints and strings, error
codes as strings). Defaults (each overridable): ``-timeout=10 -rss_limit_mb=2048
-artifact_prefix=tests/fuzz/crashes/api-``, so a crash lands where tests/fuzz/test_fuzz_parsers.py replays it.

The body goes into a real ``requests.Response`` (status 200, then 405 and 502), as the transport receives it. A
crash is any of: an exception other than an Api115Error subclass from ``_parse_body`` / ``check_envelope`` /
``grant_from`` / ``qr_status_from``, any exception from ``TaskPage``, ``UserInfo``, ``Quota``, ``FolderInfo`` or
``AddResult.from_api`` (they are documented to take any shape); an add-result list whose length differs from the
links sent; an input that takes longer than ``-timeout`` seconds or more than ``-rss_limit_mb``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fuzz_links import libfuzzer_args  # noqa: E402

from daemon115.api.client import (  # noqa: E402
    FolderInfo,
    _add_results,
    _items_of_failed_add,
    grant_from,
    qr_status_from,
)
from daemon115.api.errors import Api115Error  # noqa: E402
from daemon115.api.models import AddResult, Quota, TaskPage, UserInfo  # noqa: E402
from daemon115.api.transport import _parse_body, check_envelope  # noqa: E402

TARGET = "api"
URLS = ["magnet:?xt=urn:btih:" + "a" * 40, "http://h.example/x.torrent", "ed2k://|file|a|1|" + "0" * 32 + "|/"]
SEEDS: list[Any] = [
    {"state": True, "code": 0, "message": "", "data": {"page": 1, "page_count": 2, "count": 31, "tasks": [
        {"info_hash": "A" * 40, "name": "n", "status": 1, "percentDone": "12.5", "size": 1.0e9, "add_time": 1,
         "last_update": "2", "url": "magnet:?", "file_id": 123456789012345678, "delete_file_id": "0",
         "wp_path_id": 0}]}},
    {"state": True, "data": {"user_id": 1, "user_name": "u", "vip_info": {"level_name": "VIP", "expire": 1},
                             "rt_space_info": {"all_total": {"size": 1}, "all_remain": {"size": "2"},
                                               "all_use": {"size": 3.5}}}},
    {"state": True, "data": {"count": 10, "used": 1, "surplus": 9, "package": [{"name": "p", "count": "5"}]}},
    {"state": True, "data": [{"state": True, "code": 0, "url": URLS[0], "info_hash": "a" * 40},
                             {"state": False, "code": 10008, "message": "exists", "url": URLS[1]}]},
    {"state": False, "code": "10008", "message": "任务已存在", "data": [{"url": URLS[0], "state": False}]},
    {"state": 0, "errno": 40140125, "error": "access_token 无效"},
    {"state": 1, "data": {"access_token": "at", "refresh_token": "rt", "expires_in": "7200"}},
    {"state": 1, "data": {"status": 2, "msg": "ok"}},
    {"state": True, "data": [{"file_id": "1", "file_name": "a", "file_category": "0",
                              "paths": [{"file_id": 0, "file_name": "root"}]}]},
    {"state": False, "code": 0, "message": "770004"},
    {"state": True, "data": []},
]
TOKENS = [b'"state":', b'"code":', b'"errno":', b'"message":', b'"data":', b'"tasks":', b'"page_count":',
          b'"percentDone":', b'"size":', b'"info_hash":', b'"url":', b'"file_id":', b'"package":', b'"count":',
          b'"rt_space_info":', b'"all_total":', b'"vip_info":', b'"expire":', b'"access_token":', b'"paths":',
          b"1e999", b"-1e999", b"NaN", b"Infinity", b'"inf"', b'"nan"', b"99999999999999999999999", b"true", b"null",
          b"[[[[", b'"1"', b"40140125", b"10008", b"770004"]


def one_input(data: bytes) -> None:
    """Raise (anything but the documented errors) when ``data`` shows a bug."""
    for status in (200, 405, 502):
        try:
            body = _parse_body(response_of(data, status), "/fuzz")
        except Api115Error:
            continue
        read_envelope(body)


def response_of(data: bytes, status: int) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = data  # what requests stores once it has read a body
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    return response


def read_envelope(body: Mapping[str, Any]) -> None:
    try:
        qr_status_from(body)
    except Api115Error:
        pass
    try:
        check_envelope(body, "/fuzz")
    except Api115Error as error:
        items = _items_of_failed_add(error, URLS)
        if items is not None and len(items) != len(URLS):
            raise AssertionError(f"{len(items)} add results for {len(URLS)} links") from None
        return
    data = body.get("data")
    TaskPage.from_api(data)
    UserInfo.from_api(data)
    Quota.from_api(data)
    FolderInfo.from_api(data)
    for item in data if isinstance(data, list) else ():
        if isinstance(item, Mapping):
            AddResult.from_api(item)
    for urls in (URLS, URLS[:1]):
        if len(_add_results(data, urls)) != len(urls):
            raise AssertionError("add results do not pair one to one with the links sent")
    try:
        grant_from(data, "/fuzz")
    except Api115Error:
        pass


def seeds() -> list[bytes]:
    return [json.dumps(doc, ensure_ascii=False).encode() for doc in SEEDS] + [b"<html>405 Not Allowed</html>", b""]


def main() -> None:
    import atheris

    os.makedirs(REPO / "tests" / "fuzz" / "crashes", exist_ok=True)
    atheris.instrument_all()
    atheris.Setup(libfuzzer_args(sys.argv, TARGET, seeds(), TOKENS), one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
