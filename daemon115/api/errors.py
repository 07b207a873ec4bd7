"""115's error codes and the exceptions every module raises for a failed 115 call.

115 answers errors as HTTP 200 bodies whose ``code`` alone is reliable (the message may be Chinese, English or empty,
api-notes.md §1.1), so every decision (stop, refresh, back off, give up) is keyed on the code through this one table.
The Chinese texts are verbatim from the official 授权错误码 table (115-open-api.zh.md) and api-notes.md.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar


class Kind(enum.Enum):
    REAUTHORIZE = "reauthorize"    # refresh token dead: stop at once, user must re-authorize (CLI exit 3)
    REFRESH = "refresh"            # access token problem: refresh (or reload the token file) and retry once
    RETRY_LATER = "retry-later"    # transient / rate limit: back off and retry later
    PERMANENT = "permanent"        # the request itself is wrong; retrying will not help


@dataclass(frozen=True)
class ErrorInfo:
    code: int
    zh: str
    en: str
    action: str
    kind: Kind


RATE_LIMIT_CODES: frozenset[int] = frozenset({406, 770004, 590075})

REAUTHORIZE_HOWTO = ("To re-authorize, run `daemon115 auth login --client-id APP_ID` (QR-code login), or get a fresh "
                     "token pair elsewhere and run `daemon115 auth import --access-token ... --refresh-token ...`.")

_R, _F, _L, _P = Kind.REAUTHORIZE, Kind.REFRESH, Kind.RETRY_LATER, Kind.PERMANENT

_QR_BUG = ("This looks like a bug in daemon115's QR-code login; please report it. Meanwhile start again with "
           "`daemon115 auth login`, or use `daemon115 auth import` with tokens from another tool.")
_LOGIN_AGAIN = "Start the login again with `daemon115 auth login`."
_CHECK_APP_ID = "Check the APP ID given to `daemon115 auth login --client-id`; it comes from 115's open platform."
_OTHER_APP = ("Tokens of this app will not work until that is fixed; log in with another APP ID, or ask the app's "
              "developer.")
_OAUTH_MODE = ("This belongs to 115's authorization-code (redirect) login, which daemon115 does not use; check the "
               "app's OAuth settings, or log in with `daemon115 auth login` or `daemon115 auth import`.")
_STOP = "Stop retrying at once: no refresh can fix this. Re-authorize."
_REFRESH_ONCE = ("daemon115 refreshes the access token and retries once by itself; if it keeps happening, check the "
                 "token file or re-authorize.")
_QUEUED = "The links stay queued; nothing is lost."

_ROWS: tuple[tuple[int, str, str, str, Kind], ...] = (
    # --- official 授权错误码 table ---------------------------------------------------------------------------------
    (40100000, "参数缺失", "a required request parameter is missing.",
     "Likely a daemon115 bug or a changed 115 API; report it with the endpoint shown. Retrying unchanged will not "
     "help.", _P),
    # Not explained by 115. It is in the token-error family and the Go SDK refreshes on every 401xxxxx code, so it
    # gets one refresh-and-retry; if that fails the caller backs off instead of failing the links for good.
    (40101017, "用户验证失败", "115 could not verify the user behind the access token.", _REFRESH_ONCE, _F),
    (40110000, "请求异常需要重试", "115 hit a problem handling the request and asks for a retry.",
     f"Retry later (official advice: retry); daemon115 backs off and tries again. {_QUEUED}", _L),
    (40140100, "client_id 错误", "the client_id (APP ID) sent to 115 is wrong.", _CHECK_APP_ID, _P),
    (40140101, "code_challenge 必填", "the QR-code login request lacked its PKCE code_challenge.", _QR_BUG, _P),
    (40140102, "code_challenge_method 必须是 sha256、sha1、md5 之一",
     "the PKCE code_challenge_method must be sha256, sha1 or md5.", _QR_BUG, _P),
    (40140103, "sign 必填", "the QR-code status request lacked its sign value.", _LOGIN_AGAIN, _P),
    (40140104, "sign 签名失败", "the sign of the QR-code login did not verify (the QR code may be stale).",
     _LOGIN_AGAIN, _P),
    (40140105, "生成二维码失败", "115 failed to create the login QR code.",
     f"{_LOGIN_AGAIN} If it keeps failing, use `daemon115 auth import` with tokens from another tool.", _P),
    (40140106, "APP ID 无效", "the APP ID is not valid.", _CHECK_APP_ID, _P),
    (40140107, "应用不存在", "no 115 app exists with this APP ID.", _CHECK_APP_ID, _P),
    (40140108, "应用未审核通过", "115 has not approved this app (yet).",
     "Wait until 115 approves the app, or log in with another, approved APP ID.", _P),
    (40140109, "应用已被停用", "the 115 app has been disabled.", _OTHER_APP, _P),
    (40140110, "应用已过期", "the 115 app has expired.", _OTHER_APP, _P),
    (40140111, "APP Secret 错误", "the APP secret is wrong.", "Check the secret configured for this APP ID.", _P),
    (40140112, "code_verifier 长度要求43~128位", "the PKCE code_verifier must be 43 to 128 characters long.",
     _QR_BUG, _P),
    (40140113, "code_verifier 验证失败", "the PKCE code_verifier did not match this login's code_challenge.",
     f"{_LOGIN_AGAIN} Each login needs its own fresh QR code.", _P),
    (40140114, "refresh_token 格式错误（防篡改）",
     "the refresh token is malformed (115's tamper check): the token file holds something that is not a valid "
     "refresh token, e.g. it was truncated or pasted incompletely.", _STOP, _R),
    (40140115, "refresh_token 签名校验失败（防篡改）",
     "the refresh token's signature did not verify (115's tamper check): it was altered or belongs to another app.",
     _STOP, _R),
    (40140116, "refresh_token 无效（已解除授权）",
     "the refresh token is no longer valid: the authorization was revoked, in 115's settings or because newer logins "
     "with the same app pushed this one out (115 keeps only a few per app and user).",
     f"{_STOP} (Official advice: re-authorize.)", _R),
    (40140117, "access_token 刷新太频繁",
     "the tokens were refreshed too often: 115 refuses a second refresh of the same authorization within about "
     "60 seconds.",
     "Wait at least 60 s before refreshing again and keep using the current access token meanwhile; never retry in "
     "a loop, or 115 may block the app.", _L),
    # Re-authorizing with the same app does not cure an expired developer certificate, but no retry or refresh does
    # either. REAUTHORIZE stops every call at once and keeps the queue, where PERMANENT would fail healthy links.
    (40140118, "开发者认证已过期",
     "the developer certification of this 115 app has expired, so 115 refuses the app's tokens.",
     "Stop: nothing works until the app's developer renews the certification. Re-authorize with another app's "
     "APP ID or tokens, or after the renewal.", _R),
    (40140119, "refresh_token 已过期",
     "the refresh token has expired: it lasts one year from the original login, and refreshing does not extend it.",
     f"{_STOP} (Official advice: re-authorize.)", _R),
    (40140120, "refresh_token 检验失败（防篡改）",
     "the refresh token was already used: 115 rotates it on every refresh and the old copy dies at once. Another "
     "program sharing these tokens, or a restored backup of the token file, may be using an old copy.",
     f"{_STOP} Let only one program refresh a token pair. (Official advice: every /open/refreshToken call also "
     "issues a new refresh_token; check that the new value was stored.)", _R),
    (40140121, "access_token 刷新失败", "115 failed to refresh the access token this time.",
     f"Retry later (official advice: retry). {_QUEUED}", _L),
    (40140122, "超出授权应用个数上限", "the 115 account has reached its limit of authorized apps.",
     "Revoke an app you no longer use in the 115 account's authorization settings, then log in again.", _P),
    (40140123, "access_token 格式错误（防篡改）",
     "the access token is malformed (115's tamper check), e.g. empty or truncated in the token file.",
     _REFRESH_ONCE, _F),
    (40140124, "access_token 签名校验失败（防篡改）",
     "the access token's signature did not verify (115's tamper check): it was altered or belongs to another app.",
     _REFRESH_ONCE, _F),
    (40140125, "access_token 无效（已过期或者已解除授权）", "the access token has expired or was revoked.",
     "Refresh the token and retry once (official advice: call /open/refreshToken). daemon115 does this by itself, "
     "first reloading the token file in case another process already refreshed.", _F),
    (40140126, "access_token 校验失败（防篡改）",
     "the access token does not match the current authorization: a newer token pair exists (another refresh or "
     "login replaced this one).",
     "Reload the newest pair from the token file and retry once; do not refresh blindly, that would kill the newer "
     "pair. If the file holds no newer pair, re-authorize.", _F),
    (40140127, "response_type 错误", "the authorization-code login sent a wrong response_type.", _OAUTH_MODE, _P),
    (40140128, "redirect_uri 缺少协议", "the redirect_uri lacks its scheme (http:// or https://).", _OAUTH_MODE, _P),
    (40140129, "redirect_uri 缺少域名", "the redirect_uri lacks its domain.", _OAUTH_MODE, _P),
    (40140130, "没有配置重定向域名", "the app has no redirect domain configured.",
     "Configure the redirect domain in the app's management page on 115's open platform (official advice).", _P),
    (40140131, "redirect_uri 非法域名", "the redirect_uri's domain is not allowed for this app.",
     "Use a redirect_uri on the domain configured for the app (official advice: it must match the domain in the "
     "app's management page).", _P),
    (40140132, "grant_type 错误", "the token request sent a wrong grant_type.", _OAUTH_MODE, _P),
    (40140133, "client_secret 验证失败", "the client_secret (APP secret) did not verify.",
     "Check the secret configured for this APP ID.", _P),
    (40140134, "授权码 code 验证失败", "the authorization code did not verify: it is wrong, expired or already used.",
     "Start the login again to get a new code.", _P),
    (40140135, "client_id 验证失败", "the client_id (APP ID) did not verify.", _CHECK_APP_ID, _P),
    (40140136, "redirect_uri 验证失败（防MITM）",
     "the redirect_uri differs from the one the login started with (115's man-in-the-middle check).",
     "Start the login again and keep the same redirect_uri throughout.", _P),
    # --- api-notes.md §2.1 -----------------------------------------------------------------------------------------
    (40140137, "refresh_token 已失效，请停止重试并重新授权",
     "the refresh token is dead and 115 tells clients to stop: the same dead token was tried again after "
     "40140116, 40140119 or 40140120.",
     "Stop all retries at once and re-authorize (this is 115's own advice); further attempts may get the app "
     "blocked.", _R),
    # --- cloud download, api-notes.md §2.6-2.8 ---------------------------------------------------------------------
    (91006, "存储空间不足",
     "the 115 drive lacks free space for new cloud downloads (115 charges no quota in that case).",
     f"Free space on the 115 drive; daemon115 pauses submitting until then. {_QUEUED}", _L),
    (980004, "操作失败", "115 could not carry out the operation this time.", f"Retry later. {_QUEUED}", _L),
    (990002, "参数错误", "115 rejected a request parameter (e.g. a bad info_hash, folder id or clear flag).",
     "Check the folder id or link involved; resending the same request will not help.", _P),
    (1000011, "链接数量超过115个", "more than 115 links were sent in one call, so 115 refused the whole call.",
     "Send at most 115 links per call (submit.batch_size); daemon115 splits batches itself, so report this as a "
     "bug.", _P),
    (1000012, "云下载配额已用完", "the account's cloud-download quota is used up.",
     f"Wait for the quota to renew (`daemon115 quota` shows it); daemon115 pauses submitting until then. {_QUEUED}",
     _L),
    # The download service's own quota codes; the Open API remaps them to 1000012 ("业务规则") and documents no text
    # of their own, so they carry 1000012's.
    (10007, "云下载配额已用完",
     "the account's cloud-download quota is used up (download-service code, normally reported as 1000012).",
     f"Wait for the quota to renew (`daemon115 quota` shows it); daemon115 pauses submitting until then. {_QUEUED}",
     _L),
    (10010, "云下载配额已用完",
     "the account's cloud-download quota is used up (download-service code, normally reported as 1000012).",
     f"Wait for the quota to renew (`daemon115 quota` shows it); daemon115 pauses submitting until then. {_QUEUED}",
     _L),
    (10008, "任务已存在",
     "a cloud-download task for this link already exists; the earlier task is still there, so this counts as "
     "success (already submitted), not as a failure.",
     "Nothing to do: daemon115 records the link as submitted and looks up the existing task.", _P),
    (10004, "错误的链接", "115 rejected the link as invalid: malformed, or not a kind of link it downloads.",
     "Check the link; 115 accepts http(s), ftp, magnet and ed2k links. Resubmitting it unchanged will not help.", _P),
    # --- folders, api-notes.md §2.9 --------------------------------------------------------------------------------
    (20004, "该目录名称已存在。", "a folder with that name already exists in the parent folder.",
     "Nothing to do: daemon115 looks up the existing folder and uses it.", _P),
    (430004, "文件（夹）不存在或已删除。",
     "the file or folder does not exist or was deleted (items in the recycle bin count as deleted).",
     "Check the target folder id or path in the config, or restore the folder.", _P),
    # --- rate limits, api-notes.md §4 ------------------------------------------------------------------------------
    (406, "已达到当前访问上限…",
     "the account has hit 115's current access cap (a quota-style limit on API calls; higher VIP levels get more).",
     f"Back off for minutes, not seconds; daemon115 pauses every call of the account. {_QUEUED} If it keeps "
     "happening, make daemon115 call less often (longer feed intervals, fewer cleanup runs).", _L),
    (770004, "访问频率过高", "calls reached 115 too fast for its rate limiter.",
     f"Back off for at least a minute; daemon115 pauses every call of the account. {_QUEUED}", _L),
    (590075, "操作太频繁，请稍候再试", "operations came too often and 115 throttled them.",
     f"Wait a while before trying again; daemon115 backs off by itself. {_QUEUED}", _L),
    (99, "请重新登录", "legacy code: 115 asks to log in again, i.e. it does not accept the access token.",
     _REFRESH_ONCE, _F),
)

TABLE: Mapping[int, ErrorInfo] = MappingProxyType({row[0]: ErrorInfo(*row) for row in _ROWS})

_UNKNOWN_ACTION: Mapping[Kind, str] = MappingProxyType({
    Kind.REAUTHORIZE: _STOP,
    Kind.REFRESH: "This is in 115's token-error range: " + _REFRESH_ONCE,
    Kind.RETRY_LATER: f"Try again later; daemon115 backs off by itself. {_QUEUED}",
    Kind.PERMANENT: "115 refused the request; resending it unchanged is unlikely to help. Check the link, folder "
                    "or setting involved.",
})


def lookup(code: int) -> ErrorInfo | None:
    return TABLE.get(code)


def parse_code(raw: object) -> int | None:
    """115 sends codes as ints, numeric strings or blanks, and bools must not pass as 0/1."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return int(raw) if raw.is_integer() else None
    if isinstance(raw, str):
        text = raw.strip()
        digits = text[1:] if text[:1] in "+-" else text
        # a longer digit string is no code, and past 4300 digits int() would raise
        return int(text) if digits.isdecimal() and digits.isascii() and len(digits) <= 20 else None
    return None


