"""Cleanup policies: which cloud tasks to clear, delete or send again. Deciding is pure; acting is a thin layer.

decide() sees only values (a policy, the task list, what the ledger knows, the time), so every condition of a policy
is specified without 115. apply() carries a decision out and records each step on the link it concerns; with
``dry_run`` it calls nothing that changes state. Files in the cloud are deleted only when the policy says so and
also says ``confirm_delete_files: true``: config.py refuses such a config, and decide() refuses it again.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from daemon115.api.errors import Api115Error, AuthorizationNeeded, Kind
from daemon115.api.models import TASK_STATUS_NAMES, Task
from daemon115.config import CleanupPolicy, DeleteAction, format_duration
from daemon115.ledger import Ledger, LedgerError, normalized_hash
from daemon115.reconciler import OURS, TaskList, TaskPages, match_tasks, read_task_list

#: clear_task flag -> the task statuses it removes (api-notes.md §2.8); 4 and 5 delete the files too
CLEAR_STATUSES: Mapping[int, frozenset[int]] = {
    0: frozenset({2}), 1: frozenset({-1, 0, 1, 2}), 2: frozenset({-1}), 3: frozenset({0, 1}),
    4: frozenset({2}), 5: frozenset({-1, 0, 1, 2}),
}
FILE_FLAGS = frozenset({4, 5})

# ledger event kinds; NOTE_REQUEUED also counts retry_failed's requeues of a link
NOTE_DELETED = "cleanup_deleted"
NOTE_REQUEUED = "cleanup_requeued"
NOTE_CLEARED = "cleanup_cleared"
NOTE_FAILED = "cleanup_failed"
LAST_RUN_META = "cleanup.last_run."  # + policy name: when the policy last ran for real

ActionKind = Literal["clear", "delete", "requeue"]
OutcomeStatus = Literal["done", "would", "failed", "skipped"]


class CleanupRefused(ValueError):
    """A policy would delete files in the cloud without confirm_delete_files: true."""


class UnknownPolicy(ValueError):
    """--policy named a policy the config does not have."""


class Cloud(TaskPages, Protocol):
    """The part of the API client cleanup needs (the real Client, in tests too)."""

    def del_task(self, info_hash: str, *, delete_files: bool = False) -> None: ...
    def clear_task(self, flag: int) -> None: ...


@dataclass(frozen=True)
class Facts:
    """What the ledger knows about a task of ours; a task with no Facts was not submitted by the daemon."""

    key: str
    source: str
    task_status: int | None = None  # as last recorded by the reconciler
    percent: float | None = None
    progress_changed_at: float | None = None
    retries: int = 0  # requeues by retry_failed so far


@dataclass(frozen=True)
class Cleared:
    """A listed task a clear would remove."""

    info_hash: str
    name: str
    status: int
    key: str | None = None  # the ledger link, when the task is ours


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    policy: str
    info_hash: str  # "" for a clear
    name: str
    reason: str
    key: str | None = None  # the ledger link, for a task of ours
    flag: int | None = None  # clear only
    delete_files: bool = False  # delete and requeue: del_source_file
    clears: tuple[Cleared, ...] = ()  # clear only: the listed tasks it removes (it removes unlisted ones too)


@dataclass(frozen=True)
class Skipped:
    info_hash: str
    name: str
    why: str


@dataclass(frozen=True)
class Plan:
    """One policy's decision: what to do now, what max_deletions leaves for the next run, what it leaves alone."""

    policy: str
    actions: tuple[Action, ...] = ()
    deferred: tuple[Action, ...] = ()
    left_alone: tuple[Skipped, ...] = ()


@dataclass(frozen=True)
class Outcome:
    action: Action
    status: OutcomeStatus  # would: dry run; skipped: not tried, because 115 stopped answering
    detail: str = ""
    halts: bool = False  # a failure that may pass (rate limit, 115 unreachable): later actions are not tried


