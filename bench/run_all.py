"""Run every benchmark and write BENCHMARKS.md: each printed figure beside its target, with the machine it ran on.

Run: python bench/run_all.py [--quick] [--skip-flexget]. Each benchmark is a separate script that prints its own
figures and verdicts (OK / MISS against the issue's target); this runner captures them verbatim, so the file is
exactly what the scripts measured in this run; the explanations of misses come from bench/MISSES.md. --quick uses
smaller sizes (for a smoke run, not for the record).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# (title, script, full args, quick args, targets)
BENCHMARKS = [
    ("115 client overhead per call (issue 2)", "bench_client.py", ["--calls", "2000"], ["--calls", "200"],
     "none set; client vs bare requests on the same calls"),
    ("Ledger at 1,000,000 links (issue 3)", "bench_ledger.py", [], ["--links", "50000"],
     "dedup lookup p50 <= 50 µs"),
    ("Submission and `once` start-up (issue 3)", "bench_submit.py", [], ["--links", "2000"],
     "calls == ceil(links / batch_size); `once` idle start <= 0.5 s beyond the interpreter"),
    ("Watch folders (issue 4)", "bench_watch.py", [], ["--drops", "5", "--burst", "200", "--idle", "10"],
     "single drop p99 <= batch_window + 300 ms; burst calls <= ceil(links / batch_size) + 2; idle < 1 % CPU"),
    ("Drop-to-queued beside transmission-daemon (issue 9 peer)", "bench_transmission.py", [], [],
     "peer figure measured in the same run"),
    ("Feeds: warm poll vs feedparser, 304 CPU, `once` vs FlexGet (issue 5)", "bench_feeds.py", ["--flexget"], [],
     "poll <= 2x bare parse; 304 <= 5 ms CPU; `once` <= 1/5 of FlexGet's wall time, first and repeat run"),
    ("The service over an accelerated day (issue 7)", "bench_service.py", ["--days", "2"],
     ["--speedup", "2880", "--idle", "10"], "<= 60 MB RSS; no growth between first and last hour; < 1 % CPU idle"),
]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    return (f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem} MiB RAM, {platform.platform()}, "
            f"Python {platform.python_version()}")


def run(script: str, args: list[str]) -> tuple[str, float, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=3600)
    output = (proc.stdout + ("\n" + proc.stderr.strip() if proc.returncode else "")).strip()
    return output, time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-flexget", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    parts = ["# Benchmarks", "",
             f"Written by `python bench/run_all.py{' --quick' if args.quick else ''}` on "
             f"{time.strftime('%Y-%m-%d %H:%M %Z')}.", "", f"Machine: {machine()}", "",
             "Each section is the benchmark's own output, verbatim; `OK` / `MISS` compare a figure with its target.",
             "Misses are explained in the section **Misses** at the end.", ""]
    misses = []
    for title, script, full, quick, targets in BENCHMARKS:
        bench_args = quick if args.quick else full
        if args.skip_flexget:
            bench_args = [a for a in bench_args if a != "--flexget"]
        print(f"running {script} {' '.join(bench_args)} ...", flush=True)
        output, took, code = run(script, bench_args)
        print(output, flush=True)
        parts += [f"## {title}", "", f"Targets: {targets}.", "",
                  f"`python bench/{script} {' '.join(bench_args)}` ({took:.0f} s, exit {code}):", "", "```",
                  output, "```", ""]
        misses += [f"- {title}: `{line.strip()}`" for line in output.splitlines() if "MISS" in line]
    explained = (BENCH / "MISSES.md").read_text().split("-->", 1)[-1].strip()
    parts += ["## Misses", ""] + (misses or ["None in this run."]) + ["", explained, ""]
    Path(args.out).write_text("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
