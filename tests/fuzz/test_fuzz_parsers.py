"""Hostile input: every parser of outside data gives a value or its documented error, in bounded time.

Complements the properties in test_links.py, test_bencode.py, test_feeds.py and test_config.py (arbitrary text and
bytes into links and torrents, damaged fixtures into the feed reader, generated YAML mappings into the config) with
what they do not reach: 115's JSON answers of any shape (in memory, through a loopback HTTP server and a real Client),
feed items whose every field is hostile, hostile response headers and redirects, feed titles, any text as a config,
drop files on disk, and lines far longer than any real link.

The atheris harnesses in bench/fuzz_*.py define, in their ``one_input``, what counts as a crash; every input that
crashed one of them is kept in tests/fuzz/crashes/ (see its README.md) and replayed here through that same harness.
"""

from __future__ import annotations

import importlib.util
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daemon115.api.auth import Tokens, write_tokens
from daemon115.api.client import (
    Endpoints,
    FolderInfo,
    _add_results,
    _items_of_failed_add,
    connect,
    grant_from,
    qr_status_from,
)
from daemon115.api.errors import Api115Error
from daemon115.api.models import AddResult, Quota, Task, TaskPage, UserInfo
from daemon115.api.transport import Pacing, Transport, check_envelope, is_success
from daemon115.config import Config, ConfigError, Feed, WatchFolder, loads, parse_duration, parse_size, parse_target
from daemon115.ledger import Ledger
from daemon115.links import LinkError, parse_link
from daemon115.sources.episodes import EpisodeKey, parse_episode
from daemon115.sources.feed_entries import FeedError, read_feed
from daemon115.sources.feeds import FeedPoller, _retry_after
from daemon115.sources.watch import DropError, Parsed, Resolver, read_drop

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
CRASHES = Path(__file__).resolve().parent / "crashes"
BOUND = 3.0  # seconds any one input may take; the slowest honest input here takes milliseconds
URLS = ["magnet:?xt=urn:btih:" + "a" * 40, "http://h.example/x.torrent", "ed2k://|file|a|1|" + "0" * 32 + "|/"]


# ---------------------------------------------------------------- bounded calls


class TookTooLong(BaseException):
    """A BaseException, so the ``except Exception`` some parsers put around third-party code cannot swallow it."""


@contextmanager
def at_most(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (SIGALRM; the regex engine checks signals), keeping any outer timer
    (pytest-timeout's) running."""
    def expire(signum: int, frame: object) -> None:
        raise TookTooLong(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, outer - (time.monotonic() - started)))


def survives(call: Callable[[], T], errors: tuple[type[Exception], ...], seconds: float = BOUND) -> T | Exception:
    """The value, or the documented error; any other exception, or a call over ``seconds``, fails the test."""
    try:
        with at_most(seconds):
            return call()
    except errors as error:
        return error
    except TookTooLong as slow:
        raise AssertionError(str(slow)) from None


def harness(target: str) -> ModuleType:
    """bench/fuzz_<target>.py, the atheris entry point whose ``one_input`` says what a crash is."""
    spec = importlib.util.spec_from_file_location(f"fuzz_{target}", REPO / "bench" / f"fuzz_{target}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- recorded crashes


def crash_inputs() -> list[Path]:
    return sorted(p for p in CRASHES.iterdir() if p.is_file() and p.name != "README.md")


def test_every_crash_input_is_named_for_a_harness_and_described_in_the_readme() -> None:
    readme = (CRASHES / "README.md").read_text(encoding="utf-8")
    for path in crash_inputs():
        assert (REPO / "bench" / f"fuzz_{path.name.split('-', 1)[0]}.py").is_file(), path.name
        assert f"`{path.name}`" in readme, f"{path.name} is not described in crashes/README.md"


@pytest.mark.parametrize("path", crash_inputs(), ids=lambda p: p.name)
def test_an_input_that_once_crashed_a_parser_gives_a_value_or_its_documented_error(path: Path) -> None:
    one_input = harness(path.name.split("-", 1)[0]).one_input
    survives(lambda: one_input(path.read_bytes()), ())


# ---------------------------------------------------------------- 115's answers

HOSTILE_NUMBERS = st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -0.0, 2**63, -(2**63) - 1, 10**30,
                                   2**53 + 1])
