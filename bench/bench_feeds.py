"""Feed benchmark: a 2,000-entry torrent feed with 20 rules that match about 10 % of it, served on loopback.

    python bench/bench_feeds.py [--entries N] [--rounds N] [--flexget] [--flexget-venv DIR]

(b) warm, always: one poll inside a FeedPoller (fetch + parse + extraction + 20 rules + recording ~200 grabs in
    the ledger) against ``feedparser.parse`` alone on the same bytes, and the CPU of a 304 poll. Targets: the poll
    <= 2x the bare parse; a 304 poll <= 5 ms CPU.
(a) one-shot, with ``--flexget``: ``flexget execute`` (rss + regexp accept + seen + list_add: records matches,
    downloads nothing), first run and repeat run, whole processes, FlexGet installed once into a throwaway venv
    under /tmp; then :func:`run_daemon115_once` (``python -m daemon115 -c CONFIG once``) with the same feed and
    rules, submitting to `daemon115 sandbox` in its own process. Target: daemon115 <= 1/5 of FlexGet's wall time.
    The feed server answers 200 every time (no 304), so repeat runs re-read the whole feed in both tools.

The feed is served by a separate process, so ``time.process_time`` counts only the client's CPU. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import feedparser

from daemon115.config import Feed, Regex, Rule
from daemon115.ledger import Ledger
from daemon115.logs import configure
from daemon115.sources.feeds import FeedPoller, PollResult

T = TypeVar("T")

SHOWS = 200  # 20 rules, one show each: 20 / 200 of the entries match
RULES = 20
ETAG = '"bench-1"'
FLEXGET_VENV = Path("/tmp/daemon115-bench-flexget")
GROUPS = ("SubsPlease", "Erai-raws", "LoliHouse", "ASW", "Judas", "EMBER", "Nekomoe kissaten")
TRACKERS = "&amp;tr=udp%3A%2F%2Ftracker.opentrackr.org%3A1337%2Fannounce&amp;tr=http%3A%2F%2Fnyaa.tracker.wf%3A7777"


# ================================================================ the feed


def show_name(n: int) -> str:
    return f"Show Title {n:03d}"


def build_feed(entries: int) -> bytes:
    """A nyaa.si-shaped feed: titles, .torrent links, nyaa: namespace fields, an HTML description, magnets in
    the description; newest first."""
    items = []
    base = 1_750_000_000
    for i in range(entries):
        info_hash = hashlib.sha1(f"bench-{i}".encode()).hexdigest()
        title = f"[{GROUPS[i % len(GROUPS)]}] {show_name(i % SHOWS)} - {i // SHOWS + 1:02d} (1080p) [{i:08X}].mkv"
        size = f"{1 + i % 9}.{i % 10} GiB"
        published = time.strftime("%a, %d %b %Y %H:%M:%S -0000", time.gmtime(base - i * 600))
        items.append(
            f"<item><title>{title}</title><link>https://nyaa.example/download/{i}.torrent</link>"
            f'<guid isPermaLink="true">https://nyaa.example/view/{i}</guid><pubDate>{published}</pubDate>'
            f"<nyaa:seeders>{i % 300}</nyaa:seeders><nyaa:leechers>{i % 50}</nyaa:leechers>"
            f"<nyaa:downloads>{i % 1000}</nyaa:downloads><nyaa:infoHash>{info_hash}</nyaa:infoHash>"
            f"<nyaa:categoryId>1_2</nyaa:categoryId><nyaa:category>Anime - English-translated</nyaa:category>"
            f"<nyaa:size>{size}</nyaa:size><nyaa:comments>{i % 7}</nyaa:comments><nyaa:trusted>No</nyaa:trusted>"
            f"<nyaa:remake>No</nyaa:remake><description>&lt;a href=\"https://nyaa.example/view/{i}\"&gt;#{i} | "
            f"{title}&lt;/a&gt; | {size} | Anime - English-translated | &lt;a href=\"magnet:?xt=urn:btih:"
            f"{info_hash}&amp;amp;dn={i}{TRACKERS}\"&gt;magnet&lt;/a&gt; | &lt;b&gt;{info_hash.upper()}"
            f"&lt;/b&gt;</description></item>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<rss xmlns:atom="http://www.w3.org/2005/Atom" '
            'xmlns:nyaa="https://nyaa.si/xmlns/nyaa" version="2.0"><channel><title>Nyaa - Home - Torrent File RSS'
            '</title><description>RSS Feed for Home</description><link>https://nyaa.example/</link>'
            + "".join(items) + "</channel></rss>").encode()


def rule_patterns() -> list[str]:
    return [rf"{show_name(n * (SHOWS // RULES))} - \d+ \(1080p\)" for n in range(RULES)]


def bench_rules() -> tuple[Rule, ...]:
    return tuple(Rule(name=f"show-{n:02d}", include=(Regex.compile(pattern),), exclude=(Regex.compile("HEVC"),),
                      max_size=20 * 1024**3)
                 for n, pattern in enumerate(rule_patterns()))


# ================================================================ a feed server in its own process


def _serve(body: bytes, ready: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            conditional = self.path.startswith("/etag") and self.headers.get("If-None-Match") == ETAG
            self.send_response(304 if conditional else 200)
            self.send_header("ETag", ETAG)
            self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
            self.send_header("Content-Length", "0" if conditional else str(len(body)))
            self.end_headers()
            if not conditional:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ready.put(httpd.server_address[1])
    httpd.serve_forever()


class FeedServer:
    """``/feed`` always answers 200; ``/etag`` answers 304 to a matching If-None-Match."""

    def __init__(self, body: bytes) -> None:
        context = multiprocessing.get_context("fork")
        ready = context.Queue()
        self._process = context.Process(target=_serve, args=(body, ready), daemon=True)
        self._process.start()
        self.port = ready.get(timeout=10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._process.terminate()
        self._process.join(5)


# ================================================================ (b) warm


def cpu_and_wall(action: Callable[[], T]) -> tuple[float, float, T]:
    cpu, wall = time.process_time(), time.perf_counter()
    value = action()
    return time.process_time() - cpu, time.perf_counter() - wall, value


def timed_poll(poller: FeedPoller, feed: Feed) -> tuple[float, float, PollResult]:
    return cpu_and_wall(lambda: poller.poll(feed))


def warm(body: bytes, server: FeedServer, rounds: int, workdir: Path) -> dict[str, float]:
    rules = bench_rules()
    feed = Feed(name="bench", url=server.url("/feed"), rules=rules, target="0")
    bare = [cpu_and_wall(lambda: feedparser.parse(io.BytesIO(body))) for _ in range(rounds)]
    polls = []
    for n in range(rounds):  # a fresh ledger each time: every entry is new, ~200 are recorded
        with Ledger(workdir / f"warm-{n}.sqlite3") as ledger:
            polls.append(timed_poll(FeedPoller([feed], ledger, host_gap=0), feed))
    etag_feed = Feed(name="etag", url=server.url("/etag"), rules=rules, target="0")
    with Ledger(workdir / "etag.sqlite3") as ledger:
        poller = FeedPoller([etag_feed], ledger, host_gap=0)
        poller.poll(etag_feed)
        not_modified = [timed_poll(poller, etag_feed) for _ in range(max(20, rounds * 10))]
    assert {result.status for _, _, result in not_modified} == {"not-modified"}
    return {
        "bare_cpu": statistics.median(c for c, _, _ in bare), "bare_wall": statistics.median(w for _, w, _ in bare),
        "poll_cpu": statistics.median(c for c, _, _ in polls), "poll_wall": statistics.median(w for _, w, _ in polls),
        "grabbed": polls[-1][2].queued,
        "304_cpu": statistics.median(c for c, _, _ in not_modified),
        "304_cpu_max": max(c for c, _, _ in not_modified),
        "304_wall": statistics.median(w for _, w, _ in not_modified),
    }


# ================================================================ (a) one-shot: FlexGet and daemon115 once


def flexget_config(feed_url: str) -> str:
    accepts = "\n".join(f"          - '{p}'" for p in rule_patterns())
    return (f"tasks:\n  bench:\n    rss: {feed_url}\n    regexp:\n      accept:\n{accepts}\n"
            "      reject:\n        - 'HEVC'\n    seen: yes\n    list_add:\n      - entry_list: bench-grabs\n")


def install_flexget(venv: Path) -> Path:
    """FlexGet in a throwaway venv; returns the flexget executable. Raises CalledProcessError with pip's
    output when the install fails."""
    executable = venv / "bin" / "flexget"
    if executable.exists():
        return executable
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "FlexGet"], check=True, capture_output=True,
                   text=True)
    return executable


def run_flexget(feed_url: str, workdir: Path, venv: Path) -> dict[str, float]:
    """Wall seconds of `flexget execute` on a fresh database (first) and again (repeat: everything seen)."""
    flexget = install_flexget(venv)
    home = workdir / "flexget"
    home.mkdir(exist_ok=True)
    config = home / "config.yml"
    config.write_text(flexget_config(feed_url))
    command = [str(flexget), "-c", str(config), "--logfile", str(home / "flexget.log"), "execute"]
    times = {}
    for run in ("first", "repeat"):
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=home)
        times[run] = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"flexget execute failed ({done.returncode}): {done.stderr[-2000:]}")
    return times


def feeds_yaml(feed_url: str) -> str:
    """daemon115's `feeds:` block with the benchmark's feed and the same 20 patterns FlexGet gets."""
    rules = "\n".join(f"      - name: show-{n:02d}\n        include: ['{p}']\n        exclude: ['HEVC']"
                      for n, p in enumerate(rule_patterns()))
    return f"feeds:\n  - name: bench\n    url: {feed_url}\n    interval: 15m\n    target: \"0\"\n    rules:\n{rules}\n"


def run_daemon115_once(config_path: Path) -> float:
    """Wall seconds of one `python -m daemon115 -c CONFIG once` (a whole process, like `flexget execute`).

    Raises RuntimeError with the end of stderr when the command fails."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "daemon115", "-c", str(config_path), "once"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"daemon115 once exited {done.returncode}: {done.stderr[-1500:]}")
    return elapsed


