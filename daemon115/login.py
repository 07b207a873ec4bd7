"""``daemon115 auth login``: 115's PKCE device flow, from the QR code in the terminal to the token file.

The verifier never leaves this process until the exchange, so whoever sees the QR code (or the terminal's
scrollback) cannot turn a confirmed login into tokens. The tokens themselves are never printed (api-notes.md §2.2).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol, TextIO

import segno

from daemon115.api.auth import Tokens, import_tokens
from daemon115.api.client import (
    QR_CANCELLED,
    QR_CONFIRMED,
    QR_EXPIRED,
    QR_SCANNED,
    DeviceCode,
    QrStatus,
)
from daemon115.api.errors import TransientError
from daemon115.api.models import Grant

VERIFIER_MIN, VERIFIER_MAX = 43, 128
VERIFIER_LENGTH = 64
POLL_TIMEOUT = 60.0  # per long poll (QMS); 115 answers earlier when the status changes
POLL_INTERVAL = 2.0  # the least time between two polls that saw no change (telepiplex)
DEADLINE = 300.0  # a QR code lives about five minutes
MAX_POLL_FAILURES = 3  # network failures in a row before the login gives up


class DevicePassport(Protocol):
    def device_code(self, client_id: str, challenge: str) -> DeviceCode: ...
    def poll_status(self, uid: str, time: int, sign: str, timeout: float) -> QrStatus: ...
    def device_token(self, uid: str, verifier: str) -> Grant: ...


class LoginError(Exception):
    """The QR login ended without tokens."""


class QrExpired(LoginError):
    """The QR code is no longer usable (expired, cancelled, or never confirmed in time): a new login may work."""

    reasons: ClassVar[dict[str, str]] = {
        "expired": "The QR code expired before the login was confirmed.",
        "cancelled": "The login was cancelled on the phone.",
        "timeout": "The login was not confirmed in time.",
    }

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        text = self.reasons.get(reason, "The QR code can no longer be used.")
        super().__init__(f"{text} {detail}".strip())


def make_verifier(length: int = VERIFIER_LENGTH) -> str:
    """A fresh PKCE code_verifier: ``length`` random characters of the URL-safe base64 alphabet."""
    if isinstance(length, bool) or not isinstance(length, int) or not VERIFIER_MIN <= length <= VERIFIER_MAX:
        raise ValueError(f"verifier length must be {VERIFIER_MIN} to {VERIFIER_MAX} characters, got {length!r}")
    return secrets.token_urlsafe(96)[:length]  # 96 bytes give 128 characters


def challenge(verifier: str) -> str:
    """base64url(sha256(verifier)) without padding, the form 115's own documentation uses."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def render_qr(content: str, out: TextIO) -> None:
    """Half-block characters: two modules per character cell, so the code fits an 80x24 terminal."""
    segno.make(content, error="m").terminal(out=out, compact=True, border=2)


def login(passport: DevicePassport, client_id: str, token_file: Path, *, out: TextIO, qr: bool = True,
          poll_timeout: float = POLL_TIMEOUT, deadline: float = DEADLINE, poll_interval: float = POLL_INTERVAL,
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
          now: Callable[[], float] = time.time, verifier_length: int = VERIFIER_LENGTH) -> Tokens:
    """Run the whole device flow and write ``token_file`` as ``auth import`` does.

    Raises QrExpired when the QR code stops being usable (the CLI may offer a new one), Api115Error for what 115
    refuses (40140101-40140113 carry 115's official texts), ValueError for an empty client_id.
    """
    client_id = client_id.strip()
    if not client_id:
        raise ValueError("client_id: the APP ID is empty; it comes from 115's open platform")
    verifier = make_verifier(verifier_length)
    code = passport.device_code(client_id, challenge(verifier))
    show_code(code, out, qr=qr)
    wait_for_confirmation(passport, code, out, poll_timeout=poll_timeout, deadline=deadline,
                          poll_interval=poll_interval, sleep=sleep, clock=clock)
    grant = passport.device_token(code.uid, verifier)
    tokens = Tokens(grant.access_token, grant.refresh_token, float(int(now() + grant.expires_in)))  # as stored
    import_tokens(Path(token_file), tokens)
    say(out, f"Logged in. The token file is {token_file}.")
    return tokens


def show_code(code: DeviceCode, out: TextIO, *, qr: bool) -> None:
    say(out, "Scan this QR code with the 115 app to log in:")
    if qr:
        render_qr(code.qrcode, out)
    say(out, f"QR code content: {code.qrcode}")
    say(out, "Waiting for the scan...")


def wait_for_confirmation(passport: DevicePassport, code: DeviceCode, out: TextIO, *, poll_timeout: float,
                          deadline: float, poll_interval: float, sleep: Callable[[float], None],
                          clock: Callable[[], float]) -> None:
    """Long-poll until confirmed. A poll that times out or brings nothing is not an error: it is simply repeated,
    with a pause only when the status did not change, so a server that answers at once is not hammered."""
    ends = clock() + deadline
    last, failures = -99, 0
    while True:
        remaining = ends - clock()
        if remaining <= 0:
            raise QrExpired("timeout", f"(waited {deadline:g} s)")
        started = clock()
        try:
            status = passport.poll_status(code.uid, code.time, code.sign, timeout=min(poll_timeout, remaining))
        except TransientError:
            failures += 1
            if failures >= MAX_POLL_FAILURES:
                raise
            sleep(poll_interval)
            continue
        failures = 0
        if status.status == QR_CONFIRMED:
            say(out, "Confirmed.")
            return
        if status.status in (QR_EXPIRED, QR_CANCELLED):
            raise QrExpired("cancelled" if status.status == QR_CANCELLED else "expired")
        if status.status == QR_SCANNED and last != QR_SCANNED:
            say(out, "Scanned: confirm the login on your phone.")
        if status.status == last:
            sleep(max(0.0, min(poll_interval - (clock() - started), ends - clock())))
        last = status.status


def say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()