HOSTILE_STRINGS = st.sampled_from(["", " ", "NaN", "nan", "inf", "-Infinity", "1e999", "9" * 5000, "0x10", "1_000",
                                   " 12 ", "\u0663", "\u00b2", "true", "null", "-", "+5", "1.5e3", "40140125",
                                   "10008", "770004"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | HOSTILE_NUMBERS
           | HOSTILE_STRINGS)
API_KEYS = st.sampled_from([
    "state", "code", "errno", "message", "error", "data", "tasks", "page", "page_count", "count", "info_hash", "name",
    "status", "percentDone", "size", "add_time", "last_update", "url", "file_id", "delete_file_id", "wp_path_id",
    "user_id", "user_name", "vip_info", "level_name", "expire", "rt_space_info", "all_total", "all_remain", "all_use",
    "package", "used", "surplus", "access_token", "refresh_token", "expires_in", "paths", "file_name",
    "file_category", "msg"]) | st.text(max_size=6)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(API_KEYS, inner, max_size=6),
                    max_leaves=30)
ENVELOPES = st.dictionaries(API_KEYS, JSON, max_size=6)


@settings(max_examples=200, deadline=None)
@given(ENVELOPES)
def test_any_envelope_is_a_success_or_an_api_error_never_another_exception(body: dict[str, Any]) -> None:
    assert isinstance(is_success(body), bool)
    survives(lambda: check_envelope(body, "/fuzz"), (Api115Error,))
    survives(lambda: qr_status_from(body), (Api115Error,))


def assert_task(task: Task) -> None:
    assert isinstance(task.info_hash, str) and isinstance(task.name, str) and isinstance(task.url, str)
    assert all(isinstance(v, int) for v in (task.status, task.size, task.add_time, task.last_update))
    assert task.percent is None or isinstance(task.percent, float)
    assert all(isinstance(v, str) for v in (task.file_id, task.delete_file_id, task.wp_path_id))


def shaped(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """An object with any of ``fields``, as 115 sends it or wrapped in the one-element array it sometimes uses."""
    obj = st.fixed_dictionaries({}, optional=fields)
    return obj | obj.map(lambda d: [d]) | JSON


TASK_FIELDS = ("info_hash", "name", "status", "percentDone", "size", "add_time", "last_update", "url", "file_id",
               "delete_file_id", "wp_path_id")
MODEL_DATA = (
    shaped(page=SCALARS, page_count=SCALARS, count=SCALARS,
           tasks=st.lists(st.fixed_dictionaries({}, optional={k: SCALARS for k in TASK_FIELDS}) | SCALARS,
                          max_size=3))
    | shaped(user_id=SCALARS, user_name=SCALARS, vip_info=shaped(level_name=SCALARS, expire=SCALARS),
             rt_space_info=shaped(all_total=shaped(size=SCALARS), all_remain=shaped(size=SCALARS),
                                  all_use=shaped(size=SCALARS)))
    | shaped(count=SCALARS, used=SCALARS, surplus=SCALARS,
             package=st.lists(shaped(name=SCALARS, count=SCALARS, used=SCALARS, surplus=SCALARS), max_size=3))
    | shaped(file_id=SCALARS, file_name=SCALARS, file_category=SCALARS,
             paths=st.lists(shaped(file_id=SCALARS, file_name=SCALARS), max_size=3))
    | shaped(access_token=SCALARS, refresh_token=SCALARS, expires_in=SCALARS))


@settings(max_examples=300, deadline=None)
@given(MODEL_DATA)
@example({"count": math.inf})  # found here: int(inf) in models.as_int
@example({"tasks": [{"size": "9" * 5000}]})
def test_every_model_reads_any_json_shape_into_its_documented_types(data: Any) -> None:
    page = survives(lambda: TaskPage.from_api(data), ())
    assert isinstance(page, TaskPage) and all(isinstance(v, int) for v in (page.page, page.page_count, page.count))
    for task in page.tasks:
        assert_task(task)
    user = survives(lambda: UserInfo.from_api(data), ())
    assert isinstance(user, UserInfo) and isinstance(user.user_id, str)
    assert all(isinstance(v, int) for v in (user.space_total, user.space_remain, user.space_used))
    quota = survives(lambda: Quota.from_api(data), ())
    assert isinstance(quota, Quota) and all(isinstance(v, int) for v in (quota.count, quota.used, quota.surplus))
    folder = survives(lambda: FolderInfo.from_api(data), ())
    assert folder is None or (isinstance(folder, FolderInfo) and folder.file_id)
    survives(lambda: grant_from(data, "/fuzz"), (Api115Error,))


@settings(max_examples=300, deadline=None)
@given(JSON, st.lists(st.sampled_from(URLS), min_size=1, max_size=3), JSON)
@example(None, URLS[:1], "9" * 5000)  # found here: errors.parse_code calls int() on any digit string
def test_add_results_pair_one_to_one_with_the_links_sent_whatever_115_answers(data: Any, urls: list[str],
                                                                            code: Any) -> None:
    for item in data if isinstance(data, list) else ():
        if isinstance(item, dict):
            assert isinstance(survives(lambda item=item: AddResult.from_api(item), ()), AddResult)
    paired = survives(lambda: _add_results(data, urls), ())
    assert len(paired) == len(urls) and all(isinstance(r, AddResult) for r in paired)
    refused = survives(lambda: check_envelope({"state": False, "code": code, "data": data}, "/fuzz"), (Api115Error,))
    if isinstance(refused, Api115Error):
        items = survives(lambda: _items_of_failed_add(refused, urls), ())
        assert items is None or len(items) == len(urls)


class Replying:
    """A loopback HTTP server answering every request with the status, body and headers set last."""

    def __init__(self) -> None:
        self.status, self.body, self.headers = 200, b"{}", {}
        self.paths: dict[str, tuple[int, dict[str, str], bytes]] = {}  # answers for given paths instead
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, extra, body = owner.paths.get(self.path.split("?", 1)[0],
                                                      (owner.status, owner.headers, owner.body))
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                                    **extra}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def replying() -> Iterator[Replying]:
    server = Replying()
    yield server
    server.close()


