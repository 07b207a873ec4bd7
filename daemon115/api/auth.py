"""The token file and the refresh-token lifecycle.

115 rotates the refresh token on every refresh and kills the old one at once (api-notes.md §2.1), so a refresh is a
one-way step: the new pair is written to disk before the new access token is used, an OS file lock keeps the daemon
and CLI commands beside it from refreshing together, and whoever waited for the lock re-reads the file instead of
refreshing again. A dead refresh token is never presented twice: retrying one gets the app banned (40140137).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon115.api.errors import Api115Error, AuthorizationNeeded, RateLimited
from daemon115.api.models import Grant
from daemon115.fsutil import atomic_write, file_lock

REFRESH_WINDOW = 60.0  # 115 answers 40140117 to a second refresh of one grant within this many seconds


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_at: float

    def __repr__(self) -> str:
        return f"Tokens(access_token=<redacted>, refresh_token=<redacted>, expires_at={self.expires_at:.0f})"

    def expires_in(self, now: float) -> float:
        return self.expires_at - now


@dataclass(frozen=True)
class TokenState:
    """What `auth status` may show: everything about the tokens except the tokens."""

    path: Path
    present: bool
    expires_at: float | None
    problem: str | None


def read_tokens(path: Path) -> Tokens:
    """Read the token file; anything unusable is an AuthorizationNeeded naming the file and what is wrong with it."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise AuthorizationNeeded(None, f"no token file at {path}", "token file") from None
    except OSError as exc:
        raise AuthorizationNeeded(None, f"cannot read the token file {path}: {exc.strerror}", "token file") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise AuthorizationNeeded(None, f"the token file {path} is not valid JSON", "token file") from None
    if not isinstance(doc, dict):
        raise AuthorizationNeeded(None, f"the token file {path} does not hold a JSON object", "token file")
    access, refresh, expires = doc.get("access_token"), doc.get("refresh_token"), doc.get("expires_at")
    if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
        raise AuthorizationNeeded(None, f"the token file {path} lacks access_token or refresh_token", "token file")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        raise AuthorizationNeeded(None, f"the token file {path} lacks a numeric expires_at", "token file")
    return Tokens(access, refresh, float(expires))


def write_tokens(path: Path, tokens: Tokens) -> None:
    """Callers hold ``file_lock(path)``; temp files of writes killed half-way hold tokens, so they are removed."""
    path = Path(path)
    doc = {"access_token": tokens.access_token, "refresh_token": tokens.refresh_token,
           "expires_at": int(tokens.expires_at)}
    atomic_write(path, (json.dumps(doc) + "\n").encode(), mode=0o600)
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def import_tokens(path: Path, tokens: Tokens) -> None:
    """``auth import``: under the refresh lock, so it never interleaves with a refresh of the old pair."""
    with file_lock(path):
        write_tokens(path, tokens)


def token_state(path: Path) -> TokenState:
    try:
        tokens = read_tokens(path)
    except AuthorizationNeeded as exc:
        return TokenState(Path(path), Path(path).exists(), None, exc.server_message)
    return TokenState(Path(path), True, tokens.expires_at, None)


def _dead_marker(path: Path) -> Path:
    return Path(str(path) + ".dead")


