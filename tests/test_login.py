"""QR-code login (PKCE device flow), driven end to end against the sandbox with a "user" acting in a thread."""

from __future__ import annotations

import io
import json
import math
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import segno

from daemon115.api.auth import read_tokens
from daemon115.api.client import (
    QR_CANCELLED,
    QR_CONFIRMED,
    QR_EXPIRED,
    QR_SCANNED,
    QR_WAITING,
    Endpoints,
    Passport,
    QrStatus,
    connect,
    qr_status_from,
)
from daemon115.api.errors import Api115Error
from daemon115.api.sandbox import Sandbox
from daemon115.api.transport import Pacing, Transport
from daemon115.login import QrExpired, challenge, login, make_verifier, render_qr

FAST = Pacing(timeout=3, min_interval=0, max_retries=1, backoff_base=0.01, backoff_cap=0.05)
STATUS = "/get/status/"
CLIENT_ID = "100195123"
URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A sandbox whose QR codes wait for the test's "user" (named ``sandbox`` so the suite's token-leak check runs)."""
    options = {"qr_auto": False, "qr_poll_timeout": 0.2, **getattr(request, "param", {})}
    with Sandbox("127.0.0.1", 0, seed=115, **options) as running:
        yield running


@pytest.fixture
def passport(sandbox: Sandbox) -> Passport:
    return Passport(Transport(FAST), Endpoints(sandbox.url, sandbox.url, sandbox.url))


def polls(sandbox: Sandbox) -> int:
    return sandbox.stats()["calls"].get(STATUS, 0)


def user(sandbox: Sandbox, *steps: tuple[int, str]) -> threading.Thread:
    """Acts on the phone: each (n, action) once the login has been polled n times."""

    def act() -> None:
        for after, action in steps:
            limit = time.monotonic() + 10
            while polls(sandbox) < after and time.monotonic() < limit:
                time.sleep(0.005)
            sandbox.qr_action(action)

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def run_login(passport: Passport, token_file: Path, **kw: Any) -> tuple[Any, str]:
    out = io.StringIO()
    options: dict[str, Any] = {"poll_timeout": 3.0, "deadline": 10.0, "poll_interval": 0.01, **kw}
    tokens = login(passport, CLIENT_ID, token_file, out=out, **options)
    return tokens, out.getvalue()


# --- PKCE values (pure) ----------------------------------------------------------------------------------------------

def test_challenge_matches_the_example_in_115s_documentation():
    assert challenge("IGKN6CJanWxCDPDhHZJrhswQdlcPBGLqExkhyujysXaQ4fJKBk_6dlPJo47s") \
        == "THHodGWg-FZfv8XYz7QArNGIK_aVomSHPldlSOTUtkw"


@pytest.mark.parametrize("length", [43, 64, 128])
def test_a_verifier_has_the_asked_length_in_url_safe_characters(length):
    verifier = make_verifier(length)
    assert len(verifier) == length and URL_SAFE.fullmatch(verifier)
    assert make_verifier(length) != verifier


@pytest.mark.parametrize("length", [42, 129, 0, True])
def test_a_verifier_outside_43_to_128_characters_is_refused(length):
    with pytest.raises(ValueError, match="43 to 128"):
        make_verifier(length)


def test_qr_status_bodies_are_read_in_every_shape_115_sends():
    assert qr_status_from({"state": 1, "code": 0, "message": "", "data": []}) == QrStatus(QR_WAITING, "")
    assert qr_status_from({"state": 1, "data": {"msg": "扫码成功", "status": 1}}) == QrStatus(QR_SCANNED, "扫码成功")
    assert qr_status_from({"state": 1, "data": {"status": "2"}}).status == QR_CONFIRMED
    assert qr_status_from({"state": 1, "data": {"status": -2}}).status == QR_CANCELLED
    assert qr_status_from({"state": 0, "code": 0, "message": "二维码已过期", "data": []}).status == QR_EXPIRED
    with pytest.raises(Api115Error) as caught:
        qr_status_from({"state": 0, "code": 40140104, "message": "sign 签名失败", "data": []})
    assert caught.value.code == 40140104 and "sign 签名失败" in str(caught.value)


def test_the_qr_code_is_drawn_in_half_blocks_two_rows_per_line():
    out = io.StringIO()
    render_qr("https://115.com/scan/dg-0123456789abcdef", out)
    lines = out.getvalue().splitlines()
    size = segno.make("https://115.com/scan/dg-0123456789abcdef", error="m").symbol_size(border=2)[0]
    assert len(lines) == math.ceil(size / 2) and {len(line) for line in lines} == {size}
    assert set("".join(lines)) <= {" ", "\u2580", "\u2584", "\u2588"}


# --- the whole flow --------------------------------------------------------------------------------------------------

def test_scanned_then_confirmed_writes_a_token_file_that_works(sandbox, passport, tmp_path):
    token_file = tmp_path / "state" / "token.json"
    user(sandbox, (1, "scan"), (2, "confirm"))
    before = time.time()
    tokens, printed = run_login(passport, token_file)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    doc = json.loads(token_file.read_text())
    assert set(doc) == {"access_token", "refresh_token", "expires_at"} and read_tokens(token_file) == tokens
    assert before + 7200 - 5 <= doc["expires_at"] <= time.time() + 7200
    client = connect(token_file=token_file, endpoints=Endpoints(sandbox.url, sandbox.url, sandbox.url),
                     pacing=FAST).client
    assert client.user_info().user_name == "sandbox"
    assert re.search(r"QR code content: https://115\.com/scan/dg-[0-9a-f]+", printed)
    assert "\u2588" in printed and "Scanned: confirm the login on your phone." in printed
    assert printed.index("Scanned") < printed.index("Confirmed.") < printed.index(str(token_file))
    assert tokens.access_token not in printed and tokens.refresh_token not in printed
    assert tokens.access_token not in repr(tokens)


def test_without_qr_drawing_the_content_is_still_printed(sandbox, passport, tmp_path):
    user(sandbox, (1, "confirm"))
    _, printed = run_login(passport, tmp_path / "token.json", qr=False)
    assert "QR code content: https://115.com/scan/dg-" in printed and "\u2588" not in printed


def test_polls_that_time_out_on_the_server_are_polled_again(sandbox, passport, tmp_path):
    user(sandbox, (4, "scan"), (5, "confirm"))  # the first three polls come back empty after 0.2 s
    run_login(passport, tmp_path / "token.json")
    assert polls(sandbox) >= 5 and (tmp_path / "token.json").exists()


@pytest.mark.parametrize("sandbox", [{"qr_poll_timeout": 5.0}], indirect=True)
def test_polls_that_time_out_on_our_side_are_polled_again(sandbox, passport, tmp_path):
    started = time.monotonic()
    assert passport.poll_status(*_started_login(passport), timeout=0.1) == QrStatus(QR_WAITING, "")
    assert time.monotonic() - started < 2
    user(sandbox, (3, "confirm"))
    run_login(passport, tmp_path / "token.json", poll_timeout=0.1)
    assert (tmp_path / "token.json").exists()


def _started_login(passport: Passport) -> tuple[str, int, str]:
    code = passport.device_code(CLIENT_ID, challenge(make_verifier()))
    return code.uid, code.time, code.sign


def test_an_expired_qr_code_is_qr_expired_and_a_new_login_can_start_at_once(sandbox, passport, tmp_path):
    token_file = tmp_path / "token.json"
    user(sandbox, (1, "expire"))
    with pytest.raises(QrExpired, match="expired before the login was confirmed") as caught:
        run_login(passport, token_file)
    assert caught.value.reason == "expired" and not token_file.exists()
    seen = polls(sandbox)
    user(sandbox, (seen + 1, "scan"), (seen + 2, "confirm"))  # "start again": nothing is paused
    run_login(passport, token_file)
    assert token_file.exists()


def test_a_login_cancelled_on_the_phone_is_qr_expired(sandbox, passport, tmp_path):
    user(sandbox, (1, "scan"), (2, "cancel"))
    with pytest.raises(QrExpired, match="cancelled on the phone") as caught:
        run_login(passport, tmp_path / "token.json")
    assert caught.value.reason == "cancelled"


def test_a_qr_code_past_its_five_minutes_is_qr_expired(sandbox, passport, tmp_path):
    user(sandbox, (1, "scan"))
    threading.Timer(0.1, sandbox.clock.advance, args=(301,)).start()
    with pytest.raises(QrExpired) as caught:
        run_login(passport, tmp_path / "token.json")
    assert caught.value.reason == "expired"


def test_a_login_not_confirmed_before_the_deadline_gives_up(sandbox, passport, tmp_path):
    started = time.monotonic()
    with pytest.raises(QrExpired, match="not confirmed in time") as caught:
        run_login(passport, tmp_path / "token.json", deadline=0.5)
    assert caught.value.reason == "timeout" and 0.5 <= time.monotonic() - started < 3


# --- what 115 refuses ------------------------------------------------------------------------------------------------

def confirmed(sandbox: Sandbox, passport: Passport, verifier: str) -> str:
    code = passport.device_code(CLIENT_ID, challenge(verifier))
    sandbox.qr_action("confirm", code.uid)
    return code.uid


def test_a_wrong_verifier_is_40140113_with_its_official_message(sandbox, passport):
    uid = confirmed(sandbox, passport, make_verifier())
    with pytest.raises(Api115Error) as caught:
        passport.device_token(uid, make_verifier())
    assert caught.value.code == 40140113 and "code_verifier 验证失败" in str(caught.value)


def test_a_verifier_of_the_wrong_length_is_40140112(sandbox, passport):
    uid = confirmed(sandbox, passport, make_verifier())
    with pytest.raises(Api115Error) as caught:
        passport.device_token(uid, "x" * 42)
    assert caught.value.code == 40140112 and "43~128" in str(caught.value)


def test_the_right_verifier_is_exchanged_once(sandbox, passport):
    verifier = make_verifier(128)
    uid = confirmed(sandbox, passport, verifier)
    assert passport.device_token(uid, verifier).expires_in == 7200
    with pytest.raises(Api115Error):
        passport.device_token(uid, verifier)


def test_a_bad_app_id_surfaces_115s_message_and_an_empty_one_is_refused_here(sandbox, passport, tmp_path):
    with pytest.raises(Api115Error) as caught:
        login(passport, "not-an-id", tmp_path / "token.json", out=io.StringIO())
    assert caught.value.code == 40140100 and "client_id 错误" in str(caught.value)
    with pytest.raises(ValueError, match="APP ID is empty"):
        login(passport, "  ", tmp_path / "token.json", out=io.StringIO())
    assert polls(sandbox) == 0


def test_the_challenge_sent_is_sha256_of_the_verifier_the_exchange_presents(sandbox, passport, tmp_path):
    """A login whose verifier and challenge disagree would fail the exchange with 40140113; this one succeeds."""
    sent: list[str] = []

    class Recording:
        """The real passport, noting the challenge on its way out."""

        def device_code(self, client_id: str, code_challenge: str) -> Any:
            sent.append(code_challenge)
            return passport.device_code(client_id, code_challenge)

        def __getattr__(self, name: str) -> Any:
            return getattr(passport, name)

    user(sandbox, (1, "confirm"))
    run_login(Recording(), tmp_path / "token.json")  # type: ignore[arg-type]
    assert len(sent) == 1 and URL_SAFE.fullmatch(sent[0]) and len(sent[0]) == 43  # unpadded base64url of 32 bytes
