"""The ledger: the durable queue between sources and submission, and the record of every link.

One SQLite file (WAL) shared by the daemon and CLI commands run beside it. A link is committed here
before anything else happens to it, so every other part can crash, restart and find its place.

States: ``queued`` -> ``submitting`` (committed, with a batch id, before the HTTP call) ->
``submitted`` | ``failed`` | back to ``queued`` with a next-attempt time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Mapping, Sequence

from daemon115.fsutil import make_private_dirs

STATUSES = ("queued", "submitting", "submitted", "failed")
FINISHED = ("submitted", "failed")
TASK_STATUS_NAMES = {-1: "failed", 0: "queued", 1: "downloading", 2: "completed"}

# Forward migrations: MIGRATIONS[n] takes a database from version n to n + 1 (PRAGMA user_version).
# Never edit a released step; append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the queue, its history and batches
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE links (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE CONSTRAINT key_present CHECK (key <> ''),
            url TEXT NOT NULL CONSTRAINT url_present CHECK (url <> ''),
            info_hash TEXT CONSTRAINT info_hash_hex
                CHECK (info_hash IS NULL OR (length(info_hash) = 40 AND info_hash NOT GLOB '*[^0-9a-f]*')),
            status TEXT NOT NULL CONSTRAINT status_known
                CHECK (status IN ('queued', 'submitting', 'submitted', 'failed')),
            target TEXT NOT NULL CONSTRAINT target_present CHECK (target <> ''),
            source TEXT NOT NULL CONSTRAINT source_present CHECK (source <> ''),
            name TEXT,
            rule TEXT,
            target_path TEXT,
            size INTEGER CONSTRAINT size_not_negative CHECK (size IS NULL OR size >= 0),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            batch_id TEXT,
            reason TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            queued_at REAL NOT NULL,
            submitted_at REAL,
            finished_at REAL,
            pruned_at REAL
        )""",
        # Claims, due_targets and counts read only this index.
        "CREATE INDEX links_queue ON links (status, target, queued_at, next_attempt_at)",
        "CREATE INDEX links_submitting ON links (batch_id) WHERE status = 'submitting'",
        # Keys are random, so every indexed byte costs random page writes on insert: info hashes equal
        # to the key are found by key, and a URL's first 64 characters (a magnet's hash) find it.
        "CREATE INDEX links_info_hash ON links (info_hash) WHERE info_hash IS NOT NULL AND info_hash <> key",
        "CREATE INDEX links_url ON links (substr(url, 1, 64))",
        "CREATE INDEX links_unpruned ON links (finished_at) WHERE finished_at IS NOT NULL AND pruned_at IS NULL",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            link_id INTEGER NOT NULL REFERENCES links (id) ON DELETE CASCADE,
            at REAL NOT NULL,
            kind TEXT NOT NULL CONSTRAINT kind_present CHECK (kind <> ''),
            detail TEXT NOT NULL DEFAULT '{}'
        )""",
        # By link id, not key: a new link's events then land at the end of the index, not at random.
        "CREATE INDEX events_link ON events (link_id, id)",
        """CREATE TABLE batches (
            batch_id TEXT PRIMARY KEY,
            target TEXT NOT NULL,
            created_at REAL NOT NULL,
            size INTEGER NOT NULL,
            finished_at REAL
        )""",
    ),
    (  # 2: what the cloud task list says about each link (the reconciler)
        "ALTER TABLE links ADD COLUMN task_status INTEGER",
        "ALTER TABLE links ADD COLUMN percent REAL",
        "ALTER TABLE links ADD COLUMN task_size INTEGER",
        "ALTER TABLE links ADD COLUMN task_name TEXT",
        "ALTER TABLE links ADD COLUMN file_id TEXT",
        "ALTER TABLE links ADD COLUMN progress_changed_at REAL",
        "ALTER TABLE links ADD COLUMN task_seen_at REAL",
        "ALTER TABLE links ADD COLUMN task_gone_at REAL",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_PRUNE_CHUNK = 500
_MATCH_CHUNK = 500  # values per query of matching()
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


class LedgerError(Exception):
    """The ledger cannot do what was asked; the message names the ledger file or the link."""


class LedgerBusy(LedgerError):
    """The database stayed locked past busy_timeout: a transient problem callers retry later."""


class InvalidCandidate(LedgerError, ValueError):
    """A candidate broke a rule of the schema; nothing of the record() call was stored."""


class UnknownLink(LedgerError, LookupError):
    """An operation named a key the ledger does not hold."""


class InvalidTransition(LedgerError):
    """The link is in a state that does not allow this change (e.g. failing a submitted link)."""


@dataclass(frozen=True)
class Candidate:
    """What a source hands in: a normalized link, where it goes and where it came from."""

    key: str
    url: str
    info_hash: str | None
    target: str
    source: str
    name: str | None = None
    rule: str | None = None
    target_path: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Entry:
    """One ledger row, as `ledger list` shows it. Field names are the column names."""

    key: str
    url: str
    info_hash: str | None
    status: str
    target: str
    source: str
    name: str | None
    rule: str | None
    attempts: int
    next_attempt_at: float | None
    batch_id: str | None
    reason: str | None
    created_at: float
    updated_at: float
    submitted_at: float | None
    task_status: int | None
    percent: float | None
    task_size: int | None
    task_name: str | None
    file_id: str | None
    progress_changed_at: float | None
    task_seen_at: float | None
    task_gone_at: float | None
    target_path: str | None
    size: int | None = None
    queued_at: float | None = None
    finished_at: float | None = None
    pruned_at: float | None = None

    def to_json(self) -> dict[str, object]:
        """The interface's `ledger list --json` object: task_status by name, its raw code beside it."""
        data: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        data["task_status"] = task_status_name(self.task_status)
        data["task_status_code"] = self.task_status
        return data


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    detail: Mapping[str, object]


