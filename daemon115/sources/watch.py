"""Watch folders: a file dropped into a folder becomes ledger candidates, then moves to ``.done/`` or ``.failed/``.

The rules are interface.md's "Watch folders" and "Settled details". The parts, pure ones first:

- names: which files are drops, which are left alone, which target a drop goes to;
- reading: a drop's bytes (never following symlinks, never blocking on FIFOs, capped) -> links and rejected lines;
- :class:`Resolver`: a ``.torrent-link`` http(s) URL -> the magnet it redirects to (or the torrent it serves);
- :func:`process_drops`: ledger first, then the move, never overwriting anything;
- settling: a file is taken once it is complete (:func:`advance`, :func:`wait_left`);
- :class:`WatchSource`: observers, the settle worker, and the supervisor that rescans and revives folders.

A drop from a subfolder moves to ``.done/<subfolder>/`` (or ``.failed/<subfolder>/``) of its watch folder: the
layout is kept, drops of one name in different subfolders do not collide, and nothing leaves the watch folder.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserverVFS

from daemon115 import __version__
from daemon115.config import WatchFolder
from daemon115.intake import candidate
from daemon115.ledger import InvalidCandidate, Ledger, LedgerBusy, LedgerError
from daemon115.links import MAX_TORRENT_SIZE, Link, LinkError, parse_link, parse_torrent
from daemon115.sources import moves
from daemon115.sources.mounts import filesystem_of, is_network, parse_mounts, read_proc_mounts

MAX_TEXT_SIZE = 1_000_000  # "1 MB": sizes in this project are powers of 1000
WATCHED_SUFFIXES = (".torrent-link", ".torrent", ".magnet")
PARTIAL_SUFFIXES = (".part", ".tmp", ".crdownload", ".!qb")
DONE, FAILED = ".done", ".failed"
LOOK_INTERVAL = 0.1  # how often a settling file is looked at again
MIN_PASS_GAP = 0.02  # a burst of events must not make the worker look at every pending file per event
SUPERVISE_INTERVAL = 1.0  # how often folders are checked for having gone or come back
EMPTY_GRACE = 60.0  # an empty file is someone's "create first, fill later": fail it only after this long
CLOSED_SETTLE = 0.15  # after close-after-write or a move-in, a short re-check replaces the full settle time
WRITING_STALE = 600.0  # a file written to but never closed (its close event lost) is taken after this long
SCAN_PATIENCE = 2.0  # scan() waits this much beyond the settle time for files still changing
GROUP_SIZE = 200  # drops recorded in one ledger commit
RETRY_FIRST, RETRY_MAX = 1.0, 300.0
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_ERRNOS = frozenset({
    errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENOTCONN,
    errno.ENETDOWN, errno.ENETUNREACH, errno.ECONNRESET, errno.ECONNABORTED, errno.EAGAIN, errno.EINTR,
    errno.ENOLCK, errno.EBUSY,
})
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


class _Silent:
    """The logger used when none is given."""

    def info(self, event: str, **fields: object) -> None:
        pass

    warning = error = debug = info


SILENT = _Silent()


# ---------------------------------------------------------------- names (pure)


def drop_kind(name: str) -> str | None:
    """"magnet" | "torrent-link" | "torrent" for a drop's file name; None for a name that is left alone."""
    lowered = name.lower()
    if name.startswith(".") or name.endswith("~") or lowered.endswith(PARTIAL_SUFFIXES):
        return None
    suffix = _watched_suffix(name)
    return suffix[1:] if suffix else None


def _watched_suffix(name: str) -> str | None:
    lowered = name.lower()
    return next((s for s in WATCHED_SUFFIXES if lowered.endswith(s) and len(name) > len(s)), None)


def subfolder_of(folder: WatchFolder, path: Path) -> tuple[str, ...]:
    """The directories between the watch folder and the file; ValueError when the file is not inside it."""
    relative = os.path.relpath(path.parent, folder.path)
    if relative == ".":
        return ()
    parts = tuple(Path(relative).parts)
    if parts[0] == "..":
        raise ValueError(f"{path} is not inside the watch folder {folder.path}")
    return parts


def in_scope(folder: WatchFolder, path: Path) -> bool:
    """Whether a file at ``path`` is a drop of ``folder`` (never anything under a hidden directory)."""
    try:
        parts = subfolder_of(folder, path)
    except ValueError:
        return False
    if parts and not folder.recursive:
        return False
    return not any(part.startswith(".") for part in parts) and drop_kind(path.name) is not None


def target_for(folder: WatchFolder, path: Path) -> str:
    """The deepest subfolder with a target wins; unmapped subfolders take their parent's target."""
    parts = subfolder_of(folder, path)
    for depth in range(len(parts), 0, -1):
        target = folder.subfolders.get(os.path.join(*parts[:depth]))
        if target is not None:
            return target
    return folder.target


# ---------------------------------------------------------------- reading


