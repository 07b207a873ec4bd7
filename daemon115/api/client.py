"""The 115 Open API endpoints daemon115 uses, returning typed values.

Authentication failures are handled here, once per call: an invalid access token (40140125 and kin) triggers one
refresh and one retry; a superseded one (40140126) triggers a re-read of the token file, never a refresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from daemon115.api.auth import Tokens, TokenStore
from daemon115.api.errors import Api115Error, Kind, TransientError, error_from_response, parse_code
from daemon115.api.models import (
    AddResult,
    Grant,
    Quota,
    Task,
    TaskPage,
    UserInfo,
    as_id,
    as_int,
    as_list,
    as_object,
    as_str,
)
from daemon115.api.transport import CallBudget, CircuitBreaker, Pacing, Transport, is_success, json_or_none

MAX_URLS_PER_CALL = 115
SUPERSEDED = 40140126
#: whole-call codes that, with no per-URL data, describe the single URL of the call (api-notes.md §2.6)
PER_URL_CODES = frozenset({10008, 10004})
NOT_FOUND = 430004
MAX_FOLDER_NAME = 255
STATUS_PATH = "/get/status/"
# QR login states (api-notes.md §2.2); 0 also stands for "nothing yet" and for a poll that timed out
QR_WAITING, QR_SCANNED, QR_CONFIRMED, QR_EXPIRED, QR_CANCELLED = 0, 1, 2, -1, -2


@dataclass(frozen=True)
class Endpoints:
    base_url: str = "https://proapi.115.com"
    passport_url: str = "https://passportapi.115.com"
    qrcode_url: str = "https://qrcodeapi.115.com"


@dataclass(frozen=True)
class DeviceCode:
    """authDeviceCode's answer: ``qrcode`` is what the QR image encodes; uid/time/sign identify the login."""

    uid: str
    time: int
    qrcode: str
    sign: str


@dataclass(frozen=True)
class QrStatus:
    status: int  # QR_WAITING, QR_SCANNED, QR_CONFIRMED, QR_EXPIRED or QR_CANCELLED
    message: str


@dataclass(frozen=True)
class FolderInfo:
    file_id: str
    name: str
    is_folder: bool
    ancestors: tuple[tuple[str, str], ...]  # (file_id, file_name) from the root down

    @classmethod
    def from_api(cls, data: object) -> FolderInfo | None:
        """None for the empty ``data`` that means not found; a one-element array is unwrapped (api-notes §2.9)."""
        d = as_object(data)
        file_id = as_id(d.get("file_id"))
        if not file_id:
            return None
        ancestors = tuple((as_id(a.get("file_id")), as_str(a.get("file_name")))
                          for a in as_list(d.get("paths")) if isinstance(a, Mapping))
        return cls(file_id, as_str(d.get("file_name")), as_str(d.get("file_category")).strip() in ("", "0"),
                   ancestors)


class Passport:
    """passportapi calls: they carry no Authorization header and answer ``state`` as 1/0."""

    def __init__(self, transport: Transport, endpoints: Endpoints) -> None:
        self._transport = transport
        self._url = endpoints.passport_url
        self._qrcode_url = endpoints.qrcode_url

    def refresh(self, refresh_token: str) -> Grant:
        body = self._transport.request("POST", self._url + "/open/refreshToken", "/open/refreshToken",
                                       data={"refresh_token": refresh_token}, idempotent=True)
        return grant_from(body.get("data"), "/open/refreshToken")

    def device_code(self, client_id: str, challenge: str) -> DeviceCode:
        """Start a QR login; ``challenge`` is base64url(sha256(verifier)), so the method is always sha256."""
        endpoint = "/open/authDeviceCode"
        body = self._transport.request("POST", self._url + endpoint, endpoint, idempotent=True, data={
            "client_id": client_id, "code_challenge": challenge, "code_challenge_method": "sha256"})
        d = as_object(body.get("data"))
        code = DeviceCode(as_str(d.get("uid")), as_int(d.get("time")), as_str(d.get("qrcode")), as_str(d.get("sign")))
        if not code.uid or not code.qrcode or not code.sign:
            raise Api115Error(None, "115 reported success but sent no QR code (uid, qrcode, sign)", endpoint)
        return code

    def poll_status(self, uid: str, time: int, sign: str, timeout: float) -> QrStatus:
        """One long poll of the QR login; a poll that times out is QR_WAITING, not an error.

        It bypasses the Transport: the poll needs its own timeout, and its ``state: 0`` with no code means "expired",
        which the Transport would read as risk control and pause every call of the account for.
        """
        try:
            response = requests.get(self._qrcode_url + STATUS_PATH, params={"uid": uid, "time": time, "sign": sign},
                                    timeout=timeout)
        except requests.Timeout:
            return QrStatus(QR_WAITING, "")
        except requests.RequestException as exc:
            raise TransientError(None, f"request failed: {type(exc).__name__}", STATUS_PATH) from None
        body = json_or_none(response)
        if not isinstance(body, dict):
            raise TransientError(None, f"HTTP {response.status_code} with a body that is not a JSON object",
                                 STATUS_PATH)
        return qr_status_from(body)

    def device_token(self, uid: str, verifier: str) -> Grant:
        """Exchange a confirmed login for tokens; a login is exchanged once, so a lost answer is not resent."""
        endpoint = "/open/deviceCodeToToken"
        body = self._transport.request("POST", self._url + endpoint, endpoint,
                                       data={"uid": uid, "code_verifier": verifier}, idempotent=False)
        return grant_from(body.get("data"), endpoint)


