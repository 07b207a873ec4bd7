"""The cloud task list, read into the ledger: what became of every link the daemon submitted.

115 is the only witness of a download's progress, so the reconciler reads the whole list (every page) and records,
link by link, status, percentDone, size, name and file_id. The ledger moves ``progress_changed_at`` only when the
status or the percentage changes, which is what lets cleanup tell a stalled download from a slow one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from daemon115.api.errors import Api115Error, AuthorizationNeeded
from daemon115.api.models import Task, TaskPage
from daemon115.config import ReconcileConfig
from daemon115.ledger import Entry, Ledger, TaskUpdate, normalized_hash

#: links submitted this recently keep the reconciler on its fast pace until their tasks finish
ACTIVE_WINDOW = 3600.0
FINISHED_TASK_STATUSES = frozenset({-1, 2})
#: ledger status of a link 115 holds a task for (accepted, or "task already exists")
OURS = "submitted"


class TaskPages(Protocol):
    """The part of the API client the task list needs (the real Client, in tests too)."""

    def task_page(self, page: int = 1) -> TaskPage: ...


@dataclass(frozen=True)
class TaskList:
    """The task list as far as 115 let it be read; ``complete`` is False when a page was refused."""

    tasks: tuple[Task, ...]
    pages: int  # pages read
    page_count: int  # pages 115 said there are
    complete: bool
    problem: str | None = None  # why reading stopped early


@dataclass(frozen=True)
class TaskMatch:
    """Tasks paired with the links of ours they belong to."""

    pairs: tuple[tuple[Task, Entry], ...]
    foreign: tuple[Task, ...]  # tasks no link of ours explains
    missing: tuple[Entry, ...]  # links of ours the list does not show


@dataclass(frozen=True)
class ReconcileReport:
    tasks: int  # tasks read
    pages: int
    complete: bool
    ours: int  # links of ours found in the list
    foreign: int
    changed: int  # of ours, how many changed status or progress since the last read
    gone: tuple[str, ...]  # keys newly noted as vanished from the cloud
    unseen: int  # links of ours not in a partial list: not noted as gone, the list may hide them
    problem: str | None = None


def read_task_list(client: TaskPages, *, max_pages: int | None = None) -> TaskList:
    """Every page (at most ``max_pages``) until ``page_count`` or an empty page.

    115 refuses deep pages (HTTP 405, raised as RateLimited) and may fail on any later page; what was read by then
    is kept and the list is marked incomplete, so callers act on what they saw but infer nothing from what they did
    not. A failure on page 1 (nothing read) and lost authorization raise. ``max_pages`` avoids asking for pages
    115 is known to refuse (the refusal pauses every call of the account for a while).
    """
    tasks: dict[str, Task] = {}
    page, page_count = 1, 0
    while True:
        try:
            result = client.task_page(page)
        except AuthorizationNeeded:
            raise
        except Api115Error as exc:
            if page == 1:
                raise
            return TaskList(tuple(tasks.values()), page - 1, page_count, False,
                            f"page {page} of {page_count} could not be read: {exc}")
        page_count = max(page_count, result.page_count)
        for task in result.tasks:
            # a task added or removed while paging shifts the pages; the same task may then show up twice
            tasks.setdefault(task.info_hash or f"url:{task.url}", task)
        if not result.tasks or page >= result.page_count:
            return TaskList(tuple(tasks.values()), page, page_count, True)
        if max_pages is not None and page >= max_pages:
            return TaskList(tuple(tasks.values()), page, page_count, False,
                            f"stopped after {page} of {page_count} pages (max_pages {max_pages})")
        page += 1


def entry_hash(entry: Entry) -> str | None:
    """The link's info hash: recorded, or its key when the key is one."""
    return normalized_hash(entry.info_hash) or normalized_hash(entry.key)


def match_tasks(tasks: Iterable[Task], entries: Iterable[Entry]) -> TaskMatch:
    """Pair each task with the links it belongs to: by info hash, else by URL (a link whose hash is not known).

    Several links can share one task (a magnet and the http link to its torrent); each link pairs with one task.
    """
    entries = list(entries)
    by_hash: dict[str, list[Entry]] = {}
    by_url: dict[str, list[Entry]] = {}
    for entry in entries:
        info_hash = entry_hash(entry)
        if info_hash:
            by_hash.setdefault(info_hash, []).append(entry)
        else:
            by_url.setdefault(entry.url, []).append(entry)
    used: set[str] = set()
    pairs: list[tuple[Task, Entry]] = []
    foreign: list[Task] = []
    for task in tasks:
        found = [e for e in by_hash.get(task.info_hash, []) if e.key not in used] if task.info_hash else []
        found = found or [e for e in by_url.get(task.url, []) if e.key not in used]
        if not found:
            foreign.append(task)
        for entry in found:
            used.add(entry.key)
            pairs.append((task, entry))
    missing = tuple(e for e in entries if e.key not in used)
    return TaskMatch(tuple(pairs), tuple(foreign), missing)


