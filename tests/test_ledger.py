"""The ledger, specified against real SQLite files."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import multiprocessing
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from daemon115.ledger import (
    SCHEMA_VERSION,
    STATUSES,
    Candidate,
    InvalidCandidate,
    InvalidTransition,
    Ledger,
    LedgerBusy,
    LedgerError,
    Recorded,
    TaskUpdate,
    UnknownLink,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-world"
T0 = 1_700_000_000.0


class Clock:
    """A clock the test moves by hand, so next-attempt times are exact."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def candidate(n: int, *, target: str = "0", source: str = "cli", **extra: object) -> Candidate:
    info_hash = f"{n:040x}"
    fields = {
        "key": info_hash,
        "url": f"magnet:?xt=urn:btih:{info_hash}&dn=item.{n}",
        "info_hash": info_hash,
        "target": target,
        "source": source,
        "name": f"item {n}",
    }
    fields.update(extra)
    return Candidate(**fields)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.sqlite3"


@pytest.fixture
def ledger(path: Path, clock: Clock) -> Iterator[Ledger]:
    with Ledger(path, clock=clock) as opened:
        yield opened


def kinds(ledger: Ledger, key: str) -> list[str]:
    return [event.kind for event in ledger.history(key)]


def submit(ledger: Ledger, target: str = "0") -> list[str]:
    batch = ledger.claim_batch(target, 100)
    assert batch is not None
    for key in batch.keys:
        ledger.mark_submitted(key, info_hash=None, answer={"code": 0}, batch_id=batch.batch_id)
    return list(batch.keys)


# -- recording and dedup -----------------------------------------------------------------------


def test_a_new_link_is_queued_with_seen_and_queued_events(ledger: Ledger) -> None:
    c = candidate(1, source="watch:/drop/a.magnet", rule=None, target="123", target_path="/Movies")

    assert ledger.record([c]) == [Recorded(c.key, "queued", "queued")]

    entry = ledger.get(c.key)
    assert entry is not None
    assert (entry.status, entry.url, entry.info_hash, entry.target, entry.source, entry.name, entry.target_path) == (
        "queued", c.url, c.info_hash, "123", "watch:/drop/a.magnet", "item 1", "/Movies")
    assert (entry.attempts, entry.next_attempt_at, entry.created_at, entry.queued_at) == (0, None, T0, T0)
    history = ledger.history(c.key)
    assert [e.kind for e in history] == ["seen", "queued"]
    assert history[0].detail == {"source": "watch:/drop/a.magnet", "name": "item 1", "target": "123"}


def test_a_known_key_is_a_duplicate_whichever_source_brings_it_and_history_lists_every_source(
    ledger: Ledger,
) -> None:
    ledger.record([candidate(1, source="watch:/drop/a.magnet")])
    submit(ledger)

    again = ledger.record([candidate(1, source="feed:frieren", rule="frieren-1080p", target="999")])

    assert again == [Recorded(f"{1:040x}", "duplicate", "submitted")]
    entry = ledger.get(f"{1:040x}")
    assert entry is not None and entry.target == "0" and entry.source == "watch:/drop/a.magnet"
    assert ledger.sources(entry.key) == ["watch:/drop/a.magnet", "feed:frieren"]
    seen = [e.detail for e in ledger.history(entry.key) if e.kind == "seen"]
    assert seen[1] == {"source": "feed:frieren", "rule": "frieren-1080p", "name": "item 1", "target": "999"}


def test_the_same_source_bringing_a_link_again_adds_no_event(ledger: Ledger) -> None:
    ledger.record([candidate(1, source="feed:a")])
    before = kinds(ledger, f"{1:040x}")

    for _ in range(3):
        assert ledger.record([candidate(1, source="feed:a")])[0].outcome == "duplicate"

    assert kinds(ledger, f"{1:040x}") == before


def test_duplicates_inside_one_call_are_recognised(ledger: Ledger) -> None:
    outcomes = ledger.record([candidate(1), candidate(2), candidate(1, source="feed:x")])

    assert [r.outcome for r in outcomes] == ["queued", "queued", "duplicate"]
    assert ledger.sources(f"{1:040x}") == ["cli", "feed:x"]


def test_real_magnet_uris_round_trip_and_share_one_row_per_info_hash(ledger: Ledger) -> None:
    vectors = json.loads((FIXTURES / "magnets" / "magnet_vectors.json").read_text("utf-8"))["vectors"]
    found = [(v["id"], v["uri"], m.group(1).lower())
             for v in vectors if (m := re.search(r"xt=urn:btih:([0-9a-fA-F]{40})(?:&|$)", v["uri"]))]
    assert len(found) > 10
    candidates = [Candidate(key=h, url=uri, info_hash=h, target="0", source=f"feed:{vid}") for vid, uri, h in found]

    outcomes = ledger.record(candidates)

    distinct = {h for _, _, h in found}
    assert sum(r.outcome == "queued" for r in outcomes) == len(distinct) < len(found)
    for vid, uri, h in found:
        first_uri = next(u for _, u, k in found if k == h)
        assert ledger.find(h).url == first_uri  # type: ignore[union-attr]
        assert f"feed:{vid}" in ledger.sources(h)
    cyrillic = next(uri for vid, uri, _ in found if vid == "fg-rutracker-cyrillic-dn")
    assert ledger.find(cyrillic) is not None


