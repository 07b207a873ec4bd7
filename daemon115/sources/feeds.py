"""RSS/Atom feeds as a source: fetch politely, judge entries by rules, record grabs.

Two layers, top to bottom in this file, over the pure parsing of :mod:`daemon115.sources.feed_entries`:

1. The HTTP edge: conditional GET, a size cap counted after decompression, redirects followed by hand (so a
   tracker's cookies and headers go only to that tracker), one request at a time per host with a gap.
2. :class:`FeedPoller`: state in ledger meta, backoff, rules, candidates into the ledger.

Decisions (each is pinned by a test):

- What is recorded: the magnet if there is one; else, with ``resolve_torrents: true``, the magnet (with its
  trackers) of the downloaded .torrent (10 MiB cap); else the .torrent URL, keyed by the feed's hash when it
  states one and by the URL otherwise; an entry with a hash and no .torrent URL becomes a magnet of that hash. An
  http link without a hash is first asked, without reading its body, whether it redirects to ``magnet:``
  (indexer ``/dl/`` links).
- Entries are judged once: their ids (guid, else link) are remembered per feed, unless the feed's rules change.
  Entries whose grab could not be resolved are not remembered, so the next poll tries again.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from daemon115 import intake
from daemon115.config import Feed
from daemon115.ledger import Candidate, Ledger, LedgerError
from daemon115.links import MAX_TORRENT_SIZE, Link, LinkError, make_magnet, parse_link, parse_magnet, parse_torrent
from daemon115.logs import get_logger
from daemon115.sources.feed_entries import (
    MAX_DIGITS,
    NO_HEADERS,
    FeedError,
    ParsedFeed,
    header_value,
    is_http,
    read_feed,
)
from daemon115.rules import EpisodeKey, FeedEntry, Verdict, evaluate, format_size

__all__ = ["FeedError", "FeedHealth", "FeedPoller", "PollResult", "rss_test_rows"]

BACKOFF_FIRST = 60.0
BACKOFF_MAX = 86400.0
HOST_GAP = 1.0
MAX_REDIRECTS = 5
SEEN_CAP = 5000  # entry ids remembered per feed (at least twice the feed's length)
EPISODE_CAP = 20000
ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
EPISODES_META = "feeds:episodes"

_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


# ================================================================ results and state


@dataclass(frozen=True)
class PollResult:
    feed: str
    status: str  # "ok" | "not-modified" | "error" | "skipped-backoff"
    entries: tuple[FeedEntry, ...]
    verdicts: tuple[Verdict, ...]  # one per entry, same order
    queued: int
    duplicates: int
    error: str | None
    missed_warning: bool
    warnings: tuple[str, ...] = ()
    evaluated: int = 0  # entries judged this time (the rest were seen in an earlier poll)


@dataclass(frozen=True)
class FeedHealth:
    feed: str
    last_poll: float | None
    last_ok: float | None
    failures: int
    backoff_until: float | None
    last_error: str | None


@dataclass(frozen=True)
class _FeedState:
    url: str | None = None  # digest of the URL the validators belong to (a passkey stays out of the ledger)
    etag: str | None = None
    last_modified: str | None = None
    last_poll: float | None = None
    last_ok: float | None = None
    failures: int = 0
    backoff_until: float | None = None
    last_error: str | None = None
    rules: str | None = None  # digest of the rules the remembered entries were judged by

    @classmethod
    def load(cls, text: str | None) -> _FeedState:
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}) if isinstance(data, dict) else cls()

    def dump(self) -> str:
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if v is not None},
                          separators=(",", ":"))


SEEN_VERDICT = Verdict(False, None, "seen in an earlier poll", None)
REPEATED_VERDICT = Verdict(False, None, "the same entry as an earlier one in this feed", None)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _rules_digest(feed: Feed) -> str:
    return _digest(repr((feed.rules, feed.accept_all, feed.target, feed.resolve_torrents)))


class _SeenIds:
    """Entry-id digests of one feed, oldest first, trimmed from the front."""

    def __init__(self, text: str | None) -> None:
        try:
            ids = json.loads(text) if text else []
        except ValueError:
            ids = []
        self._ids: dict[str, None] = dict.fromkeys(i for i in ids if isinstance(i, str)) \
            if isinstance(ids, list) else {}

    def __contains__(self, digest: str) -> bool:
        return digest in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def with_ids(self, digests: Sequence[str], cap: int) -> _SeenIds:
        """A copy with ``digests`` as the newest, trimmed to ``cap``; the original stays as it was until the
        copy is committed, so a failed commit forgets nothing."""
        ids = dict(self._ids)
        for digest in digests:
            ids.pop(digest, None)
            ids[digest] = None
        for digest in list(ids)[:max(0, len(ids) - cap)]:
            del ids[digest]
        copy = _SeenIds(None)
        copy._ids = ids
        return copy

    def dump(self) -> str:
        return json.dumps(list(self._ids), separators=(",", ":"))


class _EpisodeMemory:
    """The highest version grabbed per show/season/episode, shared by every feed (first release wins)."""

    def __init__(self, text: str | None) -> None:
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        self._versions: dict[str, int] = {k: v for k, v in data.items() if isinstance(v, int)} \
            if isinstance(data, dict) else {}
        self.lock = threading.RLock()

    @staticmethod
    def _key(key: EpisodeKey) -> str:
        return f"{key.show}\x1f{key.season}\x1f{key.episode}"

    def seen(self, key: EpisodeKey) -> bool:
        return self._versions.get(self._key(key), 0) >= key.version

    def remember(self, key: EpisodeKey) -> int:
        name = self._key(key)
        before = self._versions.pop(name, 0)
        self._versions[name] = max(before, key.version)
        if len(self._versions) > EPISODE_CAP:
            del self._versions[next(iter(self._versions))]
        return before

    def restore(self, key: EpisodeKey, before: int) -> None:
        name = self._key(key)
        if before:
            self._versions[name] = before
        else:
            self._versions.pop(name, None)

    def dump(self) -> str:
        return json.dumps(self._versions, separators=(",", ":"), ensure_ascii=False)


class _Overlay:
    """Episode memory for `rss test`: reads the real memory, keeps its own grabs to itself."""

    def __init__(self, memory: _EpisodeMemory) -> None:
        self._memory = memory
        self._grabbed: dict[tuple[str, int, int], int] = {}
        self.lock = memory.lock

    def seen(self, key: EpisodeKey) -> bool:
        return self._memory.seen(key) or self._grabbed.get((key.show, key.season, key.episode), 0) >= key.version

    def remember(self, key: EpisodeKey) -> int:
        name = (key.show, key.season, key.episode)
        self._grabbed[name] = max(self._grabbed.get(name, 0), key.version)
        return 0

    def restore(self, key: EpisodeKey, before: int) -> None:
        self._grabbed.pop((key.show, key.season, key.episode), None)


# ================================================================ HTTP


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    headers: Mapping[str, str]


class _HostGate:
    """One request at a time per host, with a gap between them: trackers answer 429 to bursts."""

    def __init__(self, gap: float, sleep: Callable[[float], None]) -> None:
        self._gap = gap
        self._sleep = sleep
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._last: dict[str, float] = {}

    @contextmanager
    def turn(self, host: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(host, threading.Lock())
        with lock:
            last = self._last.get(host)
            if last is not None:
                wait = last + self._gap - time.monotonic()
                if wait > 0:
                    self._sleep(wait)
            try:
                yield
            finally:
                self._last[host] = time.monotonic()


def _host(url: str) -> str:
    try:
        parts = urlsplit(url)
        return (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return ""


def _same_site(a: str, b: str) -> bool:
    """Whether the feed's headers and cookies may go to ``b``: the feed's host, or a subdomain either way."""
    a, b = a.split(":")[0], b.split(":")[0]
    return bool(a) and (a == b or a.endswith("." + b) or b.endswith("." + a))


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():  # "¹".isdigit() too: only ASCII digits are seconds, and a day is the most waited
        return min(float(value), BACKOFF_MAX) if value.isascii() else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, when.timestamp() - now)


def _join(url: str, location: str, what: str) -> str:
    try:
        return urljoin(url, location)
    except ValueError:  # "http://[broken/..."
        raise FeedError(f"{what} redirects to a URL that does not parse") from None


def _declared_length(headers: Mapping[str, str]) -> int | None:
    """Content-Length as a number; a run of digits too long to be one is more than any cap."""
    text = (headers.get("Content-Length") or "").strip()
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) if len(text) <= MAX_DIGITS else 10**MAX_DIGITS


def _request_error(error: requests.RequestException, url: str, timeout: float) -> FeedError:
    """A message about a failed request that names the host, never the URL (passkeys live in URLs)."""
    host = _host(url) or "the server"
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return FeedError(f"could not connect to {host} within {timeout:g}s")
    if isinstance(error, requests.exceptions.ReadTimeout):
        return FeedError(f"{host} did not answer within {timeout:g}s")
    if isinstance(error, requests.exceptions.SSLError):
        return FeedError(f"TLS error talking to {host}")
    if isinstance(error, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return FeedError(f"the response from {host} was cut off or could not be decompressed")
    if isinstance(error, requests.exceptions.ConnectionError):
        cause = _ERRNO.search(str(error))
        return FeedError(f"could not connect to {host}" + (f": {cause.group(1).strip()}" if cause else ""))
    if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                          requests.exceptions.InvalidSchema)):
        return FeedError("the URL is not a valid http(s) URL")
    return FeedError(f"request to {host} failed ({type(error).__name__})")


# ================================================================ the poller


class FeedPoller:
    """Polls feeds, judges their entries and records the grabs; all its memory lives in the ledger's meta table.

    ``record=False`` is `rss test`: it fetches unconditionally, judges every entry (remembered or not), resolves
    links like a real poll, and writes nothing anywhere.
    """

    def __init__(self, feeds: Sequence[Feed], ledger: Ledger, *, session: requests.Session | None = None,
                 log: Any = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, record: bool = True, host_gap: float = HOST_GAP,
                 max_parallel: int = 4) -> None:
        self.feeds: tuple[Feed, ...] = tuple(feeds)
        self._ledger = ledger
        self._owns_session = session is None
        self._session = session or requests.Session()
        self._log = log or get_logger("daemon115.feeds")
        self._clock = clock
        self._record = record
        self._gate = _HostGate(host_gap, sleep)
        self._max_parallel = max(1, max_parallel)
        self._states: dict[str, _FeedState] = {}
        self._seen: dict[str, _SeenIds] = {}
        self._episodes: _EpisodeMemory | None = None
        self._overlay: _Overlay | None = None
        self._guard = threading.RLock()
        self._feed_locks: dict[str, threading.Lock] = {}

    def close(self) -> None:
        """Close the HTTP session if this poller made it (a session passed in belongs to the caller)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> FeedPoller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- scheduling ----------------------------------------------------------------------------------------

    def due(self, now: float) -> list[tuple[Feed, float]]:
        """When each feed should next be polled: after its interval (plus a steady per-feed jitter, so feeds do
        not fire together), or when its backoff ends after a failure; a feed never polled is due now."""
        plan = []
        for feed in self.feeds:
            state = self._state(feed)
            if state.failures and state.backoff_until is not None:
                at = state.backoff_until
            elif state.last_poll is None:
                at = now
            else:
                at = state.last_poll + feed.interval + _jitter(feed, state.last_poll)
            plan.append((feed, at))
        return plan

    def health(self) -> list[FeedHealth]:
        return [FeedHealth(feed.name, s.last_poll, s.last_ok, s.failures, s.backoff_until, s.last_error)
                for feed in self.feeds for s in (self._state(feed),)]

    def poll_all(self, *, force: bool = False) -> list[PollResult]:
        """Every feed once, whatever its interval (``force`` also ignores backoff); hosts in parallel, feeds of
        one host one after another; one feed's failure is its own result and never stops the others."""
        if not self._record:
            with self._guard:
                self._overlay = None  # each `rss test` pass starts from the real memory
        by_host: dict[str, list[int]] = {}
        for index, feed in enumerate(self.feeds):
            by_host.setdefault(_host(feed.url), []).append(index)
        results: list[PollResult | None] = [None] * len(self.feeds)

        def run(indices: list[int]) -> None:
            for index in indices:
                results[index] = self.poll(self.feeds[index], force=force)

        groups = list(by_host.values())
        if len(groups) <= 1:
            for group in groups:
                run(group)
        else:
            with ThreadPoolExecutor(max_workers=min(self._max_parallel, len(groups)),
                                    thread_name_prefix="feeds") as pool:
                list(pool.map(run, groups))
        return [result for result in results if result is not None]

    # -- one poll ------------------------------------------------------------------------------------------

    def poll(self, feed: Feed, *, force: bool = False) -> PollResult:
        """One feed, now. Never raises: every failure is the result's ``error`` (one feed must never stop the
        daemon's other work)."""
        try:
            return self._poll(feed, force)
        except LedgerError as error:
            self._log.error("feed poll could not use the ledger", feed=feed.name, error=str(error))
            return _error_result(feed, f"the ledger is not available: {error}")
        except Exception as error:
            self._log.error("feed poll crashed", feed=feed.name, error=f"{type(error).__name__}: {error}")
            return _error_result(feed, f"internal error: {type(error).__name__}")

    def _poll(self, feed: Feed, force: bool) -> PollResult:
        with self._feed_lock(feed.name):
            started = time.perf_counter()
            state = self._state(feed)
            now = self._clock()
            if self._record and not force and state.backoff_until is not None and now < state.backoff_until:
                return _error_result(feed, f"backing off until {_iso(state.backoff_until)} after "
                                           f"{state.failures} failure(s): {state.last_error}",
                                     status="skipped-backoff")
            try:
                response = self._fetch_feed(feed, state if self._record else None)
                if response.status == 304:
                    return self._not_modified(feed, state, now, started)
                parsed = read_feed(response.body, feed=feed.name, url=feed.url, headers=response.headers,
                                   max_size=feed.max_size)
            except FeedError as error:
                return self._failed(feed, state, now, error)
            return self._process(feed, state, now, parsed, response, started)

    def _not_modified(self, feed: Feed, state: _FeedState, now: float, started: float) -> PollResult:
        if self._record:
            self._save_state(feed, dataclasses.replace(state, last_poll=now, last_ok=now, failures=0,
                                                       backoff_until=None, last_error=None))
        self._log.debug("feed not modified", feed=feed.name, ms=round((time.perf_counter() - started) * 1000, 1))
        return PollResult(feed.name, "not-modified", (), (), 0, 0, None, False)

    def _failed(self, feed: Feed, state: _FeedState, now: float, error: FeedError) -> PollResult:
        message = str(error)
        if self._record:
            failures = state.failures + 1
            pause = min(BACKOFF_FIRST * 2 ** min(failures - 1, 20), BACKOFF_MAX)
            if error.retry_after is not None:
                pause = min(max(pause, error.retry_after), BACKOFF_MAX)
            self._save_state(feed, dataclasses.replace(state, last_poll=now, failures=failures,
                                                       backoff_until=now + pause, last_error=message))
            self._log.warning("feed poll failed", feed=feed.name, error=message, failures=failures,
                              retry_in=round(pause))
        return _error_result(feed, message)

    def _process(self, feed: Feed, state: _FeedState, now: float, parsed: ParsedFeed, response: _Response,
                 started: float) -> PollResult:
        entries = list(parsed.entries)
        seen = self._seen_ids(feed) if self._record else None
        rules = _rules_digest(feed)
        rejudge = state.rules != rules
        digests = [_digest(entry.entry_id) for entry in entries]
        missed = bool(seen is not None and len(seen) and entries and state.last_ok is not None
                      and not any(d in seen for d in digests))
        memory = self._memory()
        verdicts: list[Verdict] = [SEEN_VERDICT] * len(entries)
        candidates: list[Candidate] = []
        unresolved: set[int] = set()
        remembered: list[tuple[EpisodeKey, int]] = []
        evaluated = 0
        for index in _repeats(digests):
            verdicts[index] = REPEATED_VERDICT
        for index in _chronological(entries):
            entry, digest = entries[index], digests[index]
            if verdicts[index] is REPEATED_VERDICT or (seen is not None and not rejudge and digest in seen):
                continue
            evaluated += 1
            with memory.lock:
                verdict = evaluate(entry, feed, now=now, episodes_seen=memory.seen)
                if verdict.grab and verdict.episode is not None:
                    remembered.append((verdict.episode, memory.remember(verdict.episode)))
            if verdict.grab:
                verdict, entry, candidate = self._grab(feed, entry, verdict)
                entries[index] = entry
                if candidate is None:
                    unresolved.add(index)
                    if verdict.episode is not None:  # not grabbed after all: a later release may be
                        with memory.lock:
                            key, before = remembered.pop()
                            memory.restore(key, before)
                else:
                    candidates.append(candidate)
            verdicts[index] = verdict
        queued = duplicates = 0
        if self._record and seen is not None:
            try:
                queued, duplicates = self._commit(feed, state, now, response, rules, candidates, seen,
                                                  [d for i, d in enumerate(digests) if i not in unresolved],
                                                  episodes_changed=bool(remembered))
            except LedgerError as error:
                with memory.lock:
                    for key, before in reversed(remembered):
                        memory.restore(key, before)
                self._log.error("feed results could not be recorded", feed=feed.name, error=str(error))
                return _error_result(feed, f"the ledger could not record this poll: {error}")
        if missed:
            self._log.warning("feed may have missed entries", feed=feed.name, entries=len(entries),
                              hint="none of this poll's entries was seen before: the feed lists fewer entries "
                                   "than arrive between two polls; shorten the interval")
        for warning in parsed.warnings:
            self._log.warning("feed recovered from invalid XML", feed=feed.name, detail=warning)
        self._log.info("feed polled", feed=feed.name, entries=len(entries), evaluated=evaluated,
                       grabbed=len(candidates), queued=queued, duplicates=duplicates,
                       ms=round((time.perf_counter() - started) * 1000, 1))
        return PollResult(feed.name, "ok", tuple(entries), tuple(verdicts), queued, duplicates, None, missed,
                          parsed.warnings, evaluated)

    def _commit(self, feed: Feed, state: _FeedState, now: float, response: _Response, rules: str,
                candidates: list[Candidate], seen: _SeenIds, digests: list[str], *,
                episodes_changed: bool) -> tuple[int, int]:
        """Record the grabs, then the memory of what was judged, in one transaction: a crash in between would
        otherwise forget grabs (memory saved first) or re-judge entries (harmless, but not this way round)."""
        new_seen = seen.with_ids(digests, max(SEEN_CAP, 2 * len(digests)))
        new_state = dataclasses.replace(
            state, url=_digest(feed.url), etag=header_value(response.headers, "etag"),
            last_modified=header_value(response.headers, "last-modified"), last_poll=now, last_ok=now, failures=0,
            backoff_until=None, last_error=None, rules=rules)
        memory = self._episode_memory()
        with self._ledger.transaction():
            recorded = self._ledger.record(candidates)
            self._ledger.meta_set(f"feed:{feed.name}:seen", new_seen.dump())
            if episodes_changed:
                with memory.lock:
                    self._ledger.meta_set(EPISODES_META, memory.dump())
            self._ledger.meta_set(f"feed:{feed.name}", new_state.dump())
        self._seen[feed.name] = new_seen
        self._states[feed.name] = new_state
        if state.failures:
            self._log.info("feed recovered", feed=feed.name, after_failures=state.failures)
        queued = sum(1 for r in recorded if r.outcome != "duplicate")
        return queued, len(recorded) - queued

    # -- grabbing ------------------------------------------------------------------------------------------

    def _grab(self, feed: Feed, entry: FeedEntry, verdict: Verdict
              ) -> tuple[Verdict, FeedEntry, Candidate | None]:
        """The link to record for a grabbed entry (resolving redirects and torrents), or why there is none."""
        try:
            link = self._link_for(feed, entry)
        except (FeedError, LinkError) as error:
            failed = dataclasses.replace(verdict, grab=False,
                                         reason=f"{verdict.reason}, but the link could not be resolved: {error}")
            return failed, entry, None
        link = dataclasses.replace(link, name=link.name or entry.title or None,
                                   size=link.size if link.size is not None else entry.size)
        if link.kind == "magnet":
            entry = dataclasses.replace(entry, link=link.url, magnet=link.url,
                                        info_hash=link.info_hash or entry.info_hash)
        candidate = intake.candidate(link, target=verdict.target or feed.target, source=f"feed:{feed.name}",
                                     rule=verdict.rule, title=entry.title or None)
        if not self._record:
            known = self._ledger.get(candidate.key)
            if known is not None:
                verdict = dataclasses.replace(verdict, reason=f"{verdict.reason} (already in the ledger: "
                                                              f"{known.status})")
        return verdict, entry, candidate

    def _link_for(self, feed: Feed, entry: FeedEntry) -> Link:
        if entry.magnet:
            return parse_magnet(entry.magnet)
        if entry.torrent_url and feed.resolve_torrents:
            return self._resolve(feed, entry.torrent_url, read_torrent=True) or parse_link(entry.torrent_url)
        if entry.info_hash and not entry.torrent_url:
            return make_magnet(info_hash=entry.info_hash, name=entry.title or None, size=entry.size)
        url = entry.torrent_url or entry.link or ""
        if not is_http(url):
            return parse_link(url)
        plain = parse_link(url)
        if entry.info_hash:
            return dataclasses.replace(plain, info_hash=entry.info_hash)
        return self._resolve(feed, url, read_torrent=False) or plain

    def _resolve(self, feed: Feed, url: str, *, read_torrent: bool) -> Link | None:
        """Follow ``url``'s redirects by hand: a ``magnet:`` Location is the link; otherwise, with
        ``read_torrent``, the .torrent body (capped) becomes a magnet. Without it, no body is read."""
        for _hop in range(MAX_REDIRECTS + 1):
            response = self._get(feed, url, stream=True)
            try:
                location = response.headers.get("Location") if response.is_redirect else None
                if location is not None:
                    location = location.strip()
                    if location[:7].lower() == "magnet:":
                        return parse_magnet(location)
                    url = _join(url, location, "the download link")
                    if not is_http(url):
                        raise FeedError("the download link redirects to something that is not http(s) or magnet")
                    continue
                if response.status_code >= 400:
                    raise FeedError(f"the download link answered HTTP {response.status_code}")
                if not read_torrent:
                    return None
                body = self._read_capped(response, MAX_TORRENT_SIZE, feed.timeout, "the .torrent")
            finally:
                response.close()
            return parse_torrent(body).to_link()
        raise FeedError(f"the download link redirects more than {MAX_REDIRECTS} times")

    # -- fetching ------------------------------------------------------------------------------------------

    def _fetch_feed(self, feed: Feed, state: _FeedState | None) -> _Response:
        extra: dict[str, str] = {}
        if state is not None and state.url == _digest(feed.url):
            if state.etag:
                extra["If-None-Match"] = state.etag
            if state.last_modified:
                extra["If-Modified-Since"] = state.last_modified
        url = feed.url
        for _hop in range(MAX_REDIRECTS + 1):
            response = self._get(feed, url, stream=True, extra=extra)
            try:
                if response.is_redirect and response.headers.get("Location"):
                    location = response.headers["Location"].strip()
                    url = _join(url, location, "the feed")
                    if not is_http(url):
                        raise FeedError("the feed redirects to something that is not an http(s) URL")
                    continue
                if response.status_code == 304:
                    return _Response(304, b"", response.headers)
                if response.status_code >= 400:
                    raise FeedError(f"HTTP {response.status_code} {response.reason or ''}".strip(),
                                    retry_after=_retry_after(response.headers.get("Retry-After"), self._clock()))
                body = self._read_capped(response, feed.max_size, feed.timeout, "the response")
                return _Response(response.status_code, body, response.headers)
            finally:
                response.close()
        raise FeedError(f"the feed redirects more than {MAX_REDIRECTS} times")

    def _get(self, feed: Feed, url: str, *, stream: bool, extra: Mapping[str, str] = NO_HEADERS
             ) -> requests.Response:
        headers = {"User-Agent": feed.user_agent, "Accept": ACCEPT, "Accept-Encoding": "gzip, deflate"}
        trusted = _same_site(_host(feed.url), _host(url))
        if trusted:
            headers.update(feed.headers)
        headers.update(extra)
        host = _host(url)
        with self._gate.turn(host):
            try:
                return self._session.get(url, headers=headers, cookies=dict(feed.cookies) if trusted else None,
                                         timeout=feed.timeout, stream=stream, allow_redirects=False)
            except requests.RequestException as error:
                raise _request_error(error, url, feed.timeout) from None
            except ValueError:  # urllib's "Invalid IPv6 URL", from inside requests
                raise FeedError("the URL is not a valid http(s) URL") from None

    def _read_capped(self, response: requests.Response, cap: int, timeout: float, what: str) -> bytes:
        """The body, decompressed, refused past ``cap`` bytes (a gzip bomb stops there) or ``timeout`` seconds."""
        declared = _declared_length(response.headers)
        if declared is not None and not response.headers.get("Content-Encoding") and declared > cap:
            raise FeedError(f"{what} is {format_size(declared)}, above the cap of {format_size(cap)}")
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_content(65536):
                total += len(chunk)
                if total > cap:
                    raise FeedError(f"{what} is larger than the cap of {format_size(cap)} (counted after "
                                    "decompression); stopped reading")
                if time.monotonic() > deadline:
                    raise FeedError(f"{what} took longer than {timeout:g}s to arrive")
                chunks.append(chunk)
        except requests.RequestException as error:
            raise _request_error(error, response.url or "", timeout) from None
        return b"".join(chunks)

    # -- memory --------------------------------------------------------------------------------------------

    def _feed_lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._feed_locks.setdefault(name, threading.Lock())

    def _state(self, feed: Feed) -> _FeedState:
        state = self._states.get(feed.name)
        if state is None:
            state = _FeedState.load(self._ledger.meta_get(f"feed:{feed.name}"))
            self._states[feed.name] = state
        return state

    def _save_state(self, feed: Feed, state: _FeedState) -> None:
        self._states[feed.name] = state
        try:
            self._ledger.meta_set(f"feed:{feed.name}", state.dump())
        except LedgerError as error:
            self._log.error("feed state could not be saved", feed=feed.name, error=str(error))

    def _seen_ids(self, feed: Feed) -> _SeenIds:
        seen = self._seen.get(feed.name)
        if seen is None:
            seen = _SeenIds(self._ledger.meta_get(f"feed:{feed.name}:seen"))
            self._seen[feed.name] = seen
        return seen

    def _memory(self) -> _EpisodeMemory | _Overlay:
        """The real episode memory, or for `rss test` the overlay shared by the feeds of one pass."""
        if self._record:
            return self._episode_memory()
        with self._guard:
            if self._overlay is None:
                self._overlay = _Overlay(self._episode_memory())
            return self._overlay

    def _episode_memory(self) -> _EpisodeMemory:
        with self._guard:
            if self._episodes is None:
                self._episodes = _EpisodeMemory(self._ledger.meta_get(EPISODES_META))
            return self._episodes


