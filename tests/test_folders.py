"""Folder targets: ids as given, paths resolved, created, cached and re-resolved, over real HTTP to the sandbox."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from daemon115.api.client import Client, Endpoints, FolderInfo, connect
from daemon115.api.errors import Api115Error, AuthorizationNeeded
from daemon115.api.folders import (
    BadTarget,
    FolderMissing,
    FolderNotVisible,
    FolderPath,
    FolderResolver,
    TargetCheck,
    parse_target,
)
from daemon115.api.sandbox import Sandbox
from daemon115.api.transport import Pacing
from daemon115.ledger import Ledger

FAST = Pacing(timeout=3, min_interval=0, max_retries=1, backoff_base=0.01, backoff_cap=0.05)
MAGNET = "magnet:?xt=urn:btih:" + "cd" * 20 + "&dn=folders.mkv"
GET_INFO, ADD = "/open/folder/get_info", "/open/folder/add"


@pytest.fixture
def client(sandbox: Sandbox, token_file) -> Client:
    return connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url),
                   pacing=FAST).client


@pytest.fixture
def ledger(tmp_path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.sqlite3", synchronous="NORMAL") as opened:
        yield opened


class Events:
    """Collects what the resolver logs, in the shape of the structlog calls it makes."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.seen.append((event, fields))


def calls(sandbox: Sandbox, path: str) -> int:
    return sandbox.stats()["calls"].get(path, 0)


# --- parsing (pure) --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["/Downloads/Anime", "/Downloads/Anime/", "//Downloads//Anime//", ">Downloads>Anime",
                                  ">Downloads>>Anime>", "  /Downloads/ Anime ", "/Downloads/Anime/"])
def test_paths_are_normalised_to_one_canonical_form(text):
    assert parse_target(text) == FolderPath(("Downloads", "Anime"))
    assert parse_target(text).text == "/Downloads/Anime"


def test_digits_are_a_folder_id_and_a_bare_separator_is_the_root():
    assert parse_target("2837462") == "2837462"
    assert parse_target("0") == "0"
    assert parse_target("/") == FolderPath(()) and parse_target(">>") == FolderPath(())


@pytest.mark.parametrize("text, problem", [
    ("Downloads/Anime", "folder id (digits) or a path"), ("", "folder id (digits) or a path"),
    ("12a", "folder id (digits) or a path"), ("/Downloads>Anime", "mixes '/' and '>'"),
    (">Downloads/Anime", "mixes '>' and '/'"), ("/a/../b", "'..' is not a folder name"),
    ("/" + "x" * 256, "longer than 255"),
])
def test_a_bad_target_says_what_is_wrong_with_it(text, problem):
    with pytest.raises(BadTarget, match=re.escape(problem)) as caught:
        parse_target(text)
    assert caught.value.target == text and repr(text) in str(caught.value)


def test_folder_info_accepts_an_object_a_one_element_array_or_nothing():
    item = {"file_id": 3099876543210987654, "file_name": "Anime", "file_category": "0",
            "paths": [{"file_id": "0", "file_name": "根目录"}, {"file_id": "31", "file_name": "Downloads"}]}
    info = FolderInfo.from_api(item)
    assert info == FolderInfo("3099876543210987654", "Anime", True, (("0", "根目录"), ("31", "Downloads")))
    assert FolderInfo.from_api([item]) == info
    assert FolderInfo.from_api([]) is None and FolderInfo.from_api({}) is None
    assert FolderInfo.from_api({**item, "file_category": "1"}).is_folder is False
    assert FolderPath(("Downloads", "Anime")).matches(info) and not FolderPath(("Anime",)).matches(info)


# --- the client's folder calls ---------------------------------------------------------------------------------------

def test_client_reads_both_not_found_shapes_as_none(sandbox, client):
    assert client.folder_info(path="/nope") is None  # state true, data []
    assert client.folder_info(file_id="1234567890123456789") is None  # state false, 430004
    made = sandbox.add_folder("/Downloads/Anime")
    by_path, by_id = client.folder_info(path="/Downloads/Anime"), client.folder_info(file_id=made)
    assert by_path == by_id and by_path.file_id == made and by_path.ancestors[-1][1] == "Downloads"
    with pytest.raises(ValueError, match="exactly one"):
        client.folder_info()


