"""A stand-in for the 115 Open API, served over real HTTP on loopback.

It reproduces what api-notes.md records about the live service (envelopes, token rotation and its penalties,
per-URL add results, paging limits, rate-limit answers) so that a client which is naive about 115 fails against it in
the same way. It is both the target of every daemon test and a product feature (``daemon115 sandbox``). Proapi,
passport and qrcode paths share one port. Stdlib only.

Tokens issued here look like ``at_`` / ``rt_`` + 48 hex digits; any other shape is a format error (40140123 as a
bearer, 40140114 as a refresh token), a well-formed one never issued is 40140125 as a bearer.

Choices where api-notes marks the real behaviour UNKNOWN (change them here, nowhere else):

- ``del_task`` of an unknown hash answers ``state: true``.
- ``deviceCodeToToken`` before the QR is confirmed, or for an unknown uid, answers 40140134.
- An expired or unknown QR answers ``/get/status/`` with ``state: 0, code: 0``.
- ``folder/get_info`` not found: by ``path`` it answers ``state: true, data: []``, by ``file_id`` 430004, so a client
  meets both observed forms.
- ``add_task_urls`` into a folder that was deleted answers the whole call with 430004; ids that never existed are
  accepted (115's behaviour for them is unknown, and tests use arbitrary ids).
- With ``folder_lag`` set, a path lookup of a folder younger than that many seconds (sandbox clock) answers not-found,
  like the real path index that briefly misses fresh folders (api-notes §2.9); lookups by id and ``folder/add`` see it.
- A well-formed but never-issued refresh token gets 40140120 (no grant, so no step towards 40140137).
- One user holds at most ``max_grants`` live grants (3, as P115 says); a new one evicts the oldest (-> 40140116).
- A ``sandbox-fail`` task fails half-way through its duration, keeping the progress it had reached.
- Failure faults (5xx, html405, malformed, empty_code, rate limits) answer without doing anything; only
  ``drop_after`` and ``delay`` let the request take effect.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import selectors
import shutil
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

from daemon115.fsutil import atomic_write

ACCESS_TTL = 7200
REFRESH_TTL = 365 * 86400
REFRESH_WINDOW = 60.0
TERMINAL_LIMIT = 3  # terminal refresh failures on one grant before every attempt gets 40140137
MAX_URLS = 115
SPACE_MIN = 2**30
QUEUE_SHARE = 0.1  # share of task_duration a task spends queued (status 0)
FAIL_SHARE = 0.5  # a sandbox-fail task fails at this share of task_duration
QR_TTL = 300.0
MAX_BODY = 8 * 2**20
CONTROL_PREFIX = "/__sandbox/"
REFRESH_PATH = "/open/refreshToken"
STATUS_PATH = "/get/status/"
PASSPORT_PATHS = frozenset({REFRESH_PATH, "/open/authDeviceCode", "/open/deviceCodeToToken", STATUS_PATH})

ACCESS_RE = re.compile(r"at_[0-9a-f]{48}")
REFRESH_RE = re.compile(r"rt_[0-9a-f]{48}")
HEX40_RE = re.compile(r"[0-9a-fA-F]{40}")
BASE32_RE = re.compile(r"[A-Za-z2-7]{32}")
ED2K_RE = re.compile(r"ed2k://\|file\|([^|]+)\|(\d+)\|([0-9A-Fa-f]{32})\|", re.IGNORECASE)
VIDEO_SUFFIXES = (".mkv", ".mp4", ".avi", ".ts", ".mov", ".wmv", ".rmvb")

FAULT_KINDS = frozenset({
    "http500", "http502", "http503", "drop_before", "drop_after", "delay", "malformed", "html405", "empty_code",
    "rate_limit_406", "rate_limit_770004", "refresh_too_frequent", "expire_access",
})

# Texts for codes outside the official authorization table (DOC 业务规则, api-notes §2.6, §4).
_BUSINESS_MESSAGES = {
    406: "已达到当前访问上限，请稍后再试",
    770004: "访问频率过高",
    10004: "错误的链接",
    10008: "任务已存在",
    20004: "该目录名称已存在。",
    91006: "存储空间不足",
    430004: "文件（夹）不存在或已删除。",
    990002: "参数错误",
    1000011: "链接数量超过115个",
    1000012: "云下载配额已用完",
}
# The official authorization texts (115-open-api.zh.md), used when daemon115.api.errors cannot say.
_AUTH_MESSAGES = {
    40100000: "参数缺失",
    40140100: "client_id 错误",
    40140101: "code_challenge 必填",
    40140102: "code_challenge_method 必须是 sha256、sha1、md5 之一",
    40140112: "code_verifier 长度要求43~128位",
    40140113: "code_verifier 验证失败",
    40140114: "refresh_token 格式错误（防篡改）",
    40140116: "refresh_token 无效（已解除授权）",
    40140117: "access_token 刷新太频繁",
    40140119: "refresh_token 已过期",
    40140120: "refresh_token 检验失败（防篡改）",
    40140123: "access_token 格式错误（防篡改）",
    40140125: "access_token 无效（已过期或者已解除授权）",
    40140126: "access_token 校验失败（防篡改）",
    40140134: "授权码 code 验证失败",
    40140137: "refresh_token 已失效，请停止重试并重新授权",
}


def message_for(code: int) -> str:
    """The Chinese text 115 sends with ``code``; official texts come from the errors module when it has them."""
    if code in _BUSINESS_MESSAGES:
        return _BUSINESS_MESSAGES[code]
    try:
        from daemon115.api.errors import lookup

        info = lookup(code)
        text = getattr(info, "zh", "") if info is not None else ""
    except Exception:  # the errors module is optional here: never let it break the simulator
        text = ""
    return text or _AUTH_MESSAGES.get(code, "操作失败")


# --- public values -------------------------------------------------------------------------------------------------

class Clock:
    """Real time plus an offset tests push forward, so 7200 s expiries and 60 s windows pass without waiting."""

    def __init__(self, offset: float = 0.0) -> None:
        self._offset = float(offset)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        seconds = float(seconds)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds: the clock only moves forward by a finite amount, got {seconds!r}")
        with self._lock:
            self._offset += seconds


@dataclass(frozen=True)
class TokenPair:
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: int

    def to_json(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "refresh_token": self.refresh_token, "expires_in": self.expires_in}


@dataclass(frozen=True)
class Fault:
    """A misbehaviour to inject; see the module docstring for which kinds let the request take effect."""

    kind: str
    endpoint: str = "*"
    times: int | None = 1
    rate: float = 1.0
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind: unknown fault kind {self.kind!r} (one of {', '.join(sorted(FAULT_KINDS))})")
        if not isinstance(self.endpoint, str) or not (self.endpoint == "*" or self.endpoint.startswith("/")):
            raise ValueError(f"endpoint: must be '*' or a path starting with '/', got {self.endpoint!r}")
        if self.endpoint.startswith(CONTROL_PREFIX):
            raise ValueError("endpoint: faults never apply to /__sandbox/ paths")
        if self.kind == "refresh_too_frequent" and self.endpoint not in ("*", REFRESH_PATH):
            raise ValueError(f"endpoint: refresh_too_frequent only hits {REFRESH_PATH}, got {self.endpoint!r}")
        if self.times is not None and (isinstance(self.times, bool) or not isinstance(self.times, int)
                                       or self.times < 1):
            raise ValueError(f"times: must be a positive integer or None, got {self.times!r}")
        if not isinstance(self.rate, (int, float)) or not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate: must be a probability in [0, 1], got {self.rate!r}")
        if not isinstance(self.delay, (int, float)) or not 0.0 <= self.delay < 3600:
            raise ValueError(f"delay: must be seconds in [0, 3600), got {self.delay!r}")

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Fault:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"fault: unknown field(s) {', '.join(unknown)}")
        if "kind" not in doc:
            raise ValueError("fault: kind is required")
        return cls(**dict(doc))

    def hits(self, path: str) -> bool:
        if self.kind == "refresh_too_frequent" and path != REFRESH_PATH:
            return False
        return self.endpoint in ("*", path)


class _Refusal(Exception):
    """115's ``state: false`` answer; raised by an endpoint and turned into the envelope of its host family."""

    def __init__(self, code: int, *, data: Any = None, message: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.data = [] if data is None else data
        self.message = message_for(code) if message is None else message


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"


def _json_reply(doc: Any, status: int = 200) -> _Reply:
    return _Reply(status, json.dumps(doc, ensure_ascii=False).encode("utf-8"))


def _nginx_page(status: int, reason: str) -> _Reply:
    title = f"{status} {reason}"
    page = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
            "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
    return _Reply(status, page.encode("ascii"), "text/html")


def _envelope(passport: bool, data: Any) -> dict[str, Any]:
    return {"state": 1 if passport else True, "code": 0, "message": "", "data": data}


def _error_envelope(passport: bool, code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"state": 0 if passport else False, "code": code, "message": message, "errno": code, "error": message,
            "data": [] if data is None else data}


# --- tokens --------------------------------------------------------------------------------------------------------

@dataclass
class _Grant:
    created_at: float
    access_token: str = ""
    refresh_token: str = ""
    last_refresh_at: float | None = None
    revoked: bool = False
    terminal_failures: int = 0


class _Tokens:
    """Grants and the rules passportapi applies to them: rotation, the 60 s window, lifetime, escalation to 137."""

    def __init__(self, clock: Clock, max_grants: int | None, refresh_window: float) -> None:
        self._clock = clock
        self._max_grants = max_grants
        self._window = refresh_window
        self._grants: list[_Grant] = []
        self._owner: dict[str, _Grant] = {}  # every token ever issued -> its grant
        self._access_expiry: dict[str, float] = {}
        self.issued: list[str] = []

    def grant(self) -> TokenPair:
        now = self._clock.now()
        grant = _Grant(created_at=now)
        self._grants.append(grant)
        pair = self._issue(grant, now)
        self._evict_beyond_limit()
        return pair

    def _issue(self, grant: _Grant, now: float) -> TokenPair:
        access, refresh = "at_" + secrets.token_hex(24), "rt_" + secrets.token_hex(24)
        grant.access_token, grant.refresh_token = access, refresh
        self._owner[access] = self._owner[refresh] = grant
        self._access_expiry[access] = now + ACCESS_TTL
        self.issued += [access, refresh]
        return TokenPair(access, refresh, ACCESS_TTL)

    def _evict_beyond_limit(self) -> None:
        if self._max_grants is None:
            return
        live = [g for g in self._grants if not g.revoked]
        for grant in live[: max(0, len(live) - self._max_grants)]:
            grant.revoked = True

    def authorize(self, header: str | None) -> None:
        token = _bearer(header)
        if token is None or not ACCESS_RE.fullmatch(token):
            raise _Refusal(40140123)
        grant = self._owner.get(token)
        if grant is None or grant.revoked:
            raise _Refusal(40140125)
        if grant.access_token != token:
            raise _Refusal(40140126)  # superseded: a newer pair of this grant exists, reload it
        if self._clock.now() >= self._access_expiry[token]:
            raise _Refusal(40140125)

    def refresh(self, token: str | None, *, too_frequent: bool = False) -> TokenPair:
        if not token:
            raise _Refusal(40100000)
        if not REFRESH_RE.fullmatch(token):
            raise _Refusal(40140114)
        grant = self._owner.get(token)
        if grant is None:
            raise _Refusal(40140120)
        if grant.terminal_failures >= TERMINAL_LIMIT:
            raise _Refusal(40140137)
        now = self._clock.now()
        terminal = _terminal_code(grant, token, now)
        if terminal:
            grant.terminal_failures += 1
            raise _Refusal(terminal)
        if too_frequent or (grant.last_refresh_at is not None and now - grant.last_refresh_at < self._window):
            raise _Refusal(40140117)
        grant.last_refresh_at = now
        return self._issue(grant, now)

    def revoke(self, refresh_token: str) -> None:
        grant = self._owner.get(refresh_token)
        if grant is None:
            raise ValueError("revoke: that refresh token was never issued by this sandbox")
        grant.revoked = True

    def expire_access(self) -> None:
        now = self._clock.now()
        for token, expiry in self._access_expiry.items():
            self._access_expiry[token] = min(expiry, now)


def _terminal_code(grant: _Grant, token: str, now: float) -> int | None:
    if grant.revoked:
        return 40140116
    if now >= grant.created_at + REFRESH_TTL:
        return 40140119  # the refresh token's year runs from the original grant and is never extended
    if token != grant.refresh_token:
        return 40140120
    return None


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


# --- links and tasks -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Link:
    url: str
    info_hash: str
    name: str
    size: int | None


def classify_link(url: str) -> _Link | None:
    """What 115 would make of one URL: a task-to-be, or None for 10004 错误的链接."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "magnet":
        return _magnet(url)
    if scheme == "ed2k":
        match = ED2K_RE.match(url)
        if match is None:
            return None
        return _Link(url, _sha1(url), unquote(match.group(1)), int(match.group(2)))
    if scheme in ("http", "https", "ftp"):
        parts = urlsplit(url)
        if not parts.hostname:
            return None
        name = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1]) or parts.hostname
        return _Link(url, _sha1(url), name, None)
    return None


def _magnet(url: str) -> _Link | None:
    query = url.split("?", 1)[1] if "?" in url else ""
    pairs = parse_qsl(query, keep_blank_values=True)
    btih = next((v[9:] for k, v in pairs if k.lower().split(".")[0] == "xt" and v.lower().startswith("urn:btih:")),
                None)
    info_hash = _btih_hex(btih) if btih is not None else None
    if info_hash is None:
        return None
    name = next((v for k, v in pairs if k.lower() == "dn"), "") or info_hash
    size = next((int(v) for k, v in pairs if k.lower() == "xl" and v.isdigit()), None)
    return _Link(url, info_hash, name, size)


def _btih_hex(value: str) -> str | None:
    if HEX40_RE.fullmatch(value):
        return value.lower()
    if BASE32_RE.fullmatch(value):
        return base64.b32decode(value.upper()).hex()
    return None


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass
class _Task:
    info_hash: str
    url: str
    name: str
    size: int
    add_time: float
    wp_path_id: str
    file_id: str
    duration: float
    fails: bool
    float_percent: bool
    play_long: int
    forced: dict[str, Any] = field(default_factory=dict)


def _schedule(task: _Task, now: float) -> tuple[int, float | None, float]:
    """(status, percent, last_update) reached at ``now``: queued, then a linear download, then done or failed."""
    elapsed = max(0.0, now - task.add_time)
    queued = task.duration * QUEUE_SHARE
    if elapsed < queued:
        return 0, None, task.add_time
    end = task.duration * (FAIL_SHARE if task.fails else 1.0)
    span = max(task.duration - queued, 1e-9)

    def percent(at: float) -> float:
        return max(0.0, min(100.0, 100.0 * (at - queued) / span))

    if elapsed >= end:
        return (-1, percent(end), task.add_time + end) if task.fails else (2, 100.0, task.add_time + end)
    return 1, percent(elapsed), now


def _render_percent(task: _Task, status: int, percent: float | None) -> int | float | None:
    """Half the tasks report floats, half ints, queued ones null: 115's types are loose (api-notes §2.4)."""
    if percent is None:
        return None
    if status == 2:
        return 100
    return round(percent, 2) if task.float_percent else int(percent)


def _task_item(task: _Task, now: float) -> dict[str, Any]:
    status, raw_percent, last_update = _schedule(task, now)
    status = task.forced.get("status", status)
    percent = task.forced.get("percentDone", _render_percent(task, status, raw_percent))
    started = status != 0
    done_video = status == 2 and task.name.lower().endswith(VIDEO_SUFFIXES)
    item = {
        "info_hash": task.info_hash, "add_time": int(task.add_time), "percentDone": percent,
        "size": task.size if started else 0, "name": task.name, "last_update": int(last_update),
        "file_id": task.file_id if started else "", "delete_file_id": task.file_id if started else "",
        "status": status, "url": task.url, "wp_path_id": task.wp_path_id,
        "def2": 4 if done_video else 0, "play_long": task.play_long if done_video else 0, "can_appeal": 0,
    }
    item.update({k: v for k, v in task.forced.items() if k not in ("status", "percentDone")})
    return item


TASK_FIELDS = frozenset({"add_time", "percentDone", "size", "name", "last_update", "file_id", "delete_file_id",
                         "status", "url", "wp_path_id", "def2", "play_long", "can_appeal"})
CLEAR_FLAGS = {0: ({2}, False), 1: ({-1, 0, 1, 2}, False), 2: ({-1}, False), 3: ({0, 1}, False),
               4: ({2}, True), 5: ({-1, 0, 1, 2}, True)}


class _Tasks:
    """The cloud-download task list, ordered newest first; progress is computed from the clock on every read."""

    def __init__(self, clock: Clock, ids: _Ids, duration: float) -> None:
        self._clock = clock
        self._ids = ids
        self._duration = float(duration)
        self._tasks: dict[str, _Task] = {}  # insertion order = submission order
        self._created = 0

    def __contains__(self, info_hash: str) -> bool:
        return info_hash in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, link: _Link, wp_path_id: str, *, add_time: float | None = None) -> _Task:
        self._created += 1
        task = _Task(
            info_hash=link.info_hash, url=link.url, name=link.name,
            size=link.size if link.size is not None else self._ids.size(),
            add_time=self._clock.now() if add_time is None else float(add_time), wp_path_id=wp_path_id,
            file_id=self._ids.new_id(), duration=self._duration, fails="sandbox-fail" in link.name,
            float_percent=self._created % 2 == 0, play_long=self._ids.play_long(),
        )
        self._tasks[task.info_hash] = task
        return task

    def ordered(self) -> list[_Task]:
        newest_last = sorted(enumerate(self._tasks.values()), key=lambda it: (it[1].add_time, it[0]))
        return [task for _, task in reversed(newest_last)]

    def items(self) -> list[dict[str, Any]]:
        now = self._clock.now()
        return [_task_item(t, now) for t in self.ordered()]

    def page(self, page: int, page_size: int) -> dict[str, Any]:
        items = self.items()
        start = (page - 1) * page_size
        return {"page": page, "page_count": math.ceil(len(items) / page_size), "count": len(items),
                "tasks": items[start:start + page_size]}

    def delete(self, info_hash: str) -> bool:
        return self._tasks.pop(info_hash, None) is not None

    def clear(self, statuses: set[int]) -> int:
        doomed = [item["info_hash"] for item in self.items() if item["status"] in statuses]
        for info_hash in doomed:
            del self._tasks[info_hash]
        return len(doomed)

    def force(self, info_hash: str, changes: Mapping[str, Any]) -> None:
        task = self._tasks.get(info_hash)
        if task is None:
            raise ValueError(f"set_task: no task with info_hash {info_hash!r}")
        unknown = sorted(set(changes) - TASK_FIELDS)
        if unknown:
            allowed = ", ".join(sorted(TASK_FIELDS))
            raise ValueError(f"set_task: unknown field(s) {', '.join(unknown)} (allowed: {allowed})")
        if "status" in changes and changes["status"] not in (-1, 0, 1, 2):
            raise ValueError(f"set_task: status must be -1, 0, 1 or 2, got {changes['status']!r}")
        changes = dict(changes)
        if "add_time" in changes:
            task.add_time = float(changes.pop("add_time"))
        if "status" in changes:
            self._freeze(task, changes)
        task.forced.update(changes)

    def _freeze(self, task: _Task, changes: dict[str, Any]) -> None:
        """A forced status stops the clock for that task, so its percent and last_update stay where they are."""
        current = _task_item(task, self._clock.now())
        status = changes["status"]
        default_percent = {0: None, 2: 100}.get(status, current["percentDone"] or 0)
        changes.setdefault("percentDone", default_percent)
        changes.setdefault("last_update", int(self._clock.now()))


