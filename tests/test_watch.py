"""Watch folders, specified with real files, a real ledger, real watchdog observers and a real HTTP server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from daemon115.config import WatchFolder
from daemon115.ledger import Ledger
from daemon115.links import parse_link
from daemon115.sources.watch import (
    DropOutcome,
    Look,
    Pending,
    Resolver,
    WatchSource,
    advance,
    drop_kind,
    list_dirs,
    list_drops,
    numbered,
    process_drop,
    read_drop,
    target_for,
    wait_left,
    CLOSED_SETTLE,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-world"
TORRENTS = FIXTURES / "torrents"
GOOD_TORRENT = TORRENTS / "mikan_45e14c26b0a78b1b3bdbc3dd2763a1242ee420b4.konobangu.torrent"
JSON_TORRENT = TORRENTS / "mikan_0902ef13_http404_json_not_a_torrent.konobangu.torrent"
SETTLE = 0.2


def magnet(n: int, name: str = "") -> str:
    return f"magnet:?xt=urn:btih:{n:040x}" + (f"&dn={name}" if name else "")


def hash_of(n: int) -> str:
    return f"{n:040x}"


class Recorder:
    """A log sink that keeps (event, fields) pairs, like a structlog logger would print them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    warning = error = debug = info

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in list(self.events) if name == event]


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.sqlite3") as opened:
        yield opened


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


def watch_folder(path: Path, **overrides: Any) -> WatchFolder:
    fields: dict[str, Any] = {"path": path, "target": "100", "settle": SETTLE, "rescan_every": 300.0}
    fields.update(overrides)
    return WatchFolder(**fields)