# -- one transaction per record() --------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"info_hash": "NOT-A-HASH"},
        {"key": ""},
        {"target": ""},
        {"size": -1},
        {"url": ["not", "a", "string"]},
    ],
)
def test_one_record_call_is_one_transaction_a_bad_candidate_midway_leaves_nothing(
    ledger: Ledger, bad: dict[str, object]
) -> None:
    ledger.record([candidate(1, source="feed:a")])
    before = ledger.history(f"{1:040x}")
    call = [candidate(2), candidate(1, source="feed:b"), candidate(3, **bad), candidate(4)]

    with pytest.raises(InvalidCandidate) as caught:
        ledger.record(call)

    assert "candidate 3 of 4" in str(caught.value)
    assert ledger.get(f"{2:040x}") is None and ledger.history(f"{2:040x}") == []
    assert ledger.get(f"{4:040x}") is None
    assert ledger.history(f"{1:040x}") == before
    assert ledger.counts()["queued"] == 1
    # and the ledger is usable afterwards
    assert ledger.record([candidate(2)])[0].outcome == "queued"


def test_invalid_candidate_message_names_the_source_but_not_the_url(ledger: Ledger) -> None:
    bad = Candidate(key="ftp://user:secret@host/f", url="ftp://user:secret@host/f", info_hash="xyz", target="0",
                    source="watch:/drop/f.torrent-link")
    with pytest.raises(InvalidCandidate) as caught:
        ledger.record([bad])
    message = str(caught.value)
    assert "watch:/drop/f.torrent-link" in message and "info_hash_hex" in message
    assert "secret" not in message


# -- force -------------------------------------------------------------------------------------


def test_force_puts_a_known_link_back_in_the_queue_with_attempts_reset(ledger: Ledger, clock: Clock) -> None:
    ledger.record([candidate(1)])
    key = submit(ledger)[0]
    clock.advance(60)

    result = ledger.record([candidate(1, target="555")], force=True)

    assert result == [Recorded(key, "requeued", "queued")]
    entry = ledger.get(key)
    assert entry is not None
    assert (entry.status, entry.attempts, entry.target, entry.queued_at, entry.submitted_at) == (
        "queued", 0, "555", T0 + 60, None)
    assert kinds(ledger, key)[-1] == "forced"


def test_force_leaves_a_link_being_submitted_alone(ledger: Ledger) -> None:
    ledger.record([candidate(1)])
    batch = ledger.claim_batch("0", 10)
    assert batch is not None

    result = ledger.record([candidate(1)], force=True)

    assert result == [Recorded(f"{1:040x}", "duplicate", "submitting")]
    assert ledger.get(f"{1:040x}").batch_id == batch.batch_id  # type: ignore[union-attr]


def test_force_on_a_new_key_simply_queues_it(ledger: Ledger) -> None:
    assert ledger.record([candidate(7)], force=True)[0].outcome == "queued"


# -- claiming batches --------------------------------------------------------------------------


def test_claim_batch_takes_the_oldest_due_links_of_one_target_up_to_the_limit(ledger: Ledger, clock: Clock) -> None:
    for n in range(1, 6):
        ledger.record([candidate(n, target="A" if n % 2 else "B")])
        clock.advance(1)

    batch = ledger.claim_batch("A", 2)

    assert batch is not None and batch.target == "A"
    assert batch.keys == (f"{1:040x}", f"{3:040x}")
    assert re.fullmatch(r"[0-9a-f]{32}", batch.batch_id)
    assert all(e.status == "submitting" and e.attempts == 1 and e.batch_id == batch.batch_id for e in batch.entries)
    assert ledger.history(f"{1:040x}")[-1].detail == {"batch_id": batch.batch_id, "attempt": 1}
    rest = ledger.claim_batch("A", 10)
    assert rest is not None and rest.keys == (f"{5:040x}",) and rest.batch_id != batch.batch_id
    assert ledger.claim_batch("A", 10) is None
    assert ledger.counts() == {"queued": 2, "submitting": 3, "submitted": 0, "failed": 0}


def test_claim_batch_skips_links_whose_next_attempt_is_in_the_future(ledger: Ledger, clock: Clock) -> None:
    ledger.record([candidate(1), candidate(2)])
    first = ledger.claim_batch("0", 1)
    assert first is not None
    ledger.requeue(first.keys[0], delay=30, reason="timeout")

    assert ledger.claim_batch("0", 10).keys == (f"{2:040x}",)  # type: ignore[union-attr]
    assert ledger.claim_batch("0", 10) is None
    clock.advance(30)
    again = ledger.claim_batch("0", 10)
    assert again is not None and again.keys == (f"{1:040x}",) and again.entries[0].attempts == 2


def test_a_claimed_batch_says_when_the_last_of_its_links_fell_due(ledger: Ledger, clock: Clock) -> None:
    start = clock.now
    ledger.record([candidate(1), candidate(2)])
    retried = ledger.claim_batch("0", 1)
    assert retried is not None
    ledger.requeue(retried.keys[0], delay=30, reason="timeout")
    clock.advance(40)
    batch = ledger.claim_batch("0", 10)
    assert batch is not None and set(batch.keys) == {f"{1:040x}", f"{2:040x}"}
    assert batch.due_since == start + 30  # link 1's retry time; link 2 was due when it was queued, at the start