@dataclass(frozen=True)
class PolicyResult:
    policy: CleanupPolicy
    plan: Plan | None  # None when the policy was refused
    outcomes: tuple[Outcome, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class CleanupReport:
    dry_run: bool
    listing: TaskList | None  # None when no policy ran
    results: tuple[PolicyResult, ...] = ()

    @property
    def failed(self) -> bool:
        """Something was refused, failed or not tried: the CLI exits 1 (nothing is lost; the next run retries)."""
        return any(r.error or any(o.status in ("failed", "skipped") for o in r.outcomes) for r in self.results)


# --- deciding (pure) -----------------------------------------------------------------------------------------------

def decide(policy: CleanupPolicy, tasks: Iterable[Task], facts: Mapping[str, Facts], now: float, *,
           complete: bool = True) -> Plan:
    """What ``policy`` does to ``tasks`` at ``now``; ``facts`` maps the info hash of each task of ours.

    ``complete=False`` says the list is partial: a clear then goes ahead even when no listed task needs it.
    Raises CleanupRefused for a policy that deletes files without confirm_delete_files.
    """
    _refuse_unconfirmed_files(policy)
    ordered = sorted(tasks, key=lambda t: (t.add_time, t.info_hash))  # oldest first: the cap keeps the stalest
    if policy.clear is not None:
        return _decide_clear(policy, ordered, facts, complete)
    if policy.delete is not None:
        return _decide_delete(policy, policy.delete, ordered, facts, now)
    return Plan(policy.name)


def _refuse_unconfirmed_files(policy: CleanupPolicy) -> None:
    files = (policy.clear is not None and policy.clear.flag in FILE_FLAGS
             or policy.delete is not None and policy.delete.with_files)
    if files and not policy.confirm_delete_files:
        raise CleanupRefused(f"policy '{policy.name}' would delete files in the cloud but does not say "
                             "confirm_delete_files: true; nothing was done")


def _decide_clear(policy: CleanupPolicy, tasks: Sequence[Task], facts: Mapping[str, Facts], complete: bool) -> Plan:
    assert policy.clear is not None
    flag = policy.clear.flag
    statuses = CLEAR_STATUSES[flag]
    clears = tuple(Cleared(t.info_hash, t.name, t.status, _key(facts, t)) for t in tasks if t.status in statuses)
    if not clears and complete:
        return Plan(policy.name)
    which = " or ".join(TASK_STATUS_NAMES[s] for s in sorted(statuses))
    files = " and deletes their files" if flag in FILE_FLAGS else ""
    reason = (f"removes every {which} task of the account, ours or not{files}; {len(clears)} listed"
              + ("" if complete else ", more may be unlisted"))
    return Plan(policy.name, (Action("clear", policy.name, "", f"clear {policy.clear.mode}", reason, flag=flag,
                                     clears=clears),))


def _decide_delete(policy: CleanupPolicy, rule: DeleteAction, tasks: Sequence[Task], facts: Mapping[str, Facts],
                   now: float) -> Plan:
    chosen: list[Action] = []
    left_alone: list[Skipped] = []
    seen: set[str] = set()
    for task in tasks:
        fact = facts.get(task.info_hash)
        reasons = matched_conditions(rule, task, fact, now)
        if reasons is None or normalized_hash(task.info_hash) is None or task.info_hash in seen:
            continue  # del_task needs the hash, and one call per task is enough
        seen.add(task.info_hash)
        kind: ActionKind = "delete"
        if rule.retry_failed and task.status == -1 and fact is not None:
            if fact.retries >= rule.retry_failed:
                left_alone.append(Skipped(task.info_hash, task.name, f"failed again after {fact.retries} "
                                          f"requeue(s) (retry_failed {rule.retry_failed}): left alone"))
                continue
            kind = "requeue"
            reasons.append(f"requeue {fact.retries + 1} of {rule.retry_failed} (retry_failed {rule.retry_failed})")
        if rule.with_files:
            reasons.append("with its files (with_files, confirm_delete_files)")
        chosen.append(Action(kind, policy.name, task.info_hash, task.name, "; ".join(reasons),
                             key=fact.key if fact else None,
                             delete_files=rule.with_files and policy.confirm_delete_files))
    cap = max(0, policy.max_deletions)
    return Plan(policy.name, tuple(chosen[:cap]), tuple(chosen[cap:]), tuple(left_alone))


def matched_conditions(rule: DeleteAction, task: Task, fact: Facts | None, now: float) -> list[str] | None:
    """One phrase per condition of ``rule`` that ``task`` meets, or None when any condition fails.

    Whatever is unknown (no add_time, no progress clock) fails its condition: cleanup never deletes on a guess.
    """
    if task.status not in rule.status_codes:
        return None
    if fact is None and rule.only_ours:
        return None
    reasons = [f"status {TASK_STATUS_NAMES.get(task.status, str(task.status))}"]
    if rule.older_than is not None:
        age = now - task.add_time
        if task.add_time <= 0 or age < rule.older_than:
            return None
        reasons.append(f"added {_ago(age)} ago (older_than {format_duration(rule.older_than)})")
    if rule.stalled_for is not None:
        since = progress_since(task, fact, now)
        if since is None or now - since[0] < rule.stalled_for:
            return None
        reasons.append(f"no progress for {_ago(now - since[0])}{since[1]} "
                       f"(stalled_for {format_duration(rule.stalled_for)})")
    percent = task.percent or 0.0  # queued tasks report null: nothing downloaded yet
    if rule.min_progress is not None:
        if percent < rule.min_progress:
            return None
        reasons.append(f"progress {percent:g}% (min_progress {rule.min_progress:g})")
    if rule.max_progress is not None:
        if percent > rule.max_progress:
            return None
        reasons.append(f"progress {percent:g}% (max_progress {rule.max_progress:g})")
    if rule.name is not None:
        if not rule.name.search(task.name):
            return None
        reasons.append(f"name matches {rule.name.source!r}")
    reasons.append(f"submitted by daemon115 from {fact.source}" if fact is not None
                   else "not submitted by daemon115 (only_ours: false)")
    return reasons


def progress_since(task: Task, fact: Facts | None, now: float) -> tuple[float, str] | None:
    """When the task's progress last changed, and by whose clock; None when nobody knows.

    The ledger's clock is used for tasks of ours, unless the task moved since the reconciler last looked (then it
    has just progressed). 115's last_update stands in for tasks the ledger has not seen.
    """
    if fact is not None and fact.progress_changed_at is not None:
        if (fact.task_status, fact.percent) != (task.status, task.percent):
            return now, ""
        return fact.progress_changed_at, ""
    if task.last_update > 0:
        return float(task.last_update), " by 115's last_update"
    return None


def _ago(seconds: float) -> str:
    """A duration to its two largest units, rounded down: "4d3h", "7h12m", "45s"."""
    whole = int(max(0.0, seconds))
    parts = []
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
        elif parts:
            break
    return "".join(parts[:2]) or "0s"


def _key(facts: Mapping[str, Facts], task: Task) -> str | None:
    fact = facts.get(task.info_hash)
    return fact.key if fact else None


# --- what the ledger knows -----------------------------------------------------------------------------------------

def ledger_facts(ledger: Ledger, tasks: Iterable[Task]) -> dict[str, Facts]:
    """Facts for every listed task the daemon submitted, keyed by info hash."""
    tasks = list(tasks)
    facts: dict[str, Facts] = {}
    ours = ledger.matching([t.info_hash for t in tasks], [t.url for t in tasks], status=OURS)
    for task, entry in match_tasks(tasks, ours).pairs:
        if task.info_hash and task.info_hash not in facts:
            facts[task.info_hash] = Facts(entry.key, entry.source, entry.task_status, entry.percent,
                                          entry.progress_changed_at, requeues(ledger, entry.key))
    return facts


def requeues(ledger: Ledger, key: str) -> int:
    """How often retry_failed has sent the link again."""
    return sum(1 for event in ledger.history(key) if event.kind == NOTE_REQUEUED)


# --- acting --------------------------------------------------------------------------------------------------------

HALTED = "not tried: 115 refused or did not answer an earlier call; left for the next run"


def apply(actions: Iterable[Action], client: Cloud, ledger: Ledger, *, dry_run: bool, halted: bool = False,
          log: Any = None) -> list[Outcome]:
    """Carry the actions out in order; each real one is logged and noted on its link.

    A dry run touches nothing. When 115 rate-limits or cannot be reached (or ``halted`` says it already did), the
    remaining actions are not tried: they stay for the next run. Lost authorization raises.
    """
    actions = list(actions)
    if dry_run:
        return [Outcome(action, "would") for action in actions]
    outcomes: list[Outcome] = []
    for action in actions:
        if halted:
            outcomes.append(Outcome(action, "skipped", HALTED))
            continue
        try:
            _call(client, action)
        except AuthorizationNeeded:
            raise
        except Api115Error as exc:
            halted = exc.kind is Kind.RETRY_LATER
            outcomes.append(Outcome(action, "failed", str(exc), halts=halted))
            _record_failure(ledger, action, str(exc), log)
            continue
        outcomes.append(Outcome(action, "done", _record_done(ledger, action, log)))
    return outcomes


def _call(client: Cloud, action: Action) -> None:
    if action.kind == "clear":
        assert action.flag is not None
        client.clear_task(action.flag)
    else:
        client.del_task(action.info_hash, delete_files=action.delete_files)


def _detail(action: Action) -> dict[str, object]:
    return {"policy": action.policy, "info_hash": action.info_hash or None, "reason": action.reason,
            "flag": action.flag, "delete_files": action.delete_files if action.kind != "clear" else None}


def _record_done(ledger: Ledger, action: Action, log: Any) -> str:
    """Note the action on every link it concerns; returns what the report says beyond the action itself."""
    detail = ""
    try:
        with ledger.transaction():
            if action.kind == "clear":
                for cleared in action.clears:
                    if cleared.key is not None:
                        ledger.mark_task_gone(cleared.key)
                        ledger.note(cleared.key, NOTE_CLEARED, {**_detail(action), "info_hash": cleared.info_hash})
            elif action.key is not None:
                ledger.mark_task_gone(action.key)
                if action.kind == "requeue" and ledger.retry(action.key, submitted=True):
                    ledger.note(action.key, NOTE_REQUEUED, _detail(action))
                    detail = "queued again"
                else:
                    ledger.note(action.key, NOTE_DELETED, _detail(action))
                    if action.kind == "requeue":
                        detail = "not queued again: the link is no longer submitted in the ledger"
    except LedgerError as exc:
        detail = f"done in the cloud but not recorded in the ledger: {exc}"
        if log is not None:
            log.error("cleanup_not_recorded", policy=action.policy, info_hash=action.info_hash, error=str(exc))
    if log is not None:
        log.info("cleanup_action", policy=action.policy, action=action.kind, info_hash=action.info_hash or None,
                 name=action.name, flag=action.flag, delete_files=action.delete_files, reason=action.reason,
                 key=action.key, detail=detail or None)
    return detail


def _record_failure(ledger: Ledger, action: Action, error: str, log: Any) -> None:
    if log is not None:
        log.warning("cleanup_action_failed", policy=action.policy, action=action.kind,
                    info_hash=action.info_hash or None, flag=action.flag, error=error)
    if action.key is None:
        return
    try:
        ledger.note(action.key, NOTE_FAILED, {**_detail(action), "action": action.kind, "error": error})
    except LedgerError as exc:
        if log is not None:
            log.error("cleanup_not_recorded", policy=action.policy, info_hash=action.info_hash, error=str(exc))


# --- running policies ----------------------------------------------------------------------------------------------

def select(policies: Sequence[CleanupPolicy], only: str | Collection[str] | None) -> tuple[CleanupPolicy, ...]:
    """The policies to run: all, or the ones named (in config order); an unknown name raises UnknownPolicy."""
    if only is None:
        return tuple(policies)
    names = {only} if isinstance(only, str) else set(only)
    unknown = sorted(names - {p.name for p in policies})
    if unknown:
        have = ", ".join(p.name for p in policies) or "none"
        raise UnknownPolicy(f"no cleanup policy named {', '.join(map(repr, unknown))} (the config has: {have})")
    return tuple(p for p in policies if p.name in names)


def run_policies(policies: Sequence[CleanupPolicy], client: Cloud, ledger: Ledger, *, dry_run: bool,
                 only: str | Collection[str] | None = None, now: float | None = None,
                 max_pages: int | None = None, log: Any = None) -> CleanupReport:
    """Read the task list once, then decide and apply each policy in config order.

    A later policy sees the list without the tasks an earlier one removed (or, in a dry run, would remove); once 115
    stops answering, no later action is tried. A real run stores when each policy ran (see next_run_in); a dry run
    writes nothing.
    """
    chosen = select(policies, only)
    if not chosen:
        return CleanupReport(dry_run, None)
    listing = read_task_list(client, max_pages=max_pages)
    now = time.time() if now is None else now
    facts = ledger_facts(ledger, listing.tasks)
    tasks = list(listing.tasks)
    results: list[PolicyResult] = []
    halted = False
    for policy in chosen:
        try:
            plan = decide(policy, tasks, facts, now, complete=listing.complete)
        except CleanupRefused as exc:
            results.append(PolicyResult(policy, None, (), str(exc)))
            if log is not None:
                log.error("cleanup_refused", policy=policy.name, error=str(exc))
            continue
        outcomes = apply(plan.actions, client, ledger, dry_run=dry_run, halted=halted, log=log)
        tasks = remaining(tasks, outcomes)
        if not dry_run and not (outcomes and outcomes[0].status == "skipped"):
            ledger.meta_set(LAST_RUN_META + policy.name, repr(now))
        halted = halted or any(o.halts for o in outcomes)
        results.append(PolicyResult(policy, plan, tuple(outcomes)))
    return CleanupReport(dry_run, listing, tuple(results))


def remaining(tasks: Sequence[Task], outcomes: Iterable[Outcome]) -> list[Task]:
    """The tasks still in the cloud after ``outcomes`` (dry-run outcomes count as done)."""
    gone: set[str] = set()
    cleared: set[int] = set()
    for outcome in outcomes:
        if outcome.status not in ("done", "would"):
            continue
        if outcome.action.kind == "clear" and outcome.action.flag is not None:
            cleared |= CLEAR_STATUSES[outcome.action.flag]
        else:
            gone.add(outcome.action.info_hash)
    return [t for t in tasks if t.info_hash not in gone and t.status not in cleared]


def next_run_in(policy: CleanupPolicy, ledger: Ledger, now: float) -> float:
    """Seconds until ``policy`` is due, by the last real run the ledger remembers (0: due now)."""
    raw = ledger.meta_get(LAST_RUN_META + policy.name)
    try:
        last = float(raw) if raw else None
    except ValueError:
        last = None
    if last is None:
        return 0.0
    return max(0.0, min(policy.every, last + policy.every - now))


# --- showing -------------------------------------------------------------------------------------------------------

_VERBS: Mapping[tuple[str, str], str] = {
    ("clear", "done"): "cleared", ("delete", "done"): "deleted", ("requeue", "done"): "deleted and requeued",
    ("clear", "would"): "would clear", ("delete", "would"): "would delete", ("requeue", "would"): "would requeue",
    ("clear", "failed"): "FAILED to clear", ("delete", "failed"): "FAILED to delete",
    ("requeue", "failed"): "FAILED to delete (for requeue)",
    ("clear", "skipped"): "not tried: clear", ("delete", "skipped"): "not tried: delete",
    ("requeue", "skipped"): "not tried: requeue",
}


def format_report(report: CleanupReport) -> str:
    """Every action with its reason, per policy, for `daemon115 cleanup`."""
    if report.listing is None:
        return "no cleanup policies to run"
    lines = [f"{'dry run: nothing is changed. ' if report.dry_run else ''}task list: "
             f"{len(report.listing.tasks)} task(s) on {report.listing.pages} page(s)"]
    if not report.listing.complete:
        lines.append(f"  incomplete: {report.listing.problem}; tasks beyond it were not considered")
    for result in report.results:
        lines.extend(_policy_lines(result))
    return "\n".join(lines)


def _policy_lines(result: PolicyResult) -> list[str]:
    head = f"policy {result.policy.name}"
    if result.plan is None:
        return [f"{head}: refused: {result.error}"]
    plan = result.plan
    if not (result.outcomes or plan.deferred or plan.left_alone):
        return [f"{head}: nothing to do"]
    lines = [head + ":"]
    for outcome in result.outcomes:
        lines.extend(_outcome_lines(outcome))
    for action in plan.deferred:
        lines.append(f"  left for the next run (max_deletions {result.policy.max_deletions}): "
                     f"{action.info_hash}  {action.name}: {action.reason}")
    for skipped in plan.left_alone:
        lines.append(f"  left alone: {skipped.info_hash}  {skipped.name}: {skipped.why}")
    return lines


def _outcome_lines(outcome: Outcome) -> list[str]:
    action = outcome.action
    verb = _VERBS[(action.kind, outcome.status)]
    extra = f" [{outcome.detail}]" if outcome.detail else ""
    if action.kind == "clear":
        lines = [f"  {verb} (flag {action.flag}, {action.name.removeprefix('clear ')}): {action.reason}{extra}"]
        lines += [f"    {TASK_STATUS_NAMES.get(c.status, str(c.status))}  {c.info_hash}  {c.name}"
                  + ("  (ours)" if c.key else "") for c in action.clears]
        return lines
    files = " with files" if action.delete_files else ""
    return [f"  {verb}{files}: {action.info_hash}  {action.name}: {action.reason}{extra}"]