@dataclass(frozen=True)
class Recorded:
    key: str
    outcome: Literal["queued", "duplicate", "requeued"]
    status: str


@dataclass(frozen=True)
class Batch:
    batch_id: str
    target: str
    entries: tuple[Entry, ...]
    due_since: float = 0.0  # when the last of its links fell due: a task-list read since then covers them all

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(entry.key for entry in self.entries)


@dataclass(frozen=True)
class TaskUpdate:
    """One row of the cloud task list, for record_tasks()."""

    key: str
    status: int
    percent: float | None
    size: int | None
    name: str | None
    file_id: str | None


_ENTRY_COLUMNS = ", ".join(f.name for f in fields(Entry))
_SELECT_ENTRY = f"SELECT {_ENTRY_COLUMNS} FROM links"


def task_status_name(code: int | None) -> str | None:
    """115's task status code (-1, 0, 1, 2) as the interface names it; None when unknown."""
    return TASK_STATUS_NAMES.get(code) if code is not None else None


def bare_url(key: str) -> str:
    """The shortest URL that still fetches the same link, kept when a row's details are pruned."""
    if len(key) == 40 and all(c in "0123456789abcdef" for c in key):
        return f"magnet:?xt=urn:btih:{key}"
    if key.startswith("btmh:"):
        return f"magnet:?xt=urn:btmh:{key[5:]}"
    return key


def normalized_hash(value: object) -> str | None:
    """A 40-hex info hash in lower case, or None for anything else (115's answers are not trusted blindly)."""
    if not isinstance(value, str):
        return None
    value = value.strip().lower()
    if len(value) == 40 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