def put(path: Path, content: str | bytes) -> Path:
    """Write a file atomically (temporary hidden name, then rename), as well-behaved tools do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name("." + path.name + ".part")
    temporary.write_bytes(content.encode() if isinstance(content, str) else content)
    os.replace(temporary, path)
    return path


def old(path: Path) -> Path:
    """Wait until ``path`` has been still for longer than SETTLE (its ctime cannot be set back)."""
    time.sleep(max(0.0, os.lstat(path).st_ctime + SETTLE + 0.01 - time.time()))
    return path


def keys(ledger: Ledger) -> set[str]:
    return {entry.key for entry in ledger.entries()}


@contextmanager
def running(source: WatchSource) -> Iterator[WatchSource]:
    source.start()
    try:
        yield source
    finally:
        source.stop()


# ---------------------------------------------------------------- names and targets


@pytest.mark.parametrize(("name", "kind"), [
    ("show.magnet", "magnet"), ("SHOW.MAGNET", "magnet"), ("a.b.torrent-link", "torrent-link"),
    ("x.Torrent", "torrent"), ("x.torrent.part", None), ("x.magnet.tmp", None), ("x.torrent.crdownload", None),
    ("x.torrent.!qB", None), ("x.magnet~", None), (".x.magnet", None), (".magnet", None), ("x.txt", None),
    ("magnet", None), ("x.magnet.error", None),
])
def test_only_complete_visible_names_with_a_watched_suffix_are_drops(name: str, kind: str | None) -> None:
    assert drop_kind(name) == kind


def test_a_subfolder_drop_goes_to_the_deepest_mapped_subfolder_else_to_the_parents_target(drop: Path) -> None:
    folder = watch_folder(drop, recursive=True, subfolders={"anime": "200", "tv/us": "300"})
    assert target_for(folder, drop / "x.magnet") == "100"
    assert target_for(folder, drop / "anime" / "x.magnet") == "200"
    assert target_for(folder, drop / "anime" / "2024" / "x.magnet") == "200"
    assert target_for(folder, drop / "tv" / "x.magnet") == "100"
    assert target_for(folder, drop / "tv" / "us" / "x.magnet") == "300"
    assert target_for(folder, drop / "books" / "x.magnet") == "100"


def test_recursive_watching_covers_visible_subfolders_never_hidden_ones_or_symlinks(drop: Path,
                                                                                 tmp_path: Path) -> None:
    for sub in ["anime/2024", "tv", ".done/anime", ".failed", ".sync/x"]:
        (drop / sub).mkdir(parents=True)
    (drop / "linked").symlink_to(tmp_path, target_is_directory=True)
    for place in ["", "anime/2024", "tv", ".done/anime", ".failed", ".sync/x"]:
        (drop / place / "x.magnet").write_text(magnet(1))
    (tmp_path / "x.magnet").write_text(magnet(1))  # seen through the symlink as linked/x.magnet
    folder = watch_folder(drop, recursive=True)
    assert list_dirs(folder) == [drop, drop / "anime", drop / "anime" / "2024", drop / "tv"]
    assert list_drops(folder) == [drop / "anime" / "2024" / "x.magnet", drop / "tv" / "x.magnet", drop / "x.magnet"]
    assert list_dirs(watch_folder(drop)) == [drop] and list_drops(watch_folder(drop)) == [drop / "x.magnet"]


def test_a_collision_number_goes_before_the_watched_suffix() -> None:
    assert numbered("a.b.magnet", 0) == "a.b.magnet"
    assert numbered("a.b.magnet", 2) == "a.b (2).magnet"
    assert numbered("x.TORRENT-LINK", 1) == "x (1).TORRENT-LINK"


# ---------------------------------------------------------------- settling (pure)


def file_look(size: int, changed: float, version: int = 1) -> Look:
    return Look("file", (1, 2, size, version), size, changed)


def test_a_local_file_still_since_longer_than_settle_is_taken_at_once() -> None:
    entry = advance(Pending("f"), file_look(10, changed=1000.0), now=50.0, wall=1005.0, by_ctime=True)
    assert wait_left(entry, file_look(10, 1000.0), now=50.0, wall=1005.0, settle=0.5, empty_grace=60) == 0


def test_a_fresh_local_file_waits_out_the_settle_time_from_its_last_change() -> None:
    entry = advance(Pending("f"), file_look(10, changed=1000.0), now=50.0, wall=1000.2, by_ctime=True)
    assert wait_left(entry, file_look(10, 1000.0), now=50.0, wall=1000.2, settle=0.5,
                     empty_grace=60) == pytest.approx(0.3)


def test_a_file_closed_after_writing_needs_only_a_short_re_check_not_the_whole_settle_time() -> None:
    entry = advance(Pending("f", closed=True), file_look(10, changed=1000.0), now=50.0, wall=1000.05, by_ctime=True)
    assert wait_left(entry, file_look(10, 1000.0), now=50.0, wall=1000.05, settle=0.5,
                     empty_grace=60) == pytest.approx(0.10)
    empty = advance(Pending("f", closed=True), file_look(0, changed=1000.0), now=50.0, wall=1000.05, by_ctime=True)
    assert wait_left(empty, file_look(0, 1000.0), now=50.0, wall=1000.05, settle=0.5, empty_grace=60) > 59


def test_a_change_restarts_the_settle_time() -> None:
    first = advance(Pending("f"), file_look(10, 1000.0), now=50.0, wall=1000.4, by_ctime=True)
    changed = file_look(20, 1000.45, version=2)
    second = advance(first, changed, now=50.1, wall=1000.5, by_ctime=True)
    assert wait_left(second, changed, now=50.1, wall=1000.5, settle=0.5, empty_grace=60) == pytest.approx(0.45)


def test_on_a_network_filesystem_only_our_own_looks_count_not_the_servers_clock() -> None:
    look = file_look(10, changed=1000.0)  # the server says: changed long ago
    entry = advance(Pending("f"), look, now=50.0, wall=9999.0, by_ctime=False)
    assert wait_left(entry, look, now=50.0, wall=9999.0, settle=0.5, empty_grace=60) == pytest.approx(0.5)
    assert wait_left(advance(entry, look, now=50.5, wall=9999.5, by_ctime=False), look, now=50.5, wall=9999.5,
                     settle=0.5, empty_grace=60) == 0


def test_a_file_being_written_is_not_taken_until_closed_however_still() -> None:
    entry = advance(Pending("f", writing=True), file_look(10, 1000.0), now=50.0, wall=1100.0, by_ctime=True)
    assert wait_left(entry, file_look(10, 1000.0), now=50.0, wall=1100.0, settle=0.5, empty_grace=60) > 0


def test_an_empty_file_is_given_the_empty_grace_to_be_filled() -> None:
    entry = advance(Pending("f"), file_look(0, 1000.0), now=50.0, wall=1001.0, by_ctime=True)
    assert wait_left(entry, file_look(0, 1000.0), now=50.0, wall=1001.0, settle=0.5,
                     empty_grace=60) == pytest.approx(59.0)


def test_symlinks_and_special_files_are_taken_at_once_and_gone_files_dropped() -> None:
    assert wait_left(Pending("f"), Look("other"), now=1.0, wall=1.0, settle=0.5, empty_grace=60) == 0
    assert wait_left(Pending("f"), Look("missing"), now=1.0, wall=1.0, settle=0.5, empty_grace=60) is None
    assert wait_left(Pending("f"), Look("directory"), now=1.0, wall=1.0, settle=0.5, empty_grace=60) is None


def test_a_retry_waits_for_its_time() -> None:
    entry = advance(Pending("f", not_before=60.0), file_look(10, 1.0), now=50.0, wall=1000.0, by_ctime=True)
    assert wait_left(entry, file_look(10, 1.0), now=50.0, wall=1000.0, settle=0.5, empty_grace=60) == 10.0


# ---------------------------------------------------------------- one drop: the rule of interface.md


def test_a_magnet_file_with_bom_crlf_comments_and_several_links_is_queued_then_moved_to_done(
        drop: Path, ledger: Ledger) -> None:
    text = "\ufeff# my picks\r\n" + magnet(1, "One") + "\r\n\r\n  " + magnet(2) + "  \r\n#" + magnet(9) + "\r\n"
    path = put(drop / "picks.magnet", text.encode("utf-8"))
    outcome = process_drop(path, watch_folder(drop), ledger)
    assert outcome == DropOutcome(path, "queued", queued=2, moved_to=drop / ".done" / "picks.magnet")
    assert not path.exists() and outcome.moved_to.read_bytes() == text.encode("utf-8")
    assert not (drop / ".done" / "picks.magnet.error").exists()
    entries = {e.key: e for e in ledger.entries()}
    assert set(entries) == {hash_of(1), hash_of(2)}
    assert {(e.target, e.source, e.status) for e in entries.values()} == {("100", f"watch:{path}", "queued")}
    assert entries[hash_of(1)].name == "One"


def test_a_file_with_some_bad_lines_queues_the_good_ones_and_explains_the_rest_beside_it_in_done(
        drop: Path, ledger: Ledger) -> None:
    lines = [magnet(1), "magnet:?xt=urn:btih:xyz", "ed2k://|file|a.iso|10|31D6CFE0D16AE931B73C59D7E0C089C0|/",
             magnet(2), "hello world"]
    path = put(drop / "mixed.magnet", "\n".join(lines))
    outcome = process_drop(path, watch_folder(drop), ledger)
    assert (outcome.action, outcome.queued, outcome.rejected) == ("queued", 2, 3)
    error = (drop / ".done" / "mixed.magnet.error").read_text()
    assert "3 of 5 lines rejected" in error
    assert "line 2: btih 'xyz' is neither 40 hex nor 32 base32 characters" in error
    assert "line 3: a .magnet file holds magnet links, and this is an ed2k link" in error
    assert "line 5: not a link: 'hello world'" in error
    assert keys(ledger) == {hash_of(1), hash_of(2)}


def test_a_file_with_no_usable_link_goes_to_failed_with_its_reasons_and_records_nothing(
        drop: Path, ledger: Ledger) -> None:
    path = put(drop / "bad.magnet", "magnet:?dn=nothing\nnot a link\n")
    outcome = process_drop(path, watch_folder(drop), ledger)
    assert (outcome.action, outcome.rejected, outcome.moved_to) == ("failed", 2, drop / ".failed" / "bad.magnet")
    error = (drop / ".failed" / "bad.magnet.error").read_text()
    assert "no usable link" in error and "line 1: magnet has no xt=urn:btih" in error and "line 2: not a link" in error
    assert ledger.entries() == []


def test_links_already_in_the_ledger_are_duplicates_moved_to_done_under_a_new_name_not_failures(
        drop: Path, ledger: Ledger) -> None:
    folder = watch_folder(drop)
    first = process_drop(put(drop / "x.magnet", magnet(1) + "\n" + magnet(2)), folder, ledger)
    again = process_drop(put(drop / "x.magnet", magnet(2) + "\n" + magnet(1)), folder, ledger)
    assert first.action == "queued"
    assert again == DropOutcome(drop / "x.magnet", "duplicate", duplicates=2, moved_to=drop / ".done" / "x (1).magnet")
    assert (drop / ".done" / "x.magnet").read_text() == magnet(1) + "\n" + magnet(2)
    assert not (drop / ".failed").exists()
    mixed = process_drop(put(drop / "x.magnet", magnet(1) + "\n" + magnet(3)), folder, ledger)
    assert (mixed.action, mixed.queued, mixed.duplicates) == ("queued", 1, 1)
    assert mixed.moved_to == drop / ".done" / "x (2).magnet"


def test_old_mac_line_ends_separate_lines_too(drop: Path) -> None:
    parsed = read_drop(put(drop / "x.magnet", f"{magnet(1)}\r{magnet(2)}\rjunk"), watch_folder(drop))
    assert [link.key for link in parsed.links] == [hash_of(1), hash_of(2)]
    assert [r.line for r in parsed.rejected] == [3]


def test_the_same_link_twice_in_one_file_is_one_link(drop: Path, ledger: Ledger) -> None:
    outcome = process_drop(put(drop / "x.magnet", f"{magnet(1)}\n{magnet(1, 'Same')}\n"), watch_folder(drop), ledger)
    assert (outcome.queued, outcome.duplicates) == (1, 0)


def test_name_collisions_in_failed_never_overwrite_a_file_or_its_error(drop: Path, ledger: Ledger) -> None:
    failed = drop / ".failed"
    failed.mkdir()
    (failed / "x.magnet").write_text("earlier")
    (failed / "x (1).magnet.error").write_text("an orphaned explanation")
    outcome = process_drop(put(drop / "x.magnet", "junk"), watch_folder(drop), ledger)
    assert outcome.moved_to == failed / "x (2).magnet"
    assert (failed / "x.magnet").read_text() == "earlier"
    assert (failed / "x (1).magnet.error").read_text() == "an orphaned explanation"
    assert not (failed / "x (1).magnet").exists()
    assert "line 1: not a link: 'junk'" in (failed / "x (2).magnet.error").read_text()


def test_a_move_to_done_cut_short_after_its_hard_link_is_finished_not_filed_twice(drop: Path, ledger: Ledger) -> None:
    done = drop / ".done"
    done.mkdir()
    dropped = put(drop / "x.magnet", magnet(1))
    os.link(dropped, done / "x.magnet")  # the crash struck between link and unlink
    outcome = process_drop(dropped, watch_folder(drop), ledger)
    assert outcome.moved_to == done / "x.magnet" and outcome.queued == 1
    assert not dropped.exists() and sorted(p.name for p in done.iterdir()) == ["x.magnet"]


def test_a_name_in_done_that_is_another_file_is_never_taken_for_a_finished_move(drop: Path, ledger: Ledger) -> None:
    done = drop / ".done"
    done.mkdir()
    (done / "x.magnet").write_text(magnet(1))  # same content, but a different file
    outcome = process_drop(put(drop / "x.magnet", magnet(2)), watch_folder(drop), ledger)
    assert outcome.moved_to == done / "x (1).magnet"
    assert (done / "x.magnet").read_text() == magnet(1)


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("big.magnet", (magnet(1) + "\n").encode() * 20_000, "over the 1000000-byte limit for a text file"),
    ("junk.magnet", bytes(range(256)) * 4, "binary data (a NUL byte at offset 0)"),
    ("latin1.magnet", "magnet:?xt=urn:btih:aaa&dn=caf\xe9".encode("latin-1"), "not UTF-8 text: byte 0xe9 at offset"),
    ("empty.magnet", b"", "the file is empty"),
    ("blank.torrent-link", b"\n# nothing here\n\n", "no links in the file, only blank lines and comments"),
    ("utf16.magnet", magnet(1).encode("utf-16"), "UTF-16 text; save it as UTF-8"),
    ("renamed.magnet", GOOD_TORRENT.read_bytes(), "this is a torrent file (bencoded data)"),
    ("big.torrent", b"d4:infod" + b"x" * 10_500_000, "over the 10485760-byte limit for a .torrent file"),
    ("web-page.torrent", JSON_TORRENT.read_bytes(), "not a torrent file: it looks like JSON or HTML"),
])
def test_files_that_cannot_be_used_go_to_failed_with_the_reason(drop: Path, ledger: Ledger, name: str,
                                                                 content: bytes, reason: str) -> None:
    path = put(drop / name, content)
    outcome = process_drop(path, watch_folder(drop), ledger)
    assert outcome.action == "failed" and reason in outcome.reason
    assert outcome.moved_to == drop / ".failed" / name and outcome.moved_to.read_bytes() == content
    assert reason in (drop / ".failed" / (name + ".error")).read_text()
    assert ledger.entries() == []


@pytest.mark.parametrize("fixture", sorted(TORRENTS.glob("mikan_*[0-9a-f].konobangu.torrent")), ids=lambda p: p.name)
def test_a_real_torrent_is_queued_as_its_magnet_with_its_info_hash(drop: Path, ledger: Ledger,
                                                                   fixture: Path) -> None:
    info_hash = fixture.name.split("_")[1].split(".")[0]  # Mikan names its torrents by their info hash
    path = drop / "ep.torrent"
    shutil.copyfile(fixture, path)
    outcome = process_drop(path, watch_folder(drop, target="555"), ledger)
    assert (outcome.action, outcome.queued) == ("queued", 1)
    [entry] = ledger.entries()
    assert entry.info_hash == info_hash and entry.target == "555" and entry.key == info_hash
    assert entry.url.startswith(f"magnet:?xt=urn:btih:{info_hash}&dn=")


def test_a_v2_only_torrent_is_queued_by_its_v2_hash(drop: Path, ledger: Ledger) -> None:
    shutil.copyfile(TORRENTS / "v2_only_test1MB.libtorrent.torrent", drop / "v2.torrent")
    assert process_drop(drop / "v2.torrent", watch_folder(drop), ledger).action == "queued"
    [entry] = ledger.entries()
    assert entry.info_hash is None and entry.key.startswith("btmh:1220") and "xt=urn:btmh:1220" in entry.url


def test_a_corrupt_torrent_goes_to_failed_saying_what_is_wrong(drop: Path, ledger: Ledger) -> None:
    shutil.copyfile(TORRENTS / "corrupt_missing_name.webtorrent-fixtures.torrent", drop / "bad.torrent")
    outcome = process_drop(drop / "bad.torrent", watch_folder(drop), ledger)
    assert outcome.action == "failed" and "info has no name" in (drop / ".failed" / "bad.torrent.error").read_text()


def test_a_torrent_link_file_takes_every_kind_of_link_as_it_is_without_a_resolver(drop: Path, ledger: Ledger) -> None:
    lines = ["https://Indexer.example/dl/1?apikey=k", "ftp://files.example/a.iso", magnet(7),
             "ed2k://|file|a.iso|10|31D6CFE0D16AE931B73C59D7E0C089C0|/"]
    outcome = process_drop(put(drop / "x.torrent-link", "\n".join(lines)), watch_folder(drop), ledger)
    assert (outcome.action, outcome.queued) == ("queued", 4)
    assert {e.url for e in ledger.entries()} == {parse_link(line).url for line in lines}


def test_a_directory_named_like_a_drop_is_left_alone(drop: Path, ledger: Ledger) -> None:
    (drop / "x.magnet").mkdir()
    (drop / "x.magnet" / "inside.txt").write_text("keep")
    assert process_drop(drop / "x.magnet", watch_folder(drop), ledger).action == "ignored"
    assert WatchSource([watch_folder(drop)], ledger).scan() == []
    assert (drop / "x.magnet" / "inside.txt").read_text() == "keep" and not (drop / ".failed").exists()


def test_a_symlink_is_never_followed_and_goes_to_failed_with_the_reason(drop: Path, ledger: Ledger,
                                                                       tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.magnet"
    real.write_text(magnet(1))
    (drop / "link.magnet").symlink_to(real)
    outcome = process_drop(drop / "link.magnet", watch_folder(drop), ledger)
    assert outcome.action == "failed" and "symlink" in outcome.reason and str(real) in outcome.reason
    assert (drop / ".failed" / "link.magnet").is_symlink()
    assert "symlinks are never followed" in (drop / ".failed" / "link.magnet.error").read_text()
    assert real.read_text() == magnet(1) and ledger.entries() == []


def test_a_fifo_is_never_opened_so_nothing_blocks(drop: Path, ledger: Ledger) -> None:
    os.mkfifo(drop / "pipe.magnet")
    outcomes: list[DropOutcome] = []
    worker = threading.Thread(target=lambda: outcomes.append(process_drop(drop / "pipe.magnet", watch_folder(drop),
                                                                          ledger)), daemon=True)
    worker.start()
    worker.join(5.0)
    if worker.is_alive():  # unblock the reader before failing, so the thread ends
        os.close(os.open(drop / "pipe.magnet", os.O_WRONLY | os.O_NONBLOCK))
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert outcomes[0].action == "failed" and "FIFO" in outcomes[0].reason
    assert (drop / ".failed" / "pipe.magnet").is_fifo()


def test_hidden_and_partial_files_are_not_touched(drop: Path, ledger: Ledger) -> None:
    names = [".hidden.magnet", "a.magnet.part", "b.torrent.!qB", "c.magnet~", "d.magnet.crdownload", "e.magnet.tmp"]
    for name in names:
        (drop / name).write_text(magnet(1))
    assert process_drop(drop / "a.magnet.part", watch_folder(drop), ledger).action == "ignored"
    assert WatchSource([watch_folder(drop)], ledger).scan() == []
    assert sorted(p.name for p in drop.iterdir()) == sorted(names) and ledger.entries() == []


def test_a_busy_ledger_leaves_the_file_in_place_to_be_retried(drop: Path, tmp_path: Path) -> None:
    path = put(drop / "x.magnet", magnet(1))
    with Ledger(tmp_path / "busy.sqlite3", busy_timeout=0.2) as busy_ledger:
        import sqlite3
        blocker = sqlite3.connect(tmp_path / "busy.sqlite3", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            outcome = process_drop(path, watch_folder(drop), busy_ledger)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert outcome.action == "retry" and "busy" in outcome.reason
        assert path.exists() and not (drop / ".done").exists() and not (drop / ".failed").exists()
        assert process_drop(path, watch_folder(drop), busy_ledger).action == "queued"


def test_an_unreadable_file_goes_to_failed_with_the_os_error(tmp_path: Path) -> None:
    """As root, file modes do not stop reads: then a child process drops to the nobody user to read it."""
    if os.geteuid() != 0:
        outcome = _read_unreadable(tmp_path)
    else:
        outcome = _as_nobody(_read_unreadable)
    assert outcome["action"] == "failed"
    assert "Permission denied (EACCES)" in outcome["reason"]
    assert outcome["moved"] and "Permission denied (EACCES)" in outcome["error_file"]


def _read_unreadable(base: Path) -> dict[str, Any]:
    drop = base / "drop"
    drop.mkdir()
    path = drop / "secret.magnet"
    path.write_text(magnet(1))
    path.chmod(0)
    with Ledger(base / "ledger.sqlite3") as ledger:
        outcome = process_drop(path, watch_folder(drop), ledger)
    error = drop / ".failed" / "secret.magnet.error"
    return {"action": outcome.action, "reason": outcome.reason, "moved": (drop / ".failed" / "secret.magnet").exists(),
            "error_file": error.read_text() if error.exists() else ""}


def _as_nobody(work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="daemon115-watch-"))
    os.chown(base, 65534, 65534)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(reader)
            os.setgid(65534)
            os.setuid(65534)
            os.write(writer, json.dumps(work(base)).encode())
        finally:
            os._exit(0)
    try:
        os.close(writer)
        with os.fdopen(reader, "rb") as answer:
            data = answer.read()
        os.waitpid(pid, 0)
        return json.loads(data)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- .torrent-link resolution over real HTTP


class _Indexer(BaseHTTPRequestHandler):
    """Answers the way indexer proxies (Prowlarr/Jackett /dl/ links) and torrent sites do."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route = self.path.split("?")[0]
        if route == "/dl/magnet":
            self._redirect(magnet(0xABC, "Found"))
        elif route == "/dl/hop":
            self._redirect("/dl/magnet")
        elif route == "/dl/loop":
            self._redirect("/dl/loop")
        elif route == "/dl/nowhere":
            self._redirect("gopher://old.example/x")
        elif route == "/file.torrent":
            self._send(200, GOOD_TORRENT.read_bytes(), "application/x-bittorrent")
        elif route == "/broken.torrent":
            self._send(200, b"d4:infoi1e", "application/x-bittorrent")
        elif route == "/slow":
            time.sleep(1.0)
            self._send(200, b"late")
        elif route == "/endless":
            self._endless()
        else:
            self._send(404, b"no such thing")

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def _endless(self) -> None:
        """A body that never ends: a client that downloads bodies would never come back."""
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.end_headers()
        chunk = b"\0" * 65536
        try:
            while self.server.sent < 1 << 30:  # type: ignore[attr-defined]
                self.wfile.write(chunk)
                self.server.sent += len(chunk)  # type: ignore[attr-defined]
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sent = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture
def indexer() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Indexer)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_an_indexer_link_that_redirects_to_a_magnet_is_recorded_as_that_magnet(drop: Path, ledger: Ledger,
                                                                               indexer: _Server) -> None:
    lines = [url(indexer, "/dl/magnet?apikey=s3cret"), url(indexer, "/dl/hop")]
    outcome = process_drop(put(drop / "x.torrent-link", "\n".join(lines)), watch_folder(drop), ledger,
                           resolver=Resolver(timeout=2))
    assert (outcome.action, outcome.queued) == ("queued", 1)  # both lead to one magnet
    [entry] = ledger.entries()
    assert entry.info_hash == hash_of(0xABC) and entry.url == parse_link(magnet(0xABC, "Found")).url


