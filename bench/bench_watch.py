"""Watch folders through a real `daemon115 run`: drop-to-115 latency, a 1,000-file burst, idle CPU.

Run: python bench/bench_watch.py [--drops N] [--burst N] [--idle SECONDS]. Targets (issue 4):
- one drop at a time: p99 from the file's close to its link reaching the sandbox <= batch_window + 300 ms;
- a burst of 1,000 files: all submitted, add_task_urls calls <= ceil(links / batch_size) + 2; time to drain;
- an idle `run` with 10 watch folders: < 1 % of a core over the idle period.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sandbox import percentile  # noqa: E402

from daemon115.api.sandbox import Sandbox  # noqa: E402

WINDOW = 1.0
BATCH = 100


def config(tmp: Path, sandbox: Sandbox, folders: list[Path]) -> Path:
    path = tmp / "config.yaml"
    watch = "".join(f"  - {{path: '{f}', target: '0'}}\n" for f in folders)
    path.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}", min_interval: 0s}}
auth: {{token_file: "{tmp / 'token.json'}"}}
ledger: {{path: "{tmp / 'ledger.sqlite3'}"}}
submit: {{batch_size: {BATCH}, batch_window: {WINDOW}s}}
logging: {{level: warning}}
watch:
{watch}""")
    return path


def start(cfg: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "daemon115", "-c", str(cfg), "run"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # start-up; nothing is measured across it
    return proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_accepted(sandbox: Sandbox, count: int, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if sum(sandbox.stats()["accepted_hashes"].values()) >= count:
            return time.perf_counter()
        time.sleep(0.005)
    raise TimeoutError(f"only {sum(sandbox.stats()['accepted_hashes'].values())} of {count} links arrived")


def drop(folder: Path, name: str, text: str) -> float:
    with open(folder / name, "w") as f:
        f.write(text)
    return time.perf_counter()  # the close


def single_drops(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_name, Sandbox(quota=100_000) as sandbox:
        tmp = Path(tmp_name)
        folder = tmp / "drop"
        folder.mkdir()
        sandbox.write_token_file(tmp / "token.json")
        proc = start(config(tmp, sandbox, [folder]))
        latencies = []
        try:
            for i in range(n):
                closed = drop(folder, f"d{i}.magnet", f"magnet:?xt=urn:btih:{i + 1:040x}\n")
                latencies.append(wait_accepted(sandbox, i + 1, 20) - closed)
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        target = WINDOW + 0.3
        print(f"single drops ({n}): close -> sandbox p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, max "
              f"{max(latencies) * 1e3:.0f} ms (target p99 <= batch_window {WINDOW:g} s + 300 ms = {target * 1e3:.0f} ms:"
              f" {'OK' if p99 <= target else 'MISS'})")


def burst(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_name, Sandbox(quota=100_000) as sandbox:
        tmp = Path(tmp_name)
        folder = tmp / "drop"
        folder.mkdir()
        sandbox.write_token_file(tmp / "token.json")
        proc = start(config(tmp, sandbox, [folder]))
        try:
            start_at = time.perf_counter()
            for i in range(n):
                drop(folder, f"b{i}.magnet", f"magnet:?xt=urn:btih:{10**6 + i:040x}\n")
            written = time.perf_counter()
            done = wait_accepted(sandbox, n, 120)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        calls = len(sandbox.stats()["add_calls"])
        limit = math.ceil(n / BATCH) + 2
        print(f"burst of {n} files: written in {written - start_at:.2f} s, all {n} at the sandbox after "
              f"{done - start_at:.2f} s; {calls} add_task_urls calls (target <= {limit}: "
              f"{'OK' if calls <= limit else 'MISS'})")


def idle(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp_name, Sandbox() as sandbox:
        tmp = Path(tmp_name)
        folders = [tmp / f"w{i}" for i in range(10)]
        for f in folders:
            f.mkdir()
        sandbox.write_token_file(tmp / "token.json")
        proc = start(config(tmp, sandbox, folders))
        try:
            before, t0 = cpu_seconds(proc.pid), time.perf_counter()
            time.sleep(seconds)
            used, wall = cpu_seconds(proc.pid) - before, time.perf_counter() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        share = used / wall * 100
        print(f"idle run, 10 watch folders, {wall:.0f} s: {used:.2f} s CPU = {share:.2f} % of a core "
              f"(target < 1 %: {'OK' if share < 1 else 'MISS'})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drops", type=int, default=20)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    single_drops(args.drops)
    burst(args.burst)
    idle(args.idle)


if __name__ == "__main__":
    main()