BODIES = (st.binary(max_size=200) | ENVELOPES.map(lambda doc: json.dumps(doc).encode())
          | st.integers(1, 20000).map(lambda depth: b'{"state": true, "data": ' + b"[" * depth + b"]" * depth + b"}")
          | st.sampled_from([b"", b"null", b"[]", b"NaN", b"<html><body>405 Not Allowed</body></html>",
                             b"\xff\xfe{\x00}\x00", b'{"state": true}' * 3]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES, st.sampled_from([200, 200, 403, 405, 500, 502]))
@example(b'{"state": true, "data": ' + b"[" * 5000 + b"]" * 5000 + b"}", 200)  # found here: RecursionError
def test_any_http_answer_through_the_transport_is_an_envelope_or_an_api_error(replying: Replying, body: bytes,
                                                                               status: int) -> None:
    replying.status, replying.body, replying.headers, replying.paths = status, body, {}, {}
    transport = Transport(Pacing(timeout=5, min_interval=0, max_retries=0))
    try:
        answer = survives(lambda: transport.request("GET", replying.url + "/open/x", "/open/x"), (Api115Error,))
    finally:
        transport.close()
    assert isinstance(answer, (dict, Api115Error))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES)
def test_any_http_answer_to_a_client_call_is_a_typed_value_or_an_api_error(replying: Replying,
                                                                           tmp_path_factory: pytest.TempPathFactory,
                                                                           body: bytes) -> None:
    token_file = tmp_path_factory.mktemp("tokens") / "token.json"
    write_tokens(token_file, Tokens("at_" + "1" * 48, "rt_" + "2" * 48, time.time() + 86400))
    replying.status, replying.body, replying.headers, replying.paths = 200, body, {}, {}
    conn = connect(token_file=token_file, endpoints=Endpoints(replying.url, replying.url, replying.url),
                   pacing=Pacing(timeout=5, min_interval=0, max_retries=0))
    try:
        calls: list[tuple[Callable[[], object], type]] = [
            (conn.client.quota, Quota), (conn.client.user_info, UserInfo), (conn.client.task_page, TaskPage),
            (lambda: conn.client.add_task_urls(URLS), list)]
        for call, kind in calls:
            answer = survives(call, (Api115Error,))
            assert isinstance(answer, (kind, Api115Error))
            if isinstance(answer, list):
                assert len(answer) == len(URLS)
    finally:
        conn.transport.close()


# ---------------------------------------------------------------- feeds

FEED_HARNESS = harness("feed")
HOSTILE_FIELD = st.text(max_size=30) | st.sampled_from([
    "9" * 5000, "9" * 400 + " GB", "1e999", "NaN", "-1", "0", "1,5 GiB", "839.71 MB", "(removed)", "12 seeders",
    "seeds: 99999999999999999999999", "magnet:?xt=urn:btih:" + "a" * 40 + "&xl=" + "9" * 30,
    "magnet:?xt=urn:btih:zz", "http://[broken/x.torrent", "/relative/x.torrent", "http://h/" + "b" * 40,
    "Mon, 99 Foo 2024 25:61:61 +9999", "2024-02-30T25:00:00Z", "\u202e\u0000", "&amp;&lt;"])
