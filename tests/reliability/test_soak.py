"""A soak on an accelerated clock: a day (CI) or a month (--long) of feed polls, drops and cleanups.

`daemon115 run` lives with DAEMON115_SPEEDUP, so its schedules (feed polls every 15 min, reconcile, the cleanup
policies) run that many times faster, and the test pushes the sandbox's clock forward at the same pace, so cloud
tasks download, complete or fail and access tokens expire as they would over the simulated time. Feeds publish and
drops arrive by that clock too. Meanwhile the test samples the daemon's RSS, its open file descriptors and the
ledger's size, and at the end checks that none of them grew with time, that the log holds no error the injected
faults do not explain, and that the daemon still stops cleanly on SIGTERM.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon115.api.sandbox import Fault, Sandbox
from daemon115.ledger import Ledger

SPEEDUP = 2500.0  # a day in 35 s, a month in 17 min
DAY = 86400.0
SHORT_DAYS, LONG_DAYS = 1, 30
FEEDS, WATCH = 3, 3
FEED_EVERY = 30 * 60.0  # each feed publishes an item every 30 simulated minutes
DROP_EVERY = 15 * 60.0  # a drop file every 15 simulated minutes, round robin over the watch folders
FAIL_SHARE = 0.03  # links whose cloud task fails half-way (the sandbox fails names with "sandbox-fail")
SAMPLE_EVERY = 0.5  # real seconds
SEED = 115_2026

# Memory: after warm-up, the last quarter's peak RSS may exceed the first quarter's by at most this much. Bounded
# caches that fill over time account for a few MiB (per-feed seen-ids, capped at 5000 per feed: ~2 MiB for three
# feeds; SQLite's page cache, 2 MiB per connection; allocator fragmentation). A leak of 1 KiB per link (10,000 links
# a month) or 200 bytes per API call (over 50,000 a month) crosses it.
RSS_SLACK_KIB, RSS_SLACK_SHARE = 8 * 1024, 0.10
FD_SLACK = 4  # connections and journal files open at the moment of a sample
# Ledger: about 1.8 KB a link is measured (the row, its events: seen, queued, attempt, submitted with 115's answer,
# a task event per reconcile that saw progress, cleanup notes; and the indexes). The bound leaves room for retries
# under the faults; a growth that is not per link (per poll, per reconcile, per day) shows as the marginal cost of
# the later links rising above that of the first ones.
BYTES_PER_LINK = 4096
MARGINAL_SHARE = 1.5

LIST = "/open/offline/get_task_list"
ADD = "/open/offline/add_task_urls"
# A light drizzle of faults (a soak is about time, not about fire); each kind with what the daemon says about it.
FAULTS = [(LIST, "http503", 0.02, 0.0), (LIST, "drop_before", 0.01, 0.0), (LIST, "delay", 0.02, 0.3),
          (ADD, "drop_after", 0.01, 0.0), (ADD, "malformed", 0.01, 0.0), ("/open/offline/clear_task", "http502", 0.05, 0.0)]
EXPLAINS = {"http503": ("HTTP 503",), "http502": ("HTTP 502",), "malformed": ("not a JSON object",),
            "drop_before": ("connection", "Connection"), "drop_after": ("connection", "Connection")}


@dataclass(frozen=True)
class Sample:
    at: float  # simulated seconds since the start
    rss_kib: int
    fds: int
    ledger_bytes: int
    links: int


class World:
    """What happens on the simulated clock: feed items and drop files, each exactly when it is due."""

    def __init__(self, feeds: list, watch: list[Path], staging: Path, start: float, rng: random.Random) -> None:
        self.feeds, self.watch, self.staging, self.start, self.rng = feeds, watch, staging, start, rng
        self.next_item = [start + FEED_EVERY * (i + 1) / FEEDS for i in range(FEEDS)]
        self.next_drop = start
        self.links: set[str] = set()
        self.failing: set[str] = set()
        self.drops = self.items = 0

    def advance_to(self, now: float) -> None:
        for index in range(FEEDS):
            while self.next_item[index] <= now:
                self._publish(index, self.next_item[index])
                self.next_item[index] += FEED_EVERY
        while self.next_drop <= now:
            self._drop()
            self.next_drop += DROP_EVERY

    def _magnet(self, label: str) -> str:
        info_hash = f"{self.rng.getrandbits(160):040x}"
        self.links.add(info_hash)
        if self.rng.random() < FAIL_SHARE:
            self.failing.add(info_hash)
            label += "-sandbox-fail"
        return f"magnet:?xt=urn:btih:{info_hash}&dn={label}"

    def _publish(self, index: int, at: float) -> None:
        self.items += 1
        url = self._magnet(f"soak-feed{index}-{self.items}")
        self.feeds[index].publish(guid=f"soak-{index}-{self.items}", title=f"Soak item {self.items}", magnet=url,
                                  published=at)

    def _drop(self) -> None:
        self.drops += 1
        folder = self.watch[self.drops % len(self.watch)]
        urls = [self._magnet(f"soak-drop-{self.drops}-{i}") for i in range(self.rng.randint(1, 3))]
        outside = self.staging / f"s{self.drops:06d}.magnet"
        outside.write_text("\n".join(urls) + "\n")
        outside.rename(folder / outside.name)


def write_config(tmp_path: Path, sandbox: Sandbox, watch: list[Path], feeds: list[str]) -> Path:
    folders = "".join(f"  - {{path: '{w}', target: '{i + 1}', settle: 200ms}}\n" for i, w in enumerate(watch))
    feed_lines = "".join(f"  - {{name: soak{i}, url: '{url}', interval: 15m, accept_all: true, "
                         f"target: '/Soak/feed {i}'}}\n" for i, url in enumerate(feeds))
    config = tmp_path / "config.yaml"
    config.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}", min_interval: 0s,
       timeout: 5s, max_retries: 2}}
auth: {{token_file: "{tmp_path / 'token.json'}"}}
ledger: {{path: "{tmp_path / 'ledger.sqlite3'}"}}
submit: {{batch_window: 300ms, max_attempts: 100}}
reconcile: {{every: 10m, active_every: 10m}}
cleanup:
  - {{name: clear-completed, every: 1h, clear: completed}}
  - name: retry-failed
    every: 1h
    delete: {{status: [failed], retry_failed: 1}}
logging: {{format: json, level: info}}
watch:
{folders}feeds:
{feed_lines}""")
    return config