def one_shot(server: FeedServer, workdir: Path, venv: Path) -> None:
    """(a): FlexGet, then `daemon115 once` submitting to a sandbox in its own process (the grabs really go
    through the submitter, as 115 would get them)."""
    from _sandbox import sandbox_process, write_config

    try:
        flexget: dict[str, float] | None = run_flexget(server.url("/feed"), workdir, venv)
        assert flexget is not None
        print(f"(a) flexget execute          first {flexget['first']:6.2f} s   repeat {flexget['repeat']:6.2f} s")
    except (subprocess.CalledProcessError, RuntimeError, OSError) as error:
        detail = getattr(error, "stderr", None) or str(error)
        print(f"(a) FlexGet could not be installed or run: {str(detail)[-1500:]}")
        flexget = None
    state = workdir / "daemon115"
    state.mkdir(exist_ok=True)
    with sandbox_process(state) as sandbox:
        config = write_config(state, sandbox, feeds_yaml(server.url("/feed")))
        try:
            ours = {run: run_daemon115_once(config) for run in ("first", "repeat")}
        except RuntimeError as error:
            print(f"(a) daemon115 once: not measured: {error}")
            return
    print(f"(a) daemon115 once           first {ours['first']:6.2f} s   repeat {ours['repeat']:6.2f} s")
    if flexget:
        for run in ("first", "repeat"):
            print(f"    {run}: daemon115 / flexget = {ours[run] / flexget[run]:.3f}  (target <= 0.2)")