def test_with_resolve_torrents_a_served_torrent_becomes_its_magnet_and_without_it_the_url_stays(
        drop: Path, ledger: Ledger, indexer: _Server) -> None:
    link = url(indexer, "/file.torrent")
    resolver = Resolver(timeout=2)
    process_drop(put(drop / "a.torrent-link", link), watch_folder(drop, resolve_torrents=True), ledger,
                 resolver=resolver)
    assert [e.info_hash for e in ledger.entries()] == ["45e14c26b0a78b1b3bdbc3dd2763a1242ee420b4"]
    other = url(indexer, "/file.torrent?copy=2")
    process_drop(put(drop / "b.torrent-link", other), watch_folder(drop), ledger, resolver=resolver)
    assert ledger.get(other) is not None and ledger.get(other).info_hash is None


def test_a_body_is_never_downloaded_just_to_look_for_a_redirect(indexer: _Server) -> None:
    link = parse_link(url(indexer, "/endless"))
    started = time.monotonic()
    assert Resolver(timeout=2).resolve(link) == link
    assert Resolver(timeout=2).resolve(link, torrents=True) == link  # not bencoded: a download 115 fetches itself
    assert time.monotonic() - started < 3.0
    assert indexer.sent < 1 << 30


@pytest.mark.parametrize(("path", "reason"), [
    ("/gone?passkey=SECRETPASSKEY", "answered HTTP 404"),
    ("/dl/loop", "redirects more than 5 times"),
    ("/dl/nowhere", "redirects to an unusable link: unsupported scheme 'gopher'"),
    ("/broken.torrent", "serves a broken torrent"),
])
def test_links_broken_for_good_are_rejected_lines_and_never_show_a_passkey(drop: Path, ledger: Ledger,
                                                                           indexer: _Server, path: str,
                                                                           reason: str) -> None:
    parsed = read_drop(put(drop / "x.torrent-link", url(indexer, path) + "\n" + magnet(1)),
                       watch_folder(drop, resolve_torrents=True), resolver=Resolver(timeout=2))
    assert [link.key for link in parsed.links] == [hash_of(1)]
    [rejected] = parsed.rejected
    assert rejected.line == 1 and reason in rejected.reason and "SECRETPASSKEY" not in rejected.reason


