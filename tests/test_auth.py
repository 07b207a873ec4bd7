"""The token lifecycle against the sandbox over real HTTP: expiry, rotation, refusal, rate limit, two processes."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests

from daemon115.api.auth import Tokens, read_tokens, write_tokens
from daemon115.api.client import Endpoints, connect
from daemon115.api.errors import AuthorizationNeeded, RateLimited, exit_code_for
from daemon115.api.sandbox import Fault
from daemon115.api.transport import Pacing

FAST = Pacing(timeout=5, min_interval=0, max_retries=2, backoff_base=0.01, backoff_cap=0.05)


def client_for(sandbox, token_file: Path, **kw):
    return connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url),
                   pacing=FAST, **kw).client


def refreshes(sandbox) -> int:
    return sandbox.stats()["refresh_calls"]


def test_token_file_is_json_mode_0600_and_written_atomically(tmp_path):
    path = tmp_path / "state" / "token.json"
    write_tokens(path, Tokens("a" * 20, "r" * 20, 1767225600))
    assert json.loads(path.read_text()) == {"access_token": "a" * 20, "refresh_token": "r" * 20,
                                            "expires_at": 1767225600}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["token.json"]  # no temp file left behind


@pytest.mark.parametrize("content, problem", [(None, "no token file"), ("", "not valid JSON"), ("[]", "JSON object"),
                                              ('{"access_token": "x"}', "lacks access_token or refresh_token"),
                                              ('{"access_token": "x", "refresh_token": "y"}', "expires_at")])
def test_unusable_token_file_means_authorization_needed_naming_auth_import(tmp_path, content, problem):
    path = tmp_path / "token.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AuthorizationNeeded) as info:
        read_tokens(path)
    assert problem in str(info.value)
    assert "daemon115 auth import" in str(info.value)
    assert exit_code_for(info.value) == 3


def test_refreshes_ahead_of_expiry_and_persists_the_rotated_pair(sandbox, tmp_path):
    path = tmp_path / "token.json"
    pair = sandbox.write_token_file(path)
    tokens = read_tokens(path)
    write_tokens(path, Tokens(tokens.access_token, tokens.refresh_token, time.time() + 60))  # inside refresh_ahead
    client = client_for(sandbox, path)
    assert client.user_info().user_name
    assert refreshes(sandbox) == 1
    fresh = read_tokens(path)
    assert fresh.refresh_token != pair.refresh_token and fresh.access_token != pair.access_token
    assert fresh.expires_at == pytest.approx(time.time() + 7200, abs=30)
    old = requests.post(sandbox.url + "/open/refreshToken", data={"refresh_token": pair.refresh_token}).json()
    assert old["code"] == 40140120  # the old refresh token died the moment the refresh succeeded


def test_invalid_access_token_mid_call_refreshes_once_and_retries_once(sandbox, token_file):
    client = client_for(sandbox, token_file)
    sandbox.inject(Fault("expire_access"))
    assert client.quota().count > 0
    assert refreshes(sandbox) == 1


def test_new_access_token_is_on_disk_before_it_is_used(sandbox, token_file):
    client = client_for(sandbox, token_file)
    used: list[tuple[str, str]] = []
    real = client.transport.request

    def observe(method, url, endpoint, **kw):
        header = (kw.get("headers") or {}).get("Authorization")
        if header:
            used.append((header.removeprefix("Bearer "), read_tokens(token_file).access_token))
        return real(method, url, endpoint, **kw)

    client.transport.request = observe
    sandbox.inject(Fault("expire_access"))
    client.user_info()
    assert len(used) == 2 and used[0][0] != used[1][0]
    assert all(sent == on_disk for sent, on_disk in used)


def test_stale_refresh_token_stops_at_once_and_is_never_presented_again(sandbox, tmp_path):
    path = tmp_path / "token.json"
    stale = sandbox.write_token_file(path)
    client_for(sandbox, path).tokens.refresh()  # rotates: `stale` is dead now
    write_tokens(path, Tokens(stale.access_token, stale.refresh_token, time.time() - 1))  # a restored backup
    sandbox.clock.advance(61)
    with pytest.raises(AuthorizationNeeded) as info:
        client_for(sandbox, path).user_info()
    assert info.value.code == 40140120 and "daemon115 auth import" in str(info.value)
    before = refreshes(sandbox)
    for _ in range(3):  # a cron job or a restarted daemon must not hammer the dead token into 40140137
        with pytest.raises(AuthorizationNeeded):
            client_for(sandbox, path).user_info()
    assert refreshes(sandbox) == before


def test_revoked_grant_needs_reauthorization(sandbox, tmp_path):
    path = tmp_path / "token.json"
    pair = sandbox.write_token_file(path)
    sandbox.revoke(pair.refresh_token)
    with pytest.raises(AuthorizationNeeded) as info:
        client_for(sandbox, path).tokens.refresh()
    assert info.value.code == 40140116


def test_a_new_token_file_lifts_the_dead_token_marker(sandbox, tmp_path):
    path = tmp_path / "token.json"
    pair = sandbox.write_token_file(path)
    sandbox.revoke(pair.refresh_token)
    with pytest.raises(AuthorizationNeeded):
        client_for(sandbox, path).tokens.refresh()
    sandbox.write_token_file(path)  # the user re-authorized (auth import)
    client_for(sandbox, path).tokens.refresh()


def test_refresh_too_frequent_waits_instead_of_hammering(sandbox, token_file):
    client = client_for(sandbox, token_file)
    client.tokens.refresh()
    with pytest.raises(RateLimited):
        client.tokens.refresh()  # within 60 s of the last one: 40140117
    assert refreshes(sandbox) == 2
    for _ in range(3):
        with pytest.raises(RateLimited):
            client.tokens.refresh()
    assert refreshes(sandbox) == 2  # no further attempt inside the window
    assert client.user_info().user_name  # the current access token is still good


def test_superseded_access_token_reloads_the_file_instead_of_refreshing(sandbox, token_file):
    first = client_for(sandbox, token_file)
    second = client_for(sandbox, token_file)
    first.user_info()
    second.user_info()  # both hold the same access token in memory
    first.tokens.refresh()
    assert second.user_info().user_name  # 40140126, then the new pair from disk
    assert refreshes(sandbox) == 1


WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from daemon115.api.client import Endpoints, connect
    from daemon115.api.transport import Pacing
    url, path, start = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    conn = connect(token_file=path, endpoints=Endpoints(url, url, url), pacing=Pacing(min_interval=0))
    while time.time() < start:
        time.sleep(0.001)
    conn.client.user_info()
    print(conn.client.tokens.current().access_token[-6:])
""")