def _is_busy(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(error).lower()
    return "locked" in text or "busy" in text


def _dump(detail: Mapping[str, object]) -> str:
    compact = {name: value for name, value in detail.items() if value is not None}
    return json.dumps(compact, separators=(",", ":"), ensure_ascii=False, default=str)


class Ledger:
    """One connection to the ledger file, safe to share between the daemon's threads.

    Durability: the database runs in WAL mode with ``synchronous=FULL`` by default. NORMAL would
    survive a process crash, but after a power cut it may roll back the last commits, and the
    sources act on a commit at once (a watch file moves to ``.done/`` as soon as its links are
    recorded), so a lost commit would lose links. FULL costs one WAL fsync per commit, and commits
    are few and small; pass ``synchronous="NORMAL"`` only where power loss cannot happen.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = Path(path).expanduser()
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._lock = threading.RLock()
        self._depth = 0
        self._conn: sqlite3.Connection | None = None
        with self._sqlite_errors():
            self._conn = self._connect(synchronous)
            try:
                self._migrate()
            except BaseException:
                self._conn.close()
                self._conn = None
                raise

    # -- opening ---------------------------------------------------------------------------------

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        _create_private_file(self.path)
        conn = sqlite3.connect(
            str(self.path), timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            self._enable_wal(conn)
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL, waiting out a concurrent opener: the switch can fail busy without waiting."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if mode != "wal":
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as error:
                if not _is_busy(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
        if mode != "wal":
            raise LedgerError(
                f"ledger {self.path}: SQLite cannot use WAL mode there (journal mode {mode!r}); "
                "put the ledger on a local file system"
            )

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"ledger {self.path} has schema version {version}, newer than this daemon115 "
                    f"understands ({SCHEMA_VERSION}); upgrade daemon115"
                )
            for steps in MIGRATIONS[version:]:
                for sql in steps:
                    db.execute(sql)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------------------

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        try:
            yield
        except LedgerError:
            raise
        except sqlite3.Error as error:
            if _is_busy(error):
                raise LedgerBusy(
                    f"ledger {self.path} stayed locked for {self._busy_timeout:g}s by another writer; try again"
                ) from error
            raise LedgerError(f"ledger {self.path}: {error}") from error

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"ledger {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: the write lock is taken up front, so the busy timeout covers every wait."""
        with self._lock, self._sqlite_errors():
            conn = self._connection()
            if self._depth:
                yield from self._savepoint(conn)
                return
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def _savepoint(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        name = f"nested_{self._depth}"
        conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        finally:
            self._depth -= 1
        conn.execute(f"RELEASE {name}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several calls into one commit (one fsync), e.g. a whole batch's outcomes.

        Other threads and processes wait while it is open: keep it short, never around network I/O.
        """
        with self._transaction():
            yield

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._sqlite_errors():
            yield self._connection()

    # -- recording -------------------------------------------------------------------------------

    def record(self, candidates: Sequence[Candidate], *, force: bool = False) -> list[Recorded]:
        """Record what a source found, all or nothing, and say which links are new.

        A duplicate from a source that already brought the link adds nothing: feeds re-list the
        same entries on every poll, and ``ledger show`` needs each source once, not each sighting.
        """
        if not candidates:
            return []
        now = self._clock()
        results: list[Recorded] = []
        with self._transaction() as db:
            for index, candidate in enumerate(candidates):
                try:
                    results.append(self._record_one(db, candidate, force, now))
                except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError) as error:
                    raise InvalidCandidate(
                        f"candidate {index + 1} of {len(candidates)} from {candidate.source!r}: {error}; "
                        "nothing of this batch was recorded"
                    ) from error
        return results

    def _record_one(self, db: sqlite3.Connection, c: Candidate, force: bool, now: float) -> Recorded:
        row = db.execute("SELECT status FROM links WHERE key = ?", (c.key,)).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO links (key, url, info_hash, status, target, source, name, rule, target_path,"
                " size, created_at, updated_at, queued_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (c.key, c.url, c.info_hash, c.target, c.source, c.name, c.rule, c.target_path, c.size,
                 now, now, now),
            )
            _add_event(db, c.key, now, "seen", _seen_detail(c))
            _add_event(db, c.key, now, "queued", {"target": c.target})
            return Recorded(c.key, "queued", "queued")
        status = row[0]
        if not _source_known(db, c.key, c.source):
            _add_event(db, c.key, now, "seen", _seen_detail(c))
        if not force or status == "submitting":
            return Recorded(c.key, "duplicate", status)
        db.execute(
            "UPDATE links SET status = 'queued', url = ?, target = ?, target_path = ?,"
            " name = COALESCE(?, name), rule = COALESCE(?, rule), size = COALESCE(?, size),"
            " info_hash = COALESCE(info_hash, ?), attempts = 0, next_attempt_at = NULL, reason = NULL,"
            " queued_at = ?, updated_at = ?, submitted_at = NULL, finished_at = NULL, pruned_at = NULL"
            " WHERE key = ?",
            (c.url, c.target, c.target_path, c.name, c.rule, c.size, c.info_hash, now, now, c.key),
        )
        _add_event(db, c.key, now, "forced", {"source": c.source, "was": status, "target": c.target})
        return Recorded(c.key, "requeued", "queued")

    # -- the submitter's side --------------------------------------------------------------------

    def due_targets(self) -> list[tuple[str, int, float]]:
        """(target, links due now, when the oldest of them was queued), oldest first: for batch windows.

        A requeued link keeps its first queued time, so once its retry time comes it is sent at once.
        """
        with self._read() as db:
            rows = db.execute(
                "SELECT target, COUNT(*), MIN(queued_at) FROM links WHERE status = 'queued'"
                " AND (next_attempt_at IS NULL OR next_attempt_at <= ?) GROUP BY target ORDER BY 3",
                (self._clock(),),
            ).fetchall()
        return [(target, count, oldest) for target, count, oldest in rows]

    def next_due_at(self) -> float | None:
        """When the next queued link becomes due (possibly already past), None when nothing is queued."""
        with self._read() as db:
            row = db.execute(
                "SELECT MIN(COALESCE(next_attempt_at, queued_at)) FROM links WHERE status = 'queued'"
            ).fetchone()
        return row[0]

    def claim_batch(self, target: str, limit: int) -> Batch | None:
        """Move the oldest due links for ``target`` to 'submitting' under a new batch id, atomically."""
        if limit < 1:
            raise ValueError(f"claim_batch limit must be at least 1, not {limit}")
        now = self._clock()
        with self._transaction() as db:
            due = db.execute(
                "SELECT key, COALESCE(next_attempt_at, queued_at) FROM links WHERE status = 'queued' AND target = ?"
                " AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY queued_at, id LIMIT ?",
                (target, now, limit),
            ).fetchall()
            if not due:
                return None
            keys = [key for key, _ in due]
            batch_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO batches (batch_id, target, created_at, size) VALUES (?, ?, ?, ?)",
                (batch_id, target, now, len(keys)),
            )
            db.executemany(
                "UPDATE links SET status = 'submitting', batch_id = ?, attempts = attempts + 1,"
                " next_attempt_at = NULL, updated_at = ? WHERE key = ?",
                [(batch_id, now, key) for key in keys],
            )
            entries = tuple(_require(db, key) for key in keys)
            for entry in entries:
                _add_event(db, entry.key, now, "attempt", {"batch_id": batch_id, "attempt": entry.attempts})
        return Batch(batch_id, target, entries, due_since=max(since or 0.0 for _, since in due))

    def mark_submitted(
        self, key: str, *, info_hash: str | None, answer: Mapping[str, object], batch_id: str | None
    ) -> None:
        """115 has the link (accepted now, or it said the task already exists)."""
        now = self._clock()
        with self._transaction() as db:
            entry = _require(db, key)
            db.execute(
                "UPDATE links SET status = 'submitted', info_hash = COALESCE(info_hash, ?),"
                " batch_id = COALESCE(?, batch_id), next_attempt_at = NULL, reason = NULL, updated_at = ?,"
                " submitted_at = CASE WHEN status = 'submitted' THEN submitted_at ELSE ? END,"
                " finished_at = CASE WHEN status = 'submitted' THEN finished_at ELSE ? END WHERE key = ?",
                (normalized_hash(info_hash), batch_id, now, now, now, key),
            )
            _add_event(db, key, now, "submitted", {"batch_id": batch_id, "answer": dict(answer)})
            _finish_batch_if_done(db, entry.batch_id, now)

    def mark_failed(self, key: str, *, reason: str, answer: Mapping[str, object] | None = None) -> None:
        """115 refused the link for good (or retries ran out): it stays failed until `retry`."""
        now = self._clock()
        with self._transaction() as db:
            entry = _require(db, key)
            _check_transition(entry, "fail", allowed=("queued", "submitting", "failed"))
            db.execute(
                "UPDATE links SET status = 'failed', reason = ?, next_attempt_at = NULL, updated_at = ?,"
                " finished_at = ? WHERE key = ?",
                (reason, now, now, key),
            )
            _add_event(db, key, now, "failed", {"reason": reason, "answer": dict(answer) if answer else None})
            _finish_batch_if_done(db, entry.batch_id, now)

    def requeue(self, key: str, *, delay: float, reason: str, charge: bool = True) -> None:
        """A transient failure: try again after ``delay`` seconds.

        ``charge=False`` gives back the attempt its claim counted: a rate limit, a quota pause or lost authorization
        is not the link's fault, and must not use up its retry cap.
        """
        if delay < 0:
            raise ValueError(f"requeue delay must not be negative, not {delay}")
        now = self._clock()
        with self._transaction() as db:
            entry = _require(db, key)
            _check_transition(entry, "requeue", allowed=("queued", "submitting"))
            db.execute(
                "UPDATE links SET status = 'queued', next_attempt_at = ?, reason = ?, updated_at = ?,"
                " attempts = CASE WHEN ? AND status = 'submitting' AND attempts > 0 THEN attempts - 1"
                " ELSE attempts END WHERE key = ?",
                (now + delay, reason, now, not charge, key),
            )
            _add_event(db, key, now, "requeued", {"reason": reason, "delay": delay, "charged": charge})
            _finish_batch_if_done(db, entry.batch_id, now)

    def record_target(self, keys: Sequence[str], *, folder_id: str, path: str) -> None:
        """A batch aimed at a folder path was sent to ``folder_id``: keep both (the id for 115, the path for people)."""
        now = self._clock()
        with self._transaction() as db:
            db.executemany("UPDATE links SET target = ?, target_path = ?, updated_at = ? WHERE key = ?",
                           [(folder_id, path, now, key) for key in keys])
            for key in keys:
                _add_event(db, key, now, "target", {"path": path, "folder_id": folder_id})

    def submitting(self) -> list[Entry]:
        """Links whose outcome is unknown (left by a crash): reconcile them before sending anything."""
        with self._read() as db:
            rows = db.execute(f"{_SELECT_ENTRY} WHERE status = 'submitting' ORDER BY queued_at, id").fetchall()
        return [Entry(*row) for row in rows]

    # -- reading ---------------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        with self._read() as db:
            row = db.execute(f"{_SELECT_ENTRY} WHERE key = ?", (key,)).fetchone()
        return Entry(*row) if row else None

    def find(self, text: str) -> Entry | None:
        """The link ``text`` names, as key, info hash (any case) or URL (what `ledger show` is given)."""
        text = text.strip()
        info_hash = normalized_hash(text)
        with self._read() as db:
            for key in dict.fromkeys(k for k in (text, info_hash) if k):
                if row := db.execute(f"{_SELECT_ENTRY} WHERE key = ?", (key,)).fetchone():
                    return Entry(*row)
            if info_hash and (row := db.execute(
                f"{_SELECT_ENTRY} WHERE info_hash = ? AND info_hash <> key ORDER BY id DESC LIMIT 1", (info_hash,)
            ).fetchone()):
                return Entry(*row)
            # The whole URL is compared here, not in SQL: with `url = ?` SQLite would fold the
            # indexed expression into a constant and scan the table.
            prefixed = db.execute(
                f"{_SELECT_ENTRY} WHERE substr(url, 1, 64) = substr(?, 1, 64) ORDER BY id DESC", (text,)
            )
            return next((entry for entry in map(_entry, prefixed) if entry.url == text), None)

    def history(self, key: str) -> list[Event]:
        """Everything that happened to the link, oldest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT at, kind, detail FROM events WHERE link_id = (SELECT id FROM links WHERE key = ?) ORDER BY id",
                (key,),
            ).fetchall()
        return [Event(at, kind, json.loads(detail)) for at, kind, detail in rows]

    def sources(self, key: str) -> list[str]:
        """Every source that brought the link, first one first."""
        found: list[str] = []
        for event in self.history(key):
            source = event.detail.get("source")
            if event.kind == "seen" and isinstance(source, str) and source not in found:
                found.append(source)
        return found

    def entries(self, status: str | None = None, *, limit: int | None = None, present_only: bool = False,
                submitted_since: float | None = None) -> list[Entry]:
        """Rows newest first, optionally of one status.

        ``present_only`` leaves out links whose task has gone from the cloud, and ``submitted_since`` links sent
        before then: the daemon's periodic jobs ask only for what can still change, so their memory does not grow
        with a ledger that keeps every link forever.
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown ledger status {status!r}; expected one of {', '.join(STATUSES)}")
        sql = _SELECT_ENTRY
        where: list[str] = []
        params: list[object] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if present_only:
            where.append("task_gone_at IS NULL")
        if submitted_since is not None:
            where.append("submitted_at >= ?")
            params.append(submitted_since)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._read() as db:
            rows = db.execute(sql, params).fetchall()
        return [Entry(*row) for row in rows]

    def matching(self, hashes: Iterable[str], urls: Iterable[str] = (), *, status: str = "submitted") -> list[Entry]:
        """Links of ``status`` whose info hash (or key) or URL is among those given, newest first.

        For matching a task list against the ledger without reading every link ever recorded.
        """
        wanted_hashes = sorted({h for h in hashes if h})
        wanted_urls = sorted({u for u in urls if u})
        found: dict[int, Entry] = {}
        with self._read() as db:
            for column, values in (("info_hash", wanted_hashes), ("key", wanted_hashes), ("url", wanted_urls)):
                sql = (f"SELECT links.id, {_ENTRY_COLUMNS} FROM links WHERE status = ? AND "
                       f"{column} IN ({','.join('?' * _MATCH_CHUNK)})")
                for start in range(0, len(values), _MATCH_CHUNK):
                    chunk: list[object] = list(values[start:start + _MATCH_CHUNK])
                    # padded with NULLs (which match nothing) so that the SQL is always the same: sqlite3 keeps
                    # every distinct statement it prepared, and one per chunk length grew the daemon by MiBs a month
                    chunk += [None] * (_MATCH_CHUNK - len(chunk))
                    rows = db.execute(sql, [status, *chunk]).fetchall()
                    for row in rows:
                        found.setdefault(row[0], Entry(*row[1:]))
        return [found[i] for i in sorted(found, reverse=True)]

    def unfinished_since(self, since: float) -> bool:
        """Is a link submitted at or after ``since`` still without a finished (completed or failed) task?

        One EXISTS query, so the reconciler's pace costs the same for ten links or a million.
        """
        with self._read() as db:
            row = db.execute(
                "SELECT EXISTS (SELECT 1 FROM links WHERE status = 'submitted' AND submitted_at >= ?"
                " AND task_gone_at IS NULL AND (task_status IS NULL OR task_status NOT IN (-1, 2)))", (since,),
            ).fetchone()
        return bool(row[0])

    def counts(self) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute("SELECT status, COUNT(*) FROM links GROUP BY status").fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update(rows)
        return counts

    # -- the user's hand -------------------------------------------------------------------------

    def retry(self, key: str, *, submitted: bool = False) -> bool:
        """Queue a failed link again now (a submitted one too when ``submitted``); False if not allowed."""
        allowed = FINISHED if submitted else ("failed",)
        now = self._clock()
        with self._transaction() as db:
            row = db.execute("SELECT status FROM links WHERE key = ?", (key,)).fetchone()
            if row is None or row[0] not in allowed:
                return False
            db.execute(
                "UPDATE links SET status = 'queued', attempts = 0, next_attempt_at = NULL, reason = NULL,"
                " queued_at = ?, updated_at = ?, submitted_at = NULL, finished_at = NULL, pruned_at = NULL"
                " WHERE key = ?",
                (now, now, key),
            )
            _add_event(db, key, now, "retry", {"was": row[0]})
        return True

    def forget(self, key: str) -> bool:
        """Delete the row and its history, so the link is new again; False if it was not there."""
        with self._transaction() as db:
            row = db.execute("SELECT status FROM links WHERE key = ?", (key,)).fetchone()
            if row is None:
                return False
            if row[0] == "submitting":
                raise InvalidTransition(f"link {key} is being submitted; forget it once its outcome is known")
            db.execute("DELETE FROM links WHERE key = ?", (key,))
        return True

    # -- the reconciler's and janitor's side -----------------------------------------------------

    def record_task(
        self, key: str, *, status: int, percent: float | None, size: int | None, name: str | None,
        file_id: str | None,
    ) -> bool:
        """Note what the cloud task list says; False if the key is not ours."""
        return self.record_tasks([TaskUpdate(key, status, percent, size, name, file_id)])[0]

    def record_tasks(self, updates: Iterable[TaskUpdate]) -> list[bool]:
        """record_task for a whole task-list page in one commit; one bool per update (known key?).

        progress_changed_at moves, and a "task" event is written, only when status or percent
        changed (or the task reappeared), so a stalled download is visible as such.
        """
        now = self._clock()
        with self._transaction() as db:
            return [_record_task(db, update, now) for update in updates]

    def mark_task_gone(self, key: str) -> bool:
        """The task is no longer in the cloud list (cleared or deleted); False if the key is not ours."""
        now = self._clock()
        with self._transaction() as db:
            row = db.execute("SELECT task_gone_at FROM links WHERE key = ?", (key,)).fetchone()
            if row is None:
                return False
            if row[0] is None:
                db.execute("UPDATE links SET task_gone_at = ?, updated_at = ? WHERE key = ?", (now, now, key))
                _add_event(db, key, now, "task_gone", {})
        return True

    def note(self, key: str, kind: str, detail: Mapping[str, object]) -> None:
        """Any other event worth keeping in the link's history (cleanup actions...)."""
        if not kind:
            raise ValueError("an event needs a kind")
        now = self._clock()
        with self._transaction() as db:
            _require(db, key)
            _add_event(db, key, now, kind, detail)

    def prune(self, keep_details: float) -> int:
        """Drop the history and long details of links finished more than ``keep_details`` seconds ago.

        The row itself (key, info hash, status, target) stays forever, so a link is never grabbed
        again because its record expired. Works in short chunks so other writers are not held up.
        Returns how many links were pruned.
        """
        cutoff = self._clock() - keep_details
        total = 0
        while True:
            with self._transaction() as db:
                keys = [
                    key
                    for (key,) in db.execute(
                        "SELECT key FROM links WHERE finished_at IS NOT NULL AND pruned_at IS NULL"
                        " AND finished_at < ? LIMIT ?",
                        (cutoff, _PRUNE_CHUNK),
                    )
                ]
                now = self._clock()
                for key in keys:
                    db.execute("DELETE FROM events WHERE link_id = (SELECT id FROM links WHERE key = ?)", (key,))
                    db.execute(
                        "UPDATE links SET url = ?, name = NULL, task_name = NULL, pruned_at = ? WHERE key = ?",
                        (bare_url(key), now, key),
                    )
            total += len(keys)
            if len(keys) < _PRUNE_CHUNK:
                return total

    # -- small state -----------------------------------------------------------------------------

    def meta_get(self, name: str) -> str | None:
        with self._read() as db:
            row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def meta_set(self, name: str, value: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def meta_delete(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM meta WHERE name = ?", (name,))


def _create_private_file(path: Path) -> None:
    """Create the database file owner-only before SQLite opens it; its -wal and -shm inherit the mode."""
    make_private_dirs(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


def _seen_detail(c: Candidate) -> dict[str, object]:
    return {"source": c.source, "rule": c.rule, "name": c.name, "target": c.target}


def _add_event(db: sqlite3.Connection, key: str, at: float, kind: str, detail: Mapping[str, object]) -> None:
    db.execute(
        "INSERT INTO events (link_id, at, kind, detail) SELECT id, ?, ?, ? FROM links WHERE key = ?",
        (at, kind, _dump(detail), key),
    )


def _source_known(db: sqlite3.Connection, key: str, source: str) -> bool:
    for (detail,) in db.execute(
        "SELECT detail FROM events WHERE link_id = (SELECT id FROM links WHERE key = ?) AND kind = 'seen'", (key,)
    ):
        if json.loads(detail).get("source") == source:
            return True
    return False


def _entry(row: Sequence[object]) -> Entry:
    return Entry(*row)  # type: ignore[arg-type]


def _require(db: sqlite3.Connection, key: str) -> Entry:
    row = db.execute(f"{_SELECT_ENTRY} WHERE key = ?", (key,)).fetchone()
    if row is None:
        raise UnknownLink(f"no link with key {key} in the ledger")
    return Entry(*row)


def _check_transition(entry: Entry, action: str, *, allowed: tuple[str, ...]) -> None:
    if entry.status not in allowed:
        raise InvalidTransition(f"cannot {action} link {entry.key}: it is {entry.status}")


def _finish_batch_if_done(db: sqlite3.Connection, batch_id: str | None, now: float) -> None:
    if batch_id is None:
        return
    pending = db.execute(
        "SELECT 1 FROM links WHERE status = 'submitting' AND batch_id = ? LIMIT 1", (batch_id,)
    ).fetchone()
    if pending is None:
        db.execute(
            "UPDATE batches SET finished_at = ? WHERE batch_id = ? AND finished_at IS NULL", (now, batch_id)
        )


def _record_task(db: sqlite3.Connection, update: TaskUpdate, now: float) -> bool:
    row = db.execute(
        "SELECT task_status, percent, task_gone_at, task_seen_at FROM links WHERE key = ?", (update.key,)
    ).fetchone()
    if row is None:
        return False
    old_status, old_percent, gone_at, seen_at = row
    changed = seen_at is None or gone_at is not None or (old_status, old_percent) != (update.status, update.percent)
    db.execute(
        "UPDATE links SET task_status = ?, percent = ?, task_size = COALESCE(?, task_size),"
        " task_name = COALESCE(?, task_name), file_id = COALESCE(?, file_id), task_seen_at = ?, task_gone_at = NULL,"
        " progress_changed_at = CASE WHEN ? THEN ? ELSE progress_changed_at END,"
        " updated_at = CASE WHEN ? THEN ? ELSE updated_at END WHERE key = ?",
        (update.status, update.percent, update.size, update.name, update.file_id, now,
         changed, now, changed, now, update.key),
    )
    if changed:
        _add_event(db, update.key, now, "task", {"status": update.status, "percent": update.percent})
    return True