class _Ids:
    """Seeded source of 115-looking ids and sizes, so a fixed seed gives the same task list every run."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self._used: set[str] = set()

    def new_id(self) -> str:
        while True:
            value = str(self._rng.randrange(10**18, 10**19))  # 19 digits: beyond float precision, like 115's ids
            if value not in self._used:
                self._used.add(value)
                return value

    def size(self) -> int:
        return self._rng.randrange(100 * 2**20, 8 * 2**30)

    def play_long(self) -> int:
        return self._rng.randrange(600, 7200)

    def token(self, nbytes: int) -> str:
        return "%0*x" % (nbytes * 2, self._rng.getrandbits(nbytes * 8))


# --- account, folders ----------------------------------------------------------------------------------------------

class _Account:
    """Quota and space: what add_task_urls charges and checks."""

    def __init__(self, clock: Clock, quota: int, space_total: int, space_used: int) -> None:
        self.used = 0
        self.surplus = int(quota)
        self.space_total = int(space_total)
        self.space_remain = int(space_total) - int(space_used)
        self.vip_expire = int(clock.now()) + 365 * 86400

    @property
    def count(self) -> int:
        return self.used + self.surplus

    def charge(self) -> bool:
        if self.surplus <= 0:
            return False
        self.surplus -= 1
        self.used += 1
        return True

    def user_info(self) -> dict[str, Any]:
        face = "https://avatars.115.com/sandbox/{}.jpg"
        return {
            "user_id": 123456789, "user_name": "sandbox",
            "user_face_s": face.format("s"), "user_face_m": face.format("m"), "user_face_l": face.format("l"),
            "rt_space_info": {
                "all_total": _space(self.space_total), "all_remain": _space(self.space_remain),
                "all_use": _space(self.space_total - self.space_remain),
            },
            "vip_info": {"level_name": "年费VIP", "expire": self.vip_expire,
                         "tp_rights": {"is_tp_rights": 0, "tp_rights_time": 0}},
        }

    def quota_info(self) -> dict[str, Any]:
        package = {"name": "年费VIP", "count": self.count, "used": self.used, "surplus": self.surplus,
                   "expire_info": [{"surplus": self.surplus, "expire_time": self.vip_expire}]}
        return {"count": self.count, "used": self.used, "surplus": self.surplus, "package": [package]}


def _space(size: int) -> dict[str, Any]:
    return {"size": size, "size_format": size_format(size)}


def size_format(size: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB", "PB")
    value, unit = float(size), 0
    while abs(value) >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{value:.2f}".rstrip("0").rstrip(".") + units[unit]


@dataclass
class _Folder:
    file_id: str
    name: str
    parent_id: str
    created_at: int
    pick_code: str
    born: float = 0.0  # created_at to the sub-second, for folder_lag


class _Folders:
    """The folder tree behind folder/get_info and folder/add; "0" is the root."""

    def __init__(self, clock: Clock, ids: _Ids, lag: float = 0.0) -> None:
        self._clock = clock
        self._ids = ids
        self._folders: dict[str, _Folder] = {"0": _Folder("0", "根目录", "", int(clock.now()), "")}
        self.deleted: set[str] = set()
        self.lag = _lag_seconds(lag)

    def get(self, file_id: str) -> _Folder | None:
        return self._folders.get(file_id)

    def child(self, parent_id: str, name: str) -> _Folder | None:
        return next((f for f in self._folders.values() if f.parent_id == parent_id and f.name == name), None)

    def by_path(self, path: str) -> _Folder | None:
        folder: _Folder | None = self._folders["0"]
        for name in _path_parts(path):
            folder = self.child(folder.file_id, name) if folder else None
        return folder

    def lookup(self, path: str) -> _Folder | None:
        """What get_info by path sees: the tree, minus folders too fresh for the path index."""
        folder = self.by_path(path)
        if folder is not None and self._clock.now() - folder.born < self.lag:
            return None
        return folder

    def delete(self, path_or_id: str) -> str:
        """Remove a folder and everything under it; their ids are remembered as deleted."""
        text = path_or_id.strip()
        folder = self.get(text) if text.isdigit() else self.by_path(text)
        if folder is None:
            raise ValueError(f"delete_folder: no folder {path_or_id!r}")
        if folder.file_id == "0":
            raise ValueError("delete_folder: the root folder cannot be deleted")
        doomed = {folder.file_id}
        while grown := {f.file_id for f in self._folders.values() if f.parent_id in doomed} - doomed:
            doomed |= grown
        for file_id in doomed:
            del self._folders[file_id]
        self.deleted |= doomed
        return folder.file_id

    def add(self, parent_id: str, name: str) -> _Folder:
        if parent_id not in self._folders:
            raise _Refusal(430004)
        if not name or len(name) > 255 or "/" in name:
            raise _Refusal(990002)
        if self.child(parent_id, name) is not None:
            raise _Refusal(20004)
        now = self._clock.now()
        folder = _Folder(self._ids.new_id(), name, parent_id, int(now), "f" + self._ids.token(8), now)
        self._folders[folder.file_id] = folder
        return folder

    def ensure(self, path: str) -> str:
        folder = self._folders["0"]
        for name in _path_parts(path):
            folder = self.child(folder.file_id, name) or self.add(folder.file_id, name)
        return folder.file_id

    def info(self, folder: _Folder) -> dict[str, Any]:
        children = [f for f in self._folders.values() if f.parent_id == folder.file_id]
        return {
            "count": len(children), "size": "0B", "size_byte": 0, "folder_count": len(children), "play_long": -1,
            "show_play_long": 0, "ptime": str(folder.created_at), "utime": str(folder.created_at),
            "file_name": folder.name, "pick_code": folder.pick_code, "sha1": "", "file_id": folder.file_id,
            "is_mark": "0", "open_time": 0, "file_category": "0", "paths": self._ancestors(folder),
        }

    def _ancestors(self, folder: _Folder) -> list[dict[str, str]]:
        chain: list[dict[str, str]] = []
        current = self._folders.get(folder.parent_id)
        while current is not None:
            chain.append({"file_id": current.file_id, "file_name": current.name})
            current = self._folders.get(current.parent_id)
        return list(reversed(chain))


def _lag_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 3600:
        raise ValueError(f"folder_lag: must be seconds in [0, 3600), got {value!r}")
    return float(value)


def _path_parts(path: str) -> list[str]:
    """115 paths start with '/' or '>' and use that one separator throughout (api-notes §2.9)."""
    if not path or path[0] not in "/>":
        raise _Refusal(990002)
    return [part for part in path.split(path[0]) if part]


# --- QR-code (PKCE device) login -------------------------------------------------------------------------------------

@dataclass
class _Login:
    uid: str
    time: int
    sign: str
    challenge: str
    method: str
    created_at: float
    status: int = 0  # 0 waiting, 1 scanned, 2 confirmed, -2 cancelled
    expired: bool = False
    used: bool = False


QR_MESSAGES = {1: "扫码成功", 2: "授权成功", -2: "已取消"}


class _Logins:
    """The device-code flow: authDeviceCode, the /get/status/ long poll and deviceCodeToToken."""

    def __init__(self, clock: Clock, auto: bool) -> None:
        self._clock = clock
        self.auto = auto
        self._secret = secrets.token_bytes(16)
        self._logins: dict[str, _Login] = {}

    def start(self, form: Mapping[str, str]) -> dict[str, Any]:
        client_id = form.get("client_id", "").strip()
        if not client_id:
            raise _Refusal(40100000)
        if not client_id.isdigit():
            raise _Refusal(40140100)
        challenge = form.get("code_challenge", "").strip()
        if not challenge:
            raise _Refusal(40140101)
        method = form.get("code_challenge_method", "").strip()
        if method not in ("sha256", "sha1", "md5"):
            raise _Refusal(40140102)
        uid, stamp = secrets.token_hex(16), int(self._clock.now())
        login = _Login(uid, stamp, self._sign(uid, stamp), _normalise_b64(challenge), method, self._clock.now())
        self._logins[uid] = login
        return {"uid": uid, "time": stamp, "qrcode": f"https://115.com/scan/dg-{uid}", "sign": login.sign}

    def _sign(self, uid: str, stamp: int) -> str:
        return hmac.new(self._secret, f"{uid}:{stamp}".encode(), hashlib.sha1).hexdigest()

    def find(self, query: Mapping[str, str]) -> _Login:
        login = self._logins.get(query.get("uid", ""))
        if login is None or query.get("sign") != login.sign or query.get("time") != str(login.time):
            raise _Refusal(0, message="二维码无效")
        if login.expired or self._clock.now() >= login.created_at + QR_TTL:
            raise _Refusal(0, message="二维码已过期")
        return login

    def poll(self, login: _Login) -> Any:
        """Auto mode moves one step per poll (waiting -> scanned -> confirmed), as if the user acted between them."""
        answer = self.describe(login)
        if self.auto and login.status in (0, 1):
            login.status += 1
        return answer

    @staticmethod
    def describe(login: _Login) -> Any:
        if login.status == 0:
            return []  # nothing until someone scans (DOC "扫码后才有值")
        return {"msg": QR_MESSAGES[login.status], "status": login.status, "version": "1.0"}

    def exchange(self, form: Mapping[str, str]) -> _Login:
        uid, verifier = form.get("uid", "").strip(), form.get("code_verifier", "")
        if not uid or not verifier:
            raise _Refusal(40100000)
        login = self._logins.get(uid)
        if login is None or login.used or login.status != 2 or login.expired:
            raise _Refusal(40140134)
        if not 43 <= len(verifier) <= 128:
            raise _Refusal(40140112)
        digest = hashlib.new(login.method, verifier.encode("ascii", "replace")).digest()
        if _normalise_b64(base64.b64encode(digest).decode()) != login.challenge:
            raise _Refusal(40140113)
        login.used = True
        return login

    def act(self, action: str, uid: str | None) -> str:
        if not self._logins:
            raise ValueError("qr: no QR login has been started")
        login = self._logins.get(uid) if uid else list(self._logins.values())[-1]
        if login is None:
            raise ValueError("qr: unknown uid")
        steps = {"scan": 1, "confirm": 2, "cancel": -2}
        if action == "expire":
            login.expired = True
        elif action in steps:
            login.status = steps[action]
        else:
            raise ValueError(f"qr: action must be scan, confirm, cancel or expire, got {action!r}")
        return login.uid


def _normalise_b64(text: str) -> str:
    """Clients send std or urlsafe base64, with or without padding; all of them work on 115 (api-notes §2.2)."""
    return text.strip().replace("+", "-").replace("/", "_").rstrip("=")


# --- faults and the record -----------------------------------------------------------------------------------------

@dataclass
class _ArmedFault:
    fault: Fault
    remaining: int | None


class _Faults:
    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self._armed: list[_ArmedFault] = []

    def arm(self, fault: Fault) -> None:
        self._armed.append(_ArmedFault(fault, fault.times))

    def clear(self) -> None:
        self._armed.clear()

    def take(self, path: str) -> Fault | None:
        for armed in list(self._armed):
            if not armed.fault.hits(path) or self._rng.random() >= armed.fault.rate:
                continue
            if armed.remaining is not None:
                armed.remaining -= 1
                if armed.remaining <= 0:
                    self._armed.remove(armed)
            return armed.fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        return [{"kind": a.fault.kind, "endpoint": a.fault.endpoint, "remaining": a.remaining} for a in self._armed]


class _Record:
    """What tests assert on: calls, refreshes, every mutation with its arguments, tokens issued."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.refresh_codes: list[int] = []
        self.add_calls: list[dict[str, Any]] = []
        self.accepted: Counter[str] = Counter()
        self.accepted_hashes: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()  # URLs answered 10008: a client resending what 115 already has
        self.del_calls: list[dict[str, Any]] = []
        self.clear_calls: list[dict[str, Any]] = []
        self.faults_fired: list[dict[str, str]] = []
        self.internal_errors: list[str] = []

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "refresh_calls": len(self.refresh_codes),
            "refresh_ok": self.refresh_codes.count(0),
            "refresh_failed": sum(1 for c in self.refresh_codes if c),
            "refresh_codes": list(self.refresh_codes),
            "add_calls": [dict(c) for c in self.add_calls],
            "accepted": dict(self.accepted),
            "accepted_hashes": dict(self.accepted_hashes),
            "duplicates": dict(self.duplicates),
            "del_calls": [dict(c) for c in self.del_calls],
            "clear_calls": [dict(c) for c in self.clear_calls],
            "faults_fired": list(self.faults_fired),
            "internal_errors": list(self.internal_errors),
        }


