"""`daemon115 run` as a real subprocess against the sandbox: readiness, drops, reload, stop, lost authorization."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon115.api.auth import read_tokens
from daemon115.api.sandbox import Fault

HEX = "d2474e86c95b19b8bcfdb92bc12c9d44667cfa36"


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def write_config(path: Path, sandbox, tmp_path: Path, watch: list[Path], extra: str = "", timeout: str = "5s") -> Path:
    folders = "".join(f"  - {{path: '{w}', target: '{i + 1}', settle: 200ms}}\n" for i, w in enumerate(watch))
    path.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}", min_interval: 0s,
       timeout: {timeout}}}
auth: {{token_file: "{tmp_path / 'token.json'}"}}
ledger: {{path: "{tmp_path / 'ledger.sqlite3'}"}}
submit: {{batch_window: 300ms, quota_check_every: 1s}}
logging: {{format: json, level: debug}}
{"watch:" + chr(10) + folders if watch else ""}{extra}""")
    return path


class Run:
    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon115", "-c", str(config), "run"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines.extend(out.splitlines())
        return self.proc.returncode


@pytest.fixture
def running(sandbox, tmp_path) -> Iterator[Callable[..., Run]]:
    sandbox.write_token_file(tmp_path / "token.json")
    started: list[Run] = []

    def start(config: Path, env: dict[str, str] | None = None) -> Run:
        run = Run(config, env)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def accepted(sandbox) -> dict[str, int]:
    return sandbox.stats()["accepted_hashes"]


def test_ready_on_notify_socket_and_sigterm_exits_0_in_time(sandbox, tmp_path, running):
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(15)
    try:
        run = running(write_config(tmp_path / "c.yaml", sandbox, tmp_path, [tmp_path / "drop"]),
                      {"NOTIFY_SOCKET": str(sock_path)})
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(server.recv(4096).decode())
        assert any("STATUS=" in m and "queued" in m for m in messages)
        start = time.monotonic()
        assert run.stop() == 0
        assert time.monotonic() - start < 10
        server.settimeout(1)
        rest = []
        try:
            while True:
                rest.append(server.recv(4096).decode())
        except socket.timeout:
            pass
        assert any("STOPPING=1" in m for m in rest)
    finally:
        server.close()


def test_a_dropped_file_reaches_the_sandbox(sandbox, tmp_path, running):
    drop = tmp_path / "drop"
    drop.mkdir()
    run = running(write_config(tmp_path / "c.yaml", sandbox, tmp_path, [drop]))
    tmp = tmp_path / "a.magnet.tmp-outside"
    tmp.write_text(f"magnet:?xt=urn:btih:{HEX}&dn=Leaves\n")
    wait_for(lambda: any("ready" == e.get("event") for e in _peek(run)), what="ready")
    tmp.rename(drop / "a.magnet")  # atomic move-in
    wait_for(lambda: accepted(sandbox).get(HEX), what="the link at the sandbox")
    assert (drop / ".done" / "a.magnet").exists()
    assert run.stop() == 0
    assert sandbox.tasks()[0]["wp_path_id"] == "1"


def test_files_waiting_at_start_up_are_taken(sandbox, tmp_path, running):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "early.magnet").write_text(f"magnet:?xt=urn:btih:{HEX}\n")
    run = running(write_config(tmp_path / "c.yaml", sandbox, tmp_path, [drop]))
    wait_for(lambda: accepted(sandbox).get(HEX), what="the waiting file's link")
    assert run.stop() == 0