def kind_of(code: int | None) -> Kind:
    """The table's kind; unknown codes fall back so that a new code never stops the daemon or loses a link."""
    info = lookup(code) if code is not None else None
    if info is not None:
        return info.kind
    if not code:
        return Kind.RETRY_LATER  # state false without a code: 115's risk control (api-notes.md §1.1)
    if 40100000 <= code <= 40199999:
        return Kind.REFRESH
    return Kind.PERMANENT


class Api115Error(Exception):
    """A failed 115 call. ``str()`` is the user-facing message, built only from the code, the table and the server's
    message, so no token can leak into it."""

    pinned_kind: ClassVar[Kind | None] = None  # subclasses that fix the kind whatever the code says
    headline: ClassVar[str] = "115 call failed"  # used when there is no code to show

    def __init__(self, code: int | None, server_message: str = "", endpoint: str = "") -> None:
        self.code = code
        self.server_message = server_message
        self.endpoint = endpoint
        self.info = lookup(code) if code is not None else None
        self.kind = self.pinned_kind or kind_of(code)
        self.data: object = None  # the body's ``data``, when a caller needs it (an all-failed add_task_urls)
        super().__init__(self._message())

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.server_message, self.endpoint), self.__dict__)

    def _message(self) -> str:
        place = _place(self.endpoint)
        said = " ".join(self.server_message.split())
        if len(said) > 300:
            said = said[:300] + "…"
        if self.code is None:
            text = f"{self.headline}{place}: {said.rstrip('.') or 'no details'}."
            if self.kind is not Kind.REAUTHORIZE:  # the how-to below is the action
                text = f"{text} Action: {_UNKNOWN_ACTION[self.kind]}"
        elif self.info is None:
            text = (f"115 error {self.code}{place}: {said or 'no message'} (not in daemon115's table). "
                    f"Action: {_UNKNOWN_ACTION[self.kind]}")
        else:
            extra = f" (message: {said})" if said and said != self.info.zh else ""
            text = f"115 error {self.code}{place}: {self.info.zh}{extra} — {self.info.en} Action: {self.info.action}"
        if self.kind is Kind.REAUTHORIZE:
            text = f"{text} {REAUTHORIZE_HOWTO}"
        return text