def test_a_soak_on_an_accelerated_clock_keeps_memory_fds_and_ledger_growth_flat(
        sandbox, token_file, tmp_path, feed_servers, daemons, wait_for, long_form):
    days = LONG_DAYS if long_form else SHORT_DAYS
    watch = [tmp_path / f"watch-{i}" for i in range(WATCH)]
    staging = tmp_path / "staging"
    for folder in (*watch, staging):
        folder.mkdir()
    feeds = [feed_servers() for _ in range(FEEDS)]
    config = write_config(tmp_path, sandbox, watch, [f.url for f in feeds])
    for endpoint, kind, rate, delay in FAULTS:
        sandbox.inject(Fault(kind, endpoint=endpoint, times=None, rate=rate, delay=delay))
    ledger_path = tmp_path / "ledger.sqlite3"
    world = World(feeds, watch, staging, sandbox.clock.now(), random.Random(SEED))
    daemon = daemons(config, tmp_path / "daemon.log", {"DAEMON115_SPEEDUP": str(SPEEDUP)})
    wait_for(lambda: any(e.get("event") == "ready" for e in daemon.events()), timeout=30, what="the daemon's ready")

    samples = drive(sandbox, world, daemon, ledger_path, duration=days * DAY)
    # a link dropped in the last moments, or waiting out a retry after an injected fault (retry delays are real
    # seconds, not accelerated ones), gets the time it needs before the books are closed
    wait_for(lambda: _queue_empty(ledger_path), timeout=120, what="the last links to be submitted")
    exit_code = daemon.stop()  # after a long life it still answers SIGTERM at once (within 10 s)
    stats = sandbox.stats()
    report = summarize(samples, world, daemon.events(), stats, ledger_path, days)
    print("\n" + report.text)
    problems = violations(report, samples, world, stats, ledger_path, days, len(sandbox.tasks()))
    problems += [] if exit_code == 0 else [f"the daemon exited {exit_code} on SIGTERM"]
    assert problems == [], "\n".join(problems)


def _queue_empty(ledger_path: Path) -> bool:
    with Ledger(ledger_path) as ledger:
        counts = ledger.counts()
    return counts.get("queued", 0) == 0 and counts.get("submitting", 0) == 0