ITEM_PARTS = st.fixed_dictionaries({}, optional={
    "title": HOSTILE_FIELD, "link": HOSTILE_FIELD, "guid": HOSTILE_FIELD, "description": HOSTILE_FIELD,
    "pubDate": HOSTILE_FIELD, "size": HOSTILE_FIELD, "seeds": HOSTILE_FIELD, "infoHash": HOSTILE_FIELD,
    "enclosure": st.tuples(HOSTILE_FIELD, HOSTILE_FIELD, st.sampled_from(["application/x-bittorrent", "image/png",
                                                                          ""])),
    "attrs": st.lists(st.tuples(st.sampled_from(["size", "seeders", "infohash", "magneturl", "peers"]),
                                HOSTILE_FIELD), max_size=4),
    "nested": st.integers(1, 2500)})


def rss_item(parts: dict[str, Any]) -> str:
    """One item of every field the feed reader looks at, each value escaped as a real feed would write it."""
    out = []
    for name in ("title", "link", "guid", "description", "pubDate", "size", "seeds"):
        if name in parts:
            out.append(f"<{name}>{escape(_xml_chars(parts[name]))}</{name}>")
    if "infoHash" in parts:
        out.append(f"<torrent:infoHash>{escape(_xml_chars(parts['infoHash']))}</torrent:infoHash>")
    if "enclosure" in parts:
        url, length, kind = (quoteattr(_xml_chars(v)) for v in parts["enclosure"])
        out.append(f"<enclosure url={url} length={length} type={kind}/>")
    for name, value in parts.get("attrs", ()):
        out.append(f"<torznab:attr name={quoteattr(name)} value={quoteattr(_xml_chars(value))}/>")
    if "nested" in parts:
        depth = parts["nested"]
        out.append("<description>" + "<b>" * depth + "x" + "</b>" * depth + "</description>")
    return "<item>" + "".join(out) + "</item>"


def _xml_chars(text: str) -> str:
    """Only the characters XML 1.0 allows: the point is hostile values, not documents no parser accepts."""
    return "".join(c for c in text if c in "\t\n\r" or "\x20" <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ITEM_PARTS, min_size=1, max_size=4), st.sampled_from(["auto", "feedparser"]),
       st.sampled_from([None, "utf-8", "iso-8859-1", "shift_jis", "bogus", "utf-16"]))
@example([{"description": "9" * 400 + " GB"}], "auto", None)  # found here: round(inf)
@example([{"nested": 2500}], "auto", None)  # found here: RecursionError in ElementTree.tostring
def test_feed_items_with_hostile_fields_give_typed_entries_or_a_feed_error(items: list[dict[str, Any]],
                                                                           reader: str, charset: str | None) -> None:
    body = ('<?xml version="1.0" encoding="utf-8"?><rss version="2.0" xmlns:torznab="http://torznab.com/schemas/'
            '2015/feed" xmlns:torrent="http://xmlns.ezrss.it/0.1/"><channel><title>t</title>'
            + "".join(map(rss_item, items)) + "</channel></rss>").encode()
    headers = {"Content-Type": f"application/rss+xml; charset={charset}"} if charset else {}
    parsed = survives(lambda: read_feed(body, feed="f", url="http://feeds.example/rss", headers=headers,
                                        reader=reader), (FeedError,))
    if not isinstance(parsed, FeedError):
        for entry in parsed.entries:
            FEED_HARNESS.check_entry(entry)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60) | st.sampled_from(["9" * 5000, "Wed, 21 Oct 2015 07:28:00 GMT", "-1", "1e999",
                                                "Mon, 99 Foo 2024 25:61:61 +9999", "\u0663"]))
@example("\u00b9")  # found by this test: "¹".isdigit() is true and float("¹") raises ValueError
def test_any_retry_after_header_is_seconds_or_nothing(value: str) -> None:
    seconds = survives(lambda: _retry_after(value, 1_700_000_000.0), ())
    assert seconds is None or (isinstance(seconds, float) and seconds >= 0)


@pytest.mark.parametrize("status, header, value", [
    (200, "Content-Length", "\u00b9"), (200, "Content-Length", "9" * 5000), (503, "Retry-After", "\u00b2"),
    (503, "Retry-After", "9" * 5000), (429, "Retry-After", "Mon, 99 Foo 2024 25:61:61 +9999")])