# --- the endpoints -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: Mapping[str, str]
    form: Mapping[str, str]
    authorization: str | None
    fault: Fault | None = None


@dataclass(frozen=True)
class _State:
    clock: Clock
    tokens: _Tokens
    tasks: _Tasks
    account: _Account
    folders: _Folders
    logins: _Logins
    record: _Record
    changed: threading.Condition
    stopping: threading.Event
    page_size: int
    max_task_pages: int | None
    space_min: int
    qr_poll_timeout: float


Endpoint = Callable[[_State, _Request], Any]


def user_info(s: _State, req: _Request) -> Any:
    s.tokens.authorize(req.authorization)
    return s.account.user_info()


def get_quota_info(s: _State, req: _Request) -> Any:
    s.tokens.authorize(req.authorization)
    return s.account.quota_info()


def get_task_list(s: _State, req: _Request) -> Any:
    page = _page_number(req.query.get("page"))
    if s.max_task_pages is not None and page > s.max_task_pages:
        return _nginx_page(405, "Not Allowed")  # deep paging is refused by the gateway (api-notes §2.4)
    s.tokens.authorize(req.authorization)
    return s.tasks.page(page, s.page_size)


def _page_number(raw: str | None) -> int:
    try:
        return max(1, int((raw or "1").strip()))
    except ValueError:
        return 1