def violations(report: Report, samples: list[Sample], world: World, stats: dict, ledger_path: Path, days: int,
               tasks_left: int) -> list[str]:
    """Every broken invariant, one line each: a month-long run should say all it found, not only the first."""
    with Ledger(ledger_path) as ledger:
        counts = ledger.counts()
        keys = {e.key for e in ledger.entries()}
        requeued = {e.key for e in ledger.entries("submitted")
                    if any(ev.kind == "cleanup_requeued" for ev in ledger.history(e.key))}
    hours = days * 24
    checks = [
        (len(samples) >= 40, f"only {len(samples)} samples: too few to judge growth"),
        (report.rss_growth_kib <= max(RSS_SLACK_KIB, RSS_SLACK_SHARE * report.rss_base_kib),
         f"memory grew by {report.rss_growth_kib} KiB"),
        (report.fd_last <= report.fd_base + FD_SLACK, f"descriptors grew from {report.fd_base} to {report.fd_last}"),
        (report.bytes_per_link <= BYTES_PER_LINK, f"{report.bytes_per_link:.0f} ledger bytes per link"),
        (report.marginal_bytes_per_link <= MARGINAL_SHARE * report.early_bytes_per_link,
         f"later links cost {report.marginal_bytes_per_link:.0f} ledger bytes each, the first "
         f"{report.early_bytes_per_link:.0f}"),
        # the schedules kept running all along (loose bounds: see the README on feed pacing at high speedups)
        (report.feed_polls >= FEEDS * hours / 2, f"only {report.feed_polls} feed polls"),
        (report.reconciles >= hours / 2, f"only {report.reconciles} reconciles"),
        (len(stats["clear_calls"]) >= hours / 4, f"only {len(stats['clear_calls'])} clears"),
        (report.unexplained == [], f"{len(report.unexplained)} warnings or errors no injected fault explains, e.g. "
                                   f"{[(e.get('event'), str(e.get('error', ''))[:160]) for e in report.unexplained[:3]]}"),
        (keys == world.links and counts["submitted"] == len(world.links),  # every link, once, submitted
         f"{len(world.links - keys)} links never reached the ledger; ledger counts {counts} for {len(world.links)}"),
        (bool(requeued) and requeued <= world.failing,
         f"retry_failed resubmitted {len(requeued)} tasks, {len(requeued - world.failing)} of them not failed ones"),
        (tasks_left < len(world.links) / 4, f"{tasks_left} tasks left in the cloud: completed ones were not cleared"),
    ]
    return [message for ok, message in checks if not ok]


def drive(sandbox: Sandbox, world: World, daemon: Any, ledger_path: Path, *, duration: float,
          tail: float = 60.0) -> list[Sample]:
    """Keep the sandbox's clock at the daemon's pace, let the world happen on it until ``duration``, and sample the
    daemon; then keep the clock running (making nothing new) until every link is submitted, at most ``tail`` s."""
    samples: list[Sample] = []
    real_start = time.monotonic()
    next_sample = 0.0
    tail_end: float | None = None
    while True:
        elapsed = time.monotonic() - real_start
        behind = world.start + elapsed * SPEEDUP - sandbox.clock.now()
        if behind > 0:
            sandbox.clock.advance(behind)
        simulated = sandbox.clock.now() - world.start
        if simulated <= duration:
            world.advance_to(sandbox.clock.now())
        elif tail_end is None:
            tail_end = elapsed + tail
        if elapsed >= next_sample:
            next_sample += SAMPLE_EVERY
            sample = measure(daemon, ledger_path, simulated)
            if sample is None:
                raise AssertionError(f"the daemon died:\n{daemon.log.read_text()[-3000:]}")
            samples.append(sample)
            if tail_end is not None and (sample.links >= len(world.links) or elapsed >= tail_end):
                return samples
        time.sleep(0.02)


def measure(daemon: Any, ledger_path: Path, simulated: float) -> Sample | None:
    rss, fds = daemon.rss_kib(), daemon.fd_count()
    if rss is None or fds is None:
        return None
    return Sample(simulated, rss, fds, ledger_bytes(ledger_path), submitted(ledger_path))