def test_hostile_response_headers_fail_the_poll_as_a_feed_error_not_as_an_internal_error(
        replying: Replying, tmp_path: Path, status: int, header: str, value: str) -> None:
    replying.status, replying.headers, replying.paths = status, {header: value}, {}
    replying.body = b'<rss version="2.0"><channel><item><title>a</title><link>http://h/a</link></item></channel></rss>'
    feed = Feed(name="f", url=replying.url + "/rss", accept_all=True, timeout=5)
    with Ledger(tmp_path / "ledger.sqlite3") as ledger, FeedPoller([feed], ledger, host_gap=0) as poller:
        result = survives(lambda: poller.poll(feed), ())
    assert not (result.error or "").startswith("internal error"), result.error
    assert status < 400 or f"HTTP {status}" in (result.error or "")


# ---------------------------------------------------------------- config

YAML_PIECES = st.sampled_from([
    "feeds:", "- ", "  ", "name: a", "url: 'https://e.org/?passkey=${PASSKEY}'", "&a ", "*a", "<<: *a", "!!str ",
    "!!python/object/apply:os.getcwd []", "!!binary aGk=", "[", "]", "{", "}", ", ", ": ", "? ", "\n", "---\n",
    "interval: 1e400", "max_size: .inf", "${", "$${", "\t", "'", '"', "#", "~", "%YAML 1.1\n", "9" * 5000])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80) | st.lists(YAML_PIECES, max_size=25).map("".join))
@example("9" * 5000)  # found here: PyYAML's int() past the 4300-digit limit
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    result = survives(lambda: loads(text, env={"HOME": "/home/u", "PASSKEY": "0123456789abcdef"}), (ConfigError,))
    if isinstance(result, ConfigError):
        assert result.problems and all(p.message for p in result.problems)
        assert "0123456789abcdef" not in str(result)
    else:
        assert isinstance(result, Config)


@settings(max_examples=300, deadline=None)
@given(SCALARS | st.lists(SCALARS, max_size=2))
def test_durations_sizes_and_targets_of_any_value_are_values_or_value_errors(value: Any) -> None:
    seconds = survives(lambda: parse_duration(value), (ValueError,))
    assert isinstance(seconds, ValueError) or (isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0)
    size = survives(lambda: parse_size(value), (ValueError,))
    assert isinstance(size, ValueError) or (isinstance(size, int) and size >= 0)
    target = survives(lambda: parse_target(value), (ValueError,))
    assert isinstance(target, (ValueError, str))


# ---------------------------------------------------------------- drop files and long lines


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.lists(HOSTILE_FIELD | st.sampled_from(URLS), max_size=6).map(
    lambda lines: "\r\n".join(lines).encode("utf-8", "surrogatepass")),
    st.sampled_from(["x.magnet", "x.torrent-link", "x.torrent", "X.MAGNET"]))