def test_an_indexer_that_does_not_answer_in_time_leaves_the_file_for_a_retry(drop: Path, ledger: Ledger,
                                                                            indexer: _Server) -> None:
    path = put(drop / "x.torrent-link", magnet(1) + "\n" + url(indexer, "/slow"))
    outcome = process_drop(path, watch_folder(drop), ledger, resolver=Resolver(timeout=0.3))
    assert outcome.action == "retry" and "could not be reached" in outcome.reason
    assert path.exists() and ledger.entries() == []


def test_a_refused_connection_is_transient_too(drop: Path, ledger: Ledger) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    path = put(drop / "x.torrent-link", f"http://127.0.0.1:{port}/dl/1")
    assert process_drop(path, watch_folder(drop), ledger, resolver=Resolver(timeout=1)).action == "retry"
    assert path.exists()


# ---------------------------------------------------------------- the running source


def test_an_atomic_move_in_reaches_the_ledger_after_a_short_re_check(drop: Path, ledger: Ledger,
                                                                    tmp_path: Path) -> None:
    queued = threading.Event()
    with running(WatchSource([watch_folder(drop)], ledger, on_queued=queued.set)):
        outside = tmp_path / "outside.magnet"
        outside.write_text(magnet(1))
        time.sleep(0.3)  # the start-up scan is done; only the event can bring this file
        started = time.monotonic()
        os.rename(outside, drop / "in.magnet")
        wait_for(lambda: ledger.get(hash_of(1)))
        took = time.monotonic() - started
        assert queued.wait(1.0)
        wait_for(lambda: (drop / ".done" / "in.magnet").exists())
    assert min(SETTLE, CLOSED_SETTLE) <= took + 0.02 and took < min(SETTLE, CLOSED_SETTLE) + 0.2