class DropError(Exception):
    """Why a drop cannot be used now; ``action`` is "failed" (for good), "retry" (may pass) or "ignored"."""

    def __init__(self, reason: str, *, action: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.action = action


class Unreachable(Exception):
    """A resolution that may work later (timeout, refused connection, 5xx): the file stays and is retried."""


@dataclass(frozen=True)
class Rejected:
    line: int  # 1-based
    reason: str


@dataclass(frozen=True)
class Parsed:
    kind: str  # "magnet" | "torrent-link" | "torrent"
    links: tuple[Link, ...]
    rejected: tuple[Rejected, ...] = ()
    identity: tuple[int, ...] = ()  # the file's (dev, inode, size, mtime_ns) when read: a later change shows

    def error_text(self, name: str) -> str:
        """NAME.error for a file with rejected lines: one line per rejected line, saying why."""
        total = len(self.links) + len(self.rejected)
        if self.links:
            head = f"{name}: {len(self.rejected)} of {total} lines rejected (the others were recorded):"
        else:
            head = f"{name}: no usable link ({len(self.rejected)} rejected):"
        return "\n".join([head, *(f"line {r.line}: {r.reason}" for r in self.rejected)]) + "\n"


def read_drop(path: Path, folder: WatchFolder, *, resolver: Resolver | None = None) -> Parsed:
    """A drop's links and its rejected lines; DropError when the file as a whole cannot be used.

    Nothing is written; the network is used only through ``resolver`` (None: http links are kept as they are).
    """
    kind = drop_kind(path.name)
    if kind is None:
        raise DropError("not a watched file name (hidden, partial, or not .magnet/.torrent-link/.torrent)",
                        action="ignored")
    limit = MAX_TORRENT_SIZE if kind == "torrent" else MAX_TEXT_SIZE
    data, identity = read_capped(path, limit, "a .torrent file" if kind == "torrent" else "a text file")
    if kind == "torrent":
        return Parsed(kind, (torrent_link(data),), (), identity)
    resolve = None
    if resolver is not None and kind == "torrent-link":
        resolve = functools.partial(resolver.resolve, torrents=folder.resolve_torrents)
    try:
        parsed = parse_lines(decode_text(data), kind, resolve)
    except Unreachable as exc:
        raise DropError(str(exc), action="retry") from exc
    return replace(parsed, identity=identity)


def read_capped(path: Path, limit: int, what: str) -> tuple[bytes, tuple[int, ...]]:
    """The bytes of a regular file, without following a symlink or blocking on a FIFO; over ``limit`` fails."""
    before = _lstat(path)
    _check_regular(path, before)
    if before.st_size > limit:
        raise DropError(f"the file is {before.st_size} bytes, over the {limit}-byte limit for {what}")
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        raise _os_problem(exc, "cannot open the file") from exc
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise DropError("the file was replaced while it was being read", action="retry")
        data = _read_at_most(fd, limit + 1)
    except OSError as exc:
        raise _os_problem(exc, "cannot read the file") from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise DropError(f"the file is over the {limit}-byte limit for {what}")
    return data, signature(opened)


def _read_at_most(fd: int, count: int) -> bytes:
    chunks, left = [], count
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except FileNotFoundError as exc:
        raise DropError("the file is gone", action="ignored") from exc
    except OSError as exc:
        raise _os_problem(exc, "cannot look at the file") from exc


def _check_regular(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        try:
            points_to = f" (it points to {os.readlink(path)!r})"
        except OSError:
            points_to = ""
        raise DropError(f"the file is a symlink{points_to}; symlinks are never followed: drop the file itself")
    if stat.S_ISDIR(st.st_mode):
        raise DropError("a directory, not a file", action="ignored")
    if not stat.S_ISREG(st.st_mode):
        raise DropError(f"not a regular file but a {_file_type(st.st_mode)}; such files are never opened")


def _file_type(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _os_problem(exc: OSError, doing: str) -> DropError:
    if exc.errno == errno.ENOENT:
        return DropError("the file is gone", action="ignored")
    if exc.errno == errno.ELOOP:
        return DropError("the file was replaced by a symlink while it was being read", action="retry")
    code = errno.errorcode.get(exc.errno or 0, "?")
    action = "retry" if exc.errno in _TRANSIENT_ERRNOS else "failed"
    return DropError(f"{doing}: {exc.strerror or exc} ({code})", action=action)


def decode_text(data: bytes) -> str:
    """UTF-8 text (a BOM is allowed); the reason names what the bytes look like instead."""
    if not data:
        raise DropError("the file is empty")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DropError("the file is UTF-16 text; save it as UTF-8")
    if data.lstrip()[:1] == b"d" and b"4:info" in data[:65536]:
        raise DropError("this is a torrent file (bencoded data), not text with links: name it NAME.torrent")
    nul = data.find(b"\0")
    if nul >= 0:
        raise DropError(f"binary data (a NUL byte at offset {nul}), not text with links")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DropError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} is invalid") from exc


def parse_lines(text: str, kind: str, resolve: Callable[[Link], Link] | None = None) -> Parsed:
    """One link per line; blank and ``#`` lines ignored; repeats of one link within the file are dropped."""
    links: dict[str, Link] = {}
    rejected = []
    for number, raw in enumerate(_LINE_BREAK.split(text), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            link = parse_link(line)
            if kind == "magnet" and link.kind != "magnet":
                raise LinkError(f"a .magnet file holds magnet links, and this is an {link.kind} link "
                                "(put it in a .torrent-link file)")
            if resolve is not None and link.kind == "http":
                link = resolve(link)
        except LinkError as exc:
            rejected.append(Rejected(number, exc.reason))
            continue
        links.setdefault(link.key, link)
    if not links and not rejected:
        raise DropError("no links in the file, only blank lines and comments")
    return Parsed(kind, tuple(links.values()), tuple(rejected))


def torrent_link(data: bytes) -> Link:
    try:
        return parse_torrent(data).to_link()
    except LinkError as exc:
        raise DropError(exc.reason) from exc


def signature(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is written, truncated, replaced or touched."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------- resolving .torrent-link URLs


class Resolver:
    """An indexer's http(s) link -> the magnet it redirects to, or (``torrents=True``) the torrent it serves.

    115 cannot follow an http redirect to a magnet, so such links are resolved here. Bodies are never downloaded,
    except a torrent's when asked, and then capped; hops and time are bounded. Query strings never appear in
    messages: private trackers put passkeys there.
    """

    def __init__(self, *, timeout: float = 15.0, max_hops: int = 5, max_torrent_size: int = MAX_TORRENT_SIZE,
                 user_agent: str = f"daemon115/{__version__}") -> None:
        self._timeout = timeout
        self._max_hops = max_hops
        self._max_torrent_size = max_torrent_size
        self._session = requests.Session()
        self._session.headers["User-Agent"] = user_agent
        self._lock = threading.Lock()  # a requests.Session is not meant to be shared between threads

    def close(self) -> None:
        self._session.close()

    def resolve(self, link: Link, *, torrents: bool = False) -> Link:
        """The link to record instead of ``link``: a magnet when found, else ``link`` itself (115 fetches it).

        LinkError when the URL is broken for good (4xx, a redirect loop, a bad torrent); Unreachable when trying
        again later may help.
        """
        url = link.url
        with self._lock:
            for _ in range(self._max_hops + 1):
                with self._get(url) as response:
                    location = response.headers.get("Location")
                    if response.status_code in _REDIRECTS and location:
                        target = _redirect_target(url, location)
                        if urlsplit(target).scheme.lower() not in ("http", "https"):
                            return _redirected_link(url, target)
                        url = target
                        continue
                    _check_status(response.status_code, url)
                    if torrents and 200 <= response.status_code < 300:
                        return self._served_torrent(response, url) or link
                    return link
        raise LinkError(f"{safe_url(link.url)} redirects more than {self._max_hops} times")

    def _get(self, url: str) -> requests.Response:
        try:
            return self._session.get(url, stream=True, allow_redirects=False, timeout=self._timeout)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise Unreachable(f"{safe_url(url)} could not be reached ({type(exc).__name__}); "
                              "the file stays and is tried again") from exc
        except requests.RequestException as exc:
            raise LinkError(f"{safe_url(url)} cannot be fetched: {type(exc).__name__}") from exc
        except ValueError as exc:  # urllib's "Invalid IPv6 URL", from inside requests
            raise LinkError(f"{safe_url(url)} is not a URL that can be fetched") from exc

    def _served_torrent(self, response: requests.Response, url: str) -> Link | None:
        """The magnet of a torrent body; None for any other body (a direct download 115 can fetch itself)."""
        chunks = response.iter_content(chunk_size=65536)
        try:
            first = next(chunks, b"")
            if first.lstrip()[:1] != b"d":
                return None
            data = bytearray(first)
            deadline = time.monotonic() + 2 * self._timeout
            for chunk in chunks:
                data += chunk
                if len(data) > self._max_torrent_size:
                    raise LinkError(f"{safe_url(url)} serves a torrent over the {self._max_torrent_size}-byte limit")
                if time.monotonic() > deadline:
                    raise Unreachable(f"{safe_url(url)} is too slow sending its torrent; tried again later")
        except requests.RequestException as exc:
            raise Unreachable(f"{safe_url(url)} broke off while sending its torrent ({type(exc).__name__})") from exc
        try:
            return parse_torrent(bytes(data), max_size=self._max_torrent_size).to_link()
        except LinkError as exc:
            raise LinkError(f"{safe_url(url)} serves a broken torrent: {exc.reason}") from exc


def _redirect_target(url: str, location: str) -> str:
    try:
        target = urljoin(url, location.strip())
        urlsplit(target)
    except ValueError:  # "http://[broken/..."
        raise LinkError(f"{safe_url(url)} redirects to a URL that does not parse") from None
    return target


def _redirected_link(url: str, target: str) -> Link:
    try:
        return parse_link(target)
    except LinkError as exc:
        raise LinkError(f"{safe_url(url)} redirects to an unusable link: {exc.reason}") from exc


def _check_status(status: int, url: str) -> None:
    if status >= 500 or status in (408, 425, 429):
        raise Unreachable(f"{safe_url(url)} answered HTTP {status}; the file stays and is tried again")
    if status >= 400:
        raise LinkError(f"{safe_url(url)} answered HTTP {status}")


def safe_url(url: str) -> str:
    """scheme://host/path, without user info or query (where private trackers keep passkeys)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "a URL that does not parse"
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" + ("?…" if parts.query else "")


# ---------------------------------------------------------------- processing: ledger first, then the move


@dataclass(frozen=True)
class DropOutcome:
    path: Path
    action: str  # "queued" | "duplicate" | "failed" | "retry" | "ignored"
    queued: int = 0
    duplicates: int = 0
    rejected: int = 0
    reason: str = ""
    moved_to: Path | None = None


@dataclass(frozen=True)
class _Read:
    path: Path
    folder: WatchFolder
    parsed: Parsed | None = None
    problem: DropError | None = None


def process_drop(path: Path, folder: WatchFolder, ledger: Ledger, *, resolver: Resolver | None = None,
                 log: Any = None) -> DropOutcome:
    """The whole rule for one dropped file (see :func:`process_drops`)."""
    return process_drops([(path, folder)], ledger, resolver=resolver, log=log)[0]


def process_drops(drops: Sequence[tuple[Path, WatchFolder]], ledger: Ledger, *, resolver: Resolver | None = None,
                  log: Any = None) -> list[DropOutcome]:
    """Record the links of every drop in one ledger commit, then move each file where it belongs.

    One commit (one fsync) for a whole burst of files; a drop whose links break a ledger rule fails alone.
    Nothing moves before the commit: a crash in between leaves the files to be read again, as duplicates.
    """
    log = log or SILENT
    reads = [_read(Path(path), folder, resolver) for path, folder in drops]
    recorded: dict[int, tuple[int, int] | DropError] = {}
    with_links = [i for i, r in enumerate(reads) if r.parsed is not None and r.parsed.links]
    if with_links:
        try:
            with ledger.transaction():
                for i in with_links:
                    recorded[i] = _record(ledger, reads[i])
        except LedgerBusy as exc:
            recorded = dict.fromkeys(with_links, DropError(f"the ledger is busy ({exc})", action="retry"))
        except LedgerError as exc:
            recorded = dict.fromkeys(with_links, DropError(f"the ledger failed: {exc}", action="retry"))
    return [_finish(read, recorded.get(i), log) for i, read in enumerate(reads)]


def _read(path: Path, folder: WatchFolder, resolver: Resolver | None) -> _Read:
    try:
        return _Read(path, folder, parsed=read_drop(path, folder, resolver=resolver))
    except DropError as problem:
        return _Read(path, folder, problem=problem)


def _record(ledger: Ledger, read: _Read) -> tuple[int, int] | DropError:
    assert read.parsed is not None
    source = "watch:" + os.path.abspath(read.path)
    target = target_for(read.folder, read.path)
    try:
        results = ledger.record([candidate(link, target=target, source=source) for link in read.parsed.links])
    except InvalidCandidate as exc:
        return DropError(str(exc))
    queued = sum(1 for r in results if r.outcome != "duplicate")
    return queued, len(results) - queued


def _finish(read: _Read, recorded: tuple[int, int] | DropError | None, log: Any) -> DropOutcome:
    path, name = read.path, read.path.name
    problem = read.problem or (recorded if isinstance(recorded, DropError) else None)
    if problem is not None and problem.action != "failed":
        return _report(DropOutcome(path, problem.action, reason=problem.reason), log)
    if problem is not None:
        outcome = DropOutcome(path, "failed", reason=problem.reason)
        return _report(_aside(read, FAILED, f"{name}: {problem.reason}\n", outcome), log)
    parsed = read.parsed
    assert parsed is not None
    rejected = len(parsed.rejected)
    if recorded is None:
        outcome = DropOutcome(path, "failed", rejected=rejected, reason=_first_reasons(parsed))
        return _report(_aside(read, FAILED, parsed.error_text(name), outcome), log)
    queued, duplicates = recorded
    if _changed(path, parsed.identity):
        reason = "the file changed while it was being read; its links so far are recorded, it is read again"
        return _report(DropOutcome(path, "retry", queued, duplicates, rejected, reason), log)
    outcome = DropOutcome(path, "queued" if queued else "duplicate", queued, duplicates, rejected,
                          reason=f"{rejected} line(s) rejected, see the .error file" if rejected else "")
    return _report(_aside(read, DONE, parsed.error_text(name) if rejected else None, outcome), log)


def _first_reasons(parsed: Parsed) -> str:
    shown = "; ".join(f"line {r.line}: {r.reason}" for r in parsed.rejected[:3])
    return shown + (f"; and {len(parsed.rejected) - 3} more" if len(parsed.rejected) > 3 else "")


def _changed(path: Path, identity: tuple[int, ...]) -> bool:
    try:
        return signature(os.lstat(path)) != identity
    except OSError:
        return False  # gone already: nothing left to move


def _aside(read: _Read, bucket: str, error: str | None, outcome: DropOutcome) -> DropOutcome:
    try:
        return replace(outcome, moved_to=move_aside(read.path, read.folder, bucket, error))
    except OSError as exc:
        note = f"moving it to {bucket}/ failed ({exc.strerror or exc}); it stays where it is"
        return replace(outcome, reason=f"{outcome.reason}; {note}" if outcome.reason else note)


def _report(outcome: DropOutcome, log: Any) -> DropOutcome:
    fields: dict[str, object] = {"path": str(outcome.path), "queued": outcome.queued,
                                 "duplicates": outcome.duplicates, "rejected": outcome.rejected}
    if outcome.moved_to is not None:
        fields["moved_to"] = str(outcome.moved_to)
    if outcome.reason:
        fields["reason"] = outcome.reason
    if outcome.action == "queued":
        log.info("drop_queued", **fields)
    elif outcome.action == "duplicate":
        log.info("drop_duplicate", **fields)
    elif outcome.action == "failed":
        log.warning("drop_failed", **fields)
    elif outcome.action == "retry":
        log.info("drop_retry", **fields)
    if outcome.action in ("queued", "duplicate", "failed") and outcome.moved_to is None:
        log.warning("drop_move_failed", path=str(outcome.path), reason=outcome.reason)
    return outcome


# ---------------------------------------------------------------- moving without overwriting


def move_aside(path: Path, folder: WatchFolder, bucket: str, error: str | None = None) -> Path:
    """Move a drop to ``bucket/<its subfolder>/`` under a free name (" (1)", " (2)"...), with NAME.error."""
    names = (numbered(path.name, number) for number in range(100_000))
    return moves.move_aside(path, Path(folder.path), subfolder_of(folder, path), bucket, names, error)


def numbered(name: str, number: int) -> str:
    """``x.magnet`` -> ``x (2).magnet``: the number goes before the watched suffix, so the name stays a drop."""
    if number == 0:
        return name
    cut = len(name) - len(_watched_suffix(name) or "")
    return f"{name[:cut]} ({number}){name[cut:]}"


# ---------------------------------------------------------------- finding drops and waiting for them to settle


def list_drops(folder: WatchFolder) -> list[Path]:
    """Every drop in the folder now (symlinks and special files included: they go to .failed/)."""
    return _walk(folder)[1]


def list_dirs(folder: WatchFolder) -> list[Path]:
    """The folder and, when recursive, every subfolder that is watched (hidden ones and symlinks never are)."""
    return _walk(folder)[0]


def _walk(folder: WatchFolder) -> tuple[list[Path], list[Path]]:
    directories: list[Path] = []
    found: list[Path] = []
    pending = [Path(folder.path)]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if folder.recursive and not entry.name.startswith("."):
                            pending.append(Path(entry.path))
                    elif drop_kind(entry.name) is not None:
                        found.append(Path(entry.path))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        directories.append(directory)
    return sorted(directories), sorted(found)


@dataclass(frozen=True)
class Look:
    """One lstat of a settling file."""

    kind: str  # "file" | "other" (symlink, FIFO, device: taken at once) | "directory" | "missing"
    signature: tuple[int, ...] = ()
    size: int = 0
    changed: float = 0.0  # ctime: set by the kernel on every write, truncate, rename or touch


def look_at(path: Path) -> Look:
    try:
        st = os.lstat(path)
    except OSError:
        return Look("missing")
    if stat.S_ISDIR(st.st_mode):
        return Look("directory")
    if not stat.S_ISREG(st.st_mode):
        return Look("other")
    return Look("file", signature(st), st.st_size, st.st_ctime)


@dataclass(frozen=True)
class Pending:
    """A file waiting to be taken."""

    folder: str  # the watch folder's path, as a key
    writing: bool = False  # written to and not yet closed (inotify only)
    closed: bool = False  # closed after writing, renamed in, or created and not written to since (inotify only)
    signature: tuple[int, ...] = ()
    held_since: float = 0.0  # monotonic time since which the signature has not changed
    not_before: float = 0.0  # monotonic: a retry waits until then
    attempts: int = 0


def advance(entry: Pending, seen: Look, *, now: float, wall: float, by_ctime: bool) -> Pending:
    """Note a look at the file: a new signature restarts the settle time.

    On a local filesystem the kernel's ctime says when the file last changed, so a file that has been still for
    a while is taken at once; on a network filesystem that clock is the server's, so only our own looks count.
    """
    if seen.signature == entry.signature:
        return entry
    held_since = now
    if by_ctime and seen.changed <= wall:
        held_since = now - (wall - seen.changed)
    return replace(entry, signature=seen.signature, held_since=held_since)


def wait_left(entry: Pending, seen: Look, *, now: float, wall: float, settle: float,
              empty_grace: float) -> float | None:
    """Seconds until the file may be taken (0: now); None when it is not to be taken (gone, a directory)."""
    if seen.kind in ("missing", "directory"):
        return None
    left = entry.not_before - now
    if seen.kind == "file":
        if entry.writing and wall - seen.changed < WRITING_STALE:
            return max(LOOK_INTERVAL, left)
        hold = empty_grace if seen.size == 0 else min(settle, CLOSED_SETTLE) if entry.closed else settle
        left = max(left, entry.held_since + hold - now)
    return max(0.0, left)


# ---------------------------------------------------------------- the running source


@dataclass
class _FolderState:
    folder: WatchFolder
    observer: BaseObserver | None = None
    watches: dict[Path, ObservedWatch] = field(default_factory=dict)  # inotify: one per watched directory
    identity: tuple[int, int] | None = None
    missing: bool = False
    polling: bool = False
    next_scan: float = 0.0
    resync: bool = False  # a directory came or went: the supervisor adjusts the watches


class WatchSource:
    """Every watch folder, watched: events and rescans feed one settle worker, which takes ready files.

    Threads: watchdog's observers only note paths; the worker looks at noted files every ~100 ms and processes
    those that settled; the supervisor checks once a second that each folder is still there (reviving its
    observer when it comes back) and runs the periodic rescan.

    Recursive folders under inotify get one watch per visible directory, added and removed by the supervisor as
    subfolders come and go, rather than watchdog's recursive watch: that one would watch .done/ and .failed/ too.
    """

    def __init__(self, folders: Sequence[WatchFolder], ledger: Ledger, *, on_queued: Callable[[], None] = lambda: None,
                 log: Any = None, mounts: Callable[[], str] = read_proc_mounts, resolver: Resolver | None = None,
                 empty_grace: float = EMPTY_GRACE) -> None:
        self._ledger = ledger
        self._on_queued = on_queued
        self._log = log or SILENT
        self._mounts = mounts
        self._resolver = resolver if resolver is not None else Resolver()
        self._empty_grace = empty_grace
        self._folders: dict[str, _FolderState] = {_key(f): _FolderState(f) for f in folders}
        self._lock = threading.RLock()  # guards _folders and observers
        self._changed = threading.Condition()  # guards _pending; notified when a file is noted
        self._pending: dict[Path, Pending] = {}
        self._process_lock = threading.Lock()  # one processor at a time: the worker, or scan()
        self._stopping = threading.Event()
        self._wake_supervisor = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- public -------------------------------------------------------------------------------------------------

    def scan(self) -> list[DropOutcome]:
        """Every folder once, now: files that are complete are taken; the call waits briefly for fresh ones."""
        with self._lock:
            folders = [state.folder for state in self._folders.values()]
        found: list[tuple[Path, WatchFolder]] = []
        for folder in folders:
            if not Path(folder.path).is_dir():
                self._log.warning("watch_folder_missing", path=str(folder.path))
                continue
            found.extend((path, folder) for path in list_drops(folder))
        return self._take_settled(found)

    def start(self) -> None:
        """Observers for every folder there is, then a start-up scan (by the supervisor) and the worker."""
        self._stopping.clear()
        with self._lock:
            for state in self._folders.values():
                self._revive(state)
        for name, target in (("watch-settle", self._work), ("watch-supervisor", self._supervise)):
            thread = threading.Thread(target=target, name=f"daemon115-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake_supervisor.set()
        with self._changed:
            self._changed.notify_all()
        with self._lock:
            for state in self._folders.values():
                self._stop_observer(state, timeout)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def update(self, folders: Sequence[WatchFolder]) -> None:
        """A new config (SIGHUP): added folders start and are scanned, removed ones stop, changed ones restart."""
        wanted = {_key(f): f for f in folders}
        running = bool(self._threads)
        with self._lock:
            for key in [k for k, state in self._folders.items() if wanted.get(k) != state.folder]:
                self._stop_observer(self._folders.pop(key))
                self._forget_folder(key)
            for key, folder in wanted.items():
                if key not in self._folders:
                    state = self._folders[key] = _FolderState(folder)
                    if running:
                        self._revive(state)

    # -- noting files -------------------------------------------------------------------------------------------

    def _note(self, path: Path, folder_key: str, event: str) -> None:
        """A watched file was seen: "created", "modified", "closed", "moved", "scan" or "poll"."""
        with self._changed:
            entry = self._pending.get(path)
            # watchdog reports a rename-in it could not pair as "created"; a writer that goes on writing after
            # creating the name sends "modified", which holds the file until it is closed
            closed = event in ("closed", "moved", "created")
            if entry is None or entry.folder != folder_key:
                entry = Pending(folder_key, writing=event == "modified", closed=closed)
            elif event == "modified":
                entry = replace(entry, writing=True, closed=False)
            elif event in ("closed", "moved", "created", "poll"):  # new content: a pending retry starts over
                entry = replace(entry, writing=False, closed=closed, not_before=0.0, attempts=0)
            self._pending[path] = entry
            self._changed.notify()

    def _forget(self, path: Path) -> None:
        with self._changed:
            self._pending.pop(path, None)

    def _forget_folder(self, key: str) -> None:
        with self._changed:
            for path in [p for p, entry in self._pending.items() if entry.folder == key]:
                del self._pending[path]

    def _on_event(self, key: str, event: FileSystemEvent) -> None:
        # No self._lock here: the supervisor holds it while it joins observer threads, which call this.
        state = self._folders.get(key)
        if state is None:
            return
        folder = state.folder
        kind = event.event_type
        source = Path(os.fsdecode(event.src_path))
        if event.is_directory:
            if source == Path(folder.path) and kind in ("deleted", "moved"):
                self._wake_supervisor.set()  # the folder itself went: say so and watch for its return now
            elif folder.recursive:
                self._directory_changed(state, key, kind, source, event)
            return
        if kind in ("deleted", "moved"):
            self._forget(source)
        if kind == "moved":
            source = Path(os.fsdecode(event.dest_path))
        if kind in ("created", "modified", "closed", "moved") and in_scope(folder, source):
            self._note(source, key, "poll" if state.polling else kind)

    def _directory_changed(self, state: _FolderState, key: str, kind: str, source: Path,
                           event: FileSystemEvent) -> None:
        """A subfolder came (its drops are noted now) or went: the supervisor adjusts the watches at once."""
        if kind in ("created", "moved"):
            destination = Path(os.fsdecode(event.dest_path)) if kind == "moved" else source
            for path in list_drops(replace(state.folder, path=destination)):
                if in_scope(state.folder, path):
                    self._note(path, key, "scan")
        if kind in ("created", "moved", "deleted") and not state.polling:
            state.resync = True
            self._wake_supervisor.set()

    # -- the settle worker --------------------------------------------------------------------------------------

    def _work(self) -> None:
        last_pass = 0.0
        while not self._stopping.is_set():
            with self._changed:
                if not self._pending:
                    self._changed.wait()
                    continue
            gap = last_pass + MIN_PASS_GAP - time.monotonic()
            if gap > 0 and self._stopping.wait(gap):
                return
            last_pass = time.monotonic()
            ready, wait = self._ready_now()
            if ready:
                self._process(ready)
            else:
                with self._changed:
                    self._changed.wait(wait)

    def _ready_now(self) -> tuple[list[tuple[Path, Pending]], float]:
        """Look at every pending file; take the ready ones off the list. Also: how long until the next is due."""
        with self._changed:
            snapshot = list(self._pending.items())
        with self._lock:
            states = dict(self._folders)
        now, wall = time.monotonic(), time.time()
        ready, wait = [], LOOK_INTERVAL
        updates: dict[Path, Pending | None] = {}
        for path, entry in snapshot:
            state = states.get(entry.folder)
            seen = look_at(path)
            advanced = advance(entry, seen, now=now, wall=wall, by_ctime=not (state and state.polling))
            left = None if state is None else wait_left(advanced, seen, now=now, wall=wall,
                                                          settle=state.folder.settle, empty_grace=self._empty_grace)
            if left is None:
                updates[path] = None
            elif left <= 0:
                updates[path] = None
                ready.append((path, advanced))
            else:
                updates[path] = advanced
                wait = min(wait, left)
        taken = []
        with self._changed:
            for path, entry in snapshot:
                if self._pending.get(path) is not entry:
                    continue  # noted again meanwhile (written to again, say): the next pass decides
                new = updates[path]
                if new is not None:
                    self._pending[path] = new
                    continue
                del self._pending[path]
                taken.extend(item for item in ready if item[0] == path)
        return taken, max(0.01, wait)

    def _process(self, ready: list[tuple[Path, Pending]]) -> None:
        with self._lock:
            states = dict(self._folders)
        drops = [(path, states[e.folder].folder) for path, e in ready if e.folder in states]
        entries = {path: e for path, e in ready}
        for start in range(0, len(drops), GROUP_SIZE):
            if self._stopping.is_set():
                return
            group = drops[start:start + GROUP_SIZE]
            try:
                outcomes = self._process_group(group)
            except Exception as exc:  # a bug must not stop the watch: report it, try again later
                self._log.error("watch_error", error=f"{type(exc).__name__}: {exc}", files=len(group))
                outcomes = [DropOutcome(path, "retry", reason=str(exc)) for path, _ in group]
            for outcome in outcomes:
                if outcome.action == "retry":
                    self._retry_later(outcome.path, entries[outcome.path])

    def _process_group(self, group: list[tuple[Path, WatchFolder]]) -> list[DropOutcome]:
        with self._process_lock:
            outcomes = process_drops(group, self._ledger, resolver=self._resolver, log=self._log)
        if any(o.queued for o in outcomes):
            self._on_queued()
        return outcomes

    def _retry_later(self, path: Path, entry: Pending) -> None:
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** entry.attempts)
        with self._changed:
            if path not in self._pending:
                self._pending[path] = replace(entry, not_before=time.monotonic() + delay, attempts=entry.attempts + 1,
                                              signature=())
                self._changed.notify()

    def _take_settled(self, found: list[tuple[Path, WatchFolder]]) -> list[DropOutcome]:
        """scan(): take files as they settle, waiting a little for fresh ones; still-changing ones are left."""
        waiting = {path: (folder, Pending(_key(folder))) for path, folder in found}
        polling = {_key(folder): self._is_polling(folder) for _, folder in found}
        deadline = time.monotonic() + max((f.settle for f, _ in waiting.values()), default=0.0) + SCAN_PATIENCE
        outcomes: list[DropOutcome] = []
        while waiting:
            now, wall = time.monotonic(), time.time()
            ready: list[tuple[Path, WatchFolder]] = []
            for path, (folder, entry) in list(waiting.items()):
                seen = look_at(path)
                entry = advance(entry, seen, now=now, wall=wall, by_ctime=not polling[entry.folder])
                left = wait_left(entry, seen, now=now, wall=wall, settle=folder.settle, empty_grace=self._empty_grace)
                if left is not None and left > 0:
                    waiting[path] = (folder, entry)
                    continue
                del waiting[path]
                if left is None:
                    continue
                if self._being_written(path):
                    outcomes.append(DropOutcome(path, "retry", reason="still being written"))
                else:
                    ready.append((path, folder))
            for start in range(0, len(ready), GROUP_SIZE):
                outcomes += self._process_group(ready[start:start + GROUP_SIZE])
            if not waiting:
                break
            if time.monotonic() >= deadline:
                outcomes += [DropOutcome(p, "retry", reason="still changing; left for the next scan") for p in waiting]
                break
            time.sleep(LOOK_INTERVAL)
        return outcomes

    def _being_written(self, path: Path) -> bool:
        with self._changed:
            entry = self._pending.get(path)
        return entry is not None and entry.writing

    def _is_polling(self, folder: WatchFolder) -> bool:
        with self._lock:
            state = self._folders.get(_key(folder))
        if state is not None and state.observer is not None:
            return state.polling
        return self._choose_polling(folder)[0]

    # -- observers and the supervisor ---------------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self._wake_supervisor.clear()
            with self._lock:
                states = list(self._folders.values())
            for state in states:
                if self._stopping.is_set():
                    return
                self._supervise_one(state)
            self._wake_supervisor.wait(SUPERVISE_INTERVAL)

    def _supervise_one(self, state: _FolderState) -> None:
        now = time.monotonic()
        with self._lock:
            if self._folders.get(_key(state.folder)) is not state:
                return  # removed by update() meanwhile
            self._check(state)
            if state.missing:
                return
            due = now >= state.next_scan
            if due:
                every = state.folder.rescan_every
                state.next_scan = now + every if every > 0 else float("inf")
            if due or state.resync:
                state.resync = False
                self._sync_watches(state)
        if due:
            key = _key(state.folder)
            for path in list_drops(state.folder):
                self._note(path, key, "scan")

    def _check(self, state: _FolderState) -> None:
        """A folder that went away stops its observer; one that is back (or was replaced) gets a new one."""
        identity = _identity(state.folder.path)
        if identity is None:
            if not state.missing:
                self._log.warning("watch_folder_missing", path=str(state.folder.path))
                self._stop_observer(state)
                state.missing = True
        elif state.missing or (state.identity is not None and identity != state.identity):
            self._log.info("watch_folder_back", path=str(state.folder.path), replaced=not state.missing)
            self._revive(state)
        elif not _root_alive(state):
            self._revive(state)

    def _revive(self, state: _FolderState) -> None:
        """A fresh observer, then a scan of what is already there (no event will come for it)."""
        self._stop_observer(state)
        identity = _identity(state.folder.path)
        if identity is None:
            if not state.missing:
                self._log.warning("watch_folder_missing", path=str(state.folder.path))
            state.missing = True
            return
        state.missing = False
        state.identity = identity
        state.next_scan = 0.0
        try:
            self._start_observer(state)
        except OSError as exc:
            self._log.warning("watch_error", path=str(state.folder.path), error=f"cannot watch: {exc}")
            state.identity = None  # try again at the next check

    def _start_observer(self, state: _FolderState) -> None:
        folder = state.folder
        polling, reason, fstype = self._choose_polling(folder)
        if not polling:
            try:
                state.observer, state.polling, state.watches = Observer(), False, {}
                state.observer.start()
                self._sync_watches(state, strict=True)
                return
            except OSError as exc:  # out of inotify watches or instances: polling still works
                self._stop_observer(state)
                polling, reason = True, f"inotify failed: {exc}"
        self._log.info("watch_polling", path=str(folder.path), fstype=fstype, reason=reason,
                       interval=folder.poll_interval)
        observer = PollingObserverVFS(os.lstat, _visible_entries, polling_interval=folder.poll_interval)
        observer.schedule(_Handler(self, _key(folder)), str(folder.path), recursive=folder.recursive)
        observer.start()
        state.observer, state.polling, state.watches = observer, True, {}

    def _sync_watches(self, state: _FolderState, *, strict: bool = False) -> None:
        """One inotify watch per visible directory: new subfolders get one (and their drops are noted)."""
        observer = state.observer
        if observer is None or state.polling:
            return
        wanted = list_dirs(state.folder)
        alive = {e.watch for e in list(observer.emitters) if e.is_alive()}
        for directory, watch in list(state.watches.items()):
            if directory not in wanted or watch not in alive:  # gone, or deleted and made again
                del state.watches[directory]
                with contextlib.suppress(KeyError, OSError):
                    observer.unschedule(watch)
        key = _key(state.folder)
        for directory in wanted:
            if directory in state.watches:
                continue
            try:
                state.watches[directory] = observer.schedule(_Handler(self, key), str(directory), recursive=False)
            except OSError:
                if strict and directory == Path(state.folder.path):
                    raise
                continue  # gone again already; or out of watches, and the rescan still finds its drops
            if directory != Path(state.folder.path):
                for path in list_drops(replace(state.folder, path=directory, recursive=False)):
                    self._note(path, key, "scan")

    def _choose_polling(self, folder: WatchFolder) -> tuple[bool, str, str]:
        """(poll?, why, fstype): ``poll`` from the config wins; else a network filesystem is polled."""
        mount = filesystem_of(os.path.realpath(folder.path), parse_mounts(self._mounts()))
        fstype = mount.fstype if mount else "unknown"
        if folder.poll is not None:
            return folder.poll, "poll: true in the config", fstype
        return is_network(fstype), f"{fstype} is a network filesystem (inotify does not see remote changes)", fstype

    def _stop_observer(self, state: _FolderState, timeout: float = 5.0) -> None:
        observer, state.observer = state.observer, None
        _stop_quietly(observer, timeout)


class _Handler(FileSystemEventHandler):
    def __init__(self, source: WatchSource, key: str) -> None:
        super().__init__()
        self._source = source
        self._key = key

    def dispatch(self, event: FileSystemEvent) -> None:
        self._source._on_event(self._key, event)


def _key(folder: WatchFolder) -> str:
    return os.path.abspath(folder.path)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # a watch folder may itself be a symlink (to a mount, say)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _root_alive(state: _FolderState) -> bool:
    """Whether the folder itself is still watched (a subfolder's watch ends when it is deleted; that is fine)."""
    observer = state.observer
    if observer is None or not observer.is_alive():
        return False
    root = str(state.folder.path)
    return any(e.watch.path == root and e.is_alive() for e in list(observer.emitters))


def _stop_quietly(observer: BaseObserver | None, timeout: float = 5.0) -> None:
    if observer is None:
        return
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout)
    except (OSError, RuntimeError):
        pass


def _visible_entries(path: str | None) -> Iterator[os.DirEntry[str]]:
    """What the polling observer lists: hidden names (.done/, .failed/, partial files) are never looked at."""
    with os.scandir(path) as entries:
        visible = [entry for entry in entries if not entry.name.startswith(".")]
    return iter(visible)
