"""The submitter against the sandbox over real HTTP, with a real ledger: batches, outcomes, pauses, recovery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from daemon115.api.client import Endpoints, connect
from daemon115.api.errors import AuthorizationNeeded
from daemon115.api.sandbox import Fault
from daemon115.api.transport import Pacing
from daemon115.intake import candidate
from daemon115.ledger import Candidate, Ledger
from daemon115.links import parse_link
from daemon115.submitter import SubmitPolicy, Submitter, batch_due

FAST = Pacing(timeout=3, min_interval=0, max_retries=1, backoff_base=0.01, backoff_cap=0.02)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def magnet(i: int) -> str:
    return f"magnet:?xt=urn:btih:{i:040x}&dn=item-{i}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path, clock):
    with Ledger(tmp_path / "ledger.sqlite3", clock=clock) as led:
        yield led


@pytest.fixture
def client(sandbox, token_file):
    return connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url),
                   pacing=FAST).client


def make_submitter(ledger, client, tmp_path: Path, clock, **policy) -> Submitter:
    return Submitter(ledger, client, tmp_path / "submit", SubmitPolicy(**policy), clock=clock)


def queue(ledger, numbers, target="0", source="cli"):
    cands = [candidate(parse_link(magnet(i)), target=target, source=source) for i in numbers]
    return ledger.record(cands)


def add_calls(sandbox):
    return sandbox.stats()["add_calls"]


def test_batches_hold_at_most_batch_size_and_group_by_target(ledger, client, sandbox, tmp_path, clock):
    queue(ledger, range(0, 250), target="111")
    queue(ledger, range(250, 260), target="222")
    report = make_submitter(ledger, client, tmp_path, clock, batch_size=100).drain(wait_window=False)
    calls = add_calls(sandbox)
    assert sorted((c["wp_path_id"], c["url_count"]) for c in calls) == [("111", 50), ("111", 100), ("111", 100),
                                                                        ("222", 10)]
    assert report.calls == 4 and report.submitted == 260
    assert ledger.counts()["submitted"] == 260
    assert ledger.get(f"{7:040x}").info_hash == f"{7:040x}"


def test_batch_leaves_when_full_or_when_the_window_closes(ledger, client, sandbox, tmp_path, clock):
    sub = make_submitter(ledger, client, tmp_path, clock, batch_size=5, batch_window=2.0)
    queue(ledger, range(3))
    assert sub.drain().calls == 0  # 3 links, window still open
    assert sub.next_wakeup() == pytest.approx(2.0, abs=0.01)
    queue(ledger, range(3, 5))
    assert sub.drain().calls == 1  # full
    queue(ledger, range(5, 6))
    clock.now += 2.1
    assert sub.drain().calls == 1  # window closed
    assert [c["url_count"] for c in add_calls(sandbox)] == [5, 1]


def test_batch_due_is_pure():
    policy = SubmitPolicy(batch_size=10, batch_window=2)
    assert not batch_due(3, 100.0, 101.0, policy, wait_window=True)
    assert batch_due(10, 100.0, 101.0, policy, wait_window=True)
    assert batch_due(3, 100.0, 102.0, policy, wait_window=True)
    assert batch_due(1, 100.0, 100.0, policy, wait_window=False)


def test_each_per_url_outcome_is_recorded(ledger, client, sandbox, tmp_path, clock):
    sandbox.add_foreign_task(magnet(2), status=1, percent=10)  # already in the cloud
    queue(ledger, [1, 2])
    bad = "magnet:?xt=urn:btih:" + "z" * 40
    ledger.record([Candidate(key=bad, url=bad, info_hash=None, target="0", source="cli")])
    report = make_submitter(ledger, client, tmp_path, clock).drain(wait_window=False)
    assert (report.submitted, report.duplicates, report.failed) == (1, 1, 1)
    assert ledger.get(f"{1:040x}").status == "submitted"
    dup = ledger.get(f"{2:040x}")
    assert dup.status == "submitted"
    assert any(e.kind == "submitted" and e.detail["answer"].get("already_exists") for e in ledger.history(dup.key))
    failed = ledger.get(bad)
    assert failed.status == "failed" and "10004" in failed.reason


def test_an_all_failed_single_url_call_still_counts_as_already_in_the_cloud(ledger, client, sandbox, tmp_path, clock):
    sandbox.add_foreign_task(magnet(9), status=2, percent=100)
    queue(ledger, [9])
    report = make_submitter(ledger, client, tmp_path, clock).drain(wait_window=False)
    assert report.duplicates == 1 and ledger.get(f"{9:040x}").status == "submitted"


def test_quota_exhausted_pauses_submission_until_quota_returns(ledger, client, sandbox, tmp_path, clock):
    sandbox.set_quota(1)
    queue(ledger, range(3))
    sub = make_submitter(ledger, client, tmp_path, clock, pause_probe=600)
    report = sub.drain(wait_window=False)
    assert report.submitted == 1 and report.paused
    assert ledger.counts()["queued"] == 2
    calls = len(add_calls(sandbox))
    assert sub.drain(wait_window=False).paused and len(add_calls(sandbox)) == calls  # nothing sent while paused
    clock.now += 601
    assert sub.drain(wait_window=False).paused  # quota still 0: asked get_quota_info, still paused
    assert len(add_calls(sandbox)) == calls
    sandbox.set_quota(10)
    clock.now += 601
    report = sub.drain(wait_window=False)
    assert report.paused is None and report.submitted == 2
    assert all(e.attempts <= 2 for e in ledger.entries())


def test_no_space_pauses_too(ledger, client, sandbox, tmp_path, clock):
    sandbox.set_space(0)
    queue(ledger, range(2))
    report = make_submitter(ledger, client, tmp_path, clock).drain(wait_window=False)
    assert report.paused and ledger.counts()["queued"] == 2


def test_transient_failures_back_off_and_the_retry_cap_turns_them_into_failed(ledger, client, sandbox, tmp_path,
                                                                                clock):
    sandbox.inject(Fault("http503", endpoint="/open/offline/add_task_urls", times=None))
    queue(ledger, [1])
    sub = make_submitter(ledger, client, tmp_path, clock, max_attempts=3, retry_base=10, retry_cap=100)
    report = sub.drain(wait_window=False)
    assert report.unreachable and ledger.get(f"{1:040x}").status == "queued"
    assert sub.drain(wait_window=False).calls == 0  # backing off
    for _ in range(2):
        clock.now += 200
        sub.drain(wait_window=False)
    entry = ledger.get(f"{1:040x}")
    assert entry.status == "failed" and "gave up after 3 attempts" in entry.reason
    assert [e.kind for e in ledger.history(entry.key)].count("attempt") == 3


def test_rate_limits_requeue_without_using_up_the_retry_cap(ledger, client, sandbox, tmp_path, clock):
    queue(ledger, [1])
    sub = make_submitter(ledger, client, tmp_path, clock, max_attempts=1)
    sandbox.inject(Fault("rate_limit_406", endpoint="/open/offline/add_task_urls"))
    assert sub.drain(wait_window=False).unreachable
    entry = ledger.get(f"{1:040x}")
    assert entry.status == "queued" and entry.attempts == 0


def test_a_lost_answer_is_settled_from_the_task_list_and_never_resent(ledger, client, sandbox, tmp_path, clock):
    sandbox.inject(Fault("drop_after", endpoint="/open/offline/add_task_urls"))
    queue(ledger, range(3))
    sub = make_submitter(ledger, client, tmp_path, clock)
    sub.drain(wait_window=False)
    assert ledger.counts()["submitted"] == 3
    assert len(add_calls(sandbox)) == 1
    assert set(sandbox.stats()["accepted"].values()) == {1}


def test_a_lost_answer_for_links_115_did_not_take_requeues_them(ledger, client, sandbox, tmp_path, clock):
    sandbox.inject(Fault("drop_before", endpoint="/open/offline/add_task_urls"))
    queue(ledger, range(2))
    sub = make_submitter(ledger, client, tmp_path, clock, unknown_grace=30)
    sub.drain(wait_window=False)
    assert ledger.counts()["queued"] == 2
    assert sub.drain(wait_window=False).calls == 0  # 115 gets time to finish what it may have started
    clock.now += 31
    sub.drain(wait_window=False)
    assert ledger.counts()["submitted"] == 2
    assert set(sandbox.stats()["accepted"].values()) == {1}


def requeue_all(ledger, numbers, *, delay: float = 0.0) -> None:
    """As if each link had been sent once and had come back for a reason: the next send must look first."""
    for i in numbers:
        ledger.requeue(f"{i:040x}", delay=delay, reason="115 code 50001 (try again later)", charge=False)


def task_list_reads(sandbox) -> int:
    return sandbox.stats()["calls"].get("/open/offline/get_task_list", 0)


def test_one_task_list_read_serves_every_batch_of_resent_links_in_a_drain(ledger, client, sandbox, tmp_path, clock):
    queue(ledger, range(40))
    requeue_all(ledger, range(40))
    report = make_submitter(ledger, client, tmp_path, clock, batch_size=8).drain(wait_window=False)
    assert (report.calls, report.submitted) == (5, 40)
    assert task_list_reads(sandbox) == 1  # not one a batch: 115's list is 20 pages deep, and each page is a call


def test_links_that_fell_due_after_the_last_read_are_looked_up_again(ledger, client, sandbox, tmp_path, clock):
    queue(ledger, range(4))
    requeue_all(ledger, range(2))
    requeue_all(ledger, range(2, 4), delay=30)  # their earlier send may still land at 115 in the next 30 s
    sub = make_submitter(ledger, client, tmp_path, clock)
    sub.drain(wait_window=False)
    client.add_task_urls([magnet(2)])  # ... and one of them does
    clock.now += 31
    sub.drain(wait_window=False)
    assert task_list_reads(sandbox) == 2
    assert ledger.counts()["submitted"] == 4 and set(sandbox.stats()["accepted"].values()) == {1}
    assert [c["url_count"] for c in add_calls(sandbox)] == [2, 1, 1]  # link 2 was found, not sent again


def test_start_up_settles_links_left_submitting_before_sending_anything(ledger, client, sandbox, tmp_path, clock):
    queue(ledger, range(4))
    batch = ledger.claim_batch("0", 4)  # a crash after claiming ...
    client.add_task_urls([e.url for e in batch.entries[:2]])  # ... with 115 having taken half of the batch
    calls = len(add_calls(sandbox))
    sub = make_submitter(ledger, client, tmp_path, clock, unknown_grace=30)
    sub.drain(wait_window=False)
    assert ledger.counts()["submitted"] == 2 and len(add_calls(sandbox)) == calls  # found in the list, none resent
    clock.now += 31  # the dead run's request cannot still be on its way now
    report = sub.drain(wait_window=False)
    assert ledger.counts()["submitted"] == 4
    assert len(add_calls(sandbox)) == calls + 1 and add_calls(sandbox)[-1]["url_count"] == 2  # only the other half
    assert report.submitted == 2
    assert set(sandbox.stats()["accepted"].values()) == {1}


def test_losing_authorization_keeps_links_queued(ledger, client, sandbox, tmp_path, clock, token_file):
    from daemon115.api.auth import read_tokens

    sandbox.revoke(read_tokens(token_file).refresh_token)
    sandbox.inject(Fault("expire_access"))
    queue(ledger, range(2))
    with pytest.raises(AuthorizationNeeded):
        make_submitter(ledger, client, tmp_path, clock).drain(wait_window=False)
    assert ledger.counts()["queued"] == 2 and ledger.counts()["submitting"] == 0


def test_dedup_across_encodings_and_sources_reaches_115_once(ledger, client, sandbox, tmp_path, clock):
    from daemon115.links import parse_torrent

    fixtures = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-world" / "torrents"
    torrent = parse_torrent((fixtures / "leaves.webtorrent-fixtures.torrent").read_bytes()).to_link()
    hexed = parse_link(f"magnet:?xt=urn:btih:{torrent.info_hash}")
    import base64

    b32 = base64.b32encode(bytes.fromhex(torrent.info_hash)).decode()
    based = parse_link(f"magnet:?xt=urn:btih:{b32}&dn=other")
    outcomes = [ledger.record([candidate(link, target="0", source=src)])[0].outcome
                for link, src in ((torrent, "watch:/drop/a.torrent"), (hexed, "feed:x"), (based, "cli"))]
    assert outcomes == ["queued", "duplicate", "duplicate"]
    make_submitter(ledger, client, tmp_path, clock).drain(wait_window=False)
    assert sum(sandbox.stats()["accepted_hashes"].values()) == 1
    assert ledger.sources(torrent.info_hash) == ["watch:/drop/a.torrent", "feed:x", "cli"]


def test_a_path_target_is_resolved_created_recorded_and_resolved_again_after_deletion(ledger, client, sandbox,
                                                                                     tmp_path, clock):
    from daemon115.api.folders import FolderResolver

    folders = FolderResolver(client, ledger)
    sub = Submitter(ledger, client, tmp_path / "submit", SubmitPolicy(), folders=folders, clock=clock)
    queue(ledger, [1], target="/Downloads/Anime")
    assert sub.drain(wait_window=False).submitted == 1
    entry = ledger.get(f"{1:040x}")
    folder_id = sandbox.tasks()[0]["wp_path_id"]
    assert folder_id.isdigit() and folder_id != "0"
    assert (entry.target, entry.target_path) == (folder_id, "/Downloads/Anime")  # the id for 115, the path for people

    sandbox.delete_folder("/Downloads/Anime")  # the user removed it in 115
    queue(ledger, [2], target="/Downloads/Anime")
    assert sub.drain(wait_window=False).submitted == 1
    assert [c["code"] for c in add_calls(sandbox)] == [0, 430004, 0]  # the cached id refused, forgotten, re-resolved
    assert any(e.kind == "requeued" and "gone" in e.detail["reason"] for e in ledger.history(f"{2:040x}"))
    fresh = {t["info_hash"]: t["wp_path_id"] for t in sandbox.tasks()}[f"{2:040x}"]
    assert fresh.isdigit() and fresh != folder_id


def test_a_path_target_that_must_not_be_created_fails_its_links_with_the_reason(ledger, client, sandbox, tmp_path,
                                                                                 clock):
    from daemon115.api.folders import FolderResolver

    sub = Submitter(ledger, client, tmp_path / "submit", SubmitPolicy(), folders=FolderResolver(client, ledger,
                    create=False), clock=clock)
    queue(ledger, [3], target="/Nowhere")
    sub.drain(wait_window=False)
    entry = ledger.get(f"{3:040x}")
    assert entry.status == "failed" and "/Nowhere" in entry.reason
    assert not sandbox.stats()["add_calls"]