def test_sighup_adds_a_watch_folder_live_and_keeps_queued_work(sandbox, tmp_path, running):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    (second / "waiting.magnet").write_text(f"magnet:?xt=urn:btih:{1:040x}\n")
    config = write_config(tmp_path / "c.yaml", sandbox, tmp_path, [first])
    sandbox.set_quota(0)  # keep what is queued queued, to prove reload keeps it
    run = running(config)
    (first / "a.magnet").write_text(f"magnet:?xt=urn:btih:{HEX}\n")
    wait_for(lambda: (first / ".done" / "a.magnet").exists(), what="the first drop")
    write_config(config, sandbox, tmp_path, [first, second])
    run.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (second / ".done" / "waiting.magnet").exists(), what="the new folder's start-up scan")
    (second / "b.magnet").write_text(f"magnet:?xt=urn:btih:{2:040x}\n")
    wait_for(lambda: (second / ".done" / "b.magnet").exists(), what="a drop in the new folder")
    sandbox.set_quota(100)
    wait_for(lambda: len(accepted(sandbox)) == 3, timeout=30, what="all three links after quota returns")
    assert run.stop() == 0
    assert any(e.get("event") == "reloaded" for e in run.events())


def test_an_invalid_config_on_sighup_is_refused_and_the_old_one_keeps_running(sandbox, tmp_path, running):
    drop = tmp_path / "drop"
    drop.mkdir()
    config = write_config(tmp_path / "c.yaml", sandbox, tmp_path, [drop])
    run = running(config)
    wait_for(lambda: any("ready" == e.get("event") for e in _peek(run)), what="ready")
    good = config.read_text()
    config.write_text(good + "submit: {batch_size: 500}\n")
    run.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    (drop / "a.magnet").write_text(f"magnet:?xt=urn:btih:{HEX}\n")
    wait_for(lambda: accepted(sandbox).get(HEX), what="the old config still working")
    assert run.stop() == 0
    refused = [e for e in run.events() if e.get("event") == "reload_refused"]
    assert refused and any("submit" in p for p in refused[0]["problems"])


def test_lost_authorization_keeps_accepting_and_resumes_when_a_new_token_file_appears(sandbox, tmp_path, running):
    drop = tmp_path / "drop"
    drop.mkdir()
    token = tmp_path / "token.json"
    sandbox.revoke(read_tokens(token).refresh_token)
    sandbox.inject(Fault("expire_access"))
    run = running(write_config(tmp_path / "c.yaml", sandbox, tmp_path, [drop]))
    (drop / "a.magnet").write_text(f"magnet:?xt=urn:btih:{HEX}\n")
    wait_for(lambda: (drop / ".done" / "a.magnet").exists(), what="the drop accepted into the ledger")
    wait_for(lambda: 40140116 in sandbox.stats()["refresh_codes"], what="the refusal of the dead refresh token")
    time.sleep(1.0)
    assert not accepted(sandbox)
    assert sandbox.stats()["refresh_codes"] == [40140116]  # tried once, never hammered
    sandbox.write_token_file(token)  # `daemon115 auth import` of a new grant
    wait_for(lambda: accepted(sandbox).get(HEX), timeout=20, what="submission after re-authorization")
    assert run.stop() == 0
    assert run.proc.returncode == 0
    events = [e.get("event") for e in run.events()]
    assert "authorization_needed" in events and "authorization_resumed" in events


def _peek(run: Run) -> list[dict]:
    """Lines printed so far, without blocking (the pipe is read in small non-blocking steps)."""
    import fcntl

    fd = run.proc.stdout.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = run.proc.stdout.read()
    except (BlockingIOError, TypeError):
        chunk = None
    if chunk:
        run.lines.extend(chunk.splitlines())
    return run.events()