class AuthorizationNeeded(Api115Error):
    """The tokens cannot be used any more (or there are none): every call stops until the user re-authorizes."""

    pinned_kind = Kind.REAUTHORIZE
    headline = "authorization needed"


class RateLimited(Api115Error):
    """115 throttles the account (406, 770004, 590075, or a code-less refusal): pause every call, not just this one."""

    pinned_kind = Kind.RETRY_LATER
    headline = "rate limited"


class TransientError(Api115Error):
    """Network trouble, 5xx, unreadable bodies or a retryable code: this call may work later."""

    pinned_kind = Kind.RETRY_LATER
    headline = "115 temporarily unavailable"


def error_from_response(code: int | None, server_message: str, endpoint: str) -> Api115Error:
    kind = kind_of(code)
    if kind is Kind.REAUTHORIZE:
        return AuthorizationNeeded(code, server_message, endpoint)
    if not code or code in RATE_LIMIT_CODES:
        return RateLimited(code, server_message, endpoint)
    if kind is Kind.RETRY_LATER:
        return TransientError(code, server_message, endpoint)
    return Api115Error(code, server_message, endpoint)


def exit_code_for(exc: BaseException) -> int:
    """CLI exit status: 3 when the user must re-authorize, 1 for anything that may pass (interface.md)."""
    if isinstance(exc, Api115Error) and exc.kind is Kind.REAUTHORIZE:
        return 3
    return 1


def _place(endpoint: str) -> str:
    if not endpoint:
        return ""
    return f" on {endpoint}" if endpoint.startswith("/") else f" ({endpoint})"