def _fingerprint(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()


def mark_dead(path: Path, refresh_token: str) -> None:
    """Remember, across processes and restarts, that 115 refused this refresh token (only its hash is stored).

    A cron-driven ``once`` or a restarted daemon would otherwise present the dead token again on every run, which is
    exactly what gets an app banned into 40140137.
    """
    atomic_write(_dead_marker(path), (_fingerprint(refresh_token) + "\n").encode(), mode=0o600)


def is_dead(path: Path, refresh_token: str) -> bool:
    try:
        return _dead_marker(path).read_text().strip() == _fingerprint(refresh_token)
    except OSError:
        return False


Refresher = Callable[[str], Grant]


class TokenStore:
    """Hands out a valid access token and owns every refresh of it."""

    def __init__(self, path: Path, refresher: Refresher, *, refresh_ahead: float = 600.0,
                 clock: Callable[[], float] = time.time, on_tokens: Callable[[Tokens], None] | None = None) -> None:
        """``on_tokens`` hears of every pair this store reads or makes, the start-up pair included: the log
        redactor learns each secret before any message could carry it."""
        self.path = Path(path)
        self._refresher = refresher
        self._refresh_ahead = refresh_ahead
        self._clock = clock
        self._on_tokens = on_tokens
        self._lock = threading.Lock()
        self._tokens: Tokens | None = None
        self._blocked_until = 0.0
        self.refreshes = 0

    def access_token(self) -> str:
        """The current access token, refreshed first when it is due (or past due)."""
        with self._lock:
            tokens = self._load()
            if tokens.expires_in(self._clock()) > self._refresh_ahead:
                return tokens.access_token
            return self._refresh_locked(tokens, reason="expiry").access_token

    def after_invalid(self, used: str) -> str:
        """115 said ``used`` is invalid (40140125 and kin): refresh once, unless someone already did."""
        with self._lock:
            tokens = self._reload()
            if tokens.access_token != used:
                return tokens.access_token
            return self._refresh_locked(tokens, reason="invalid", must=True).access_token

    def after_superseded(self, used: str) -> str:
        """40140126: a newer grant exists, so the newer pair should be on disk; refreshing ours would only kill it."""
        with self._lock:
            with file_lock(self.path):  # a refresh in progress elsewhere holds it until the new pair is on disk
                tokens = self._reload()
            if tokens.access_token != used:
                return tokens.access_token
            raise AuthorizationNeeded(40140126, "115 says a newer authorization replaced this one, and the token "
                                                f"file {self.path} still holds the old one", "token file")

    def refresh(self) -> Tokens:
        """Force a refresh now (``auth refresh``)."""
        with self._lock:
            return self._refresh_locked(self._reload(), reason="forced", must=True, forced=True)

    def current(self) -> Tokens:
        with self._lock:
            return self._reload()

    def _load(self) -> Tokens:
        return self._tokens if self._tokens is not None else self._reload()

    def _reload(self) -> Tokens:
        return self._adopt(read_tokens(self.path))

    def _adopt(self, tokens: Tokens) -> Tokens:
        if tokens != self._tokens and self._on_tokens is not None:
            self._on_tokens(tokens)
        self._tokens = tokens
        return tokens

    def _refresh_locked(self, seen: Tokens, *, reason: str, must: bool = False, forced: bool = False) -> Tokens:
        with file_lock(self.path):
            disk = self._adopt(read_tokens(self.path))
            if disk.refresh_token != seen.refresh_token and not forced:
                return disk  # another process refreshed while we waited for the lock
            if is_dead(self.path, disk.refresh_token):
                raise AuthorizationNeeded(None, f"the refresh token in {self.path} was already refused by 115; "
                                                "it is not tried again", "/open/refreshToken")
            now = self._clock()
            if now < self._blocked_until:
                return self._keep_or_wait(disk, now, must)
            try:
                grant = self._refresher(disk.refresh_token)
            except AuthorizationNeeded:
                mark_dead(self.path, disk.refresh_token)
                raise
            except Api115Error as exc:
                if exc.code == 40140117:
                    self._blocked_until = now + REFRESH_WINDOW
                    return self._keep_or_wait(disk, now, must)
                raise
            fresh = Tokens(grant.access_token, grant.refresh_token, now + grant.expires_in)
            if self._on_tokens is not None:
                self._on_tokens(fresh)
            write_tokens(self.path, fresh)  # before anyone uses the new access token
            self._tokens = fresh
            self.refreshes += 1
        return fresh

    def _keep_or_wait(self, tokens: Tokens, now: float, must: bool) -> Tokens:
        """While refreshing is blocked, keep using an access token that is still valid; otherwise retry later."""
        if not must and tokens.expires_in(now) > 0:
            return tokens
        raise RateLimited(40140117, f"refreshing is paused for {self._blocked_until - now:.0f} s more "
                                    "(115 allows one refresh per minute)", "/open/refreshToken")

