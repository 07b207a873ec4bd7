"""The sandbox's folder tree: deleting folders and the path index that lags behind new ones, over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from daemon115.api.sandbox import Sandbox

TIMEOUT = 5
MAGNET = "magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=folder-test.mkv"


class Api:
    def __init__(self, sandbox: Sandbox) -> None:
        self.url = sandbox.url
        self.headers = {"Authorization": f"Bearer {sandbox.grant().access_token}"}

    def info(self, **params: str) -> dict[str, Any]:
        return requests.get(self.url + "/open/folder/get_info", params=params, headers=self.headers,
                            timeout=TIMEOUT).json()

    def post(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        return requests.post(self.url + path, data=form, headers=self.headers, timeout=TIMEOUT).json()


@pytest.fixture
def api(sandbox: Sandbox) -> Api:
    return Api(sandbox)


def control(sandbox: Sandbox, name: str, doc: dict[str, Any]) -> requests.Response:
    return requests.post(f"{sandbox.url}/__sandbox/{name}", json=doc, timeout=TIMEOUT)


def test_delete_folder_by_path_removes_it_and_everything_under_it(sandbox, api):
    anime = sandbox.add_folder("/Downloads/Anime")
    season = sandbox.add_folder("/Downloads/Anime/S01")
    assert sandbox.delete_folder("/Downloads/Anime") == anime
    assert api.info(path="/Downloads/Anime")["data"] == []
    assert api.info(file_id=anime)["code"] == 430004
    assert api.info(file_id=season)["code"] == 430004
    assert api.info(path="/Downloads")["data"]["count"] == 0


def test_delete_folder_by_id_and_its_refusals(sandbox, api):
    folder = sandbox.add_folder(">Movies")
    assert sandbox.delete_folder(folder) == folder
    assert api.info(path="/Movies")["data"] == []
    with pytest.raises(ValueError, match="no folder"):
        sandbox.delete_folder(folder)
    with pytest.raises(ValueError, match="root"):
        sandbox.delete_folder("/")
    with pytest.raises(ValueError, match="not a usable 115 path"):
        sandbox.delete_folder("Movies")


def test_add_task_urls_into_a_deleted_folder_fails_the_whole_call_with_430004(sandbox, api):
    folder = sandbox.add_folder("/Downloads/Gone")
    sandbox.delete_folder(folder)
    answer = api.post("/open/offline/add_task_urls", {"urls": MAGNET, "wp_path_id": folder})
    assert (answer["state"], answer["code"], answer["data"]) == (False, 430004, [])
    assert sandbox.tasks() == [] and sandbox.stats()["quota"]["used"] == 0


def test_add_task_urls_into_an_id_that_never_existed_is_still_accepted(sandbox, api):
    answer = api.post("/open/offline/add_task_urls", {"urls": MAGNET, "wp_path_id": "4242"})
    assert answer["state"] is True and answer["data"][0]["state"] is True
    assert sandbox.tasks()[0]["wp_path_id"] == "4242"


def test_a_folder_recreated_after_deletion_gets_a_new_id_that_accepts_tasks(sandbox, api):
    old = sandbox.add_folder("/Downloads/Anime")
    sandbox.delete_folder("/Downloads/Anime")
    new = api.post("/open/folder/add", {"pid": sandbox.add_folder("/Downloads"), "file_name": "Anime"})["data"]
    assert new["file_id"] != old
    assert api.post("/open/offline/add_task_urls", {"urls": MAGNET, "wp_path_id": new["file_id"]})["state"] is True


def test_folder_lag_hides_fresh_folders_from_path_lookups_only(make_sandbox):
    sandbox = make_sandbox(folder_lag=30)
    api = Api(sandbox)
    folder = sandbox.add_folder("/Fresh")
    assert api.info(path="/Fresh")["data"] == []
    assert api.info(file_id=folder)["data"]["file_id"] == folder
    assert api.post("/open/folder/add", {"pid": "0", "file_name": "Fresh"})["code"] == 20004
    sandbox.clock.advance(30)
    assert api.info(path="/Fresh")["data"]["file_id"] == folder


def test_folder_lag_is_set_and_cleared_at_run_time(sandbox, api):
    sandbox.set_folder_lag(10)
    sandbox.add_folder("/Late")
    assert api.info(path="/Late")["data"] == []
    sandbox.set_folder_lag(0)
    assert api.info(path="/Late")["data"]["file_name"] == "Late"
    for bad in (-1, 3600, "5", True):
        with pytest.raises(ValueError, match="folder_lag"):
            sandbox.set_folder_lag(bad)


def test_control_api_deletes_folders_and_sets_the_lag(sandbox, api):
    folder = sandbox.add_folder("/Ctl/Sub")
    assert control(sandbox, "delete_folder", {"path": "/Ctl/Sub"}).json() == {"file_id": folder}
    assert api.info(file_id=folder)["code"] == 430004
    assert control(sandbox, "delete_folder", {"path": folder}).status_code == 400
    assert control(sandbox, "folder_lag", {"seconds": 60}).json() == {"ok": True}
    sandbox.add_folder("/Ctl/New")
    assert api.info(path="/Ctl/New")["data"] == []
    assert control(sandbox, "folder_lag", {"seconds": -1}).status_code == 400


@pytest.fixture
def make_sandbox():
    started: list[Sandbox] = []

    def make(**kw: Any) -> Sandbox:
        sb = Sandbox(seed=7, **kw).start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()
