"""Peer: drop-to-queued latency of Debian's transmission-daemon watch-dir, beside daemon115's, in one run.

Run: python bench/bench_transmission.py [--drops N]. Needs transmission-daemon and transmission-remote (Debian's
transmission-daemon and transmission-cli packages); prints "skipped" with the reason when they are missing.

Both tools get the same real .torrent fixtures dropped one at a time into their watch folder; "queued" means the
torrent is in the tool's own queue: for transmission, listed by `transmission-remote -l`; for daemon115, recorded in
the ledger (`ledger list --json`, read back through the CLI like transmission-remote). Transmission runs on a
loopback RPC port with no peers, no DHT and no network activity beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sandbox import percentile  # noqa: E402

from daemon115.links import parse_torrent  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-world" / "torrents"
GOOD = ["alice.webtorrent-fixtures.torrent", "leaves.webtorrent-fixtures.torrent",
        "numbers_multifile.webtorrent-fixtures.torrent", "ubuntu-12.04.1_test.flexget.torrent",
        "ubuntu-9.04_private.flexget.torrent", "mikan_45e14c26b0a78b1b3bdbc3dd2763a1242ee420b4.konobangu.torrent",
        "mikan_58ab31bec4f710fd75816b590728bf0af1bdf1ca.konobangu.torrent",
        "mikan_e22d1c0062f2a4f4c49aebfb8d84fb4d85a7c375.konobangu.torrent",
        "LICENSE_trailing_newline.flexget.torrent"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout: float = 30.0, step: float = 0.01) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if predicate():
            return time.perf_counter()
        time.sleep(step)
    raise TimeoutError("not queued in time")


def transmission(drops: list[Path], tmp: Path) -> list[float]:
    watch, config, downloads = tmp / "t-watch", tmp / "t-config", tmp / "t-downloads"
    for d in (watch, config, downloads):
        d.mkdir()
    port = free_port()
    settings = {"rpc-bind-address": "127.0.0.1", "rpc-port": port, "rpc-authentication-required": False,
                "rpc-whitelist-enabled": False, "dht-enabled": False, "lpd-enabled": False, "pex-enabled": False,
                "utp-enabled": False, "port-forwarding-enabled": False, "peer-port": free_port(),
                "bind-address-ipv4": "127.0.0.1", "bind-address-ipv6": "::1", "start-added-torrents": False,
                "watch-dir": str(watch), "watch-dir-enabled": True, "download-dir": str(downloads),
                "trash-original-torrent-files": False, "message-level": 0}
    (config / "settings.json").write_text(json.dumps(settings))
    proc = subprocess.Popen(["transmission-daemon", "-f", "-g", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    remote = ["transmission-remote", f"127.0.0.1:{port}"]

    def listed() -> int:
        out = subprocess.run([*remote, "-l"], capture_output=True, text=True).stdout
        return max(0, len(out.strip().splitlines()) - 2)  # header and "Sum:" lines

    try:
        wait(lambda: subprocess.run([*remote, "-l"], capture_output=True).returncode == 0, 20, 0.1)
        latencies = []
        for i, source in enumerate(drops):
            closed = _drop(source, watch / f"{i}.torrent")
            latencies.append(wait(lambda i=i: listed() >= i + 1) - closed)
        return latencies
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


@contextmanager
def running_daemon115(tmp: Path, name: str) -> Iterator[tuple[Path, Path]]:
    """`daemon115 run` on the sandbox with one watch folder; yields (config, watch folder)."""
    from daemon115.api.sandbox import Sandbox

    watch = tmp / f"{name}-watch"
    watch.mkdir()
    with Sandbox() as sandbox:
        sandbox.write_token_file(tmp / f"{name}-token.json")
        config = tmp / f"{name}-config.yaml"
        config.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}", min_interval: 0s}}
auth: {{token_file: "{tmp / f'{name}-token.json'}"}}
ledger: {{path: "{tmp / f'{name}-ledger.sqlite3'}"}}
logging: {{level: warning}}
watch: [{{path: "{watch}", target: "0"}}]
""")
        proc = subprocess.Popen([sys.executable, "-m", "daemon115", "-c", str(config), "run"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.5)
            yield config, watch
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def daemon115(drops: list[Path], tmp: Path) -> list[float]:
    """Read back through the CLI, one `ledger list --json` process per look, as transmission-remote is."""
    with running_daemon115(tmp, "cli") as (config, watch):
        def listed() -> int:
            out = subprocess.run([sys.executable, "-m", "daemon115", "-c", str(config), "ledger", "list", "--json"],
                                 capture_output=True, text=True).stdout
            return len(json.loads(out or "[]"))

        latencies = []
        for i, source in enumerate(drops):
            closed = _drop(source, watch / f"{i}.torrent")
            latencies.append(wait(lambda i=i: listed() >= i + 1) - closed)
        return latencies


def in_ledger_directly(drops: list[Path], tmp: Path) -> list[float]:
    """daemon115 read back without a CLI process per look: the ledger file polled in this process."""
    from daemon115.ledger import Ledger

    with running_daemon115(tmp, "direct") as (config, watch), Ledger(tmp / "direct-ledger.sqlite3") as ledger:
        latencies = []
        for i, source in enumerate(drops):
            closed = _drop(source, watch / f"{i}.torrent")
            key = parse_torrent(source.read_bytes()).to_link().key
            latencies.append(wait(lambda key=key: ledger.get(key) is not None, step=0.002) - closed)
        return latencies


def _drop(source: Path, target: Path) -> float:
    tmp = target.with_name("." + target.name + ".part")
    shutil.copyfile(source, tmp)
    tmp.rename(target)  # an atomic move-in, as a download client's blackhole does it
    return time.perf_counter()


def summary(name: str, values: list[float]) -> str:
    return (f"{name}: p50 {percentile(values, 50) * 1e3:.0f} ms, p99 {percentile(values, 99) * 1e3:.0f} ms, "
            f"max {max(values) * 1e3:.0f} ms over {len(values)} drops")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drops", type=int, default=18)
    args = parser.parse_args()
    drops = [FIXTURES / GOOD[i % len(GOOD)] for i in range(len(GOOD))][: min(args.drops, len(GOOD))]
    missing = [tool for tool in ("transmission-daemon", "transmission-remote") if shutil.which(tool) is None]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ours = daemon115(drops, tmp)
        direct = in_ledger_directly(drops, tmp)
        if missing:
            print(f"transmission peer: skipped ({', '.join(missing)} not installed: apt-get install "
                  "transmission-daemon transmission-cli)")
        else:
            print(summary("transmission-daemon watch-dir -> `transmission-remote -l`", transmission(drops, tmp)))
    print(summary("daemon115 watch folder -> `daemon115 ledger list --json`", ours))
    print(summary("daemon115 watch folder -> the ledger (polled in-process)", direct))


if __name__ == "__main__":
    main()