def qr_status_from(body: Mapping[str, Any]) -> QrStatus:
    """``state`` 0 with a code is an error (a bad sign); without one the QR is invalid or expired (api-notes §2.2)."""
    message = as_str(body.get("message") or body.get("error"))
    if not is_success(body):
        code = parse_code(body.get("code")) or parse_code(body.get("errno"))
        if code:
            raise error_from_response(code, message, STATUS_PATH)
        return QrStatus(QR_EXPIRED, message)
    d = as_object(body.get("data"))
    return QrStatus(as_int(d.get("status"), QR_WAITING), as_str(d.get("msg")))


def grant_from(data: object, endpoint: str) -> Grant:
    d = as_object(data)
    access, refresh = as_str(d.get("access_token")), as_str(d.get("refresh_token"))
    if not access or not refresh:
        raise Api115Error(None, "115 reported success but sent no token pair", endpoint)
    return Grant(access, refresh, as_int(d.get("expires_in"), 7200) or 7200)


class Client:
    """One 115 account. Thread-safe: the transport paces and serialises what must be serialised."""

    def __init__(self, transport: Transport, tokens: TokenStore, endpoints: Endpoints = Endpoints()) -> None:
        self.transport = transport
        self.tokens = tokens
        self.endpoints = endpoints

    # --- account -------------------------------------------------------------------------------------------------
    def user_info(self) -> UserInfo:
        return UserInfo.from_api(self._call("GET", "/open/user/info"))

    def quota(self) -> Quota:
        return Quota.from_api(self._call("GET", "/open/offline/get_quota_info"))

    # --- tasks ---------------------------------------------------------------------------------------------------
    def task_page(self, page: int = 1) -> TaskPage:
        return TaskPage.from_api(self._call("GET", "/open/offline/get_task_list", params={"page": page}))

    def iter_tasks(self, *, max_pages: int | None = None) -> Iterator[Task]:
        """Every task, page by page, until ``page_count`` or an empty page; the transport paces the pages."""
        page = 1
        while True:
            result = self.task_page(page)
            yield from result.tasks
            if not result.tasks or page >= result.page_count or (max_pages is not None and page >= max_pages):
                return
            page += 1

    def tasks(self, *, max_pages: int | None = None) -> list[Task]:
        return list(self.iter_tasks(max_pages=max_pages))

    def add_task_urls(self, urls: Sequence[str], target: str = "0") -> list[AddResult]:
        """Per-URL outcomes; whole-call failures (quota, space, too many links, auth) raise."""
        if not urls:
            return []
        if len(urls) > MAX_URLS_PER_CALL:
            raise ValueError(f"add_task_urls takes at most {MAX_URLS_PER_CALL} URLs, got {len(urls)}")
        data = {"urls": "\n".join(urls), "wp_path_id": target}
        try:
            body = self._call("POST", "/open/offline/add_task_urls", data=data, idempotent=False, whole=True)
        except Api115Error as exc:
            items = _items_of_failed_add(exc, urls)
            if items is None:
                raise
            return items
        return _add_results(body.get("data"), urls)

    def del_task(self, info_hash: str, *, delete_files: bool = False) -> None:
        self._call("POST", "/open/offline/del_task",
                   data={"info_hash": info_hash, "del_source_file": 1 if delete_files else 0})

    def clear_task(self, flag: int) -> None:
        if flag not in range(6):
            raise ValueError(f"clear_task flag must be 0..5, got {flag}")
        self._call("POST", "/open/offline/clear_task", data={"flag": flag})

    # --- folders -------------------------------------------------------------------------------------------------
    def folder_info(self, path: str | None = None, file_id: str | None = None) -> FolderInfo | None:
        """The folder at ``path`` ("/a/b") or with ``file_id``; None when 115 says it does not exist, in either of
        the two observed forms (``data: []`` or 430004, api-notes §2.9)."""
        if (path is None) == (file_id is None):
            raise ValueError("folder_info takes exactly one of path and file_id")
        params = {"path": path} if path is not None else {"file_id": file_id}
        try:
            data = self._call("GET", "/open/folder/get_info", params=params)
        except Api115Error as exc:
            if exc.code == NOT_FOUND:
                return None
            raise
        return FolderInfo.from_api(data)

    def add_folder(self, parent_id: str, name: str) -> str:
        """Create folder ``name`` in ``parent_id``; returns its id. An existing name raises Api115Error 20004.

        Marked idempotent although it creates: a resend after a lost answer can only meet 20004, never make a
        second folder, and callers treat 20004 as "look it up".
        """
        if not name or len(name) > MAX_FOLDER_NAME or "/" in name:
            raise ValueError(f"folder name must be 1 to {MAX_FOLDER_NAME} characters without '/', got {name!r}")
        data = self._call("POST", "/open/folder/add", data={"pid": parent_id, "file_name": name})
        file_id = as_id(as_object(data).get("file_id"))
        if not file_id:
            raise Api115Error(None, "115 reported success but sent no file_id for the new folder", "/open/folder/add")
        return file_id

    # --- plumbing ------------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              data: Mapping[str, Any] | None = None, idempotent: bool = True, whole: bool = False) -> Any:
        token = self.tokens.access_token()
        for retried in (False, True):
            try:
                body = self.transport.request(method, self.endpoints.base_url + path, path,
                                              headers={"Authorization": f"Bearer {token}"}, params=params,
                                              data=data, idempotent=idempotent)
            except Api115Error as exc:
                if exc.kind is not Kind.REFRESH or retried:
                    raise
                if exc.code == SUPERSEDED:
                    token = self.tokens.after_superseded(token)
                else:
                    token = self.tokens.after_invalid(token)
                continue
            return body if whole else body.get("data")
        raise AssertionError("unreachable")