def test_client_add_folder_returns_the_new_id_and_raises_20004_for_an_existing_name(sandbox, client):
    file_id = client.add_folder("0", "Downloads")
    assert sandbox.add_folder("/Downloads") == file_id
    with pytest.raises(Api115Error) as caught:
        client.add_folder("0", "Downloads")
    assert caught.value.code == 20004
    with pytest.raises(ValueError, match="255"):
        client.add_folder("0", "x" * 256)


# --- resolving -------------------------------------------------------------------------------------------------------

def test_an_id_or_the_root_costs_no_call(sandbox, client, ledger):
    resolver = FolderResolver(client, ledger)
    assert resolver.resolve("2837462") == "2837462" and resolver.resolve("/") == "0"
    assert calls(sandbox, GET_INFO) == 0


def test_an_existing_path_is_resolved_with_one_lookup_and_then_cached(sandbox, client, ledger):
    folder = sandbox.add_folder("/Downloads/Anime")
    resolver = FolderResolver(client, ledger)
    assert resolver.resolve("/Downloads/Anime") == folder
    assert calls(sandbox, GET_INFO) == 1
    assert resolver.resolve("/Downloads/Anime/") == folder
    assert resolver.resolve(">Downloads>Anime") == folder
    assert FolderResolver(client, ledger).resolve("/Downloads/Anime") == folder  # the cache is in the ledger
    assert calls(sandbox, GET_INFO) == 1 and calls(sandbox, ADD) == 0
    assert ledger.meta_get("folder:/Downloads/Anime") == folder


def test_missing_components_are_created_one_at_a_time(sandbox, client, ledger):
    downloads = sandbox.add_folder("/Downloads")
    events = Events()
    resolver = FolderResolver(client, ledger, log=events)
    resolved = resolver.resolve("/Downloads/Anime/2024")
    assert calls(sandbox, ADD) == 2
    # the full path, "/Downloads", "/Downloads/Anime"; the leaf was just looked up (and the new Anime is empty)
    assert calls(sandbox, GET_INFO) == 3
    assert sandbox.add_folder("/Downloads/Anime/2024") == resolved  # it exists where it should
    anime = sandbox.add_folder("/Downloads/Anime")
    assert [(e, f["path"]) for e, f in events.seen] == [("folder_created", "/Downloads/Anime"),
                                                        ("folder_created", "/Downloads/Anime/2024")]
    assert {k: ledger.meta_get(f"folder:{k}") for k in ("/Downloads", "/Downloads/Anime", "/Downloads/Anime/2024")} \
        == {"/Downloads": downloads, "/Downloads/Anime": anime, "/Downloads/Anime/2024": resolved}


def test_a_path_created_from_the_root_up(sandbox, client, ledger):
    resolved = FolderResolver(client, ledger).resolve(">a>b>c")
    assert calls(sandbox, ADD) == 3 and calls(sandbox, GET_INFO) == 2  # the full path, then "/a"
    assert client.folder_info(path="/a/b/c").file_id == resolved


def test_without_create_a_missing_folder_is_a_clear_error_and_nothing_is_made(sandbox, client, ledger):
    sandbox.add_folder("/Downloads")
    with pytest.raises(FolderMissing, match=r"/Downloads/Anime does not exist on 115.*create_folders is off"):
        FolderResolver(client, ledger, create=False).resolve("/Downloads//Anime")
    assert calls(sandbox, ADD) == 0 and ledger.meta_get("folder:/Downloads/Anime") is None


def test_a_deleted_folder_is_forgotten_and_created_again(sandbox, client, ledger):
    resolver = FolderResolver(client, ledger)
    first = resolver.resolve("/Downloads/Anime")
    sandbox.delete_folder("/Downloads/Anime")
    with pytest.raises(Api115Error) as caught:
        client.add_task_urls([MAGNET], first)
    assert caught.value.code == 430004
    assert resolver.resolve("/Downloads/Anime") == first  # still cached: nothing told the resolver yet
    resolver.forget("/Downloads/Anime")
    second = resolver.resolve("/Downloads/Anime")
    assert second != first and client.folder_info(path="/Downloads/Anime").file_id == second
    assert [r.ok for r in client.add_task_urls([MAGNET], second)] == [True]
    assert ledger.meta_get("folder:/Downloads/Anime") == second


