"""Cleanup policies: decide() as a pure function (examples and properties), then run against the sandbox."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon115.api.client import Client, Endpoints, connect
from daemon115.api.errors import AuthorizationNeeded
from daemon115.api.models import Task
from daemon115.api.sandbox import Fault, Sandbox
from daemon115.api.transport import Pacing
from daemon115.cleanup import (
    CLEAR_STATUSES,
    LAST_RUN_META,
    NOTE_CLEARED,
    NOTE_DELETED,
    NOTE_FAILED,
    NOTE_REQUEUED,
    CleanupRefused,
    Facts,
    UnknownPolicy,
    apply,
    decide,
    format_report,
    next_run_in,
    run_policies,
)
from daemon115.config import CLEAR_FLAGS, TASK_STATUSES, CleanupPolicy, ConfigError, DeleteAction, Regex, loads
from daemon115.intake import candidate
from daemon115.ledger import Ledger
from daemon115.links import parse_link
from daemon115.reconciler import Reconciler
from daemon115.submitter import Submitter

NOW = 1_767_000_000.0
HOUR, DAY = 3600.0, 86400.0
FAST = Pacing(timeout=3, min_interval=0, max_retries=1, backoff_base=0.01, backoff_cap=0.02)


def magnet(n: int, name: str | None = None) -> str:
    return f"magnet:?xt=urn:btih:{n:040x}&dn={name or f'item-{n}'}"


def policies(*items: dict[str, Any]) -> tuple[CleanupPolicy, ...]:
    """Policies through the real config reader, written as they would be in YAML."""
    return loads(yaml.safe_dump({"cleanup": list(items)})).cleanup


def delete_policy(*, max_deletions: int | None = None, confirm: bool = False, **delete: Any) -> CleanupPolicy:
    """A policy named "p" whose delete: holds ``delete`` (its ``name`` is the regex)."""
    item: dict[str, Any] = {"name": "p", "delete": delete}
    if max_deletions is not None:
        item["max_deletions"] = max_deletions
    if confirm:
        item["confirm_delete_files"] = True
    return policies(item)[0]


def clear_policy(mode: str, name: str = "c") -> CleanupPolicy:
    item: dict[str, Any] = {"name": name, "clear": mode}
    if mode.endswith("+files"):
        item["confirm_delete_files"] = True
    return policies(item)[0]


def task(n: int, *, status: int = 1, percent: float | None = 50.0, age: float = DAY, idle: float | None = None,
         name: str | None = None) -> Task:
    """A listed task added ``age`` ago whose 115 last_update was ``idle`` ago (default: when it was added)."""
    return Task(info_hash=f"{n:040x}", name=name or f"item-{n}", status=status, percent=percent, size=1000,
                add_time=int(NOW - age), last_update=int(NOW - (age if idle is None else idle)), url=magnet(n),
                file_id="", delete_file_id="", wp_path_id="0")


def ours(t: Task, *, changed_ago: float | None = None, retries: int = 0, source: str = "cli") -> Facts:
    """What the ledger knows of a task it submitted, as last recorded (same status and percent as listed)."""
    changed = None if changed_ago is None else NOW - changed_ago
    return Facts(t.info_hash, source, t.status, t.percent, changed, retries)


# --- decide(): examples --------------------------------------------------------------------------------------------

def test_the_reason_names_each_condition_that_matched():
    t = task(1, status=-1, age=4 * DAY + 3 * HOUR)
    plan = decide(delete_policy(status=["failed"], older_than="3d"), [t], {t.info_hash: ours(t)}, NOW)
    [action] = plan.actions
    assert (action.kind, action.info_hash, action.name, action.delete_files) == ("delete", t.info_hash, "item-1",
                                                                                  False)
    assert action.reason == "status failed; added 4d3h ago (older_than 3d); submitted by daemon115 from cli"


def test_a_reason_lists_progress_stall_and_name():
    t = task(2, status=1, percent=2.5, age=5 * DAY, name="Show.S01E01.1080p.mkv")
    policy = delete_policy(status=["downloading"], stalled_for="6h", min_progress=1, max_progress=5,
                           name="s01e\\d+")
    plan = decide(policy, [t], {t.info_hash: ours(t, changed_ago=7 * HOUR, source="feed:show")}, NOW)
    assert plan.actions[0].reason == (
        "status downloading; no progress for 7h (stalled_for 6h); progress 2.5% (min_progress 1); "
        "progress 2.5% (max_progress 5); name matches 's01e\\\\d+'; submitted by daemon115 from feed:show")


FAILING_ONE_CONDITION = [
    ({"status": ["failed"]}, task(1, status=1)),
    ({"status": ["downloading"], "older_than": "3d"}, task(1, age=2 * DAY)),
    ({"status": ["downloading"], "stalled_for": "6h"}, task(1, age=DAY, idle=5 * HOUR)),
    ({"status": ["downloading"], "min_progress": 10}, task(1, percent=9.5)),
    ({"status": ["downloading"], "max_progress": 5}, task(1, percent=5.01)),
    ({"status": ["downloading"], "name": "1080p"}, task(1, name="Show.720p.mkv")),
    ({"status": ["downloading"], "older_than": "1d"}, Task(f"{1:040x}", "x", 1, 1.0, 0, 0, 0, "", "", "", "0")),
    ({"status": ["downloading"], "stalled_for": "1m"}, Task(f"{1:040x}", "x", 1, 1.0, 0, 0, 0, "", "", "", "0")),
]


@pytest.mark.parametrize(("rule", "t"), FAILING_ONE_CONDITION,
                         ids=["status", "older_than", "stalled_for", "min_progress", "max_progress", "name",
                              "unknown add_time", "unknown progress clock"])
def test_a_task_failing_any_one_condition_is_left_alone(rule, t):
    assert decide(delete_policy(only_ours=False, **rule), [t], {}, NOW).actions == ()
    only_status = delete_policy(only_ours=False, status=[t.status_name])
    assert len(decide(only_status, [t], {}, NOW).actions) == 1  # it was that one condition


def test_only_ours_is_the_default_and_leaves_foreign_tasks_alone():
    mine, theirs = task(1, status=-1), task(2, status=-1)
    facts = {mine.info_hash: ours(mine)}
    assert [a.info_hash for a in decide(delete_policy(status=["failed"]), [mine, theirs], facts, NOW).actions] == [
        mine.info_hash]
    both = decide(delete_policy(status=["failed"], only_ours=False), [mine, theirs], facts, NOW).actions
    assert {a.info_hash for a in both} == {mine.info_hash, theirs.info_hash}
    assert next(a for a in both if a.info_hash == theirs.info_hash).reason.endswith(
        "not submitted by daemon115 (only_ours: false)")


def test_stalled_for_uses_the_ledgers_progress_clock_for_tasks_of_ours():
    t = task(1, status=1, percent=3.0, age=3 * DAY, idle=60)  # 115 touched it a minute ago, percent unchanged
    policy = delete_policy(status=["downloading"], stalled_for="1d")
    assert decide(policy, [t], {t.info_hash: ours(t, changed_ago=2 * DAY)}, NOW).actions[0].reason.startswith(
        "status downloading; no progress for 2d (stalled_for 1d)")
    assert decide(policy, [t], {t.info_hash: ours(t, changed_ago=HOUR)}, NOW).actions == ()


def test_a_task_of_ours_that_moved_since_the_ledger_looked_is_not_stalled():
    t = task(1, status=1, percent=40.0, age=3 * DAY)
    stale = dataclasses.replace(ours(t, changed_ago=2 * DAY), percent=30.0)
    assert decide(delete_policy(status=["downloading"], stalled_for="1d"), [t], {t.info_hash: stale}, NOW).actions == ()


def test_stalled_for_falls_back_to_115s_last_update():
    foreign = task(1, status=1, age=3 * DAY, idle=2 * DAY)
    unseen = task(2, status=1, age=3 * DAY, idle=2 * DAY)  # ours, but the reconciler has not recorded it yet
    plan = decide(delete_policy(status=["downloading"], stalled_for="1d", only_ours=False), [foreign, unseen],
                  {unseen.info_hash: ours(unseen)}, NOW)
    assert len(plan.actions) == 2
    assert all("no progress for 2d by 115's last_update (stalled_for 1d)" in a.reason for a in plan.actions)


def test_a_task_reporting_no_percentage_counts_as_zero_progress():
    t = task(1, status=0, percent=None)
    assert decide(delete_policy(status=["queued"], max_progress=0, only_ours=False), [t], {}, NOW).actions[0].reason \
        .startswith("status queued; progress 0% (max_progress 0)")
    assert decide(delete_policy(status=["queued"], min_progress=1, only_ours=False), [t], {}, NOW).actions == ()


def test_max_deletions_keeps_the_oldest_and_leaves_the_rest_for_the_next_run():
    tasks = [task(n, status=-1, age=n * DAY) for n in range(1, 8)]
    plan = decide(delete_policy(status=["failed"], only_ours=False, max_deletions=3), tasks, {}, NOW)
    assert [a.info_hash for a in plan.actions] == [f"{n:040x}" for n in (7, 6, 5)]
    assert [a.info_hash for a in plan.deferred] == [f"{n:040x}" for n in (4, 3, 2, 1)]
    nothing = decide(delete_policy(status=["failed"], only_ours=False, max_deletions=0), tasks, {}, NOW)
    assert nothing.actions == () and len(nothing.deferred) == 7


def test_the_default_cap_is_50():
    tasks = [task(n, status=-1) for n in range(60)]
    plan = decide(delete_policy(status=["failed"], only_ours=False), tasks, {}, NOW)
    assert (len(plan.actions), len(plan.deferred)) == (50, 10)


def test_retry_failed_requeues_a_failed_link_of_ours_up_to_n_times_then_leaves_it_alone():
    fresh, once, twice = task(1, status=-1), task(2, status=-1), task(3, status=-1)
    foreign, running = task(4, status=-1), task(5, status=1)
    facts = {fresh.info_hash: ours(fresh), once.info_hash: ours(once, retries=1), twice.info_hash: ours(twice, retries=2),
             running.info_hash: ours(running)}
    policy = delete_policy(status=["failed", "downloading"], retry_failed=2, only_ours=False)
    plan = decide(policy, [fresh, once, twice, foreign, running], facts, NOW)
    kinds = {a.info_hash: (a.kind, a.key) for a in plan.actions}
    assert kinds == {fresh.info_hash: ("requeue", fresh.info_hash), once.info_hash: ("requeue", once.info_hash),
                     foreign.info_hash: ("delete", None), running.info_hash: ("delete", running.info_hash)}
    assert "requeue 1 of 2 (retry_failed 2)" in next(a for a in plan.actions if a.info_hash == fresh.info_hash).reason
    assert "requeue 2 of 2" in next(a for a in plan.actions if a.info_hash == once.info_hash).reason
    assert [(s.info_hash, s.why) for s in plan.left_alone] == [
        (twice.info_hash, "failed again after 2 requeue(s) (retry_failed 2): left alone")]


def test_with_files_deletes_files_only_when_confirmed():
    t = task(1, status=2, percent=100.0)
    policy = delete_policy(status=["completed"], with_files=True, confirm=True)
    [action] = decide(policy, [t], {t.info_hash: ours(t)}, NOW).actions
    assert action.delete_files and "with its files" in action.reason
    with pytest.raises(CleanupRefused, match="confirm_delete_files"):
        decide(dataclasses.replace(policy, confirm_delete_files=False), [t], {t.info_hash: ours(t)}, NOW)
    assert not decide(delete_policy(status=["completed"]), [t], {t.info_hash: ours(t)}, NOW).actions[0].delete_files


@pytest.mark.parametrize("mode", ["completed+files", "all+files"])
def test_a_clear_that_deletes_files_is_refused_without_confirmation(mode):
    policy = dataclasses.replace(clear_policy(mode), confirm_delete_files=False)
    with pytest.raises(CleanupRefused, match="confirm_delete_files"):
        decide(policy, [task(1, status=2)], {}, NOW)


@pytest.mark.parametrize("item", [
    {"name": "x", "clear": "all+files"},
    {"name": "x", "clear": "completed+files"},
    {"name": "x", "delete": {"status": ["completed"], "with_files": True}},
])
def test_the_config_refuses_a_file_deleting_policy_without_confirmation(item):
    with pytest.raises(ConfigError, match="confirm_delete_files: true"):
        policies(item)


@pytest.mark.parametrize(("mode", "flag"), sorted(CLEAR_FLAGS.items(), key=lambda kv: kv[1]))
def test_a_clear_is_one_action_with_its_flag_listing_every_task_it_removes(mode, flag):
    tasks = [task(n, status=s) for n, s in enumerate((-1, 0, 1, 2, 2, -1), start=1)]
    facts = {tasks[0].info_hash: ours(tasks[0])}
    [action] = decide(clear_policy(mode), tasks, facts, NOW).actions
    assert (action.kind, action.flag) == ("clear", flag)
    assert [c.info_hash for c in action.clears] == [t.info_hash for t in tasks if t.status in CLEAR_STATUSES[flag]]
    assert all((c.key is not None) == (c.info_hash == tasks[0].info_hash) for c in action.clears)
    assert "ours or not" in action.reason


def test_a_clear_with_nothing_listed_to_clear_is_skipped_unless_the_list_was_partial():
    done = [task(1, status=2)]
    assert decide(clear_policy("failed"), done, {}, NOW).actions == ()
    [action] = decide(clear_policy("failed"), done, {}, NOW, complete=False).actions
    assert action.flag == 2 and action.clears == () and "more may be unlisted" in action.reason


def test_a_task_without_a_usable_info_hash_is_never_deleted():
    t = dataclasses.replace(task(1, status=-1), info_hash="")
    assert decide(delete_policy(status=["failed"], only_ours=False), [t], {}, NOW).actions == ()


def test_a_delete_policy_with_no_status_matches_nothing():
    rule = DeleteAction(status=(), status_codes=())
    policy = CleanupPolicy("bare", delete=rule)
    assert decide(policy, [task(n, status=s) for n, s in enumerate((-1, 0, 1, 2))], {}, NOW).actions == ()


# --- decide(): properties ------------------------------------------------------------------------------------------

STATUS_CODES = (-1, 0, 1, 2)
NAMES = ("Show.S01E01.1080p.mkv", "Movie.2160p.HEVC.mkv", "linux.iso", "")
REGEXES = ("1080p", "s01e\\d+", "^linux", "HEVC|x265")


@st.composite
def listed_tasks(draw: st.DrawFn) -> list[Task]:
    numbers = draw(st.lists(st.integers(0, 40), max_size=15, unique=True))  # 115 lists a task once
    return [Task(info_hash=f"{n:040x}", name=draw(st.sampled_from(NAMES)), status=draw(st.sampled_from(STATUS_CODES)),
                 percent=draw(st.none() | st.floats(0, 100)), size=1,
                 add_time=int(NOW - draw(st.floats(-HOUR, 10 * DAY))),
                 last_update=draw(st.sampled_from([0, int(NOW - draw(st.floats(0, 10 * DAY)))])),
                 url=magnet(n), file_id="", delete_file_id="", wp_path_id="0") for n in numbers]


@st.composite
def ledger_facts_for(draw: st.DrawFn, tasks: list[Task]) -> dict[str, Facts]:
    facts = {}
    for t in tasks:
        if draw(st.booleans()):
            same = draw(st.booleans())
            facts[t.info_hash] = Facts(
                t.info_hash, "cli", t.status if same else draw(st.sampled_from(STATUS_CODES)),
                t.percent if same else draw(st.none() | st.floats(0, 100)),
                draw(st.none() | st.floats(NOW - 10 * DAY, NOW)), draw(st.integers(0, 3)))
    return facts


@st.composite
def delete_rules(draw: st.DrawFn) -> CleanupPolicy:
    names = draw(st.sets(st.sampled_from(sorted(TASK_STATUSES)), min_size=1))
    optional_duration = st.none() | st.floats(0, 8 * DAY)
    optional_percent = st.none() | st.floats(0, 100)
    rule = DeleteAction(
        status=tuple(sorted(names)), status_codes=tuple(TASK_STATUSES[n] for n in sorted(names)),
        older_than=draw(optional_duration), stalled_for=draw(optional_duration),
        min_progress=draw(optional_percent), max_progress=draw(optional_percent),
        name=draw(st.none() | st.sampled_from(REGEXES).map(Regex.compile)), only_ours=draw(st.booleans()),
        with_files=draw(st.booleans()), retry_failed=draw(st.integers(0, 3)))
    return CleanupPolicy("prop", delete=rule, confirm_delete_files=draw(st.booleans()),
                         max_deletions=draw(st.integers(0, 6)))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[CleanupPolicy, list[Task], dict[str, Facts]]:
    tasks = draw(listed_tasks())
    return draw(delete_rules()), tasks, draw(ledger_facts_for(tasks))


def meets_every_condition(rule: DeleteAction, t: Task, fact: Facts | None) -> bool:
    """The specification of a delete: ALL the given conditions hold, anything unknown failing its condition."""
    percent = t.percent or 0.0
    if fact is not None and fact.progress_changed_at is not None:
        moved = (fact.task_status, fact.percent) != (t.status, t.percent)
        progress_at: float | None = NOW if moved else fact.progress_changed_at
    else:
        progress_at = float(t.last_update) if t.last_update > 0 else None
    return (t.status in rule.status_codes
            and (fact is not None or not rule.only_ours)
            and (rule.older_than is None or (t.add_time > 0 and NOW - t.add_time >= rule.older_than))
            and (rule.stalled_for is None or (progress_at is not None and NOW - progress_at >= rule.stalled_for))
            and (rule.min_progress is None or percent >= rule.min_progress)
            and (rule.max_progress is None or percent <= rule.max_progress)
            and (rule.name is None or rule.name.search(t.name)))


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_every_delete_meets_every_condition_and_every_matching_task_is_accounted_for(scenario):
    policy, tasks, facts = scenario
    rule = policy.delete
    if rule.with_files and not policy.confirm_delete_files:
        with pytest.raises(CleanupRefused):
            decide(policy, tasks, facts, NOW)
        return
    plan = decide(policy, tasks, facts, NOW)
    by_hash = {t.info_hash: t for t in tasks}
    chosen = plan.actions + plan.deferred
    for action in chosen:
        assert meets_every_condition(rule, by_hash[action.info_hash], facts.get(action.info_hash))
    expected = {t.info_hash for t in tasks if meets_every_condition(rule, t, facts.get(t.info_hash))}
    accounted = [a.info_hash for a in chosen] + [s.info_hash for s in plan.left_alone]
    assert sorted(accounted) == sorted(expected)  # each matching task exactly once


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_the_cap_ownership_and_file_rules_always_hold(scenario):
    policy, tasks, facts = scenario
    rule = policy.delete
    try:
        plan = decide(policy, tasks, facts, NOW)
    except CleanupRefused:
        assert rule.with_files and not policy.confirm_delete_files
        return
    by_hash = {t.info_hash: t for t in tasks}
    assert len(plan.actions) <= policy.max_deletions
    assert len(plan.actions) == min(policy.max_deletions, len(plan.actions) + len(plan.deferred))
    ages = [by_hash[a.info_hash].add_time for a in plan.actions + plan.deferred]
    assert ages == sorted(ages)  # the cap keeps the oldest
    for action in plan.actions + plan.deferred:
        fact = facts.get(action.info_hash)
        if rule.only_ours:
            assert fact is not None and action.key == fact.key
        assert action.delete_files == rule.with_files
        is_retry = rule.retry_failed > 0 and by_hash[action.info_hash].status == -1 and fact is not None
        assert (action.kind == "requeue") == is_retry
        if is_retry:
            assert fact.retries < rule.retry_failed
    for skipped in plan.left_alone:
        fact = facts[skipped.info_hash]
        assert by_hash[skipped.info_hash].status == -1 and fact.retries >= rule.retry_failed > 0


@settings(max_examples=60, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_the_decision_does_not_depend_on_the_order_of_the_list(scenario, rnd):
    policy, tasks, facts = scenario
    policy = dataclasses.replace(policy, confirm_delete_files=True)
    shuffled = list(tasks)
    rnd.shuffle(shuffled)
    assert decide(policy, tasks, facts, NOW) == decide(policy, shuffled, facts, NOW)


CLEAR_POLICIES = {mode: clear_policy(mode) for mode in CLEAR_FLAGS}


@settings(max_examples=60, deadline=None)
@given(listed_tasks(), st.sampled_from(sorted(CLEAR_FLAGS)))
def test_a_clear_lists_exactly_the_listed_tasks_its_flag_removes(tasks, mode):
    plan = decide(CLEAR_POLICIES[mode], tasks, {}, NOW)
    doomed = [t.info_hash for t in sorted(tasks, key=lambda t: (t.add_time, t.info_hash))
              if t.status in CLEAR_STATUSES[CLEAR_FLAGS[mode]]]
    if not doomed:
        assert plan.actions == ()
        return
    [action] = plan.actions
    assert action.flag == CLEAR_FLAGS[mode] and [c.info_hash for c in action.clears] == doomed
    assert action.delete_files is False and plan.deferred == ()


# --- against the sandbox -------------------------------------------------------------------------------------------

@pytest.fixture
def client(sandbox: Sandbox, token_file: Path) -> Client:
    return new_client(sandbox, token_file)


def new_client(sandbox: Sandbox, token_file: Path) -> Client:
    return connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url), pacing=FAST,
                   clock=sandbox.clock.now).client


@pytest.fixture
def ledger(tmp_path: Path, sandbox: Sandbox) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.sqlite3", clock=sandbox.clock.now) as led:
        yield led


def submit(ledger: Ledger, client: Client, sandbox: Sandbox, tmp_path: Path, links: list[tuple[int, str]]) -> None:
    ledger.record([candidate(parse_link(magnet(n, name)), target="0", source=f"feed:{name}") for n, name in links])
    Submitter(ledger, client, tmp_path / "submit.lock", clock=sandbox.clock.now).drain(wait_window=False)
    assert all(ledger.get(f"{n:040x}").status == "submitted" for n, _ in links)


@pytest.fixture
def world(ledger: Ledger, client: Client, sandbox: Sandbox, tmp_path: Path) -> SimpleNamespace:
    """Tasks in every state and age: four of ours submitted 4 days ago, six foreign ones.

    ours: done (completed), broken (failed half-way), stuck (downloading at 2% since minute 1), waiting (queued);
    foreign: old_failed 5d, old_stalled 5d at 3%, done_foreign 1d, old_queued 4d, young_dl 1h at 3%, young_failed 1h.
    """
    submit(ledger, client, sandbox, tmp_path, [(1, "done"), (2, "broken-sandbox-fail"), (3, "stuck"), (4, "waiting")])
    w = SimpleNamespace(done=f"{1:040x}", broken=f"{2:040x}", stuck=f"{3:040x}", waiting=f"{4:040x}")
    sandbox.clock.advance(70)
    sandbox.set_task(w.stuck, status=1, percentDone=2)
    sandbox.set_task(w.waiting, status=0)
    sandbox.clock.advance(30)
    reconciler = Reconciler(ledger, client, clock=sandbox.clock.now)
    reconciler.run()
    sandbox.clock.advance(4 * DAY)
    reconciler.run()
    now = sandbox.clock.now()
    for n, (attr, status, percent, age) in enumerate([
            ("old_failed", -1, 10, 5 * DAY), ("old_stalled", 1, 3, 5 * DAY), ("done_foreign", 2, 100, DAY),
            ("old_queued", 0, None, 4 * DAY), ("young_dl", 1, 3, HOUR), ("young_failed", -1, 40, HOUR)], start=100):
        setattr(w, attr, sandbox.add_foreign_task(magnet(n, attr), status=status, percent=percent,
                                                  add_time=now - age))
    assert {e.key: e.task_status for e in ledger.entries()} == {w.done: 2, w.broken: -1, w.stuck: 1, w.waiting: 0}
    w.all = {t["info_hash"] for t in sandbox.tasks()}
    return w


def run(policy_list, client, ledger, sandbox, *, dry_run=False, only=None):
    return run_policies(policy_list, client, ledger, dry_run=dry_run, only=only, now=sandbox.clock.now())


def deleted(sandbox: Sandbox) -> list[tuple[str, int]]:
    return [(c["info_hash"], c["del_source_file"]) for c in sandbox.stats()["del_calls"]]


def in_cloud(sandbox: Sandbox) -> set[str]:
    return {t["info_hash"] for t in sandbox.tasks()}


STALLED = {"name": "stalled", "delete": {"status": ["downloading"], "older_than": "3d", "max_progress": 5}}


def test_a_delete_policy_deletes_exactly_the_matching_tasks_of_ours(world, client, ledger, sandbox):
    report = run(policies(STALLED), client, ledger, sandbox)
    assert deleted(sandbox) == [(world.stuck, 0)] and sandbox.stats()["clear_calls"] == []
    assert in_cloud(sandbox) == world.all - {world.stuck}  # old_stalled matches too, but is not ours
    assert not report.failed and [o.status for o in report.results[0].outcomes] == ["done"]
    [note] = [e for e in ledger.history(world.stuck) if e.kind == NOTE_DELETED]
    assert note.detail["policy"] == "stalled" and "older_than 3d" in note.detail["reason"]
    assert ledger.get(world.stuck).task_gone_at is not None


def test_only_ours_false_also_deletes_foreign_tasks(world, client, ledger, sandbox):
    item = {**STALLED, "delete": {**STALLED["delete"], "only_ours": False}}
    run(policies(item), client, ledger, sandbox)
    assert sorted(deleted(sandbox)) == sorted([(world.stuck, 0), (world.old_stalled, 0)])  # young_dl is too young


def test_stalled_for_reads_the_ledgers_progress_clock_and_115s_last_update(world, client, ledger, sandbox):
    item = {"name": "idle", "delete": {"status": ["queued", "downloading"], "stalled_for": "1d", "only_ours": False}}
    report = run(policies(item), client, ledger, sandbox)
    assert {h for h, _ in deleted(sandbox)} == {world.stuck, world.waiting, world.old_stalled, world.old_queued}
    reasons = {o.action.info_hash: o.action.reason for o in report.results[0].outcomes}
    assert "no progress for 4d (stalled_for 1d)" in reasons[world.stuck]  # progress_changed_at, minute 1
    assert "no progress for 5d by 115's last_update" in reasons[world.old_stalled]


def test_failed_tasks_of_ours_only_by_default(world, client, ledger, sandbox):
    run(policies({"name": "failed", "delete": {"status": ["failed"]}}), client, ledger, sandbox)
    assert deleted(sandbox) == [(world.broken, 0)]


@pytest.mark.parametrize(("mode", "flag"), sorted(CLEAR_FLAGS.items(), key=lambda kv: kv[1]))
def test_each_clear_mode_sends_its_flag_once_and_dry_run_lists_what_it_clears(world, client, ledger, sandbox, mode,
                                                                              flag):
    statuses = {"completed": {2}, "all": {-1, 0, 1, 2}, "failed": {-1}, "running": {0, 1}}[mode.split("+")[0]]
    expected = {t["info_hash"] for t in sandbox.tasks() if t["status"] in statuses}
    policy = policies({"name": "c", "clear": mode, **({"confirm_delete_files": True} if "+" in mode else {})})
    dry = run(policy, client, ledger, sandbox, dry_run=True)
    [outcome] = dry.results[0].outcomes
    assert outcome.status == "would" and {c.info_hash for c in outcome.action.clears} == expected
    assert sandbox.stats()["clear_calls"] == []
    text = format_report(dry)
    assert f"would clear (flag {flag}, {mode}): removes every " in text and all(h in text for h in expected)

    run(policy, client, ledger, sandbox)
    assert [(c["flag"], c["delete_files"], c["removed"]) for c in sandbox.stats()["clear_calls"]] == [
        (flag, flag in (4, 5), len(expected))]
    assert deleted(sandbox) == [] and in_cloud(sandbox) == world.all - expected
    for key in (world.done, world.broken, world.stuck, world.waiting):
        noted = [e.kind for e in ledger.history(key)].count(NOTE_CLEARED)
        assert noted == (key in expected) and (ledger.get(key).task_gone_at is not None) == (key in expected)


def test_dry_run_calls_nothing_that_changes_state(world, client, ledger, sandbox):
    everything = policies(
        {"name": "clear-all", "clear": "all+files", "confirm_delete_files": True},
        {"name": "stalled", "delete": {"status": ["downloading"], "older_than": "3d", "only_ours": False,
                                       "with_files": True}, "confirm_delete_files": True},
        {"name": "retry", "delete": {"status": ["failed"], "retry_failed": 3}},
    )
    before_stats, before_entries = sandbox.stats(), ledger.entries()
    before_history = {e.key: ledger.history(e.key) for e in before_entries}
    report = run(everything, client, ledger, sandbox, dry_run=True)
    after = sandbox.stats()
    for name in ("del_calls", "clear_calls", "add_calls", "accepted"):
        assert after[name] == before_stats[name]
    changed = {p for p in set(after["calls"]) | set(before_stats["calls"])
               if after["calls"].get(p) != before_stats["calls"].get(p)}
    assert changed == {"/open/offline/get_task_list"}
    assert in_cloud(sandbox) == world.all
    assert ledger.entries() == before_entries
    assert {e.key: ledger.history(e.key) for e in before_entries} == before_history
    assert all(ledger.meta_get(LAST_RUN_META + p.name) is None for p in everything)
    # the clear would remove everything, so the later policies see nothing left to do
    assert [[o.status for o in r.outcomes] for r in report.results] == [["would"], [], []]


def test_dry_run_of_delete_policies_lists_every_action_with_its_reason(world, client, ledger, sandbox):
    report = run(policies({"name": "stalled", "delete": {"status": ["downloading"], "older_than": "3d",
                                                         "only_ours": False}},
                          {"name": "retry", "delete": {"status": ["failed"], "retry_failed": 1}}),
                 client, ledger, sandbox, dry_run=True)
    text = format_report(report)
    assert text.startswith("dry run: nothing is changed. task list: 10 task(s) on 1 page(s)")
    assert re.search(rf"would delete: {world.stuck}  stuck: status downloading; added 4d\S* ago \(older_than 3d\)",
                     text)
    assert f"would delete: {world.old_stalled}  old_stalled: " in text
    assert f"would requeue: {world.broken}  broken-sandbox-fail: status failed; submitted by daemon115 from " \
           f"feed:broken-sandbox-fail; requeue 1 of 1 (retry_failed 1)" in text
    assert deleted(sandbox) == []


def test_the_safety_cap_holds_across_runs(ledger, client, sandbox):
    now = sandbox.clock.now()
    hashes = [sandbox.add_foreign_task(magnet(200 + n), status=1, percent=1, add_time=now - (10 - n) * DAY)
              for n in range(7)]
    policy = policies({"name": "stalled", "max_deletions": 3,
                       "delete": {"status": ["downloading"], "older_than": "1d", "only_ours": False}})
    first = run(policy, client, ledger, sandbox)
    assert [h for h, _ in deleted(sandbox)] == hashes[:3]  # the oldest first
    assert [a.info_hash for a in first.results[0].plan.deferred] == hashes[3:]
    assert format_report(first).count("left for the next run (max_deletions 3)") == 4
    run(policy, client, ledger, sandbox)
    run(policy, client, ledger, sandbox)
    assert [h for h, _ in deleted(sandbox)] == hashes
    assert format_report(run(policy, client, ledger, sandbox)).endswith("policy stalled: nothing to do")
    assert len(deleted(sandbox)) == 7


def test_retry_failed_requeues_the_link_and_stops_after_n(ledger, client, sandbox, tmp_path):
    submit(ledger, client, sandbox, tmp_path, [(9, "flaky-sandbox-fail")])
    key = f"{9:040x}"
    policy = policies({"name": "retry", "delete": {"status": ["failed"], "retry_failed": 2}})
    reconciler = Reconciler(ledger, client, clock=sandbox.clock.now)
    submitter = Submitter(ledger, client, tmp_path / "submit.lock", clock=sandbox.clock.now)
    for attempt in (1, 2):
        sandbox.clock.advance(400)  # the sandbox fails it half-way through
        reconciler.run()
        report = run(policy, client, ledger, sandbox)
        [outcome] = report.results[0].outcomes
        assert (outcome.action.kind, outcome.status, outcome.detail) == ("requeue", "done", "queued again")
        assert ledger.get(key).status == "queued"
        submitter.drain(wait_window=False)
        assert ledger.get(key).status == "submitted"
    sandbox.clock.advance(400)
    reconciler.run()
    last = run(policy, client, ledger, sandbox)
    assert last.results[0].outcomes == () and [s.info_hash for s in last.results[0].plan.left_alone] == [key]
    assert "left alone: " in format_report(last)
    assert deleted(sandbox) == [(key, 0), (key, 0)]
    assert sandbox.stats()["accepted_hashes"][key] == 3  # the first submission and two requeues
    assert [e.kind for e in ledger.history(key)].count(NOTE_REQUEUED) == 2
    assert key in in_cloud(sandbox)  # the third failure stays for the user to see


def test_with_files_sends_del_source_file_only_when_confirmed(world, client, ledger, sandbox):
    confirmed = policies({"name": "purge", "confirm_delete_files": True,
                          "delete": {"status": ["completed"], "with_files": True}})
    run(confirmed, client, ledger, sandbox)
    assert deleted(sandbox) == [(world.done, 1)]


def test_an_unconfirmed_file_deleting_policy_is_refused_at_run_time_too(world, client, ledger, sandbox):
    sneaky = [dataclasses.replace(p, confirm_delete_files=False) for p in policies(
        {"name": "purge", "confirm_delete_files": True, "delete": {"status": ["completed"], "with_files": True}},
        {"name": "wipe", "confirm_delete_files": True, "clear": "all+files"})]
    report = run(sneaky, client, ledger, sandbox)
    assert report.failed and [r.plan for r in report.results] == [None, None]
    assert all("confirm_delete_files" in r.error for r in report.results)
    assert deleted(sandbox) == [] and sandbox.stats()["clear_calls"] == []
    assert "policy purge: refused: " in format_report(report)


def test_a_rate_limit_stops_the_run_and_leaves_the_rest_for_the_next(world, client, ledger, sandbox, token_file):
    two = policies({"name": "failed", "delete": {"status": ["failed"], "only_ours": False}}, STALLED)
    sandbox.inject(Fault("rate_limit_770004", endpoint="/open/offline/del_task"))
    report = run(two, client, ledger, sandbox)
    first, second = (r.outcomes for r in report.results)
    assert [o.status for o in first] == ["failed", "skipped", "skipped"] and report.failed
    assert [o.action.info_hash for o in first] == [world.old_failed, world.broken, world.young_failed]
    assert [(o.status, o.action.info_hash) for o in second] == [("skipped", world.stuck)]  # later policies wait too
    assert deleted(sandbox) == [] and in_cloud(sandbox) == world.all
    assert sandbox.stats()["calls"]["/open/offline/del_task"] == 1  # one refused call, then nothing
    assert "FAILED to delete" in format_report(report) and "not tried: delete" in format_report(report)
    assert ledger.meta_get(LAST_RUN_META + "failed") and ledger.meta_get(LAST_RUN_META + "stalled") is None
    # the breaker of the first client is open now; a later run (here: a fresh process) finishes the job
    run(two, new_client(sandbox, token_file), ledger, sandbox)
    assert sorted(h for h, _ in deleted(sandbox)) == sorted([world.old_failed, world.broken, world.young_failed,
                                                             world.stuck])


def test_a_permanent_refusal_is_recorded_on_the_link_and_the_run_goes_on(world, client, ledger, sandbox):
    [policy] = policies({"name": "failed", "delete": {"status": ["failed"]}})
    listed = [t for t in client.tasks() if t.info_hash == world.broken]
    [action] = decide(policy, listed, {world.broken: Facts(world.broken, "cli")}, sandbox.clock.now()).actions
    bad = dataclasses.replace(action, info_hash="not-a-hash")  # the same link, aimed at a hash 115 refuses
    outcomes = apply([bad, action], client, ledger, dry_run=False)
    assert [o.status for o in outcomes] == ["failed", "done"] and "990002" in outcomes[0].detail
    kinds = [e.kind for e in ledger.history(world.broken)]
    assert kinds.count(NOTE_FAILED) == 1 and kinds.count(NOTE_DELETED) == 1


def test_every_real_action_is_logged(world, client, ledger, sandbox):
    with structlog.testing.capture_logs() as logs:
        run_policies(policies(STALLED), client, ledger, dry_run=False, now=sandbox.clock.now(),
                     log=structlog.get_logger())
    [entry] = [e for e in logs if e["event"] == "cleanup_action"]
    assert (entry["policy"], entry["action"], entry["info_hash"], entry["delete_files"]) == (
        "stalled", "delete", world.stuck, False)


def test_policies_run_in_order_and_a_later_one_does_not_see_what_an_earlier_one_removed(
        world, client, ledger, sandbox):
    both = policies({"name": "clear-failed", "clear": "failed"},
                    {"name": "failed", "delete": {"status": ["failed"], "only_ours": False}})
    report = run(both, client, ledger, sandbox)
    assert [c["flag"] for c in sandbox.stats()["clear_calls"]] == [2] and deleted(sandbox) == []
    assert report.results[1].outcomes == ()


def test_only_runs_the_named_policy_and_an_unknown_name_is_an_error(world, client, ledger, sandbox):
    two = policies(STALLED, {"name": "clear-done", "clear": "completed"})
    run(two, client, ledger, sandbox, only="clear-done")
    assert deleted(sandbox) == [] and [c["flag"] for c in sandbox.stats()["clear_calls"]] == [0]
    with pytest.raises(UnknownPolicy, match="'nope'.*stalled, clear-done"):
        run(two, client, ledger, sandbox, only="nope")


def test_no_policies_means_no_call_at_all(client, ledger, sandbox):
    report = run((), client, ledger, sandbox)
    assert report.listing is None and not report.failed and format_report(report) == "no cleanup policies to run"
    assert sandbox.stats()["calls"] == {}


def test_a_real_run_remembers_when_each_policy_ran(world, client, ledger, sandbox):
    [policy] = policies({**STALLED, "every": "6h"})
    assert next_run_in(policy, ledger, sandbox.clock.now()) == 0.0
    run([policy], client, ledger, sandbox, dry_run=True)
    assert next_run_in(policy, ledger, sandbox.clock.now()) == 0.0  # a dry run does not count
    run([policy], client, ledger, sandbox)
    assert next_run_in(policy, ledger, sandbox.clock.now()) == pytest.approx(6 * HOUR, abs=5)
    sandbox.clock.advance(6 * HOUR)
    assert next_run_in(policy, ledger, sandbox.clock.now()) == pytest.approx(0.0, abs=5)


def test_lost_authorization_stops_cleanup(world, client, ledger, sandbox, token_file):
    sandbox.revoke(json.loads(token_file.read_text())["refresh_token"])
    sandbox.inject(Fault("expire_access"))
    with pytest.raises(AuthorizationNeeded):
        run(policies(STALLED), client, ledger, sandbox)
    assert deleted(sandbox) == []