def _add_results(data: object, urls: Sequence[str]) -> list[AddResult]:
    items = [AddResult.from_api(item) for item in as_list(data) if isinstance(item, Mapping)]
    if len(items) == len(urls):
        # 115 echoes each URL, possibly trimmed or re-encoded; pair by position, which matches the input order.
        return [item if item.url else AddResult(url, item.ok, item.code, item.message, item.info_hash)
                for item, url in zip(items, urls)]
    if not items:
        # state true with no per-URL list: nothing says an item failed.
        return [AddResult(url, True, 0, "", None) for url in urls]
    by_url = {item.url: item for item in items}
    return [by_url.get(url, AddResult(url, False, 0, "115 returned no result for this link", None)) for url in urls]


def _items_of_failed_add(exc: Api115Error, urls: Sequence[str]) -> list[AddResult] | None:
    """An all-failed call answers at top level; it still describes the URLs when it carries per-URL data or codes."""
    data = getattr(exc, "data", None)
    items = [AddResult.from_api(i) for i in as_list(data) if isinstance(i, Mapping)]
    if items:
        return _add_results(data, urls)
    if exc.code in PER_URL_CODES:
        return [AddResult(url, False, exc.code, exc.server_message, None) for url in urls]
    return None


@dataclass(frozen=True)
class Connection:
    client: Client
    passport: Passport
    transport: Transport


def connect(*, token_file: Path, endpoints: Endpoints = Endpoints(), pacing: Pacing = Pacing(),
            daily_call_budget: int | None = None, refresh_ahead: float = 600.0,
            clock: Callable[[], float] = time.time, user_agent: str = "daemon115",
            on_tokens: Callable[[Tokens], None] | None = None,
            observer: Callable[[str, int | None, bool], None] | None = None) -> Connection:
    """Wire transport, passport, token store and client for one account."""
    transport = Transport(pacing, budget=CallBudget(daily_call_budget), breaker=CircuitBreaker(),
                          user_agent=user_agent, observer=observer)
    passport = Passport(transport, endpoints)
    tokens = TokenStore(token_file, passport.refresh, refresh_ahead=refresh_ahead, clock=clock,
                        on_tokens=on_tokens)
    return Connection(Client(transport, tokens, endpoints), passport, transport)