# ================================================================ main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flexget", action="store_true", help="also run (a): installs FlexGet under /tmp")
    parser.add_argument("--flexget-venv", type=Path, default=FLEXGET_VENV)
    args = parser.parse_args(argv)
    configure("warning", "console")

    body = build_feed(args.entries)
    print(f"python {platform.python_version()}, feedparser {feedparser.__version__}, {os.cpu_count()} CPUs")
    print(f"feed: {args.entries} entries, {len(body) / 1e6:.2f} MB, {RULES} rules matching "
          f"{RULES / SHOWS:.0%} of entries")
    server = FeedServer(body)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-feeds-") as tmp:
            figures = warm(body, server, args.rounds, Path(tmp))
            ratio = figures["poll_cpu"] / figures["bare_cpu"]
            print(f"(b) feedparser.parse alone   {figures['bare_cpu'] * 1000:7.1f} ms CPU "
                  f"{figures['bare_wall'] * 1000:7.1f} ms wall")
            print(f"(b) one FeedPoller.poll      {figures['poll_cpu'] * 1000:7.1f} ms CPU "
                  f"{figures['poll_wall'] * 1000:7.1f} ms wall  ({figures['grabbed']:.0f} grabs recorded)")
            print(f"    poll / bare parse = {ratio:.2f}  (target <= 2)")
            print(f"(b) 304 poll                 {figures['304_cpu'] * 1000:7.2f} ms CPU median, "
                  f"{figures['304_cpu_max'] * 1000:.2f} ms max, {figures['304_wall'] * 1000:.2f} ms wall "
                  "(target <= 5 ms CPU)")
            if args.flexget:
                one_shot(server, Path(tmp), args.flexget_venv)
    finally:
        server.close()


if __name__ == "__main__":
    main()