def test_claim_batch_refuses_a_limit_below_one(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ledger.claim_batch("0", 0)


def test_due_targets_counts_due_links_per_target_with_the_oldest_queued_time(ledger: Ledger, clock: Clock) -> None:
    ledger.record([candidate(1, target="A")])
    clock.advance(5)
    ledger.record([candidate(2, target="B"), candidate(3, target="A"), candidate(4, target="B")])
    held = ledger.claim_batch("B", 1)
    assert held is not None
    ledger.requeue(held.keys[0], delay=100, reason="busy")

    assert ledger.due_targets() == [("A", 2, T0), ("B", 1, T0 + 5)]
    assert ledger.next_due_at() == T0
    clock.advance(100)
    assert ledger.due_targets() == [("A", 2, T0), ("B", 2, T0 + 5)]


def test_next_due_at_is_the_retry_time_when_only_delayed_links_wait(ledger: Ledger) -> None:
    assert ledger.next_due_at() is None
    ledger.record([candidate(1)])
    ledger.claim_batch("0", 1)
    ledger.requeue(f"{1:040x}", delay=42, reason="quota")
    assert ledger.next_due_at() == T0 + 42


# -- outcomes ----------------------------------------------------------------------------------


def test_mark_submitted_records_the_answer_and_stores_an_info_hash_only_when_missing(
    ledger: Ledger, clock: Clock
) -> None:
    url_key = "https://example.org/a.torrent"
    ledger.record([Candidate(key=url_key, url=url_key, info_hash=None, target="0", source="cli"), candidate(1)])
    batch = ledger.claim_batch("0", 10)
    assert batch is not None
    clock.advance(2)
    answer = {"code": 0, "message": "", "info_hash": "ABCDEF0123456789ABCDEF0123456789ABCDEF01"}

    ledger.mark_submitted(url_key, info_hash=str(answer["info_hash"]), answer=answer, batch_id=batch.batch_id)
    ledger.mark_submitted(f"{1:040x}", info_hash="f" * 40, answer={"code": 0}, batch_id=batch.batch_id)

    by_url = ledger.get(url_key)
    assert by_url is not None
    assert (by_url.status, by_url.info_hash, by_url.submitted_at, by_url.reason) == (
        "submitted", "abcdef0123456789abcdef0123456789abcdef01", T0 + 2, None)
    assert ledger.history(url_key)[-1].detail == {"batch_id": batch.batch_id, "answer": answer}
    assert ledger.get(f"{1:040x}").info_hash == f"{1:040x}"  # type: ignore[union-attr]
    assert ledger.find("abcdef0123456789abcdef0123456789abcdef01").key == url_key  # type: ignore[union-attr]


def test_mark_submitted_ignores_an_info_hash_that_is_not_one(ledger: Ledger) -> None:
    ledger.record([Candidate(key="https://x.org/t", url="https://x.org/t", info_hash=None, target="0", source="cli")])
    ledger.claim_batch("0", 1)
    ledger.mark_submitted("https://x.org/t", info_hash="(removed)", answer={"code": 0}, batch_id=None)
    assert ledger.get("https://x.org/t").info_hash is None  # type: ignore[union-attr]


def test_mark_failed_keeps_the_reason_and_the_answer(ledger: Ledger) -> None:
    ledger.record([candidate(1)])
    ledger.claim_batch("0", 1)

    ledger.mark_failed(f"{1:040x}", reason="invalid link", answer={"code": 10004, "message": "bad url"})

    entry = ledger.get(f"{1:040x}")
    assert entry is not None and (entry.status, entry.reason) == ("failed", "invalid link")
    last = ledger.history(entry.key)[-1]
    assert (last.kind, last.detail) == ("failed", {"reason": "invalid link",
                                                   "answer": {"code": 10004, "message": "bad url"}})


def test_a_submitted_link_cannot_be_failed_or_requeued(ledger: Ledger) -> None:
    ledger.record([candidate(1)])
    key = submit(ledger)[0]
    with pytest.raises(InvalidTransition, match="it is submitted"):
        ledger.mark_failed(key, reason="late error")
    with pytest.raises(InvalidTransition):
        ledger.requeue(key, delay=1, reason="late error")
    assert ledger.get(key).status == "submitted"  # type: ignore[union-attr]


def test_requeue_sets_the_next_attempt_time_and_reason(ledger: Ledger, clock: Clock) -> None:
    ledger.record([candidate(1)])
    ledger.claim_batch("0", 1)
    clock.advance(10)

    ledger.requeue(f"{1:040x}", delay=120, reason="HTTP 503")

    entry = ledger.get(f"{1:040x}")
    assert entry is not None
    assert (entry.status, entry.next_attempt_at, entry.reason, entry.attempts) == ("queued", T0 + 130, "HTTP 503", 1)
    assert ledger.history(entry.key)[-1].detail == {"reason": "HTTP 503", "delay": 120, "charged": True}
    with pytest.raises(ValueError):
        ledger.requeue(entry.key, delay=-1, reason="x")


def test_an_uncharged_requeue_gives_the_claimed_attempt_back(ledger: Ledger, clock: Clock) -> None:
    ledger.record([candidate(1)])
    ledger.claim_batch("0", 1)
    ledger.requeue(f"{1:040x}", delay=60, reason="406 rate limited", charge=False)
    entry = ledger.get(f"{1:040x}")
    assert entry is not None and (entry.status, entry.attempts) == ("queued", 0)
    ledger.requeue(f"{1:040x}", delay=60, reason="still queued", charge=False)
    assert ledger.get(f"{1:040x}").attempts == 0  # type: ignore[union-attr]  # only a claimed attempt is given back


def test_every_transition_leaves_its_event_in_order(ledger: Ledger) -> None:
    key = f"{1:040x}"
    ledger.record([candidate(1)])
    ledger.claim_batch("0", 1)
    ledger.requeue(key, delay=0, reason="timeout")
    ledger.claim_batch("0", 1)
    ledger.mark_failed(key, reason="quota")
    ledger.retry(key)
    batch = ledger.claim_batch("0", 1)
    ledger.mark_submitted(key, info_hash=None, answer={"code": 0}, batch_id=batch.batch_id)  # type: ignore[union-attr]
    ledger.record_task(key, status=1, percent=5.0, size=10, name="n", file_id=None)
    ledger.mark_task_gone(key)
    ledger.note(key, "cleanup", {"policy": "stalled", "action": "del_task"})

    assert kinds(ledger, key) == ["seen", "queued", "attempt", "requeued", "attempt", "failed", "retry", "attempt",
                                  "submitted", "task", "task_gone", "cleanup"]
    assert ledger.history(key)[-1].detail == {"policy": "stalled", "action": "del_task"}


def test_operations_on_an_unknown_key_say_so(ledger: Ledger) -> None:
    for act in (
        lambda: ledger.mark_submitted("nope", info_hash=None, answer={}, batch_id=None),
        lambda: ledger.mark_failed("nope", reason="x"),
        lambda: ledger.requeue("nope", delay=1, reason="x"),
        lambda: ledger.note("nope", "cleanup", {}),
    ):
        with pytest.raises(UnknownLink, match="nope"):
            act()
    assert ledger.record_task("nope", status=1, percent=1.0, size=None, name=None, file_id=None) is False
    assert ledger.mark_task_gone("nope") is False
    assert ledger.retry("nope") is False and ledger.forget("nope") is False


def test_a_batch_is_finished_when_its_last_link_has_an_outcome(ledger: Ledger, path: Path, clock: Clock) -> None:
    ledger.record([candidate(1), candidate(2), candidate(3)])
    batch = ledger.claim_batch("0", 3)
    assert batch is not None
    db = sqlite3.connect(path)

    def finished() -> float | None:
        return db.execute("SELECT finished_at FROM batches WHERE batch_id = ?", (batch.batch_id,)).fetchone()[0]

    ledger.mark_submitted(batch.keys[0], info_hash=None, answer={"code": 0}, batch_id=batch.batch_id)
    ledger.mark_failed(batch.keys[1], reason="bad")
    assert finished() is None
    clock.advance(3)
    ledger.requeue(batch.keys[2], delay=5, reason="timeout")
    assert finished() == T0 + 3
    assert db.execute("SELECT target, size FROM batches").fetchall() == [("0", 3)]
    db.close()


# -- crashes -----------------------------------------------------------------------------------


def test_links_left_submitting_are_found_after_the_ledger_is_closed_without_outcomes(path: Path) -> None:
    with Ledger(path) as first:
        first.record([candidate(1), candidate(2), candidate(3)])
        batch = first.claim_batch("0", 2)
        assert batch is not None

    with Ledger(path) as second:
        left = second.submitting()

    assert [e.key for e in left] == list(batch.keys)
    assert all(e.batch_id == batch.batch_id and e.status == "submitting" for e in left)


def _claim_then_die(path: str) -> None:
    ledger = Ledger(Path(path))
    ledger.record([candidate(1), candidate(2)])
    ledger.claim_batch("0", 10)
    os._exit(17)  # no close, no cleanup: as if killed mid-HTTP call


def test_a_claim_survives_the_process_dying_before_the_outcome(path: Path) -> None:
    process = multiprocessing.get_context("spawn").Process(target=_claim_then_die, args=(str(path),))
    process.start()
    process.join(60)
    assert process.exitcode == 17

    with Ledger(path) as reopened:
        assert sorted(e.key for e in reopened.submitting()) == [f"{1:040x}", f"{2:040x}"]
        assert reopened.counts()["submitting"] == 2


# -- reading -----------------------------------------------------------------------------------


def test_find_takes_a_key_an_info_hash_or_a_url(ledger: Ledger) -> None:
    url_key = "https://example.org/b.torrent"
    ledger.record([candidate(1), Candidate(key=url_key, url=url_key, info_hash=None, target="0", source="cli")])
    ledger.claim_batch("0", 10)
    ledger.mark_submitted(url_key, info_hash="e" * 40, answer={}, batch_id=None)

    assert ledger.find(f"{1:040x}").key == f"{1:040x}"  # type: ignore[union-attr]
    assert ledger.find(f"{0xABC:040X}") is None
    ledger.record([candidate(0xABC)])
    assert ledger.find(f"{0xABC:040X}").key == f"{0xabc:040x}"  # type: ignore[union-attr]
    assert ledger.find(f"  magnet:?xt=urn:btih:{1:040x}&dn=item.1\n").key == f"{1:040x}"  # type: ignore[union-attr]
    assert ledger.find("E" * 40).key == url_key  # type: ignore[union-attr]
    assert ledger.find(url_key).key == url_key  # type: ignore[union-attr]
    assert ledger.find("magnet:?xt=urn:btih:unknown") is None


def test_find_tells_apart_urls_that_share_a_long_beginning(ledger: Ledger) -> None:
    trackers_first = "magnet:?tr=udp%3A%2F%2Ftracker.opentrackr.org%3A1337%2Fannounce&tr=udp%3A%2F%2Fexodus"
    urls = {n: f"{trackers_first}&xt=urn:btih:{n:040x}" for n in (1, 2, 3)}
    ledger.record([candidate(n, url=url) for n, url in urls.items()])

    for n, url in urls.items():
        assert ledger.find(url).key == f"{n:040x}"  # type: ignore[union-attr]
    assert ledger.find(f"{trackers_first}&xt=urn:btih:{9:040x}") is None


def test_entries_are_newest_first_and_filter_by_status(ledger: Ledger, clock: Clock) -> None:
    for n in range(1, 5):
        ledger.record([candidate(n)])
        clock.advance(1)
    ledger.claim_batch("0", 1)
    ledger.mark_failed(f"{1:040x}", reason="bad")

    assert [e.key[-1] for e in ledger.entries()] == ["4", "3", "2", "1"]
    assert [e.key[-1] for e in ledger.entries(limit=2)] == ["4", "3"]
    assert [e.key[-1] for e in ledger.entries("failed")] == ["1"]
    assert ledger.entries("submitting") == []
    with pytest.raises(ValueError, match="unknown ledger status 'done'"):
        ledger.entries("done")


def test_counts_name_every_status_even_absent_ones(ledger: Ledger) -> None:
    assert ledger.counts() == dict.fromkeys(STATUSES, 0)
    ledger.record([candidate(1), candidate(2)])
    submit(ledger)
    ledger.record([candidate(3)])
    assert ledger.counts() == {"queued": 1, "submitting": 0, "submitted": 2, "failed": 0}


@pytest.mark.parametrize("code, name", [(-1, "failed"), (0, "queued"), (1, "downloading"), (2, "completed"),
                                        (None, None), (7, None)])
def test_to_json_carries_the_interface_fields_with_task_status_by_name(
    ledger: Ledger, code: int | None, name: str | None
) -> None:
    ledger.record([candidate(1, source="feed:f", target="42")])
    key = submit(ledger, "42")[0]
    if code is not None:
        ledger.record_task(key, status=code, percent=12.5, size=99, name="task", file_id="fid")

    data = json.loads(json.dumps(ledger.get(key).to_json()))  # type: ignore[union-attr]

    assert {"info_hash": key, "url": f"magnet:?xt=urn:btih:{key}&dn=item.1", "status": "submitted",
            "target": "42", "source": "feed:f"}.items() <= data.items()
    assert data["task_status"] == name and data["task_status_code"] == code
    assert data["percent"] == (12.5 if code is not None else None)
    assert {"key", "name", "attempts", "batch_id", "reason", "created_at", "submitted_at", "file_id"} <= data.keys()


# -- the user's hand ---------------------------------------------------------------------------


def test_retry_queues_a_failed_link_again_now_with_attempts_reset(ledger: Ledger, clock: Clock) -> None:
    ledger.record([candidate(1)])
    ledger.claim_batch("0", 1)
    ledger.mark_failed(f"{1:040x}", reason="bad")
    clock.advance(50)

    assert ledger.retry(f"{1:040x}") is True

    entry = ledger.get(f"{1:040x}")
    assert entry is not None
    assert (entry.status, entry.attempts, entry.reason, entry.queued_at) == ("queued", 0, None, T0 + 50)
    assert ledger.history(entry.key)[-1].detail == {"was": "failed"}
    assert ledger.retry(entry.key) is False  # already queued


def test_retry_of_a_submitted_link_needs_asking(ledger: Ledger) -> None:
    ledger.record([candidate(1)])
    key = submit(ledger)[0]
    assert ledger.retry(key) is False
    assert ledger.get(key).status == "submitted"  # type: ignore[union-attr]
    assert ledger.retry(key, submitted=True) is True
    assert ledger.get(key).status == "queued"  # type: ignore[union-attr]


def test_forget_makes_a_link_new_again(ledger: Ledger) -> None:
    ledger.record([candidate(1)])
    key = submit(ledger)[0]

    assert ledger.forget(key) is True

    assert ledger.get(key) is None and ledger.history(key) == []
    assert ledger.record([candidate(1, source="feed:again")])[0].outcome == "queued"
    assert kinds(ledger, key) == ["seen", "queued"]


def test_forget_refuses_a_link_being_submitted(ledger: Ledger) -> None:
    ledger.record([candidate(1)])
    ledger.claim_batch("0", 1)
    with pytest.raises(InvalidTransition):
        ledger.forget(f"{1:040x}")
    assert ledger.get(f"{1:040x}") is not None


# -- task list ---------------------------------------------------------------------------------


def test_record_task_moves_progress_changed_at_only_when_status_or_percent_change(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.record([candidate(1)])
    key = submit(ledger)[0]

    def see(status: int, percent: float) -> None:
        assert ledger.record_task(key, status=status, percent=percent, size=1000, name="Name", file_id=None)

    clock.advance(10)
    see(1, 0.0)
    clock.advance(10)
    see(1, 0.0)
    entry = ledger.get(key)
    assert entry is not None
    assert (entry.progress_changed_at, entry.task_seen_at, entry.task_status, entry.task_size) == (
        T0 + 10, T0 + 20, 1, 1000)
    clock.advance(10)
    see(1, 40.5)
    clock.advance(10)
    see(2, 40.5)
    clock.advance(10)
    see(2, 40.5)

    entry = ledger.get(key)
    assert entry is not None
    assert (entry.progress_changed_at, entry.task_seen_at, entry.percent) == (T0 + 40, T0 + 50, 40.5)
    assert [e.detail for e in ledger.history(key) if e.kind == "task"] == [
        {"status": 1, "percent": 0.0}, {"status": 1, "percent": 40.5}, {"status": 2, "percent": 40.5}]


def test_a_task_that_disappears_and_comes_back_is_noted_both_times(ledger: Ledger, clock: Clock) -> None:
    ledger.record([candidate(1)])
    key = submit(ledger)[0]
    ledger.record_task(key, status=1, percent=3.0, size=None, name=None, file_id=None)
    clock.advance(5)

    assert ledger.mark_task_gone(key) is True
    assert ledger.mark_task_gone(key) is True
    assert ledger.get(key).task_gone_at == T0 + 5  # type: ignore[union-attr]
    clock.advance(5)
    ledger.record_task(key, status=1, percent=3.0, size=None, name=None, file_id="f1")

    entry = ledger.get(key)
    assert entry is not None and entry.task_gone_at is None and entry.file_id == "f1"
    assert [k for k in kinds(ledger, key) if k.startswith("task")] == ["task", "task_gone", "task"]


def test_record_tasks_takes_a_whole_page_in_one_call(ledger: Ledger) -> None:
    ledger.record([candidate(1), candidate(2)])
    submit(ledger)
    page = [TaskUpdate(f"{1:040x}", 2, 100.0, 5, "a", "f1"), TaskUpdate("not-ours", 1, 1.0, None, None, None),
            TaskUpdate(f"{2:040x}", -1, 0.0, None, "b", None)]

    assert ledger.record_tasks(page) == [True, False, True]
    assert [e.to_json()["task_status"] for e in ledger.entries()] == ["failed", "completed"]


# -- pruning -----------------------------------------------------------------------------------


def test_prune_drops_old_details_but_keeps_the_key_so_the_link_stays_a_duplicate(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.record([candidate(1), candidate(2), candidate(3)])
    submit(ledger)  # 1, 2, 3 submitted at T0
    ledger.retry(f"{3:040x}", submitted=True)  # 3 is queued again: not finished
    clock.advance(100)
    ledger.record([candidate(4)])
    submit(ledger)  # 3 and 4 submitted at T0 + 100
    clock.advance(50)

    assert ledger.prune(keep_details=120) == 2  # finished more than 120 s ago: 1 and 2

    pruned = ledger.get(f"{1:040x}")
    assert pruned is not None
    assert (pruned.status, pruned.info_hash, pruned.url, pruned.name, pruned.pruned_at) == (
        "submitted", f"{1:040x}", f"magnet:?xt=urn:btih:{1:040x}", None, T0 + 150)
    assert ledger.history(f"{1:040x}") == []
    assert len(ledger.history(f"{4:040x}")) > 0 and ledger.get(f"{4:040x}").name == "item 4"  # type: ignore[union-attr]
    assert ledger.record([candidate(1, source="feed:later")])[0].outcome == "duplicate"
    assert ledger.sources(f"{1:040x}") == ["feed:later"]
    assert ledger.prune(keep_details=120) == 0


def test_prune_keeps_an_url_keyed_link_findable_by_its_url(ledger: Ledger) -> None:
    url = "http://example.org/file.torrent"
    ledger.record([Candidate(key=url, url=url, info_hash=None, target="0", source="cli")])
    ledger.claim_batch("0", 1)
    ledger.mark_failed(url, reason="bad")

    assert ledger.prune(keep_details=-1) == 1

    assert ledger.find(url).url == url and ledger.find(url).reason == "bad"  # type: ignore[union-attr]
    assert ledger.record([Candidate(key=url, url=url, info_hash=None, target="0", source="cli")])[0].outcome == (
        "duplicate")


def test_prune_handles_more_links_than_one_chunk(ledger: Ledger) -> None:
    ledger.record([candidate(n) for n in range(1, 1201)])
    while (batch := ledger.claim_batch("0", 115)) is not None:
        with ledger.transaction():
            for key in batch.keys:
                ledger.mark_failed(key, reason="x")
    assert ledger.prune(keep_details=-1) == 1200
    assert ledger.counts()["failed"] == 1200


# -- meta --------------------------------------------------------------------------------------


def test_meta_holds_small_named_values(ledger: Ledger, path: Path) -> None:
    assert ledger.meta_get("feed:a:etag") is None
    ledger.meta_set("feed:a:etag", '"abc"')
    ledger.meta_set("feed:a:etag", '"def"')
    ledger.meta_set("quota_paused_until", "1700000000")
    with Ledger(path) as other:
        assert other.meta_get("feed:a:etag") == '"def"'
    ledger.meta_delete("feed:a:etag")
    assert ledger.meta_get("feed:a:etag") is None and ledger.meta_get("quota_paused_until") == "1700000000"


# -- transactions ------------------------------------------------------------------------------


def test_transaction_groups_calls_and_rolls_all_back_on_error(ledger: Ledger) -> None:
    ledger.record([candidate(1), candidate(2)])
    batch = ledger.claim_batch("0", 2)
    assert batch is not None

    with pytest.raises(RuntimeError):
        with ledger.transaction():
            ledger.mark_submitted(batch.keys[0], info_hash=None, answer={}, batch_id=batch.batch_id)
            ledger.record([candidate(3)])
            raise RuntimeError("crash in the middle")

    assert ledger.get(batch.keys[0]).status == "submitting"  # type: ignore[union-attr]
    assert ledger.get(f"{3:040x}") is None


def test_a_failed_call_inside_a_transaction_undoes_only_itself(ledger: Ledger) -> None:
    with ledger.transaction():
        ledger.record([candidate(1)])
        with pytest.raises(InvalidCandidate):
            ledger.record([candidate(2), candidate(3, info_hash="bad")])
        ledger.record([candidate(4)])

    assert [e.key[-1] for e in ledger.entries()] == ["4", "1"]


# -- the file ----------------------------------------------------------------------------------


def test_the_file_is_created_owner_only_with_its_directories_even_under_a_lax_umask(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ledger.sqlite3"
    old = os.umask(0)
    try:
        with Ledger(path) as ledger:
            ledger.record([candidate(1)])
            modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
    finally:
        os.umask(old)
    assert modes == {"ledger.sqlite3": 0o600, "ledger.sqlite3-wal": 0o600, "ledger.sqlite3-shm": 0o600}
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_the_database_runs_in_wal_mode_with_foreign_keys(ledger: Ledger, path: Path) -> None:
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    ledger.record([candidate(1)])
    ledger.forget(f"{1:040x}")
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0  # cascaded
    raw.close()


def test_a_file_that_is_not_a_ledger_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(LedgerError, match=re.escape(str(path))):
        Ledger(path)


def test_a_closed_ledger_says_so(path: Path) -> None:
    ledger = Ledger(path)
    ledger.close()
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.get("x")


# -- migrations --------------------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE links (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE CONSTRAINT key_present CHECK (key <> ''),
    url TEXT NOT NULL CONSTRAINT url_present CHECK (url <> ''),
    info_hash TEXT CONSTRAINT info_hash_hex
        CHECK (info_hash IS NULL OR (length(info_hash) = 40 AND info_hash NOT GLOB '*[^0-9a-f]*')),
    status TEXT NOT NULL CONSTRAINT status_known
        CHECK (status IN ('queued', 'submitting', 'submitted', 'failed')),
    target TEXT NOT NULL CONSTRAINT target_present CHECK (target <> ''),
    source TEXT NOT NULL CONSTRAINT source_present CHECK (source <> ''),
    name TEXT, rule TEXT, target_path TEXT,
    size INTEGER CONSTRAINT size_not_negative CHECK (size IS NULL OR size >= 0),
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL, batch_id TEXT, reason TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, queued_at REAL NOT NULL,
    submitted_at REAL, finished_at REAL, pruned_at REAL
);
CREATE INDEX links_queue ON links (status, target, queued_at, next_attempt_at);
CREATE INDEX links_submitting ON links (batch_id) WHERE status = 'submitting';
CREATE INDEX links_info_hash ON links (info_hash) WHERE info_hash IS NOT NULL AND info_hash <> key;
CREATE INDEX links_url ON links (substr(url, 1, 64));
CREATE INDEX links_unpruned ON links (finished_at) WHERE finished_at IS NOT NULL AND pruned_at IS NULL;
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    link_id INTEGER NOT NULL REFERENCES links (id) ON DELETE CASCADE,
    at REAL NOT NULL, kind TEXT NOT NULL CONSTRAINT kind_present CHECK (kind <> ''),
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_link ON events (link_id, id);
CREATE TABLE batches (batch_id TEXT PRIMARY KEY, target TEXT NOT NULL, created_at REAL NOT NULL,
                      size INTEGER NOT NULL, finished_at REAL);
INSERT INTO links (key, url, info_hash, status, target, source, attempts, batch_id, created_at, updated_at,
                   queued_at, submitted_at, finished_at)
    VALUES ('0123456789abcdef0123456789abcdef01234567', 'magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567',
            '0123456789abcdef0123456789abcdef01234567', 'submitted', '0', 'feed:old', 1, 'b1', 1.0, 2.0, 1.0, 2.0, 2.0);
INSERT INTO events (link_id, at, kind, detail) VALUES (1, 1.0, 'seen', '{"source":"feed:old"}');
INSERT INTO meta VALUES ('feed:old:etag', 'W/"1"');
PRAGMA user_version = 1;
"""


def _columns(path: Path) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(path)
    try:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]
        found = {t: db.execute(f"PRAGMA table_info({t})").fetchall() for t in tables}
        found["indexes"] = db.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' ORDER BY 1").fetchall()
        return found
    finally:
        db.close()


def test_a_version_1_ledger_migrates_forward_keeping_its_rows(tmp_path: Path) -> None:
    old = tmp_path / "v1.sqlite3"
    db = sqlite3.connect(old)
    db.executescript(V1_SCHEMA)
    db.close()
    key = "0123456789abcdef0123456789abcdef01234567"

    with Ledger(old) as ledger:
        entry = ledger.get(key)
        assert entry is not None and (entry.status, entry.source, entry.task_status) == ("submitted", "feed:old", None)
        assert ledger.record([Candidate(key=key, url=entry.url, info_hash=key, target="0", source="feed:old")]) == [
            Recorded(key, "duplicate", "submitted")]
        assert ledger.meta_get("feed:old:etag") == 'W/"1"'
        assert ledger.record_task(key, status=2, percent=100.0, size=1, name="done", file_id="f") is True
        assert ledger.get(key).to_json()["task_status"] == "completed"  # type: ignore[union-attr]

    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    fresh = tmp_path / "fresh.sqlite3"
    Ledger(fresh).close()
    assert _columns(old) == _columns(fresh)


def test_a_ledger_from_a_newer_daemon115_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(LedgerError, match="newer than this daemon115"):
        Ledger(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


# -- concurrency -------------------------------------------------------------------------------


def test_a_writer_holding_the_lock_past_busy_timeout_gives_ledger_busy_while_reads_go_on(
    ledger: Ledger, path: Path
) -> None:
    ledger.record([candidate(1)])
    impatient = Ledger(path, busy_timeout=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(LedgerBusy, match="try again"):
            impatient.record([candidate(2)])
        assert time.monotonic() - started >= 0.19
        assert impatient.get(f"{1:040x}") is not None  # WAL: readers are not blocked
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert impatient.record([candidate(2)])[0].outcome == "queued"
    impatient.close()


def _work(ledger: Ledger, worker: int, rounds: int) -> None:
    """Each worker records its own links and a shared one, and claims whatever is queued."""
    for i in range(rounds):
        ledger.record([candidate(worker * 100_000 + i, source=f"w{worker}"), candidate(1, source=f"w{worker}")])
        batch = ledger.claim_batch("0", 3)
        if batch is not None:
            with ledger.transaction():
                for key in batch.keys:
                    ledger.mark_submitted(key, info_hash=None, answer={"code": 0}, batch_id=batch.batch_id)


def _check_after_workers(path: Path, workers: int, rounds: int) -> None:
    with Ledger(path) as ledger:
        while (batch := ledger.claim_batch("0", 100)) is not None:
            for key in batch.keys:
                ledger.mark_submitted(key, info_hash=None, answer={}, batch_id=batch.batch_id)
        entries = ledger.entries()
        assert len(entries) == workers * rounds + 1
        assert all(e.status == "submitted" and e.attempts == 1 for e in entries)  # nothing claimed twice
        assert sorted(ledger.sources(f"{1:040x}")) == [f"w{w}" for w in range(1, workers + 1)]


def test_two_ledger_objects_on_one_file_write_at_once_from_two_threads(path: Path) -> None:
    Ledger(path).close()
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(worker: int) -> None:
        try:
            with Ledger(path) as own:
                start.wait()
                _work(own, worker, 150)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(w,)) for w in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    _check_after_workers(path, 2, 150)


def test_one_ledger_is_shared_safely_by_several_threads(path: Path) -> None:
    errors: list[BaseException] = []
    with Ledger(path) as shared:
        def run(worker: int) -> None:
            try:
                _work(shared, worker, 100)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=run, args=(w,)) for w in (1, 2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert errors == []
    _check_after_workers(path, 3, 100)


def _process_worker(path: str, worker: int, rounds: int, start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    with Ledger(Path(path)) as ledger:  # opened at the same moment as the other: a fresh file's race
        _work(ledger, worker, rounds)


def test_two_processes_open_a_fresh_file_and_write_at_once_without_lock_errors(path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    processes = [context.Process(target=_process_worker, args=(str(path), w, 150, start)) for w in (1, 2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)

    assert [p.exitcode for p in processes] == [0, 0]
    _check_after_workers(path, 2, 150)


def test_matching_finds_submitted_links_by_hash_key_or_url_without_reading_the_rest(ledger: Ledger) -> None:
    ledger.record([candidate(n) for n in range(1, 6)])
    batch = ledger.claim_batch("0", 5)
    assert batch is not None
    for entry in batch.entries[:4]:
        ledger.mark_submitted(entry.key, info_hash=None, answer={}, batch_id=batch.batch_id)
    found = ledger.matching([f"{1:040x}", f"{2:040x}", f"{5:040x}", "f" * 40], [batch.entries[2].url])
    assert sorted(e.key for e in found) == sorted([f"{1:040x}", f"{2:040x}", batch.entries[2].key])  # 5 not submitted
    assert ledger.matching([]) == []



def test_matching_lists_of_every_length_cost_sqlite_no_memory_that_stays(ledger: Ledger) -> None:
    """The reconciler and cleanup match task lists of every length, for months; sqlite3 keeps each distinct
    statement it prepared (128 of them), so SQL that changed with the list's length held MiBs for good."""
    sqlite = ctypes.CDLL(ctypes.util.find_library("sqlite3"))  # the library sqlite3 loaded: one process-wide count
    sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    ledger.matching(["a" * 40], ["magnet:?xt=urn:btih:" + "a" * 40])
    before = sqlite.sqlite3_memory_used()
    for n in range(1, 300):
        ledger.matching([f"{i:040x}" for i in range(n)], [f"magnet:?xt=urn:btih:{i:040x}" for i in range(n)])
    assert sqlite.sqlite3_memory_used() - before < 1024 * 1024  # 9.6 MiB before the fix

def test_entries_can_leave_out_gone_tasks_and_old_submissions(ledger: Ledger, clock: Clock) -> None:
    ledger.record([candidate(1), candidate(2)])
    batch = ledger.claim_batch("0", 2)
    assert batch is not None
    ledger.mark_submitted(batch.entries[0].key, info_hash=None, answer={}, batch_id=batch.batch_id)
    clock.advance(7200)
    ledger.mark_submitted(batch.entries[1].key, info_hash=None, answer={}, batch_id=batch.batch_id)
    ledger.mark_task_gone(batch.entries[1].key)
    assert [e.key for e in ledger.entries("submitted", present_only=True)] == [batch.entries[0].key]
    assert [e.key for e in ledger.entries("submitted", submitted_since=clock() - 3600)] == [batch.entries[1].key]
