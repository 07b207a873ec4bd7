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

from daemon115.api.auth import Tokens, TokenStore
from daemon115.api.errors import Api115Error, Kind
from daemon115.api.models import AddResult, Grant, Quota, Task, TaskPage, UserInfo, as_int, as_list, as_object, as_str
from daemon115.api.transport import CallBudget, CircuitBreaker, Pacing, Transport

MAX_URLS_PER_CALL = 115
SUPERSEDED = 40140126
#: whole-call codes that, with no per-URL data, describe the single URL of the call (api-notes.md §2.6)
PER_URL_CODES = frozenset({10008, 10004})


@dataclass(frozen=True)
class Endpoints:
    base_url: str = "https://proapi.115.com"
    passport_url: str = "https://passportapi.115.com"
    qrcode_url: str = "https://qrcodeapi.115.com"


class Passport:
    """passportapi calls: they carry no Authorization header and answer ``state`` as 1/0."""

    def __init__(self, transport: Transport, endpoints: Endpoints) -> None:
        self._transport = transport
        self._url = endpoints.passport_url

    def refresh(self, refresh_token: str) -> Grant:
        body = self._transport.request("POST", self._url + "/open/refreshToken", "/open/refreshToken",
                                       data={"refresh_token": refresh_token}, idempotent=True)
        return grant_from(body.get("data"), "/open/refreshToken")


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
            on_refresh: Callable[[Tokens], None] | None = None) -> Connection:
    """Wire transport, passport, token store and client for one account."""
    transport = Transport(pacing, budget=CallBudget(daily_call_budget), breaker=CircuitBreaker(),
                          user_agent=user_agent)
    passport = Passport(transport, endpoints)
    tokens = TokenStore(token_file, passport.refresh, refresh_ahead=refresh_ahead, clock=clock,
                        on_refresh=on_refresh)
    return Connection(Client(transport, tokens, endpoints), passport, transport)