def test_a_slow_writer_is_not_taken_before_it_closes_the_file(drop: Path, ledger: Ledger) -> None:
    log = Recorder()
    with running(WatchSource([watch_folder(drop)], ledger, log=log)):
        time.sleep(0.2)
        with open(drop / "slow.magnet", "w") as writer:
            for n in range(8):  # over 2 s, pausing longer than the settle time between chunks
                writer.write(magnet(n + 1)[:30])
                writer.flush()
                time.sleep(0.15)
                writer.write(magnet(n + 1)[30:] + "\n")
                writer.flush()
                time.sleep(0.15)
                assert ledger.entries() == [] and (drop / "slow.magnet").exists()
        wait_for(lambda: (drop / ".done" / "slow.magnet").exists())
    assert keys(ledger) == {hash_of(n + 1) for n in range(8)}
    assert not (drop / ".done" / "slow.magnet.error").exists()


def test_a_file_created_empty_and_filled_later_is_taken_once_filled(drop: Path, ledger: Ledger) -> None:
    with running(WatchSource([watch_folder(drop)], ledger, empty_grace=1.5)):
        time.sleep(0.2)
        (drop / "finder.magnet").touch()
        time.sleep(0.6)
        assert (drop / "finder.magnet").exists()
        with open(drop / "finder.magnet", "a") as writer:
            writer.write(magnet(5))
        wait_for(lambda: (drop / ".done" / "finder.magnet").exists())
        assert ledger.get(hash_of(5)) is not None