def test_two_processes_refreshing_at_once_make_exactly_one_refresh(sandbox, tmp_path):
    path = tmp_path / "token.json"
    sandbox.write_token_file(path)
    tokens = read_tokens(path)
    write_tokens(path, Tokens(tokens.access_token, tokens.refresh_token, time.time() + 5))  # due for a refresh
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, sandbox.url, str(path), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert refreshes(sandbox) == 1
    final = read_tokens(path).access_token[-6:]
    assert [out.strip() for out, _ in results] == [final, final]


REFRESH_LOOP = textwrap.dedent("""
    import sys
    from pathlib import Path
    from daemon115.api.client import Endpoints, connect
    from daemon115.api.errors import RateLimited
    from daemon115.api.transport import Pacing
    url, path = sys.argv[1], Path(sys.argv[2])
    conn = connect(token_file=path, endpoints=Endpoints(url, url, url), pacing=Pacing(min_interval=0))
    print("ready", flush=True)
    while True:
        try:
            conn.client.tokens.refresh()
        except RateLimited:
            pass
""")


def test_sigkill_while_refreshing_never_leaves_a_missing_empty_or_corrupt_token_file(sandbox, tmp_path):
    path = tmp_path / "token.json"
    sandbox.write_token_file(path)
    stop = threading.Event()

    def keep_the_window_open() -> None:  # every refresh attempt may go through: 61 s pass between them
        while not stop.is_set():
            sandbox.clock.advance(61)
            time.sleep(0.002)

    ticker = threading.Thread(target=keep_the_window_open, daemon=True)
    ticker.start()
    rng = random.Random(115)
    kills = 0
    try:
        while kills < 30:
            proc = subprocess.Popen([sys.executable, "-c", REFRESH_LOOP, sandbox.url, str(path)],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.01, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            tokens = read_tokens(path)  # raises if missing, empty or corrupt
            assert tokens.access_token and tokens.refresh_token
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            if Path(str(path) + ".dead").exists():
                break  # killed between 115's rotation and the write: the pair on disk is intact but dead
    finally:
        stop.set()
        ticker.join()
    assert refreshes(sandbox) > kills  # refreshes really were in flight when the kills landed
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) <= 1  # at most the temp file of the write that was killed, never a torn token file