def _error_result(feed: Feed, message: str, *, status: str = "error") -> PollResult:
    return PollResult(feed.name, status, (), (), 0, 0, message, False)


def _repeats(digests: Sequence[str]) -> list[int]:
    """Indices of entries listed a second time in one document (Prowlarr repeats items)."""
    first: set[str] = set()
    repeats = []
    for index, digest in enumerate(digests):
        if digest in first:
            repeats.append(index)
        first.add(digest)
    return repeats


def _chronological(entries: Sequence[FeedEntry]) -> list[int]:
    """Indices oldest first, so the earliest release of an episode is the one grabbed; undated entries first, in
    reverse document order (feeds list newest first)."""
    def when(index: int) -> float:
        published = entries[index].published
        return published if published is not None else float("-inf")

    return sorted(reversed(range(len(entries))), key=when)


def _jitter(feed: Feed, last_poll: float) -> float:
    fraction = int(_digest(f"{feed.name}\x1f{int(last_poll)}"), 16) / 2**64
    return fraction * min(0.1 * feed.interval, 300.0)


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def rss_test_rows(results: Sequence[PollResult]) -> list[dict[str, Any]]:
    """The `rss test --json` array: one object per entry of every feed that was read."""
    return [
        {"feed": result.feed, "title": entry.title, "link": entry.link, "info_hash": entry.info_hash,
         "size": entry.size, "grab": verdict.grab, "rule": verdict.rule, "reason": verdict.reason}
        for result in results
        for entry, verdict in zip(result.entries, result.verdicts, strict=True)
    ]