def ledger_bytes(path: Path) -> int:
    """The pages in use, as a reader sees them through the WAL: the file sizes would count a WAL that is reused
    in place and pages freed for reuse."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        pages, free, size = (db.execute(f"PRAGMA {name}").fetchone()[0]
                             for name in ("page_count", "freelist_count", "page_size"))
    finally:
        db.close()
    return (pages - free) * size


def submitted(ledger_path: Path) -> int:
    with Ledger(ledger_path) as ledger:
        return ledger.counts()["submitted"]


@dataclass(frozen=True)
class Report:
    text: str
    rss_base_kib: int  # the first quarter's peak, after warm-up
    rss_growth_kib: int  # the last quarter's peak above it
    fd_base: int
    fd_last: int
    bytes_per_link: float
    early_bytes_per_link: float  # at the end of the first quarter
    marginal_bytes_per_link: float  # of the links that came after it
    feed_polls: int
    reconciles: int
    unexplained: list[dict]


def summarize(samples: list[Sample], world: World, events: list[dict], stats: dict, ledger_path: Path,
              days: int) -> Report:
    """Quarters of the run after a warm-up of the first tenth: the first quarter is the baseline."""
    steady = samples[len(samples) // 10:]
    quarter = max(1, len(steady) // 4)
    first, last = steady[:quarter], steady[-quarter:]
    rss_base, rss_last = max(s.rss_kib for s in first), max(s.rss_kib for s in last)
    fd_base, fd_last = max(s.fds for s in first), max(s.fds for s in last)
    final_bytes, links = ledger_bytes(ledger_path), len(world.links)
    early = first[-1]
    early_per_link = early.ledger_bytes / max(early.links, 1)
    marginal = (final_bytes - early.ledger_bytes) / max(links - early.links, 1)
    fired = Counter(f["kind"] for f in stats["faults_fired"])
    kinds = Counter(e.get("event") for e in events)
    polls, reconciles = kinds["feed polled"], kinds["reconciled"] + kinds["reconciled_partly"]
    text = (f"soak: {days} simulated day(s) at {SPEEDUP:g}x, {len(samples)} samples; "
            f"RSS {samples[0].rss_kib} -> {samples[-1].rss_kib} KiB (baseline peak {rss_base}, last-quarter peak "
            f"{rss_last}, growth {rss_last - rss_base:+d} KiB); fds {samples[0].fds} -> {samples[-1].fds} "
            f"(baseline peak {fd_base}, last-quarter peak {fd_last}); ledger {final_bytes} bytes for {links} links "
            f"= {final_bytes / max(links, 1):.0f} bytes/link (first quarter {early_per_link:.0f}, later links "
            f"{marginal:.0f}); {world.items} feed items, {world.drops} drops, {polls} feed polls, {reconciles} "
            f"reconciles, {len(stats['clear_calls'])} clears, {len(stats['del_calls'])} deletes, "
            f"{stats['refresh_ok']} refreshes, {len(stats['add_calls'])} add calls, faults fired "
            f"{dict(sorted(fired.items()))}; log levels {dict(Counter(e.get('level') for e in events))}")
    unexplained = [e for e in events if e.get("level") in ("error", "warning") and not explained(e, fired)]
    return Report(text, rss_base, rss_last - rss_base, fd_base, fd_last, final_bytes / max(links, 1),
                  early_per_link, marginal, polls, reconciles, unexplained)


def explained(event: dict, fired: Counter) -> bool:
    """Whether a warning or error names a symptom of a fault kind that really fired."""
    text = " ".join(str(v) for k, v in event.items() if k not in ("timestamp", "level"))
    return any(marker in text for kind, markers in EXPLAINS.items() if fired[kind] for marker in markers)


def test_cleanup_still_clears_completed_tasks_when_the_task_list_is_deeper_than_115_serves(
        sandbox, token_file, tmp_path):
    """What a month without cleanup leaves: more tasks than the 20 pages 115's gateway serves (api-notes §2.4).

    Reading the list past them is answered 405, which the transport takes for a rate limit of the account; the
    clear that follows must not be refused by that self-inflicted pause.
    """
    for number in range(700):
        sandbox.add_foreign_task(f"magnet:?xt=urn:btih:{number + 1:040x}", status=2, percent=100)
    config = tmp_path / "config.yaml"
    config.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}", min_interval: 0s}}
auth: {{token_file: "{token_file}"}}
ledger: {{path: "{tmp_path / 'ledger.sqlite3'}"}}
cleanup:
  - {{name: clear-completed, every: 1h, clear: completed}}
""")
    result = subprocess.run([sys.executable, "-m", "daemon115", "-c", str(config), "cleanup"], capture_output=True,
                            text=True, timeout=60)
    assert [c["flag"] for c in sandbox.stats()["clear_calls"]] == [0], result.stdout + result.stderr
    assert sandbox.tasks() == [] and result.returncode == 0
