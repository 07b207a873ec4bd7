"""``daemon115 demo``: the whole pipeline on the built-in sandbox, so a new user sees it work before having a token.

It starts the sandbox and a feed on loopback, runs the real ``daemon115 run`` with a demo config (a drop folder, the
feed with a rule, a cleanup policy), drops files into the folder, lets the sandbox's clock run so the downloads finish,
and shows the daemon's log and the commands a user would use afterwards.
"""

from __future__ import annotations

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
from typing import TextIO

DROPS = {
    "leaves.magnet": "magnet:?xt=urn:btih:d2474e86c95b19b8bcfdb92bc12c9d44667cfa36&dn=Leaves+of+Grass.epub\n",
    "two-links.torrent-link": "# one file, two links\n"
                              "magnet:?xt=urn:btih:C12FE1C06BBA254A9DC9F519B335AA7C1367A88A&dn=demo-episode-01\n"
                              "ed2k://|file|jmule-0.5.0_B2.jar|2693693|E8D635CD815FB4AADB4FA59116809542|/\n",
    "broken.magnet": "magnet:?xt=urn:btih:not-a-hash\n",
}
FEED_ITEMS = [("[Demo] Frieren - 01 [1080p]", "1111111111111111111111111111111111111111", 1_400_000_000),
              ("[Demo] Frieren - 02 [1080p]", "2222222222222222222222222222222222222222", 1_300_000_000),
              ("[Demo] Frieren - 02 [720p]", "3333333333333333333333333333333333333333", 700_000_000),
              ("[Demo] Something else - 05 [1080p]", "4444444444444444444444444444444444444444", 900_000_000)]


def feed_xml() -> bytes:
    items = "".join(
        f"<item><title>{title}</title><guid>{h}</guid>"
        f"<link>magnet:?xt=urn:btih:{h}&amp;dn={title.replace(' ', '+')}</link>"
        f"<enclosure url=\"magnet:?xt=urn:btih:{h}\" length=\"{size}\" type=\"application/x-bittorrent\"/></item>"
        for title, h, size in FEED_ITEMS)
    return f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel><title>demo</title>{items}" \
           f"</channel></rss>".encode()


@contextmanager
def feed_server() -> Iterator[str]:
    body = feed_xml()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/rss.xml"
    finally:
        server.shutdown()
        server.server_close()


def demo_config(base_url: str, feed_url: str, state: Path) -> str:
    return f"""\
api: {{base_url: "{base_url}", passport_url: "{base_url}", qrcode_url: "{base_url}", min_interval: 0s}}
auth: {{token_file: "{state / 'token.json'}"}}
ledger: {{path: "{state / 'ledger.sqlite3'}"}}
submit: {{batch_window: 1s}}
logging: {{format: console}}
reconcile: {{every: 2s, active_every: 2s}}
watch:
  - {{path: "{state / 'drop'}", target: "/Downloads/Drops"}}
feeds:
  - name: demo-feed
    url: {feed_url}
    interval: 15m
    target: "/Downloads/Anime"
    rules:
      - {{name: frieren-1080p, include: ['Frieren.*1080p'], min_size: 500MB}}
cleanup:
  - {{name: clear-completed, every: 4s, clear: completed}}
"""


def run(out: TextIO) -> int:
    from daemon115 import cli
    from daemon115.api.sandbox import Sandbox

    with tempfile.TemporaryDirectory(prefix="daemon115-demo-") as tmp, Sandbox(task_duration=8.0) as sandbox, \
            feed_server() as feed_url:
        state = Path(tmp)
        (state / "drop").mkdir()
        config = state / "config.yaml"
        config.write_text(demo_config(sandbox.url, feed_url, state))
        sandbox.write_token_file(state / "token.json")
        say(out, f"The sandbox (a simulated 115 Open API) is at {sandbox.url}; a demo feed at {feed_url}.")
        say(out, f"Config: {config}\n")
        code = _show(out, cli, config, ["check"])
        if code:
            return code
        say(out, "\n$ daemon115 run      (the daemon; its log follows)")
        daemon = subprocess.Popen([sys.executable, "-m", "daemon115", "-c", str(config), "run"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        relay = threading.Thread(target=_relay, args=(daemon, out), daemon=True)
        relay.start()
        try:
            time.sleep(2.0)
            for name, text in DROPS.items():
                (state / "drop" / name).write_text(text)
            for _ in range(20):  # let the downloads finish on the sandbox's clock and the cleanup clear them
                time.sleep(0.5)
                sandbox.clock.advance(1.0)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=20)
            relay.join(5)
        say(out, "")
        for argv in (["ledger", "list"], ["tasks"], ["status"]):
            _show(out, cli, config, argv)
        say(out, f"\nThe drop folder now holds: {sorted(p.name for p in (state / 'drop' / '.done').iterdir())} in "
                 f".done/ and {sorted(p.name for p in (state / 'drop' / '.failed').iterdir())} in .failed/")
        say(out, "\nTo use your own account: `daemon115 auth login --client-id APP_ID` or "
                 "`daemon115 auth import --access-token ... --refresh-token ...`,\nthen copy config.example.yaml to "
                 "~/.config/daemon115/config.yaml and run `daemon115 check --online`.")
    return 0


def _relay(daemon: subprocess.Popen[str], out: TextIO) -> None:
    assert daemon.stdout is not None
    for line in daemon.stdout:
        out.write("  | " + line)
        out.flush()


def _show(out: TextIO, cli: object, config: Path, argv: list[str]) -> int:
    say(out, f"\n$ daemon115 {' '.join(argv)}")
    code = cli.main(["-c", str(config), *argv], out=out)  # type: ignore[attr-defined]
    if code:
        say(out, f"(exit {code})")
    return code


def say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()