def test_any_bytes_in_a_dropped_file_give_links_or_a_drop_error(tmp_path: Path, data: bytes, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    parsed = survives(lambda: read_drop(path, WatchFolder(tmp_path)), (DropError,))
    assert isinstance(parsed, (Parsed, DropError))
    if isinstance(parsed, Parsed):
        assert parsed.links or parsed.rejected
        assert all(r.line >= 1 and r.reason for r in parsed.rejected)


BROKEN_LOCATIONS = ["http://[broken/x", "http://h:99999999/x", "http://[::1/x.torrent"]


@pytest.mark.parametrize("location", BROKEN_LOCATIONS)
def test_a_redirect_to_a_url_that_does_not_parse_fails_the_feed_or_the_entry_never_the_poll(
        replying: Replying, tmp_path: Path, location: str) -> None:
    moved = (302, {"Location": location}, b"")
    item = f'<item><title>a</title><link>{replying.url}/dl/1</link></item>'
    replying.paths = {"/moved": moved, "/dl/1": moved,
                      "/rss": (200, {}, f'<rss version="2.0"><channel>{item}</channel></rss>'.encode())}
    feeds = [Feed(name=name, url=f"{replying.url}/{name}", accept_all=True, timeout=5) for name in ("moved", "rss")]
    with Ledger(tmp_path / "ledger.sqlite3") as ledger, FeedPoller(feeds, ledger, host_gap=0) as poller:
        moved_feed, entry_feed = (survives(lambda f=f: poller.poll(f), ()) for f in feeds)
    assert moved_feed.status == "error" and not (moved_feed.error or "").startswith("internal error"), moved_feed
    assert entry_feed.status == "ok", entry_feed.error
    assert not entry_feed.verdicts[0].grab and "could not be resolved" in entry_feed.verdicts[0].reason


@pytest.mark.parametrize("location", BROKEN_LOCATIONS)
def test_a_torrent_link_that_redirects_to_a_url_that_does_not_parse_is_a_rejected_line(
        replying: Replying, tmp_path: Path, location: str) -> None:
    replying.paths = {"/dl/1": (302, {"Location": location}, b"")}
    (tmp_path / "x.torrent-link").write_text(f"{replying.url}/dl/1?passkey=0123456789abcdef\n{URLS[0]}\n")
    resolver = Resolver(timeout=5)
    try:
        parsed = survives(lambda: read_drop(tmp_path / "x.torrent-link", WatchFolder(tmp_path), resolver=resolver),
                          (DropError,))
    finally:
        resolver.close()
    assert isinstance(parsed, Parsed), parsed
    assert [link.url for link in parsed.links] == [URLS[0]] and [r.line for r in parsed.rejected] == [1]
    assert "0123456789abcdef" not in parsed.rejected[0].reason


TITLE_PIECES = st.sampled_from(["Show", " ", "[Group]", "【字幕组】", "第", "季", "期", "话", " - ", "S", "E", "x",
                                 "Season ", "2nd Season", "v2", "#", "01", "9" * 5000, "十", "一", "1080p", ".", "_"])


@settings(max_examples=200, deadline=None)
@given(st.lists(TITLE_PIECES, max_size=12).map("".join))
@example("Show 第" + "9" * 5000 + "季 - 01")  # found here: _SEASON_SUFFIX takes any number of digits to int()
def test_a_feed_title_of_any_pieces_is_an_episode_or_none(title: str) -> None:
    key = survives(lambda: parse_episode(title), ())
    assert key is None or isinstance(key, EpisodeKey)


MEGABYTE = 1_000_000  # a drop file's cap, and so the longest line a link parser can be handed
LONG_LINES = {
    "tracker that fails at its last character": "magnet:?xt=urn:btih:" + "c" * 40 + "&tr=http://" + "a" * MEGABYTE
                                                + "%3C",
    "tracker of slashes": "magnet:?xt=urn:btih:" + "c" * 40 + "&tr=udp://h" + "/" * MEGABYTE + "<",
    "many parameters": "magnet:?xt=urn:btih:" + "c" * 40 + "&tr=x" * (MEGABYTE // 5),
    "many xt": "magnet:?" + "&xt=urn:btih:" * (MEGABYTE // 13),
    "name of percent signs": "magnet:?xt=urn:btih:" + "c" * 40 + "&dn=" + "%" * MEGABYTE,
    "ed2k of many fields": "ed2k://|file|n|1|" + "0" * 32 + "|" + "h=|" * (MEGABYTE // 3),
    "ed2k part hashes that fail at the end": "ed2k://|file|n|1|" + "0" * 32 + "|p=" + ("0" * 32 + ":") * 30000 + "|/",
    "url of brackets": "http://[" + "[" * MEGABYTE,
    "url of colons": "http://h" + ":" * MEGABYTE,
    "url of at signs": "http://" + "@" * MEGABYTE + "h/",
}


@pytest.mark.parametrize("line", LONG_LINES.values(), ids=LONG_LINES.keys())
def test_a_line_as_long_as_a_drop_file_allows_is_parsed_in_bounded_time(line: str) -> None:
    survives(lambda: parse_link(line), (LinkError,))


LONG_DESCRIPTIONS = {
    "digits": "1" * MEGABYTE,
    "decimal points": "1." * (MEGABYTE // 2),
    "seeds": "seed " + "9" * MEGABYTE,
    "magnets that never parse": "magnet:?x " * (MEGABYTE // 10),
}


@pytest.mark.parametrize("text", LONG_DESCRIPTIONS.values(), ids=LONG_DESCRIPTIONS.keys())
def test_a_megabyte_description_is_read_in_bounded_time(text: str) -> None:
    body = ('<rss version="2.0"><channel><item><title>a</title><link>http://h/a.torrent</link><description>'
            + text + "</description></item></channel></rss>").encode()
    survives(lambda: read_feed(body, feed="f", url="http://h/"), (FeedError,))