class RacingClient:
    """The real client, with another 115 client creating the same folder between our lookup and our add."""

    def __init__(self, client: Client, sandbox: Sandbox, path: str) -> None:
        self._client, self._sandbox, self._path = client, sandbox, path

    def folder_info(self, path: str | None = None, file_id: str | None = None) -> FolderInfo | None:
        return self._client.folder_info(path=path, file_id=file_id)

    def add_folder(self, parent_id: str, name: str) -> str:
        self._sandbox.add_folder(self._path)
        return self._client.add_folder(parent_id, name)


def test_20004_means_someone_made_it_since_our_lookup_so_it_is_looked_up_again(sandbox, client, ledger):
    slept: list[float] = []
    resolver = FolderResolver(RacingClient(client, sandbox, "/Downloads"), ledger, sleep=slept.append)
    resolved = resolver.resolve("/Downloads")
    assert resolved == sandbox.add_folder("/Downloads")
    assert calls(sandbox, ADD) == 1 and calls(sandbox, GET_INFO) == 2 and slept == []


def test_a_fresh_folder_missing_from_path_lookup_is_looked_up_once_more_after_a_pause(make_sandbox, tmp_path, ledger):
    sandbox = make_sandbox(folder_lag=30)
    token_file = tmp_path / "token.json"
    sandbox.write_token_file(token_file)
    client = connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url),
                     pacing=FAST).client
    made_elsewhere = sandbox.add_folder("/Downloads")  # e.g. on the 115 web page, a moment ago
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        sandbox.clock.advance(seconds)

    resolver = FolderResolver(client, ledger, sleep=sleep, retry_delay=45)
    assert resolver.resolve("/Downloads") == made_elsewhere
    assert slept == [45] and calls(sandbox, ADD) == 1 and calls(sandbox, GET_INFO) == 3


def test_a_folder_still_invisible_after_the_retry_is_a_transient_problem(make_sandbox, tmp_path, ledger):
    sandbox = make_sandbox(folder_lag=300)
    token_file = tmp_path / "token.json"
    sandbox.write_token_file(token_file)
    client = connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url),
                     pacing=FAST).client
    sandbox.add_folder("/Downloads")
    with pytest.raises(FolderNotVisible, match=r"/Downloads exists \(20004\)") as caught:
        FolderResolver(client, ledger, sleep=sandbox.clock.advance, retry_delay=1).resolve("/Downloads")
    assert caught.value.transient and ledger.meta_get("folder:/Downloads") is None


# --- check --online --------------------------------------------------------------------------------------------------

def test_check_all_reports_each_target_with_its_id_or_its_problem(sandbox, client, ledger):
    anime = sandbox.add_folder("/Downloads/Anime")
    FolderResolver(client, ledger).resolve("/Old")
    sandbox.delete_folder("/Old")
    replaced = FolderResolver(client, ledger).resolve("/Remade")
    sandbox.delete_folder("/Remade")
    again = sandbox.add_folder("/Remade")
    adds = calls(sandbox, ADD)
    rows = FolderResolver(client, ledger).check_all(
        ["0", anime, "/Downloads/Anime", "/Old", "/Remade", "/Missing", "1234567890123456789", "Downloads"])
    assert rows[:3] == [TargetCheck("0", "0", None), TargetCheck(anime, anime, None),
                        TargetCheck("/Downloads/Anime", anime, None)]
    assert rows[3] == TargetCheck("/Old", None, None)  # deleted, so forgotten; created again on first use
    assert rows[4] == TargetCheck("/Remade", again, None) and again != replaced  # the cached id was stale
    assert rows[5] == TargetCheck("/Missing", None, None)
    assert rows[6].file_id is None and "no folder with id 1234567890123456789" in rows[6].problem
    assert rows[7].file_id is None and "folder id (digits) or a path" in rows[7].problem
    assert calls(sandbox, ADD) == adds  # checking creates nothing
    assert ledger.meta_get("folder:/Old") is None and ledger.meta_get("folder:/Remade") == again


def test_check_all_without_create_names_missing_paths_as_problems(sandbox, client, ledger):
    rows = FolderResolver(client, ledger, create=False).check_all(["/Missing/Deep"])
    assert rows[0].file_id is None and "/Missing/Deep does not exist on 115" in rows[0].problem


def test_check_all_stops_on_a_dead_authorization(sandbox, client, ledger, token_file):
    sandbox.revoke(json.loads(token_file.read_text())["refresh_token"])
    with pytest.raises(AuthorizationNeeded):
        FolderResolver(client, ledger).check_all(["/Downloads", "/Other"])


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
