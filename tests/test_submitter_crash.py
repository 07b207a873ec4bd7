"""Exactly once across crashes: `daemon115 once` SIGKILLed at random moments while 115 misbehaves.

The sandbox injects 5xx answers and dropped connections (before and after it commits a batch); each run of `once`
is killed after a random delay and started again. At the end every link was accepted by the sandbox exactly once,
none is lost, and the ledger agrees with the sandbox's task list.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon115.api.sandbox import Fault
from daemon115.intake import candidate
from daemon115.ledger import Ledger
from daemon115.links import parse_link

LINKS = 300
KILLS = 30
ADD = "/open/offline/add_task_urls"


def write_config(tmp_path: Path, sandbox) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}",
       min_interval: 0s, timeout: 2s, max_retries: 1}}
auth: {{token_file: "{tmp_path / 'token.json'}"}}
ledger: {{path: "{tmp_path / 'ledger.sqlite3'}"}}
submit: {{batch_size: 5, batch_window: 0s, max_attempts: 1000}}
""")
    return config


def once(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "daemon115", "-c", str(config), "once"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_once_killed_30_times_accepts_every_link_exactly_once(sandbox, tmp_path):
    sandbox.write_token_file(tmp_path / "token.json")
    config = write_config(tmp_path, sandbox)
    urls = [f"magnet:?xt=urn:btih:{random.Random(i).getrandbits(160):040x}&dn=crash-{i}" for i in range(LINKS)]
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        targets = ("0", "3099876543210987654")
        ledger.record([candidate(parse_link(u), target=targets[i % 2], source="cli") for i, u in enumerate(urls)])
    for kind, rate in (("http500", 0.2), ("drop_after", 0.15), ("drop_before", 0.1)):
        sandbox.inject(Fault(kind, endpoint=ADD, times=None, rate=rate))
    sandbox.inject(Fault("drop_before", endpoint="/open/offline/get_task_list", times=None, rate=0.1))
    sandbox.inject(Fault("delay", endpoint=ADD, times=None, rate=0.2, delay=0.05))

    rng = random.Random(20261202)
    kills = 0
    while kills < KILLS:
        proc = once(config)
        time.sleep(rng.uniform(0.3, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    sandbox.clear_faults()
    for _ in range(3):  # leftovers may wait out a backoff; a clean run settles them
        proc = once(config)
        _, err = proc.communicate(timeout=60)
        with Ledger(tmp_path / "ledger.sqlite3") as ledger:
            if ledger.counts()["submitted"] == LINKS:
                break
            for entry in ledger.entries("queued"):  # skip the backoff wait, not the rules
                ledger.requeue(entry.key, delay=0, reason="test: retry now", charge=False)

    stats = sandbox.stats()
    assert stats["add_calls"], "the sandbox never saw a batch"
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        entries = ledger.entries()
        assert ledger.counts() == {"queued": 0, "submitting": 0, "submitted": LINKS, "failed": 0}, err
    assert len(entries) == LINKS  # none lost
    accepted = stats["accepted"]
    assert sorted(accepted) == sorted(urls) and set(accepted.values()) == {1}  # each exactly once
    assert stats["duplicates"] == {}  # and never resent after 115 had taken it (its 10008 would hide that)
    cloud = {t["info_hash"]: t for t in sandbox.tasks()}
    assert {e.info_hash for e in entries} == set(cloud)  # the ledger agrees with the sandbox
    assert all(cloud[e.info_hash]["wp_path_id"] == e.target for e in entries)
    fired = {f["kind"] for f in stats["faults_fired"]}
    print(f"{len(stats['add_calls'])} add calls, {len(stats['faults_fired'])} faults: {sorted(fired)}")
    assert {"http500", "drop_after", "drop_before"} <= fired  # the faults really happened
