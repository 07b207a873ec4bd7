"""Ledger benchmark: how the ledger holds up with a big history.

    python bench/bench_ledger.py [--links N] [--synchronous FULL|NORMAL] [--dir DIR] [--keep]

Prints figures; asserts nothing. Links are recorded the way the sources do it: record() calls of
1..100 candidates (a watch file, a feed poll), with realistic magnet URIs, names and sources.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import random
import sqlite3
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon115.ledger import Batch, Candidate, Ledger  # noqa: E402

TARGETS = ("0", "2786445718", "2786445719", "2790001234", "2790005678")
FEEDS = tuple(f"feed:{name}" for name in ("mikan", "nyaa", "showrss", "eztv", "tpb", "animetosho", "ezrss", "lime"))
TRACKERS = "&tr=udp%3A%2F%2Ftracker.opentrackr.org%3A1337%2Fannounce&tr=udp%3A%2F%2Fopen.stealth.si%3A80%2Fannounce"


def make_candidate(n: int) -> Candidate:
    info_hash = hashlib.sha1(n.to_bytes(8, "big", signed=True)).hexdigest()
    name = f"[Group] Show Title S{n % 20:02d}E{n % 100:02d} 1080p WEB-DL x264-{n}"
    source = FEEDS[n % len(FEEDS)] if n % 3 else f"watch:/srv/115-drop/batch-{n // 100}.magnet"
    return Candidate(
        key=info_hash,
        url=f"magnet:?xt=urn:btih:{info_hash}&dn={name.replace(' ', '+')}{TRACKERS}",
        info_hash=info_hash,
        target=TARGETS[n % len(TARGETS)],
        source=source,
        name=name,
        rule=f"{source.split(':', 1)[1][:12]}-1080p" if n % 3 else None,
        size=1_000_000_000 + n,
    )


def chunks(total: int, rng: random.Random) -> Iterator[range]:
    start = 0
    while start < total:
        size = min(rng.randint(1, 100), total - start)
        yield range(start, start + size)
        start += size


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    """Seconds per call, one sample per call."""
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        samples.append(time.perf_counter() - began)
    return samples


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def us(samples: Sequence[float]) -> str:
    return f"p50 {pct(samples, 0.5) * 1e6:8.1f} us   p99 {pct(samples, 0.99) * 1e6:8.1f} us"


def ms(samples: Sequence[float]) -> str:
    return f"p50 {pct(samples, 0.5) * 1e3:8.2f} ms   p99 {pct(samples, 0.99) * 1e3:8.2f} ms"


def bench_insert(ledger: Ledger, total: int, rng: random.Random) -> None:
    calls: list[float] = []
    began = time.perf_counter()
    for block in chunks(total, rng):
        batch = [make_candidate(n) for n in block]
        t = time.perf_counter()
        ledger.record(batch)
        calls.append(time.perf_counter() - t)
        if len(calls) % 2000 == 0:
            done = block.stop
            print(f"  ... {done:>9,} links, {done / (time.perf_counter() - began):,.0f} links/s", flush=True)
    spent = sum(calls)
    print(f"insert              {total / spent:12,.0f} links/s  ({total:,} links in {len(calls):,} record() calls "
          f"of 1..100, {spent:.1f} s in record())")
    print(f"  record() call     {ms(calls)}")


def bench_dedup(ledger: Ledger, total: int, rng: random.Random, samples: int) -> None:
    picks = [make_candidate(rng.randrange(total)) for _ in range(samples)]
    keys = iter(p.key for p in picks)
    print(f"dedup get()         {us(timed(lambda: ledger.get(next(keys)), samples))}")
    again = iter(picks)
    print(f"dedup record() same source     {us(timed(lambda: ledger.record([next(again)]), samples))}"
          "   (known key, nothing written)")
    fresh = iter(Candidate(**{**vars(p), "source": "feed:newcomer"}) for p in picks[: samples // 10])
    print(f"dedup record() new source      {us(timed(lambda: ledger.record([next(fresh)]), samples // 10))}"
          "   (known key, writes a 'seen' event: one commit)")
    polls = [picks[i : i + 100] for i in range(0, samples, 100)]
    poll_iter = iter(polls)
    per_poll = timed(lambda: ledger.record(next(poll_iter)), len(polls))
    print(f"feed re-poll, 100 known entries in one record(): {ms(per_poll)}"
          f"   ({pct(per_poll, 0.5) / 100 * 1e6:.1f} us per entry)")


def bench_queue(ledger: Ledger, label: str, rounds: int = 20) -> None:
    print(f"[{label}] counts()          {ms(timed(ledger.counts, 10))}   {ledger.counts()}")
    print(f"[{label}] due_targets()     {ms(timed(ledger.due_targets, 10))}")
    batches: list[Batch] = []

    def claim() -> None:
        batch = ledger.claim_batch(TARGETS[len(batches) % len(TARGETS)], 100)
        assert batch is not None
        batches.append(batch)

    print(f"[{label}] claim_batch(100)  {ms(timed(claim, rounds))}")
    print(f"[{label}] 100 outcomes in one transaction()  {ms(timed(lambda: submit(ledger, batches.pop()), rounds))}")


def submit(ledger: Ledger, batch: Batch) -> None:
    with ledger.transaction():
        for key in batch.keys:
            ledger.mark_submitted(key, info_hash=None, answer={"code": 0, "message": ""}, batch_id=batch.batch_id)


def bench_drain(ledger: Ledger) -> None:
    """Submit everything queued, as the submitter would, so the ledger ends up in its usual state."""
    began, drained = time.perf_counter(), 0
    for target in TARGETS:
        while (batch := ledger.claim_batch(target, 100)) is not None:
            submit(ledger, batch)
            drained += len(batch.entries)
    spent = time.perf_counter() - began
    print(f"drain               {drained / spent:12,.0f} links/s  (claim_batch(100) + 100 mark_submitted per "
          f"transaction, {drained:,} links in {spent:.1f} s)")
    ledger.record([replace(make_candidate(-1 - n), target="alone") for n in range(20)])
    batch = ledger.claim_batch("alone", 20)
    assert batch is not None and len(batch.entries) == 20
    keys = iter(batch.keys)
    one = timed(lambda: ledger.mark_submitted(next(keys), info_hash=None, answer={"code": 0}, batch_id=None), 20)
    print(f"mark_submitted alone (its own commit)   {us(one)}")


def report_size(path: Path, total: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    size = path.stat().st_size
    print(f"file size           {size / 1e6:12,.1f} MB   {size / total:,.0f} bytes per link  ({events:,} events)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=10_000, help="lookups timed for the dedup figures")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--dir", type=Path, help="where to put the ledger file (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the ledger file")
    args = parser.parse_args(argv)

    print(f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, synchronous={args.synchronous}, "
          f"{args.links:,} links")
    workdir = Path(tempfile.mkdtemp(prefix="bench-ledger-", dir=args.dir))
    path = workdir / "ledger.sqlite3"
    rng = random.Random(115)
    try:
        with Ledger(path, synchronous=args.synchronous) as ledger:
            bench_insert(ledger, args.links, rng)
            bench_queue(ledger, f"backlog: all {args.links:,} queued")
            bench_drain(ledger)
            bench_dedup(ledger, args.links, rng, min(args.samples, args.links))
            ledger.record([make_candidate(args.links + n) for n in range(1000)])
            bench_queue(ledger, "steady: 1,000 queued, the rest submitted", rounds=10)
        report_size(path, args.links)
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            for leftover in workdir.iterdir():
                leftover.unlink()
            workdir.rmdir()


if __name__ == "__main__":
    main()
