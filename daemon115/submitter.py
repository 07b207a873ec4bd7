"""Draining the ledger's queue into add_task_urls, batch by batch, so that every link is accepted exactly once.

A batch is claimed (``submitting``, committed) before the HTTP call and settled link by link after it. When the
answer is lost (a timeout, a dropped connection, a crash), the links' fate is looked up in the cloud task list before
anything is sent again, because 115 may have accepted them and charged the quota (api-notes.md §2.6).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from daemon115.api.errors import Api115Error, AuthorizationNeeded, Kind, RateLimited, lookup
from daemon115.api.folders import TargetError
from daemon115.api.models import AddResult, Quota, Task
from daemon115.api.transport import OutcomeUnknown
from daemon115.fsutil import file_lock
from daemon115.ledger import Batch, Entry, Ledger

QUOTA_EXHAUSTED = frozenset({1000012, 10007, 10010})
FOLDER_GONE = 430004
UNVERIFIED = "outcome unknown"  # requeue reason of links whose last send may still land at 115
NO_SPACE = 91006
PAUSE_META = "submit.pause"


class Cloud(Protocol):
    """The part of the API client the submitter needs (the real Client, in tests too)."""

    def add_task_urls(self, urls: Sequence[str], target: str = "0") -> list[AddResult]: ...
    def iter_tasks(self, *, max_pages: int | None = None) -> Iterable[Task]: ...
    def quota(self) -> Quota: ...


class Folders(Protocol):
    """Turns a target (a folder id, or a path like /Downloads/Anime) into a folder id."""

    def resolve(self, target: str) -> str: ...
    def forget(self, target: str) -> None: ...


@dataclass(frozen=True)
class SubmitPolicy:
    batch_size: int = 100
    batch_window: float = 2.0
    max_attempts: int = 10
    retry_base: float = 30.0
    retry_cap: float = 3600.0
    pause_probe: float = 600.0  # how often a quota/space pause asks 115 whether it may resume
    unknown_grace: float = 30.0  # after a lost answer, how long 115 gets to finish before a link is sent again


@dataclass
class DrainReport:
    """What one drain did; ``unreachable`` is set when 115 could not be reached (the CLI's exit 1)."""

    calls: int = 0
    submitted: int = 0
    duplicates: int = 0
    failed: int = 0
    requeued: int = 0
    unreachable: str | None = None
    paused: str | None = None
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CloudIndex:
    """One read of the task list, by info hash and by URL."""

    read_at: float
    by_hash: Mapping[str, Task]
    by_url: Mapping[str, Task]

    def task_of(self, entry: Entry) -> Task | None:
        return (self.by_hash.get(entry.info_hash) if entry.info_hash else None) or self.by_url.get(entry.url)


def retry_delay(attempts: int, policy: SubmitPolicy) -> float:
    """Exponential backoff with jitter, so links that failed together do not all come back together."""
    ceiling = min(policy.retry_cap, policy.retry_base * (2 ** max(0, attempts - 1)))
    return random.uniform(ceiling / 2, ceiling)


def batch_due(count: int, oldest: float, now: float, policy: SubmitPolicy, *, wait_window: bool) -> bool:
    """A batch leaves when it is full or ``batch_window`` after its oldest link arrived."""
    return not wait_window or count >= policy.batch_size or now - oldest >= policy.batch_window


class Submitter:
    def __init__(self, ledger: Ledger, cloud: Cloud, lock_path: Path, policy: SubmitPolicy = SubmitPolicy(), *,
                 folders: Folders | None = None, clock: Callable[[], float] = time.time, log: Any = None) -> None:
        self.ledger = ledger
        self.cloud = cloud
        self.folders = folders
        self.policy = policy
        self._clock = clock
        self._log = log
        self.lock_path = lock_path
        self._index: CloudIndex | None = None  # the last task-list read of this drain

    # --- draining ------------------------------------------------------------------------------------------------
    def drain(self, *, wait_window: bool = True) -> DrainReport:
        """Send every batch that is due; stop early when 115 is unreachable, rate-limiting or out of quota.

        The whole drain holds the submit lock, so a CLI ``add`` beside the daemon never mistakes the daemon's batch
        in flight for one a crash left behind; with the lock held, every ``submitting`` row is such a leftover.
        """
        report = DrainReport()
        self._index = None
        with file_lock(self.lock_path):
            try:
                self._recover()
                if self._paused(report):
                    return report
                while (batch := self._next_batch(wait_window)) is not None:
                    if not self._send(batch, report):
                        break
            except AuthorizationNeeded:
                raise
            except Api115Error as exc:
                report.unreachable = str(exc)
        return report

    def _recover(self) -> None:
        """Settle links left ``submitting`` against the task list before anything is sent again."""
        pending = self.ledger.submitting()
        if pending:
            found = self._settle_unknown(pending, reason="left submitting by an interrupted run")
            self._emit("recovered", count=len(pending), found_in_cloud=found)

    def next_wakeup(self) -> float | None:
        """When the next batch window closes or a retry falls due (seconds from now), for the daemon's wait."""
        now = self._clock()
        times = [max(0.0, oldest + self.policy.batch_window - now) for _, _, oldest in self.ledger.due_targets()]
        upcoming = self.ledger.next_due_at()
        if upcoming is not None and upcoming > now:
            times.append(upcoming - now)
        return min(times) if times else None

    def _next_batch(self, wait_window: bool) -> Batch | None:
        now = self._clock()
        for target, count, oldest in self.ledger.due_targets():
            if batch_due(count, oldest, now, self.policy, wait_window=wait_window):
                batch = self.ledger.claim_batch(target, self.policy.batch_size)
                if batch is not None:
                    return batch
        return None

    def _send(self, batch: Batch, report: DrainReport) -> bool:
        folder_id = self._folder_of(batch, report)
        if folder_id is None:
            return report.unreachable is None
        entries = self._still_missing(batch, report)
        if not entries:
            return True
        batch = Batch(batch.batch_id, batch.target, tuple(entries))
        urls = [e.url for e in entries]
        report.calls += 1
        sent_at = self._clock()
        self._emit("batch_sending", batch_id=batch.batch_id, target=batch.target, links=len(urls))
        try:
            results = self.cloud.add_task_urls(urls, folder_id)
        except OutcomeUnknown as exc:
            report.errors.append(str(exc))
            report.unreachable = str(exc)
            self._settle_unknown(entries, reason=f"answer lost: {exc.server_message}")
            return False
        except AuthorizationNeeded as exc:
            self._release(batch, reason="authorization needed", delay=0.0, charge=False)
            report.unreachable = str(exc)
            raise
        except Api115Error as exc:
            if exc.code == FOLDER_GONE and self.folders is not None and folder_id != batch.target:
                self.folders.forget(batch.target)  # deleted in 115: the next pass resolves (and creates) it again
                self._release(batch, reason=f"folder {batch.target} is gone in 115; resolving it again",
                              delay=0.0, charge=False)
                return True
            return self._whole_call_failed(batch, exc, report)
        if folder_id != batch.target:
            self.ledger.record_target([e.key for e in entries], folder_id=folder_id, path=batch.target)
        for entry, result in zip(entries, results):
            self._settle(entry, result, batch.batch_id, report, sent_at)
        return report.paused is None

    def _still_missing(self, batch: Batch, report: DrainReport) -> list[Entry]:
        """Links sent before (requeued for any reason) are looked up once more; only the missing are sent.

        A first send needs no look. A resend needs a task-list read made after its links fell due (after the grace
        a lost answer gets): one read then serves every later batch of the drain, since any send of this drain
        whose answer is lost ends it.
        """
        entries = batch.entries
        if not any(e.reason for e in entries):
            return list(entries)
        index = self._cloud_index(fresh_after=batch.due_since)
        missing = []
        for entry in entries:
            task = index.task_of(entry)
            if task is None:
                missing.append(entry)
            else:
                self._found_in_cloud(entry, task, "landed after a lost answer")
                report.submitted += 1
        return missing

    def _folder_of(self, batch: Batch, report: DrainReport) -> str | None:
        """The folder id for the batch's target; None when it cannot be had now (the batch is settled here)."""
        if batch.target.isdigit() or self.folders is None:
            return batch.target
        try:
            return self.folders.resolve(batch.target)
        except TargetError as exc:
            if exc.transient:
                self._release(batch, reason=str(exc), delay=retry_delay(1, self.policy), charge=False)
                report.requeued += len(batch.entries)
                return None
            for entry in batch.entries:
                self.ledger.mark_failed(entry.key, reason=str(exc))
                report.failed += 1
                self._emit("link_failed", key=entry.key, name=entry.name, reason=str(exc))
            return None
        except AuthorizationNeeded:
            self._release(batch, reason="authorization needed", delay=0.0, charge=False)
            raise
        except Api115Error as exc:
            self._release(batch, reason=str(exc), delay=retry_delay(1, self.policy), charge=False)
            report.unreachable = str(exc)
            return None

    # --- outcomes ------------------------------------------------------------------------------------------------
    def _settle(self, entry: Entry, result: AddResult, batch_id: str, report: DrainReport, sent_at: float) -> None:
        answer = answer_of(result)
        if result.ok:
            self.ledger.mark_submitted(entry.key, info_hash=result.info_hash, answer=answer, batch_id=batch_id)
            report.submitted += 1
            self._emit("link_submitted", key=entry.key, name=entry.name, target=entry.target,
                       info_hash=result.info_hash)
        elif result.already_exists:
            info_hash = entry.info_hash or self._find_info_hash(entry, sent_at)
            self.ledger.mark_submitted(entry.key, info_hash=info_hash, answer={**answer, "already_exists": True},
                                       batch_id=batch_id)
            report.duplicates += 1
            self._emit("link_already_in_cloud", key=entry.key, info_hash=info_hash)
        elif result.code in QUOTA_EXHAUSTED or result.code == NO_SPACE:
            self.ledger.requeue(entry.key, delay=0.0, reason=_describe(result.code, result.message), charge=False)
            report.requeued += 1
            self._pause(result.code, result.message, report)
        elif _kind(result.code) is Kind.RETRY_LATER:
            self._retry_or_fail(entry, _describe(result.code, result.message), report)
        else:
            reason = _describe(result.code, result.message)
            self.ledger.mark_failed(entry.key, reason=reason, answer=answer)
            report.failed += 1
            self._emit("link_failed", key=entry.key, name=entry.name, code=result.code, reason=reason)

    def _whole_call_failed(self, batch: Batch, exc: Api115Error, report: DrainReport) -> bool:
        report.errors.append(str(exc))
        if exc.code in QUOTA_EXHAUSTED or exc.code == NO_SPACE:
            self._release(batch, reason=str(exc), delay=0.0, charge=False)
            self._pause(exc.code, exc.server_message, report)
            return False
        if isinstance(exc, RateLimited) or exc.code is None or exc.kind is not Kind.PERMANENT:
            charge = not isinstance(exc, RateLimited)
            for entry in batch.entries:
                if charge:
                    self._retry_or_fail(entry, str(exc), report)
                else:
                    self.ledger.requeue(entry.key, delay=retry_delay(1, self.policy), reason=str(exc), charge=False)
                    report.requeued += 1
            report.unreachable = str(exc)
            return False
        for entry in batch.entries:  # the request itself was refused: resending it unchanged cannot help
            self.ledger.mark_failed(entry.key, reason=str(exc), answer={"code": exc.code,
                                                                        "message": exc.server_message})
            report.failed += 1
        return True

    def _retry_or_fail(self, entry: Entry, reason: str, report: DrainReport) -> None:
        if entry.attempts >= self.policy.max_attempts:
            self.ledger.mark_failed(entry.key, reason=f"gave up after {entry.attempts} attempts: {reason}")
            report.failed += 1
            self._emit("link_failed", key=entry.key, reason=reason, attempts=entry.attempts)
            return
        self.ledger.requeue(entry.key, delay=retry_delay(entry.attempts, self.policy), reason=reason)
        report.requeued += 1

    def _release(self, batch: Batch, *, reason: str, delay: float, charge: bool) -> None:
        for entry in batch.entries:
            self.ledger.requeue(entry.key, delay=delay, reason=reason, charge=charge)

    # --- unknown outcomes ----------------------------------------------------------------------------------------
    def _settle_unknown(self, entries: Sequence[Entry], *, reason: str) -> int:
        """Look each link up in the task list; what is there is submitted, the rest goes back to the queue."""
        index = self._cloud_index(fresh_after=self._clock())
        found = 0
        for entry in entries:
            task = index.task_of(entry)
            if task is not None:
                self._found_in_cloud(entry, task, reason)
                found += 1
            else:
                # 115 may still be working on a request whose answer we lost; sending again at once could race it
                self.ledger.requeue(entry.key, delay=self.policy.unknown_grace,
                                    reason=f"{UNVERIFIED}: {reason}; not in the task list", charge=False)
        return found

    def _found_in_cloud(self, entry: Entry, task: Task, reason: str) -> None:
        if not entry.target.isdigit() and task.wp_path_id:  # a path target: keep the id 115 used
            self.ledger.record_target([entry.key], folder_id=task.wp_path_id, path=entry.target)
        self.ledger.mark_submitted(entry.key, info_hash=task.info_hash, batch_id=entry.batch_id,
                                   answer={"found_in_task_list": True, "reason": reason})

    def _cloud_index(self, *, fresh_after: float) -> CloudIndex:
        """The task list as read at ``fresh_after`` or later: this drain's last read if it is recent enough."""
        if self._index is not None and self._index.read_at >= fresh_after:
            return self._index
        read_at = self._clock()
        by_hash: dict[str, Task] = {}
        by_url: dict[str, Task] = {}
        try:
            for task in self.cloud.iter_tasks():
                by_hash.setdefault(task.info_hash, task)
                by_url.setdefault(task.url, task)
        except RateLimited:
            if not by_hash:
                raise
            # deep pages answer 405 on the real service; what was read is still evidence, and unmatched links stay
            # queued rather than being declared lost.
        self._index = CloudIndex(read_at, by_hash, by_url)
        return self._index

    def _find_info_hash(self, entry: Entry, sent_at: float) -> str | None:
        try:
            task = self._cloud_index(fresh_after=sent_at).by_url.get(entry.url)
        except Api115Error:
            return None
        return task.info_hash if task else None

    # --- quota pause ---------------------------------------------------------------------------------------------
    def _pause(self, code: int | None, message: str, report: DrainReport) -> None:
        reason = "cloud-download quota exhausted" if code in QUOTA_EXHAUSTED else "115 storage space is full"
        self.ledger.meta_set(PAUSE_META, f"{code}|{self._clock() + self.policy.pause_probe}|{reason}")
        report.paused = reason
        self._emit("submission_paused", code=code, reason=reason)

    def pause_state(self) -> tuple[int, float, str] | None:
        raw = self.ledger.meta_get(PAUSE_META)
        if not raw:
            return None
        code, until, reason = raw.split("|", 2)
        return int(code or 0), float(until), reason

    def _paused(self, report: DrainReport) -> bool:
        """While paused, ask 115 at most every ``pause_probe`` seconds whether quota is back."""
        state = self.pause_state()
        if state is None:
            return False
        code, until, reason = state
        if self._clock() < until:
            report.paused = reason
            return True
        if code in QUOTA_EXHAUSTED:
            try:
                surplus = self.cloud.quota().surplus
            except Api115Error as exc:
                report.unreachable = str(exc)
                report.paused = reason
                return True
            if surplus <= 0:
                self.ledger.meta_set(PAUSE_META, f"{code}|{self._clock() + self.policy.pause_probe}|{reason}")
                report.paused = reason
                return True
        self.ledger.meta_set(PAUSE_META, "")
        self._emit("submission_resumed", reason=reason)
        return False

    def _emit(self, event: str, **fields: object) -> None:
        if self._log is not None:
            self._log.info(event, **fields)


def _kind(code: int) -> Kind:
    info = lookup(code)
    return info.kind if info else Kind.PERMANENT


def _describe(code: int, message: str) -> str:
    info = lookup(code)
    if info is None:
        return f"115 code {code}: {message or 'no message'}"
    return f"115 code {code}: {info.zh} ({info.en})"


def answer_of(result: AddResult) -> dict[str, object]:
    return {"code": result.code, "message": result.message, "info_hash": result.info_hash}