def test_a_file_that_stays_empty_fails_after_the_empty_grace(drop: Path, ledger: Ledger) -> None:
    with running(WatchSource([watch_folder(drop)], ledger, empty_grace=0.5)):
        (drop / "nothing.magnet").touch()
        error = wait_for(lambda: (drop / ".failed" / "nothing.magnet.error").exists() and
                         (drop / ".failed" / "nothing.magnet.error").read_text())
    assert "the file is empty" in error


def test_files_dropped_while_the_daemon_was_down_are_taken_at_start(drop: Path, ledger: Ledger) -> None:
    old(put(drop / "a.magnet", magnet(1)))
    put(drop / "b.magnet", magnet(2))
    with running(WatchSource([watch_folder(drop)], ledger)):
        wait_for(lambda: keys(ledger) == {hash_of(1), hash_of(2)})


def test_polling_mode_picks_up_atomic_and_in_place_drops(drop: Path, ledger: Ledger) -> None:
    log = Recorder()
    folder = watch_folder(drop, poll=True, poll_interval=0.2)
    with running(WatchSource([folder], ledger, log=log)):
        assert log.named("watch_polling")[0]["reason"] == "poll: true in the config"
        time.sleep(0.1)
        put(drop / "a.magnet", magnet(1))
        (drop / "b.magnet").write_text(magnet(2))
        wait_for(lambda: keys(ledger) == {hash_of(1), hash_of(2)})
        wait_for(lambda: (drop / ".done" / "b.magnet").exists())