def add_task_urls(s: _State, req: _Request) -> Any:
    s.tokens.authorize(req.authorization)
    urls = split_urls(req.form.get("urls", ""))
    wp_path_id = (req.form.get("wp_path_id") or "0").strip() or "0"
    entry: dict[str, Any] = {"url_count": len(urls), "urls": urls, "wp_path_id": wp_path_id, "code": 0,
                             "accepted": 0}
    s.record.add_calls.append(entry)
    try:
        items = _submit(s, urls, wp_path_id)
    except _Refusal as refusal:
        entry["code"] = refusal.code
        entry["accepted"] = sum(1 for i in refusal.data if isinstance(i, dict) and i.get("state"))
        raise
    entry["accepted"] = sum(1 for i in items if i["state"])
    return items


def split_urls(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def _submit(s: _State, urls: list[str], wp_path_id: str) -> list[dict[str, Any]]:
    if not urls or not wp_path_id.isdigit():
        raise _Refusal(990002)
    if wp_path_id in s.folders.deleted:
        raise _Refusal(430004)
    if len(urls) > MAX_URLS:
        raise _Refusal(1000011)
    if s.account.space_remain < s.space_min:
        raise _Refusal(91006)  # checked before anything is charged (DOC)
    if s.account.surplus <= 0:
        raise _Refusal(1000012)
    items = [_submit_one(s, url, wp_path_id) for url in urls]
    if not any(item["state"] for item in items):
        first = items[0]
        raise _Refusal(first["code"], data=items, message=first["message"])
    return items


def _submit_one(s: _State, url: str, wp_path_id: str) -> dict[str, Any]:
    link = classify_link(url)
    if link is None:
        return _item_failure(url, 10004)
    if link.info_hash in s.tasks:
        s.record.duplicates[url] += 1
        return _item_failure(url, 10008)  # also catches a repeat within the same call
    if not s.account.charge():
        return _item_failure(url, 1000012)
    s.tasks.add(link, wp_path_id)
    s.record.accepted[url] += 1
    s.record.accepted_hashes[link.info_hash] += 1
    return {"state": True, "code": 0, "message": "", "info_hash": link.info_hash, "url": url}


def _item_failure(url: str, code: int) -> dict[str, Any]:
    return {"state": False, "code": code, "message": message_for(code), "info_hash": "", "url": url}


def del_task(s: _State, req: _Request) -> Any:
    s.tokens.authorize(req.authorization)
    info_hash = req.form.get("info_hash", "").strip()
    del_source = (req.form.get("del_source_file") or "0").strip()
    entry: dict[str, Any] = {"info_hash": info_hash, "del_source_file": del_source, "found": False, "code": 0}
    s.record.del_calls.append(entry)
    if not HEX40_RE.fullmatch(info_hash) or del_source not in ("0", "1"):
        entry["code"] = 990002
        raise _Refusal(990002)
    entry["del_source_file"] = int(del_source)
    entry["found"] = s.tasks.delete(info_hash.lower())
    return []


def clear_task(s: _State, req: _Request) -> Any:
    s.tokens.authorize(req.authorization)
    raw = (req.form.get("flag") or "").strip()
    flag = int(raw) if raw.lstrip("-").isdigit() else None
    entry: dict[str, Any] = {"flag": flag if flag is not None else raw, "delete_files": False, "removed": 0, "code": 0}
    s.record.clear_calls.append(entry)
    if flag not in CLEAR_FLAGS:
        entry["code"] = 990002
        raise _Refusal(990002)
    statuses, with_files = CLEAR_FLAGS[flag]
    entry["delete_files"] = with_files
    entry["removed"] = s.tasks.clear(statuses)
    return []


def folder_get_info(s: _State, req: _Request) -> Any:
    s.tokens.authorize(req.authorization)
    params = req.query if req.method == "GET" else {**req.query, **req.form}
    file_id, path = params.get("file_id", "").strip(), params.get("path", "").strip()
    if file_id:
        folder = s.folders.get(file_id)
        if folder is None:
            raise _Refusal(430004)
        return s.folders.info(folder)
    if not path:
        raise _Refusal(990002)
    folder = s.folders.lookup(path)
    return s.folders.info(folder) if folder is not None else []


def folder_add(s: _State, req: _Request) -> Any:
    s.tokens.authorize(req.authorization)
    pid = (req.form.get("pid") or "0").strip() or "0"
    folder = s.folders.add(pid, req.form.get("file_name", "").strip())
    return {"file_name": folder.name, "file_id": folder.file_id}


def refresh_token(s: _State, req: _Request) -> Any:
    try:
        pair = s.tokens.refresh(req.form.get("refresh_token", "").strip() or None,
                                too_frequent=req.fault is not None and req.fault.kind == "refresh_too_frequent")
    except _Refusal as refusal:
        s.record.refresh_codes.append(refusal.code)
        raise
    s.record.refresh_codes.append(0)
    return pair.to_json()


def auth_device_code(s: _State, req: _Request) -> Any:
    return s.logins.start(req.form)


def device_code_to_token(s: _State, req: _Request) -> Any:
    s.logins.exchange(req.form)
    return s.tokens.grant().to_json()


def qr_status(s: _State, req: _Request) -> Any:
    """A long poll: in manual mode it holds the request until the QR changes or qr_poll_timeout passes."""
    login = s.logins.find(req.query)
    deadline = time.monotonic() + s.qr_poll_timeout
    before = (login.status, login.expired)
    while not s.logins.auto and (login.status, login.expired) == before and not s.stopping.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        s.changed.wait(remaining)
    login = s.logins.find(req.query)
    return s.logins.poll(login)


ROUTES: dict[str, tuple[frozenset[str], Endpoint]] = {
    "/open/user/info": (frozenset({"GET"}), user_info),
    "/open/offline/get_quota_info": (frozenset({"GET"}), get_quota_info),
    "/open/offline/get_task_list": (frozenset({"GET"}), get_task_list),
    "/open/offline/add_task_urls": (frozenset({"POST"}), add_task_urls),
    "/open/offline/del_task": (frozenset({"POST"}), del_task),
    "/open/offline/clear_task": (frozenset({"POST"}), clear_task),
    "/open/folder/get_info": (frozenset({"GET", "POST"}), folder_get_info),
    "/open/folder/add": (frozenset({"POST"}), folder_add),
    REFRESH_PATH: (frozenset({"POST"}), refresh_token),
    "/open/authDeviceCode": (frozenset({"POST"}), auth_device_code),
    "/open/deviceCodeToToken": (frozenset({"POST"}), device_code_to_token),
    STATUS_PATH: (frozenset({"GET"}), qr_status),
}


def _fault_reply(fault: Fault, passport: bool) -> _Reply | None:
    """The answer a failure fault gives instead of processing; None for kinds that let the request through."""
    if fault.kind in ("http500", "http502", "http503"):
        status = int(fault.kind[4:])
        reasons = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Temporarily Unavailable"}
        return _nginx_page(status, reasons[status])
    if fault.kind == "html405":
        return _nginx_page(405, "Not Allowed")
    if fault.kind == "empty_code":
        return _json_reply(_error_envelope(passport, 0, ""))
    if fault.kind in ("rate_limit_406", "rate_limit_770004"):
        code = int(fault.kind.rsplit("_", 1)[1])
        return _json_reply(_error_envelope(passport, code, message_for(code)))
    if fault.kind == "malformed":
        whole = json.dumps(_envelope(passport, {"page": 1, "count": 0, "tasks": []})).encode()
        return _Reply(200, whole[: len(whole) // 2])
    return None


# --- HTTP plumbing -------------------------------------------------------------------------------------------------

def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """Form fields from an urlencoded or multipart body (multipart via email.parser: the cgi module is gone)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return _parse_multipart(content_type, body)
    if kind in ("", "application/x-www-form-urlencoded"):
        text = body.decode("utf-8", "replace")
        return _first_values(parse_qsl(text, keep_blank_values=True))
    return {}  # JSON and other bodies carry no form fields for 115


def _parse_multipart(content_type: str, body: bytes) -> dict[str, str]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return {}
    pairs = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        pairs.append((str(name), payload.decode(part.get_content_charset() or "utf-8", "replace")))
    return _first_values(pairs)


def _first_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: Sandbox) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        super().__init__(address, _Handler)

    def serve(self) -> None:
        """serve_forever, except that wake() ends it at once instead of at the next poll_interval tick."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    self._handle_request_noblock()

    def wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call getfqdn(), a DNS lookup that can stall start-up for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Idle keep-alive connections would otherwise keep their handler threads alive after stop()."""
        with self._open_lock:
            open_now = list(self._open)
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up is not news; the default would print a traceback to stderr


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    sys_version = ""
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the access log is silenced: nothing the sandbox prints may carry a token

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes; without this, Nagle plus the client's delayed ACK adds ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(_nginx_page(400, "Bad Request"))
            return
        path, _, query = self.path.partition("?")
        if path.startswith(CONTROL_PREFIX):
            self._send(self.server.app._control(method, path[len(CONTROL_PREFIX):], body))
            return
        form = parse_form(self.headers.get("Content-Type", ""), body) if method == "POST" else {}
        request = _Request(method, path, _first_values(parse_qsl(query, keep_blank_values=True)), form,
                           self.headers.get("Authorization"))
        reply = self.server.app._respond(request)
        if reply is None:
            self._drop()
        else:
            self._send(reply)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        chunks, total = [], 0
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                raise ValueError("body too large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --- the sandbox ---------------------------------------------------------------------------------------------------

class Sandbox:
    """The simulator: state, the HTTP server on one port, and the hooks tests use to steer it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, seed: int | None = None, page_size: int = 30,
                 quota: int = 3000, space_total: int = 16 * 2**40, space_used: int = 2**40,
                 task_duration: float = 600.0, clock: Clock | None = None, max_task_pages: int | None = 20,
                 max_grants: int | None = 3, space_min: int = SPACE_MIN, refresh_window: float = REFRESH_WINDOW,
                 qr_auto: bool = True, qr_poll_timeout: float = 1.0, folder_lag: float = 0.0) -> None:
        if page_size < 1:
            raise ValueError(f"page_size: must be at least 1, got {page_size}")
        self.host, self.port = host, port
        self.url = ""
        self.clock = clock or Clock()
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._faults = _Faults(seed)
        ids = _Ids(seed)
        self._state = _State(
            clock=self.clock, tokens=_Tokens(self.clock, max_grants, refresh_window),
            tasks=_Tasks(self.clock, ids, task_duration),
            account=_Account(self.clock, quota, space_total, space_used),
            folders=_Folders(self.clock, ids, folder_lag),
            logins=_Logins(self.clock, qr_auto), record=_Record(), changed=threading.Condition(self._lock),
            stopping=self._stopping, page_size=page_size, max_task_pages=max_task_pages, space_min=space_min,
            qr_poll_timeout=qr_poll_timeout,
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> Sandbox:
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve, name=f"sandbox-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        with self._lock:
            self._state.changed.notify_all()
        server.wake()
        if thread is not None:
            thread.join(timeout=5)
        server.close_connections()
        server.server_close()
        self._server = self._thread = None

    def __enter__(self) -> Sandbox:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # authorization
    def grant(self) -> TokenPair:
        with self._lock:
            return self._state.tokens.grant()

    def write_token_file(self, path: Path, pair: TokenPair | None = None) -> TokenPair:
        pair = pair or self.grant()
        doc = {"access_token": pair.access_token, "refresh_token": pair.refresh_token,
               "expires_at": int(self.clock.now()) + pair.expires_in}
        atomic_write(Path(path), (json.dumps(doc) + "\n").encode(), mode=0o600)
        return pair

    def revoke(self, refresh_token: str) -> None:
        with self._lock:
            self._state.tokens.revoke(refresh_token)

    # faults
    def inject(self, fault: Fault) -> None:
        with self._lock:
            if fault.kind == "expire_access":
                self._state.tokens.expire_access()  # a state change, not a per-request misbehaviour
            else:
                self._faults.arm(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # observation and steering
    def stats(self) -> dict[str, Any]:
        with self._lock:
            s = self._state
            doc = s.record.snapshot()
            doc.update({
                "tasks": len(s.tasks),
                "quota": {"count": s.account.count, "used": s.account.used, "surplus": s.account.surplus},
                "space": {"total": s.account.space_total, "remain": s.account.space_remain},
                "issued_tokens": list(s.tokens.issued),
                "faults_pending": self._faults.pending(),
                "now": self.clock.now(),
            })
            return doc

    def tasks(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._state.tasks.items()

    def add_foreign_task(self, url: str, *, status: int, percent: float | None, add_time: float | None = None,
                         name: str | None = None, size: int = 734003200, wp_path_id: str = "0") -> str:
        link = classify_link(url.strip())
        if link is None:
            raise ValueError(f"add_foreign_task: 115 would reject {url!r} as 错误的链接 (10004)")
        with self._lock:
            if link.info_hash in self._state.tasks:
                raise ValueError(f"add_foreign_task: a task with info_hash {link.info_hash} already exists")
            link = _Link(link.url, link.info_hash, name if name is not None else link.name, size)
            task = self._state.tasks.add(link, wp_path_id, add_time=add_time)
            self._state.tasks.force(task.info_hash, {"status": status, "percentDone": percent,
                                                     "last_update": int(task.add_time)})
            return task.info_hash

    def set_task(self, info_hash: str, **fields: Any) -> None:
        with self._lock:
            self._state.tasks.force(info_hash.lower(), fields)

    def set_quota(self, surplus: int) -> None:
        with self._lock:
            self._state.account.surplus = _non_negative("surplus", surplus)

    def set_space(self, remain: int) -> None:
        with self._lock:
            self._state.account.space_remain = _non_negative("remain", remain)

    def add_folder(self, path: str) -> str:
        """mkdir -p inside the simulated drive; returns the folder id."""
        with self._lock:
            try:
                return self._state.folders.ensure(path)
            except _Refusal as refusal:
                raise ValueError(f"add_folder: {path!r} is not a usable 115 path ({refusal.message})") from None

    def delete_folder(self, path_or_id: str) -> str:
        """Delete a folder (by path or id) and its subtree, as the user would on 115; returns its id."""
        with self._lock:
            try:
                return self._state.folders.delete(str(path_or_id))
            except _Refusal as refusal:
                raise ValueError(f"delete_folder: {path_or_id!r} is not a usable 115 path ({refusal.message})") \
                    from None

    def set_folder_lag(self, seconds: float) -> None:
        """Hide folders younger than ``seconds`` from path lookups (0 turns it off)."""
        with self._lock:
            self._state.folders.lag = _lag_seconds(seconds)

    def qr_action(self, action: str, uid: str | None = None) -> str:
        """Act on a QR login as the user would (scan, confirm, cancel) or let it expire; the latest one by default."""
        with self._lock:
            uid = self._state.logins.act(action, uid)
            self._state.changed.notify_all()
            return uid

    # request handling (called by the HTTP handler threads)
    def _respond(self, request: _Request) -> _Reply | None:
        """The answer to one API request, or None to close the connection without one."""
        passport = request.path in PASSPORT_PATHS
        with self._lock:
            self._state.record.calls[request.path] += 1
            fault = self._faults.take(request.path)
            if fault is not None:
                self._state.record.faults_fired.append({"kind": fault.kind, "path": request.path})
        if fault is not None:
            if fault.kind == "drop_before":
                return None
            early = _fault_reply(fault, passport)
            if early is not None:
                return early
            if fault.kind == "delay":
                self._stopping.wait(fault.delay)
        reply = self._dispatch(_Request(request.method, request.path, request.query, request.form,
                                        request.authorization, fault), passport)
        return None if fault is not None and fault.kind == "drop_after" else reply

    def _dispatch(self, request: _Request, passport: bool) -> _Reply:
        route = ROUTES.get(request.path)
        if route is None:
            return _nginx_page(404, "Not Found")
        methods, endpoint = route
        if request.method not in methods:
            return _nginx_page(405, "Not Allowed")
        try:
            with self._lock:
                data = endpoint(self._state, request)
        except _Refusal as refusal:
            return _json_reply(_error_envelope(passport, refusal.code, refusal.message, refusal.data))
        except Exception:
            with self._lock:
                self._state.record.internal_errors.append(traceback.format_exc(limit=8))
            return _nginx_page(500, "Internal Server Error")
        return data if isinstance(data, _Reply) else _json_reply(_envelope(passport, data))

    def _control(self, method: str, name: str, body: bytes) -> _Reply:
        handler = _CONTROL.get((method, name))
        if handler is None:
            return _json_reply({"error": f"unknown control endpoint {method} {CONTROL_PREFIX}{name}"}, 404)
        try:
            doc = json.loads(body.decode("utf-8")) if body.strip() else {}
            if not isinstance(doc, dict):
                raise ValueError("the body must be a JSON object")
            return _json_reply(handler(self, doc))
        except (ValueError, TypeError) as exc:
            return _json_reply({"error": str(exc)}, 400)


def _non_negative(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: must be a non-negative integer, got {value!r}")
    return value


def _need(doc: Mapping[str, Any], key: str) -> Any:
    if key not in doc:
        raise ValueError(f"{key}: required")
    return doc[key]


def _ctl_foreign_task(sb: Sandbox, doc: dict[str, Any]) -> dict[str, Any]:
    allowed = {"url", "status", "percent", "add_time", "name", "size", "wp_path_id"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ValueError(f"task: unknown field(s) {', '.join(unknown)}")
    kwargs = {k: v for k, v in doc.items() if k not in ("url", "status", "percent")}
    return {"info_hash": sb.add_foreign_task(str(_need(doc, "url")), status=_need(doc, "status"),
                                             percent=_need(doc, "percent"), **kwargs)}


def _ctl_set_task(sb: Sandbox, doc: dict[str, Any]) -> dict[str, Any]:
    changes = {k: v for k, v in doc.items() if k != "info_hash"}
    sb.set_task(str(_need(doc, "info_hash")), **changes)
    return {"ok": True}


def _ctl_advance(sb: Sandbox, doc: dict[str, Any]) -> dict[str, Any]:
    sb.clock.advance(_need(doc, "seconds"))
    return {"now": sb.clock.now()}


def _ok(action: Callable[[], object]) -> dict[str, Any]:
    action()
    return {"ok": True}


_CONTROL: dict[tuple[str, str], Callable[[Sandbox, dict[str, Any]], Any]] = {
    ("GET", "stats"): lambda sb, doc: sb.stats(),
    ("GET", "tasks"): lambda sb, doc: sb.tasks(),
    ("POST", "fault"): lambda sb, doc: _ok(lambda: sb.inject(Fault.from_json(doc))),
    ("POST", "clear_faults"): lambda sb, doc: _ok(sb.clear_faults),
    ("POST", "advance"): _ctl_advance,
    ("POST", "grant"): lambda sb, doc: sb.grant().to_json(),
    ("POST", "revoke"): lambda sb, doc: _ok(lambda: sb.revoke(str(_need(doc, "refresh_token")))),
    ("POST", "quota"): lambda sb, doc: _ok(lambda: sb.set_quota(_need(doc, "surplus"))),
    ("POST", "space"): lambda sb, doc: _ok(lambda: sb.set_space(_need(doc, "remain"))),
    ("POST", "task"): _ctl_foreign_task,
    ("POST", "set_task"): _ctl_set_task,
    ("POST", "folder"): lambda sb, doc: {"file_id": sb.add_folder(str(_need(doc, "path")))},
    ("POST", "qr"): lambda sb, doc: {"uid": sb.qr_action(str(_need(doc, "action")), doc.get("uid"))},
    ("POST", "delete_folder"): lambda sb, doc: {"file_id": sb.delete_folder(str(_need(doc, "path")))},
    ("POST", "folder_lag"): lambda sb, doc: _ok(lambda: sb.set_folder_lag(_need(doc, "seconds"))),
}


# --- `daemon115 sandbox` -------------------------------------------------------------------------------------------

def run_cli(host: str, port: int, token_file: Path | None, out: TextIO, *, seed: int | None = None) -> int:
    """Serve until SIGINT/SIGTERM. Line 1 of ``out`` is the base URL alone, line 2 the path of a ready token file."""
    stop = threading.Event()
    previous = _catch_stop_signals(stop)
    scratch: str | None = None
    try:
        sandbox = Sandbox(host, port, seed=seed).start()
    except OSError as exc:
        _restore_signals(previous)
        print(f"daemon115 sandbox: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        if token_file is None:
            scratch = tempfile.mkdtemp(prefix="daemon115-sandbox-")
            token_file = Path(scratch) / "token.json"
        try:
            sandbox.write_token_file(Path(token_file))
        except OSError as exc:
            print(f"daemon115 sandbox: cannot write the token file {token_file}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        out.write(f"{sandbox.url}\n{token_file}\n{_hint(sandbox.url, Path(token_file))}")
        out.flush()
        while not stop.wait(0.2):
            pass
    finally:
        sandbox.stop()
        _restore_signals(previous)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _hint(url: str, token_file: Path) -> str:
    return (
        "# a 115 Open API simulator is listening; point a config at it:\n"
        "api:\n"
        f"  base_url: {url}\n"
        f"  passport_url: {url}\n"
        f"  qrcode_url: {url}\n"
        "auth:\n"
        f"  token_file: {token_file}\n"
        "# control API: GET/POST " + url + CONTROL_PREFIX + "{stats,tasks,fault,advance,grant,...}\n"
        "# stop with Ctrl-C\n"
    )


def _catch_stop_signals(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    return previous


def _restore_signals(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """``python -m daemon115.api.sandbox``: the same as ``daemon115 sandbox``, for tests that need another process."""
    parser = argparse.ArgumentParser(prog="daemon115-sandbox", description="Run the 115 Open API simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-file", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    return run_cli(args.host, args.port, args.token_file, sys.stdout, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
