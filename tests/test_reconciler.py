"""The reconciler against the sandbox over real HTTP with a real ledger: progress, vanished tasks, partial lists."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from daemon115.api.client import Client, Endpoints, connect
from daemon115.api.errors import RateLimited
from daemon115.api.models import Task
from daemon115.api.sandbox import Fault, Sandbox
from daemon115.api.transport import Pacing
from daemon115.config import ReconcileConfig
from daemon115.intake import candidate
from daemon115.ledger import Candidate, Ledger
from daemon115.links import parse_link
from daemon115.reconciler import Reconciler, match_tasks, ours_index, read_task_list
from daemon115.submitter import Submitter

FAST = Pacing(timeout=3, min_interval=0, max_retries=1, backoff_base=0.01, backoff_cap=0.02)
CFG = ReconcileConfig(every=600.0, active_every=60.0)
T0 = 1_767_000_000


def magnet(n: int, name: str | None = None) -> str:
    return f"magnet:?xt=urn:btih:{n:040x}&dn={name or f'item-{n}'}"


@pytest.fixture
def client(sandbox: Sandbox, token_file: Path) -> Client:
    return connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url), pacing=FAST,
                   clock=sandbox.clock.now).client


@pytest.fixture
def ledger(tmp_path: Path, sandbox: Sandbox) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.sqlite3", clock=sandbox.clock.now) as led:
        yield led


@pytest.fixture
def reconciler(ledger: Ledger, client: Client, sandbox: Sandbox) -> Reconciler:
    return Reconciler(ledger, client, clock=sandbox.clock.now)


def submit(ledger: Ledger, client: Client, sandbox: Sandbox, tmp_path: Path, numbers: list[int],
           source: str = "cli") -> list[str]:
    """Record the links and send them with the real submitter, as the daemon does."""
    ledger.record([candidate(parse_link(magnet(n)), target="0", source=source) for n in numbers])
    Submitter(ledger, client, tmp_path / "submit.lock", clock=sandbox.clock.now).drain(wait_window=False)
    keys = [f"{n:040x}" for n in numbers]
    assert all(ledger.get(k).status == "submitted" for k in keys)
    return keys


def test_records_status_percent_size_name_and_file_id_of_each_link_of_ours(
        ledger, client, sandbox, reconciler, tmp_path):
    [key] = submit(ledger, client, sandbox, tmp_path, [1])
    report = reconciler.run()
    assert (report.tasks, report.ours, report.foreign, report.complete) == (1, 1, 0, True)
    queued = ledger.get(key)
    assert (queued.task_status, queued.percent, queued.task_size, queued.file_id) == (0, None, None, None)
    assert queued.task_name == "item-1" and queued.task_seen_at is not None

    sandbox.clock.advance(330)  # half-way through the sandbox's 600 s download
    reconciler.run()
    downloading = ledger.get(key)
    cloud = {t["info_hash"]: t for t in sandbox.tasks()}[key]
    assert downloading.task_status == 1 and 0 < downloading.percent < 100
    assert downloading.percent == pytest.approx(float(cloud["percentDone"]), abs=1)
    assert downloading.task_size == cloud["size"] > 0 and downloading.file_id == cloud["file_id"] != ""

    sandbox.clock.advance(600)
    reconciler.run()
    done = ledger.get(key)
    assert (done.task_status, done.percent, done.to_json()["task_status"]) == (2, 100.0, "completed")


def test_progress_changed_at_moves_only_when_status_or_percent_changes(ledger, client, sandbox, reconciler, tmp_path):
    [key] = submit(ledger, client, sandbox, tmp_path, [2])
    sandbox.clock.advance(100)
    sandbox.set_task(key, status=1, percentDone=7)  # frozen: no more progress
    assert reconciler.run().changed == 1
    first = ledger.get(key).progress_changed_at
    sandbox.clock.advance(3600)
    assert reconciler.run().changed == 0
    stalled = ledger.get(key)
    assert stalled.progress_changed_at == first and stalled.task_seen_at > first  # seen again, progress unchanged
    sandbox.clock.advance(60)
    sandbox.set_task(key, percentDone=8)
    assert reconciler.run().changed == 1
    assert ledger.get(key).progress_changed_at == pytest.approx(sandbox.clock.now(), abs=5)


def test_tasks_not_submitted_by_the_daemon_are_counted_but_not_recorded(ledger, client, sandbox, reconciler, tmp_path):
    submit(ledger, client, sandbox, tmp_path, [3])
    foreign = sandbox.add_foreign_task(magnet(4), status=1, percent=20)
    report = reconciler.run()
    assert (report.ours, report.foreign) == (1, 1)
    assert ledger.find(foreign) is None


def test_a_vanished_task_is_noted_once_and_unnoted_when_it_reappears(ledger, client, sandbox, reconciler, tmp_path):
    gone_key, kept_key = submit(ledger, client, sandbox, tmp_path, [5, 6])
    reconciler.run()
    client.del_task(gone_key)  # as if removed in 115's web UI
    report = reconciler.run()
    assert report.gone == (gone_key,) and report.complete
    assert ledger.get(gone_key).task_gone_at is not None and ledger.get(kept_key).task_gone_at is None
    assert [e.kind for e in ledger.history(gone_key)].count("task_gone") == 1
    assert reconciler.run().gone == ()  # already noted
    assert [e.kind for e in ledger.history(gone_key)].count("task_gone") == 1

    sandbox.add_foreign_task(magnet(5), status=1, percent=50)  # added again (by hand)
    assert reconciler.run().gone == ()
    assert ledger.get(gone_key).task_gone_at is None and ledger.get(gone_key).task_status == 1


def test_links_still_queued_are_not_taken_for_vanished(ledger, client, sandbox, reconciler, tmp_path):
    ledger.record([candidate(parse_link(magnet(7)), target="0", source="cli")])  # recorded, not yet sent
    report = reconciler.run()
    assert report.gone == () and ledger.get(f"{7:040x}").task_gone_at is None


def test_reads_every_page_of_the_task_list(ledger, client, sandbox, reconciler, tmp_path):
    keys = submit(ledger, client, sandbox, tmp_path, list(range(10, 75)))  # 65 tasks, 30 a page
    report = reconciler.run()
    assert (report.tasks, report.pages, report.ours, report.complete) == (65, 3, 65, True)
    assert all(ledger.get(k).task_seen_at is not None for k in keys)


def test_max_pages_stops_reading_early_and_then_nothing_is_declared_gone(ledger, client, sandbox, tmp_path):
    submit(ledger, client, sandbox, tmp_path, list(range(100, 165)))  # 3 pages
    report = Reconciler(ledger, client, clock=sandbox.clock.now, max_pages=2).run()
    assert (report.tasks, report.pages, report.complete, report.gone, report.unseen) == (60, 2, False, (), 5)
    assert report.problem == "stopped after 2 of 3 pages (max_pages 2)"
    assert sandbox.stats()["calls"]["/open/offline/get_task_list"] == 2


def test_next_interval_is_fast_while_recent_links_are_unfinished(ledger, client, sandbox, reconciler, tmp_path):
    assert reconciler.next_interval(CFG) == 600.0  # nothing submitted
    submit(ledger, client, sandbox, tmp_path, [20, 21])
    assert reconciler.next_interval(CFG) == 60.0  # just submitted, task state unknown
    assert reconciler.next_interval(ReconcileConfig(every=30.0, active_every=60.0)) == 30.0  # never slower
    sandbox.clock.advance(700)
    reconciler.run()  # both completed
    assert reconciler.next_interval(CFG) == 600.0


def test_next_interval_slows_down_an_hour_after_submission_even_if_unfinished(
        ledger, client, sandbox, reconciler, tmp_path):
    [key] = submit(ledger, client, sandbox, tmp_path, [22])
    sandbox.set_task(key, status=1, percentDone=3)
    reconciler.run()
    sandbox.clock.advance(1800)
    assert reconciler.next_interval(CFG) == 60.0
    sandbox.clock.advance(1801)
    assert reconciler.next_interval(CFG) == 600.0


def test_a_failed_task_counts_as_finished_for_the_pace(ledger, client, sandbox, reconciler, tmp_path):
    ledger.record([candidate(parse_link(magnet(23, "sandbox-fail-23")), target="0", source="cli")])
    Submitter(ledger, client, tmp_path / "submit.lock", clock=sandbox.clock.now).drain(wait_window=False)
    sandbox.clock.advance(400)  # sandbox-fail tasks fail half-way
    reconciler.run()
    assert ledger.get(f"{23:040x}").task_status == -1
    assert reconciler.next_interval(CFG) == 600.0


def test_ours_index_names_the_source_of_each_task_the_daemon_submitted(ledger, client, sandbox, tmp_path):
    feed_key, = submit(ledger, client, sandbox, tmp_path, [30], source="feed:frieren")
    watch_key, = submit(ledger, client, sandbox, tmp_path, [31], source="watch:/drop/a.magnet")
    foreign = sandbox.add_foreign_task(magnet(32), status=2, percent=100)
    index = ours_index(ledger, client.tasks())
    assert dict(index) == {feed_key: "feed:frieren", watch_key: "watch:/drop/a.magnet"}
    assert foreign not in index
    assert ours_index(ledger) == index  # hashes known: the task list is not needed


def test_the_run_is_logged(ledger, client, sandbox, tmp_path):
    submit(ledger, client, sandbox, tmp_path, [40])
    with structlog.testing.capture_logs() as logs:
        Reconciler(ledger, client, clock=sandbox.clock.now, log=structlog.get_logger()).run()
    assert [(e["event"], e["log_level"], e["ours"], e["gone"]) for e in logs] == [("reconciled", "info", 1, 0)]


def test_a_task_that_completes_or_fails_is_announced_once(ledger, client, sandbox, tmp_path):
    ledger.record([candidate(parse_link(magnet(41)), target="0", source="feed:x"),
                   candidate(parse_link(magnet(42, "sandbox-fail")), target="0", source="cli")])
    Submitter(ledger, client, tmp_path / "submit.lock", clock=sandbox.clock.now).drain(wait_window=False)
    rec = Reconciler(ledger, client, clock=sandbox.clock.now, log=structlog.get_logger())
    with structlog.testing.capture_logs() as logs:
        rec.run()
        sandbox.clock.advance(700)
        rec.run()
        rec.run()
    finished = sorted((e["event"], e["key"]) for e in logs if e["event"].startswith("task_"))
    assert finished == [("task_completed", f"{41:040x}"), ("task_failed", f"{42:040x}")]


def test_a_refused_first_page_raises(client, sandbox):
    sandbox.inject(Fault("html405", endpoint="/open/offline/get_task_list"))
    with pytest.raises(RateLimited):
        read_task_list(client)


class TestDeepPagesRefused:
    """115 answers deep task-list pages with an nginx 405: the sandbox here serves one page of two tasks."""

    @pytest.fixture
    def sandbox(self) -> Iterator[Sandbox]:
        with Sandbox("127.0.0.1", 0, seed=115, page_size=2, max_task_pages=1) as running:
            yield running

    def test_what_was_read_is_recorded_and_nothing_is_declared_gone(self, ledger, client, sandbox, reconciler,
                                                                    tmp_path):
        keys = submit(ledger, client, sandbox, tmp_path, [50, 51, 52, 53, 54])
        with structlog.testing.capture_logs() as logs:
            report = Reconciler(ledger, client, clock=sandbox.clock.now, log=structlog.get_logger()).run()
        assert (report.complete, report.tasks, report.pages, report.ours, report.gone, report.unseen) == (
            False, 2, 1, 2, (), 3)
        assert "page 2 of 3" in report.problem and "405" in report.problem
        seen = [k for k in keys if ledger.get(k).task_seen_at is not None]
        assert len(seen) == 2 and all(ledger.get(k).task_gone_at is None for k in keys)
        assert logs[-1]["event"] == "reconciled_partly" and logs[-1]["log_level"] == "warning"


# --- match_tasks: pure, over real ledger rows -------------------------------------------------------------------

def cloud_task(info_hash: str, url: str, status: int = 1) -> Task:
    return Task(info_hash=info_hash, name="x", status=status, percent=10.0, size=1, add_time=T0, last_update=T0,
                url=url, file_id="", delete_file_id="", wp_path_id="0")


def test_match_tasks_pairs_by_info_hash_else_by_url(tmp_path):
    magnet_hash = f"{60:040x}"
    http_with_hash = "https://example.org/a.torrent"
    http_unknown = "https://example.org/b.torrent"
    with Ledger(tmp_path / "l.sqlite3") as led:
        led.record([candidate(parse_link(magnet(60)), target="0", source="cli"),
                    Candidate(key=http_with_hash, url=http_with_hash, info_hash=f"{61:040x}", target="0",
                              source="cli"),
                    Candidate(key=http_unknown, url=http_unknown, info_hash=None, target="0", source="cli"),
                    candidate(parse_link(magnet(62)), target="0", source="cli")])
        entries = led.entries()
    tasks = [
        cloud_task(magnet_hash, "magnet:?xt=urn:btih:" + magnet_hash.upper()),  # 115 spells the URL its own way
        cloud_task(f"{61:040x}", "https://other.example/renamed.torrent"),
        cloud_task(f"{63:040x}", http_unknown),  # the hash was never known: found by URL
        cloud_task(f"{64:040x}", magnet(62)),  # same URL, another hash: not the same download
        cloud_task(f"{65:040x}", "magnet:?xt=urn:btih:" + f"{65:040x}"),
    ]
    match = match_tasks(tasks, entries)
    assert sorted((t.info_hash[-2:], e.key) for t, e in match.pairs) == [
        ("3c", magnet_hash), ("3d", http_with_hash), ("3f", http_unknown)]
    assert [t.info_hash for t in match.foreign] == [f"{64:040x}", f"{65:040x}"]
    assert [e.key for e in match.missing] == [f"{62:040x}"]


def test_match_tasks_pairs_two_links_of_one_download_with_its_task(tmp_path):
    info_hash = f"{70:040x}"
    url = "https://example.org/c.torrent"
    with Ledger(tmp_path / "l.sqlite3") as led:
        led.record([candidate(parse_link(magnet(70)), target="0", source="feed:a"),
                    Candidate(key=url, url=url, info_hash=info_hash, target="0", source="feed:b")])
        entries = led.entries()
    match = match_tasks([cloud_task(info_hash, magnet(70))], entries)
    assert sorted(e.key for _, e in match.pairs) == sorted([info_hash, url])
    assert match.foreign == () and match.missing == ()