def task_update(task: Task, entry: Entry) -> TaskUpdate:
    # 115 sends 0 / "" for what a queued task does not know yet; None keeps what the ledger already has
    return TaskUpdate(entry.key, task.status, task.percent, task.size or None, task.name or None,
                      task.file_id or None)


def progress_changed(task: Task, entry: Entry) -> bool:
    """What the ledger will count as a change (see Ledger.record_tasks)."""
    return (entry.task_seen_at is None or entry.task_gone_at is not None
            or (entry.task_status, entry.percent) != (task.status, task.percent))


def ours_index(ledger: Ledger, tasks: Iterable[Task] = ()) -> Mapping[str, str]:
    """info hash -> the source that brought the link, for every task the daemon submitted.

    Without ``tasks`` only links whose info hash is known are indexed; with them, tasks are also matched by URL.
    """
    tasks = list(tasks)
    entries = ledger.matching([t.info_hash for t in tasks], [t.url for t in tasks]) if tasks \
        else ledger.entries(OURS)  # newest first: an older link with the same hash does not override
    index: dict[str, str] = {}
    for entry in entries:
        info_hash = entry_hash(entry)
        if info_hash:
            index.setdefault(info_hash, entry.source)
    for task, entry in match_tasks(tasks, entries).pairs:
        if task.info_hash:
            index.setdefault(task.info_hash, entry.source)
    return index


COMPLETED, FAILED = 2, -1


class Reconciler:
    def __init__(self, ledger: Ledger, client: TaskPages, *, clock: Callable[[], float] = time.time,
                 max_pages: int | None = None, log: Any = None) -> None:
        self.ledger = ledger
        self.client = client
        self.max_pages = max_pages
        self._clock = clock
        self._log = log

    def run(self) -> ReconcileReport:
        """Read the whole list, record every task of ours, note the ones that vanished.

        Links are read before the list, so every one of them was accepted before the list was: a link the list
        does not show has really gone, not merely arrived after the read (only when the list is complete).
        """
        entries = self.ledger.entries(OURS, present_only=True)
        listing = read_task_list(self.client, max_pages=self.max_pages)
        entries += self._returned(listing.tasks, {e.key for e in entries})
        match = match_tasks(listing.tasks, entries)
        self.ledger.record_tasks([task_update(task, entry) for task, entry in match.pairs])
        self._announce_finished(match.pairs)
        gone = self._note_gone(match.missing) if listing.complete else ()
        report = ReconcileReport(
            tasks=len(listing.tasks), pages=listing.pages, complete=listing.complete, ours=len(match.pairs),
            foreign=len(match.foreign), changed=sum(progress_changed(t, e) for t, e in match.pairs), gone=gone,
            unseen=0 if listing.complete else len(match.missing), problem=listing.problem)
        self._emit(report)
        return report

    def _returned(self, tasks: Sequence[Task], known: set[str]) -> list[Entry]:
        """Links of ours noted gone whose task is listed again (only those are read, not every gone link)."""
        return [e for e in self.ledger.matching([t.info_hash for t in tasks], [t.url for t in tasks])
                if e.key not in known]

    def next_interval(self, cfg: ReconcileConfig) -> float:
        """Seconds until the next run should start."""
        if self.ledger.unfinished_since(self._clock() - ACTIVE_WINDOW):
            return min(cfg.active_every, cfg.every)
        return cfg.every

    def _announce_finished(self, pairs: Sequence[tuple[Task, Entry]]) -> None:
        """One event when a task of ours completes or fails in the cloud (notifications listen for these)."""
        if self._log is None:
            return
        for task, entry in pairs:
            if task.status == entry.task_status or task.status not in (COMPLETED, FAILED):
                continue
            event = "task_completed" if task.status == COMPLETED else "task_failed"
            self._log.info(event, key=entry.key, name=task.name or entry.name, size=task.size,
                           source=entry.source)

    def _note_gone(self, missing: Sequence[Entry]) -> tuple[str, ...]:
        newly = tuple(entry.key for entry in missing if entry.task_gone_at is None)
        with self.ledger.transaction():
            for key in newly:
                self.ledger.mark_task_gone(key)
        if self._log is not None:
            for key in newly:
                self._log.info("task_gone", key=key)
        return newly

    def _emit(self, report: ReconcileReport) -> None:
        if self._log is None:
            return
        fields = {"tasks": report.tasks, "pages": report.pages, "ours": report.ours, "foreign": report.foreign,
                  "changed": report.changed, "gone": len(report.gone)}
        if report.complete:
            self._log.info("reconciled", **fields)
        else:
            self._log.warning("reconciled_partly", **fields, unseen=report.unseen, problem=report.problem)
