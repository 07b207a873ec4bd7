"""Client overhead per call against the sandbox: daemon115's client vs a bare requests.Session on the same calls.

Run: python bench/bench_client.py [--calls N]. Prints calls/s and p50/p99 latency per endpoint; the difference
between the two columns is what the client's envelope checks, token handling and typed parsing cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sandbox import percentile, sandbox_process  # noqa: E402

from daemon115.api.auth import read_tokens  # noqa: E402
from daemon115.api.client import Endpoints, connect  # noqa: E402
from daemon115.api.transport import Pacing  # noqa: E402


def measure(fn, calls: int) -> tuple[float, float, float]:
    fn()  # warm the connection
    times = []
    start = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    return calls / total, percentile(times, 50) * 1e3, percentile(times, 99) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(Path(tmp)) as sandbox:
        client = connect(token_file=sandbox.token_file,
                         endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url),
                         pacing=Pacing(min_interval=0)).client
        for i in range(60):
            client.add_task_urls([f"magnet:?xt=urn:btih:{i:040x}"])
        session = requests.Session()
        header = {"Authorization": f"Bearer {read_tokens(sandbox.token_file).access_token}"}
        counter = iter(range(10**6, 10**7))
        cases = [
            ("user_info", client.user_info,
             lambda: session.get(sandbox.url + "/open/user/info", headers=header).json()),
            ("get_quota_info", client.quota,
             lambda: session.get(sandbox.url + "/open/offline/get_quota_info", headers=header).json()),
            ("get_task_list p1", lambda: client.task_page(1),
             lambda: session.get(sandbox.url + "/open/offline/get_task_list", params={"page": 1},
                                 headers=header).json()),
            ("add_task_urls x1", lambda: client.add_task_urls([f"magnet:?xt=urn:btih:{next(counter):040x}"]),
             lambda: session.post(sandbox.url + "/open/offline/add_task_urls", headers=header,
                                  data={"urls": f"magnet:?xt=urn:btih:{next(counter):040x}"}).json()),
        ]
        print(f"{'endpoint':<18} {'client calls/s':>14} {'p50 ms':>7} {'p99 ms':>7}   {'bare calls/s':>12} "
              f"{'p50 ms':>7} {'p99 ms':>7}   overhead p50")
        for name, ours, bare in cases:
            rate, p50, p99 = measure(ours, args.calls)
            brate, bp50, bp99 = measure(bare, args.calls)
            print(f"{name:<18} {rate:>14.0f} {p50:>7.2f} {p99:>7.2f}   {brate:>12.0f} {bp50:>7.2f} {bp99:>7.2f}"
                  f"   {(p50 - bp50) * 1e3:>8.0f} µs")


if __name__ == "__main__":
    main()