def test_a_folder_on_a_network_filesystem_is_polled_and_the_log_says_so(drop: Path, ledger: Ledger) -> None:
    log = Recorder()
    table = f"/dev/vda / ext4 rw 0 0\nnas:/export {os.path.realpath(drop)} nfs4 rw,vers=4.2 0 0\n"
    with running(WatchSource([watch_folder(drop, poll_interval=0.2)], ledger, log=log, mounts=lambda: table)):
        [polling] = log.named("watch_polling")
        assert polling["fstype"] == "nfs4" and "network filesystem" in polling["reason"]
        put(drop / "a.magnet", magnet(1))
        wait_for(lambda: ledger.get(hash_of(1)))


def test_poll_false_overrides_the_network_detection(drop: Path, ledger: Ledger) -> None:
    log = Recorder()
    table = f"nas:/export {os.path.realpath(drop)} nfs4 rw 0 0\n"
    with running(WatchSource([watch_folder(drop, poll=False)], ledger, log=log, mounts=lambda: table)):
        put(drop / "a.magnet", magnet(1))
        wait_for(lambda: ledger.get(hash_of(1)))
    assert log.named("watch_polling") == []


def test_the_periodic_rescan_finds_what_no_event_reported(drop: Path, ledger: Ledger) -> None:
    # A polling observer that looks only every minute: within the test, only the rescan can find the drop.
    folder = watch_folder(drop, poll=True, poll_interval=60.0, rescan_every=0.5)
    with running(WatchSource([folder], ledger)):
        time.sleep(0.2)
        put(drop / "a.magnet", magnet(1))
        wait_for(lambda: ledger.get(hash_of(1)), timeout=4.0)


def test_recursive_folders_send_each_subfolder_to_its_target_and_keep_the_layout_in_done(
        drop: Path, ledger: Ledger) -> None:
    folder = watch_folder(drop, recursive=True, subfolders={"anime": "200"})
    old(put(drop / "anime" / "early.magnet", magnet(1)))
    with running(WatchSource([folder], ledger)):
        wait_for(lambda: ledger.get(hash_of(1)))
        put(drop / "anime" / "season 2" / "x.magnet", magnet(2))  # a subfolder made after the start
        put(drop / "misc" / "x.magnet", magnet(3))
        put(drop / "x.magnet", magnet(4))
        wait_for(lambda: len(keys(ledger)) == 4)
        wait_for(lambda: (drop / ".done" / "anime" / "season 2" / "x.magnet").exists())
    targets = {e.key: e.target for e in ledger.entries()}
    assert targets == {hash_of(1): "200", hash_of(2): "200", hash_of(3): "100", hash_of(4): "100"}
    assert (drop / ".done" / "misc" / "x.magnet").exists() and (drop / ".done" / "x.magnet").exists()


