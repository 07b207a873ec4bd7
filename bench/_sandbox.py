"""Benchmarks' helper: the sandbox in its own process, so the client's timings do not share its GIL."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunningSandbox:
    url: str
    token_file: Path

    def control(self, path: str, doc: dict | None = None) -> dict:
        data = None if doc is None else json.dumps(doc).encode()
        req = urllib.request.Request(self.url + "/__sandbox/" + path, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as response:
            return json.loads(response.read())


@contextmanager
def sandbox_process(tmp: Path, *extra: str) -> Iterator[RunningSandbox]:
    proc = subprocess.Popen([sys.executable, "-m", "daemon115", "sandbox", "--port", "0", "--token-file",
                             str(tmp / "token.json"), *extra], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        token_file = Path(proc.stdout.readline().strip())
        yield RunningSandbox(url, token_file)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def write_config(tmp: Path, sandbox: RunningSandbox, extra: str = "") -> Path:
    config = tmp / "config.yaml"
    config.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}", min_interval: 0s}}
auth: {{token_file: "{sandbox.token_file}"}}
ledger: {{path: "{tmp / 'ledger.sqlite3'}"}}
{extra}""")
    return config


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
