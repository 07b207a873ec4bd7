"""`daemon115 run` with 20 feeds and 10 watch folders: resident memory over an accelerated day, and idle CPU.

Run: python bench/bench_service.py [--speedup N] [--idle SECONDS]. Targets (issue 7): <= 60 MB RSS, no growth between
the first and the last (simulated) hour, < 1 % of a core when idle.

- The day: DAEMON115_SPEEDUP=N runs every schedule N times faster (feeds every 15 min, reconcile, a cleanup policy,
  prune); each feed is served from its own loopback address (127.0.0.2 ...) and gains a new entry every simulated
  10 minutes; a file is dropped into one of the 10 watch folders every simulated 5 minutes; the sandbox's clock moves
  with the day so the downloads progress and finish.
- Idle: the same daemon at normal speed after its first polls, doing nothing for --idle seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from daemon115.api.sandbox import Sandbox

FEEDS = 20
FOLDERS = 10
DAY = 86400.0


class FeedState:
    """Entries appear as the simulated day goes on: entry k is published at k * 600 simulated seconds."""

    def __init__(self, index: int, started: float, speedup: float) -> None:
        self.index = index
        self.started = started
        self.speedup = speedup

    def body(self) -> bytes:
        simulated = (time.time() - self.started) * self.speedup
        newest = int(simulated // 600)
        items = "".join(
            f"<item><title>Show {self.index:02d} - {k:03d} [1080p]</title><guid>f{self.index}-{k}</guid>"
            f"<link>magnet:?xt=urn:btih:{(self.index << 32) + k + 1:040x}&amp;dn=s{self.index}e{k}</link>"
            f"<enclosure url=\"magnet:?xt=urn:btih:{(self.index << 32) + k + 1:040x}\" length=\"1400000000\" "
            f"type=\"application/x-bittorrent\"/></item>"
            for k in range(max(0, newest - 50), newest + 1))
        return f"<?xml version='1.0'?><rss version='2.0'><channel><title>f{self.index}</title>{items}" \
               f"</channel></rss>".encode()


@contextmanager
def feed_servers(started: float, speedup: float) -> Iterator[list[str]]:
    servers = []
    for i in range(FEEDS):
        state = FeedState(i, started, speedup)

        class Handler(BaseHTTPRequestHandler):
            feed = state

            def do_GET(self) -> None:
                body = self.feed.body()
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer((f"127.0.0.{i + 2}", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        yield [f"http://127.0.0.{i + 2}:{s.server_address[1]}/rss.xml" for i, s in enumerate(servers)]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def write_config(tmp: Path, sandbox: Sandbox, feeds: list[str]) -> Path:
    folders = "".join(f"  - {{path: '{tmp / f'w{i}'}', target: '{i + 1}'}}\n" for i in range(FOLDERS))
    feed_yaml = "".join(f"  - {{name: f{i}, url: '{u}', interval: 15m, target: '100', "
                        f"rules: [{{name: r{i}, include: ['1080p']}}]}}\n" for i, u in enumerate(feeds))
    config = tmp / "config.yaml"
    config.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}", min_interval: 0s}}
auth: {{token_file: "{tmp / 'token.json'}"}}
ledger: {{path: "{tmp / 'ledger.sqlite3'}"}}
submit: {{batch_window: 2s}}
logging: {{level: warning}}
reconcile: {{every: 10m, active_every: 1m}}
watch:
{folders}feeds:
{feed_yaml}cleanup:
  - {{name: clear-completed, every: 1h, clear: completed}}
""")
    for i in range(FOLDERS):
        (tmp / f"w{i}").mkdir()
    return config


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def day(speedup: float, days: float = 1.0) -> None:
    wall = days * DAY / speedup
    with tempfile.TemporaryDirectory() as tmp_name, Sandbox(quota=1_000_000, task_duration=1800) as sandbox:
        tmp = Path(tmp_name)
        sandbox.write_token_file(tmp / "token.json")
        started = time.time()
        with feed_servers(started, speedup) as urls:
            config = write_config(tmp, sandbox, urls)
            proc = subprocess.Popen([sys.executable, "-m", "daemon115", "-c", str(config), "run"],
                                    env={**os.environ, "DAEMON115_SPEEDUP": str(speedup)},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            samples: list[tuple[float, float]] = []  # (simulated hour, RSS MB)
            drops = 0
            cpu0 = None
            try:
                while (elapsed := time.time() - started) < wall:
                    simulated = elapsed * speedup
                    while drops * 300 < simulated:
                        folder = tmp / f"w{drops % FOLDERS}"
                        (folder / f"d{drops}.magnet").write_text(f"magnet:?xt=urn:btih:{(1 << 100) + drops:040x}\n")
                        drops += 1
                    sandbox.clock.advance(speedup * 0.5)
                    samples.append((simulated / 3600, rss_mb(proc.pid)))
                    if cpu0 is None:
                        cpu0 = cpu_seconds(proc.pid)
                    time.sleep(0.5)
                cpu = cpu_seconds(proc.pid) - (cpu0 or 0)
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=20)
        stats = sandbox.stats()
    first = [r for h, r in samples if 1 <= h < 2]  # the first hour after start-up (imports, first polls) settles
    warm = [r for h, r in samples if 23 <= h < 24]  # caches (SQLite pages, feed memories) are full by then
    last = [r for h, r in samples if h >= days * 24 - 1]
    peak = max(r for _, r in samples)
    growth = max(last) - max(first) if first and last else float("nan")
    steady = max(last) - max(warm) if warm and last and days > 1 else float("nan")
    print(f"accelerated day ({speedup:g}x, {wall:.0f} s wall): {len(stats['accepted'])} links accepted from "
          f"{FEEDS} feeds and {drops} drops; {stats['calls'].get('/open/offline/get_task_list', 0)} task-list reads, "
          f"{len(stats['clear_calls'])} clears; exit {code}")
    by_quarter = [max((r for h, r in samples if q * 6 <= h % 24 < (q + 1) * 6 and h // 24 == d), default=0)
                  for d in range(int(samples[-1][0] // 24) + 1) for q in range(4)]
    print("  RSS max per 6 simulated hours: " + " ".join(f"{r:.1f}" for r in by_quarter if r))
    print(f"  RSS peak {peak:.1f} MB (target <= 60 MB: {'OK' if peak <= 60 else 'MISS'}); hour 1 max "
          f"{max(first):.1f} MB, last hour max {max(last):.1f} MB, growth {growth:+.1f} MB "
          f"(target: none: {'OK' if growth <= 1.0 else 'MISS'}); after the first day {steady:+.1f} MB; "
          f"CPU {cpu:.1f} s in all")


def idle(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp_name, Sandbox() as sandbox:
        tmp = Path(tmp_name)
        sandbox.write_token_file(tmp / "token.json")
        with feed_servers(time.time(), 1.0) as urls:
            config = write_config(tmp, sandbox, urls)
            proc = subprocess.Popen([sys.executable, "-m", "daemon115", "-c", str(config), "run"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(8)  # start-up and the first poll of every feed
                before, t0 = cpu_seconds(proc.pid), time.time()
                time.sleep(seconds)
                used, wall = cpu_seconds(proc.pid) - before, time.time() - t0
                rss = rss_mb(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
    share = used / wall * 100
    print(f"idle run, {FEEDS} feeds + {FOLDERS} watch folders, {wall:.0f} s: {used:.2f} s CPU = {share:.2f} % of a "
          f"core (target < 1 %: {'OK' if share < 1 else 'MISS'}); RSS {rss:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--speedup", type=float, default=720.0, help="a day in 86400/N seconds (default 2 min)")
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    day(args.speedup, args.days)
    idle(args.idle)


if __name__ == "__main__":
    main()
