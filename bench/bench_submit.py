"""Submission throughput and `once` start-up.

Run: python bench/bench_submit.py [--links N] [--batch-size B]. Prints
- N links queued in the ledger and drained by `daemon115 once` into a sandbox in another process: the number of
  add_task_urls calls (target: exactly ceil(N / B) when nothing fails) and links per second;
- `once` with nothing to do: wall time beyond the interpreter's own start (target <= 0.5 s).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sandbox import sandbox_process, write_config  # noqa: E402

from daemon115.intake import candidate  # noqa: E402
from daemon115.ledger import Ledger  # noqa: E402
from daemon115.links import parse_link  # noqa: E402


def timed(argv: list[str], runs: int = 7) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--links", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, \
            sandbox_process(Path(tmp_name)) as sandbox:
        tmp = Path(tmp_name)
        sandbox.control("quota", {"surplus": args.links + 10})
        config = write_config(tmp, sandbox, f"submit: {{batch_size: {args.batch_size}, batch_window: 0s}}\n")
        with Ledger(tmp / "ledger.sqlite3") as ledger:
            for start in range(0, args.links, 500):
                ledger.record([candidate(parse_link(f"magnet:?xt=urn:btih:{i:040x}&dn=bench-{i}"), target="0",
                                         source="bench") for i in range(start, min(args.links, start + 500))])
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "daemon115", "-c", str(config), "once"], check=True,
                       stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        stats = sandbox.control("stats")
        calls = len(stats["add_calls"])
        accepted = sum(stats["accepted"].values())
        expected = math.ceil(args.links / args.batch_size)
        print(f"submit: {args.links} links, batch_size {args.batch_size}: {calls} add_task_urls calls "
              f"(expected {expected}: {'OK' if calls == expected else 'MISS'}), {accepted} accepted, "
              f"{elapsed:.2f} s, {args.links / elapsed:,.0f} links/s")

        idle = timed([sys.executable, "-m", "daemon115", "-c", str(config), "once"])
        bare = timed([sys.executable, "-c", "pass"])
        print(f"once with nothing to do: {idle * 1e3:.0f} ms; interpreter alone {bare * 1e3:.0f} ms; "
              f"beyond the interpreter {(idle - bare) * 1e3:.0f} ms (target <= 500 ms)")


if __name__ == "__main__":
    main()