def test_a_non_recursive_folder_leaves_subfolders_alone(drop: Path, ledger: Ledger) -> None:
    put(drop / "sub" / "x.magnet", magnet(1))
    assert WatchSource([watch_folder(drop)], ledger).scan() == []
    assert (drop / "sub" / "x.magnet").exists()


def test_a_folder_that_disappears_and_comes_back_is_watched_again(drop: Path, ledger: Ledger) -> None:
    log = Recorder()
    with running(WatchSource([watch_folder(drop)], ledger, log=log)):
        put(drop / "a.magnet", magnet(1))
        wait_for(lambda: ledger.get(hash_of(1)))
        shutil.rmtree(drop)
        wait_for(lambda: log.named("watch_folder_missing"), timeout=3)
        drop.mkdir()
        put(drop / "b.magnet", magnet(2))
        wait_for(lambda: log.named("watch_folder_back"), timeout=3)
        wait_for(lambda: ledger.get(hash_of(2)))
        put(drop / "c.magnet", magnet(3))  # the new observer sees new drops too
        wait_for(lambda: ledger.get(hash_of(3)))
    assert log.named("watch_folder_missing") == [{"path": str(drop)}]


def test_a_folder_replaced_in_an_instant_is_watched_again(drop: Path, ledger: Ledger) -> None:
    log = Recorder()
    with running(WatchSource([watch_folder(drop)], ledger, log=log)):
        time.sleep(0.2)
        shutil.rmtree(drop)
        drop.mkdir()  # quicker than the once-a-second check: only the folder's new identity tells
        put(drop / "a.magnet", magnet(1))
        wait_for(lambda: ledger.get(hash_of(1)), timeout=4)
        put(drop / "b.magnet", magnet(2))
        wait_for(lambda: ledger.get(hash_of(2)))


def test_a_folder_missing_at_start_is_picked_up_when_it_appears(tmp_path: Path, ledger: Ledger) -> None:
    log = Recorder()
    later = tmp_path / "mount" / "drop"
    with running(WatchSource([watch_folder(later)], ledger, log=log)):
        assert log.named("watch_folder_missing") == [{"path": str(later)}]
        put(later / "a.magnet", magnet(1))
        wait_for(lambda: ledger.get(hash_of(1)), timeout=4)


def test_update_starts_and_scans_added_folders_and_stops_removed_ones(tmp_path: Path, ledger: Ledger) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    old(put(second / "waiting.magnet", magnet(2)))
    with running(WatchSource([watch_folder(first)], ledger)) as source:
        source.update([watch_folder(second, target="222")])
        wait_for(lambda: ledger.get(hash_of(2)))
        assert ledger.get(hash_of(2)).target == "222"
        put(first / "ignored.magnet", magnet(1))
        time.sleep(SETTLE + 0.3)
        assert (first / "ignored.magnet").exists() and ledger.get(hash_of(1)) is None
        source.update([watch_folder(second, target="333")])  # changed: restarted with the new target
        put(second / "next.magnet", magnet(3))
        wait_for(lambda: ledger.get(hash_of(3)))
        assert ledger.get(hash_of(3)).target == "333"


def test_scan_takes_every_folder_once_and_skips_missing_ones_with_a_log_line(tmp_path: Path, drop: Path,
                                                                             ledger: Ledger) -> None:
    log = Recorder()
    old(put(drop / "a.magnet", magnet(1)))
    put(drop / "fresh.magnet", magnet(2))  # still inside its settle time: scan waits for it
    missing = tmp_path / "not-mounted"
    outcomes = WatchSource([watch_folder(drop), watch_folder(missing)], ledger, log=log).scan()
    assert sorted((o.path.name, o.action) for o in outcomes) == [("a.magnet", "queued"), ("fresh.magnet", "queued")]
    assert log.named("watch_folder_missing") == [{"path": str(missing)}]
    assert [f["path"] for f in log.named("drop_queued")] == [str(drop / "a.magnet"), str(drop / "fresh.magnet")]


def test_a_burst_of_files_is_all_recorded(drop: Path, ledger: Ledger, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    for n in range(300):
        (staging / f"{n}.magnet").write_text(magnet(n + 1))
    with running(WatchSource([watch_folder(drop)], ledger)):
        time.sleep(0.2)
        for n in range(300):
            os.rename(staging / f"{n}.magnet", drop / f"{n}.magnet")
        wait_for(lambda: ledger.counts()["queued"] == 300, timeout=10)
        wait_for(lambda: len(list((drop / ".done").iterdir())) == 300)
    assert [p.name for p in drop.iterdir()] == [".done"]


def test_failures_are_logged_with_stable_event_names(drop: Path, ledger: Ledger) -> None:
    log = Recorder()
    folder = watch_folder(drop)
    process_drop(put(drop / "a.magnet", magnet(1)), folder, ledger, log=log)
    process_drop(put(drop / "b.magnet", magnet(1)), folder, ledger, log=log)
    process_drop(put(drop / "c.magnet", "nope"), folder, ledger, log=log)
    assert [name for name, _ in log.events] == ["drop_queued", "drop_duplicate", "drop_failed"]
    assert log.named("drop_failed")[0]["moved_to"] == str(drop / ".failed" / "c.magnet")