def test_status_reports_the_running_daemon_queue_token_and_quota(sandbox, tmp_path, running):
    drop = tmp_path / "drop"
    drop.mkdir()
    config = write_config(tmp_path / "c.yaml", sandbox, tmp_path, [drop])

    def status() -> dict:
        result = subprocess.run([sys.executable, "-m", "daemon115", "-c", str(config), "status", "--json"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert status()["daemon"]["running"] is False
    run = running(config)
    (drop / "a.magnet").write_text(f"magnet:?xt=urn:btih:{HEX}\n")
    wait_for(lambda: accepted(sandbox).get(HEX), what="the drop")
    doc = wait_for(lambda: (d := status())["daemon"]["running"] and d["daemon"].get("last_submit") and d,
                   what="a status with the submission")
    assert doc["queue"]["submitted"] == 1 and doc["breaker"]["state"] == "closed"
    assert doc["token"]["present"] and doc["token"]["problem"] is None and doc["quota"]["surplus"] > 0
    token = read_tokens(tmp_path / "token.json")
    text = subprocess.run([sys.executable, "-m", "daemon115", "-c", str(config), "status"], capture_output=True,
                          text=True, timeout=30).stdout
    assert "1 submitted" in text and "running" in text
    assert token.access_token not in text and token.access_token not in json.dumps(doc)
    assert run.stop() == 0


def test_a_hanging_notifier_does_not_stall_submission_and_metrics_are_served(sandbox, tmp_path, running):
    import requests

    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(16)  # accepts connections and never answers
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    drop = tmp_path / "drop"
    drop.mkdir()
    extra = (f"notify:\n  - {{type: webhook, url: 'http://127.0.0.1:{hanging.getsockname()[1]}/hook', timeout: 30s}}\n"
             f"status: {{listen: '127.0.0.1:{metrics_port}'}}\n")
    run = running(write_config(tmp_path / "c.yaml", sandbox, tmp_path, [drop], extra))
    try:
        for i in range(5):
            (drop / f"{i}.magnet").write_text(f"magnet:?xt=urn:btih:{i + 1:040x}\n")
            wait_for(lambda i=i: accepted(sandbox).get(f"{i + 1:040x}"), timeout=10, what=f"link {i}")
        health = wait_for(lambda: _get(f"http://127.0.0.1:{metrics_port}/healthz"), what="/healthz")
        assert health.status_code == 200
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert 'daemon115_links{state="submitted"} 5.0' in text
        assert "daemon115_submitted_total 5.0" in text
        assert 'daemon115_api_calls_total{code="0",endpoint="/open/offline/add_task_urls"}' in text
        assert run.stop() == 0
    finally:
        hanging.close()


def _get(url: str):
    import requests

    try:
        return requests.get(url, timeout=2)
    except requests.ConnectionError:
        return None


def test_sigterm_with_a_batch_in_flight_exits_0_in_time_and_the_batch_is_settled_on_restart(sandbox, tmp_path,
                                                                                              running):
    drop = tmp_path / "drop"
    drop.mkdir()
    config = write_config(tmp_path / "c.yaml", sandbox, tmp_path, [drop], timeout="30s")
    # 115 holds the request longer than the daemon may wait on SIGTERM, then takes the batch
    sandbox.inject(Fault("delay", endpoint="/open/offline/add_task_urls", delay=9.0))
    run = running(config)
    (drop / "a.magnet").write_text(f"magnet:?xt=urn:btih:{HEX}\n")
    wait_for(lambda: sandbox.stats()["calls"].get("/open/offline/add_task_urls"), what="the batch in flight")
    start = time.monotonic()
    assert run.stop() == 0
    assert time.monotonic() - start < 10
    assert any(e.get("event") == "stopped_with_work_in_flight" for e in run.events())
    wait_for(lambda: accepted(sandbox), timeout=15, what="115 taking the batch after all")
    again = running(config)
    wait_for(lambda: any(e.get("event") == "recovered" for e in _peek(again)), what="the restart settling the batch")
    assert again.stop() == 0
    assert accepted(sandbox) == {HEX: 1} and sandbox.stats()["duplicates"] == {}
    assert len(sandbox.stats()["add_calls"]) == 1  # looked up in the task list, not resent
    listing = subprocess.run([sys.executable, "-m", "daemon115", "-c", str(config), "ledger", "list", "--json"],
                             capture_output=True, text=True, timeout=30)
    assert [e["status"] for e in json.loads(listing.stdout)] == ["submitted"]
