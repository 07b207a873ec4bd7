"""The YAML config, read into frozen dataclasses; every problem names its key path and all are reported at once.

A user fixes a config in one round trip only if ``check`` lists every problem, in file order, with a path like
``feeds[2].rules[0].include[1]``. So each reader records its problem and returns a default instead of raising, and the
loader raises one ConfigError at the end. Values that may be secret (header and cookie values, feed URLs with
passkeys) never appear in a message.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeGuard, TypeVar
from urllib.parse import urlsplit

import yaml

from daemon115 import __version__

T = TypeVar("T")

DEFAULT_TOKEN_FILE = "~/.local/state/daemon115/token.json"
DEFAULT_LEDGER = "~/.local/state/daemon115/ledger.sqlite3"
MAX_BATCH = 115  # add_task_urls rejects more URLs than this in one call
CLEAR_FLAGS: Mapping[str, int] = MappingProxyType(
    {"completed": 0, "all": 1, "failed": 2, "running": 3, "completed+files": 4, "all+files": 5})
TASK_STATUSES: Mapping[str, int] = MappingProxyType({"failed": -1, "queued": 0, "downloading": 1, "completed": 2})
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json")
NOTIFY_EVENTS = ("submitted", "completed", "failed", "authorization_needed")


# --- values ------------------------------------------------------------------------------------------------------

def _no_map() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Problem:
    path: str  # "feeds[2].rules[0].include[1]"; "" for the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(map(str, self.problems)))


@dataclass(frozen=True)
class Regex:
    """A rule's regex: the source for messages and `rss test`, the compiled pattern (case-insensitive) for matching."""

    source: str
    pattern: re.Pattern[str] = field(repr=False, compare=False)

    @classmethod
    def compile(cls, source: str) -> Regex:
        return cls(source, re.compile(source, re.IGNORECASE))

    def search(self, text: str) -> bool:
        return self.pattern.search(text) is not None


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = "https://proapi.115.com"
    passport_url: str = "https://passportapi.115.com"
    qrcode_url: str = "https://qrcodeapi.115.com"
    timeout: float = 30.0
    min_interval: float = 0.5
    max_retries: int = 4
    daily_call_budget: int | None = None


@dataclass(frozen=True)
class AuthConfig:
    token_file: Path = field(default_factory=lambda: Path(DEFAULT_TOKEN_FILE).expanduser())
    refresh_ahead: float = 600.0


@dataclass(frozen=True)
class LedgerConfig:
    path: Path = field(default_factory=lambda: Path(DEFAULT_LEDGER).expanduser())
    keep_details: float = 180 * 86400.0


@dataclass(frozen=True)
class SubmitConfig:
    batch_size: int = 100
    batch_window: float = 2.0
    default_target: str = "0"
    max_attempts: int = 10
    create_folders: bool = True
    quota_check_every: float = 300.0  # while paused for quota or space, how often to ask 115 again


@dataclass(frozen=True)
class WatchFolder:
    path: Path
    target: str = "0"
    poll: bool | None = None  # None: poll when the folder is on a network filesystem
    poll_interval: float = 5.0
    recursive: bool = False
    subfolders: Mapping[str, str] = field(default_factory=_no_map)  # subfolder (relative path) -> target
    resolve_torrents: bool = False
    settle: float = 0.5
    rescan_every: float = 300.0


@dataclass(frozen=True)
class Rule:
    name: str
    include: tuple[Regex, ...] = ()
    exclude: tuple[Regex, ...] = ()
    min_size: int | None = None
    max_size: int | None = None
    require_size: bool = False
    max_age: float | None = None
    min_seeders: int | None = None
    target: str | None = None  # None: the feed's target
    episodes: bool = False
    allow_repack: bool = False


@dataclass(frozen=True)
class Feed:
    name: str
    url: str = field(repr=False)  # private trackers put a passkey in it
    interval: float = 900.0
    target: str = "0"
    headers: Mapping[str, str] = field(default_factory=_no_map, repr=False)
    cookies: Mapping[str, str] = field(default_factory=_no_map, repr=False)
    user_agent: str = f"daemon115/{__version__}"
    timeout: float = 30.0
    max_size: int = 10_000_000
    accept_all: bool = False
    resolve_torrents: bool = False
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class ReconcileConfig:
    every: float = 600.0
    active_every: float = 60.0


@dataclass(frozen=True)
class ClearAction:
    mode: str  # "failed", "completed+files", ...
    flag: int  # clear_task's flag, 0..5


@dataclass(frozen=True)
class DeleteAction:
    status: tuple[str, ...]
    status_codes: tuple[int, ...]  # 115's task status numbers for `status`
    older_than: float | None = None
    stalled_for: float | None = None
    min_progress: float | None = None
    max_progress: float | None = None
    name: Regex | None = None
    only_ours: bool = True
    with_files: bool = False
    retry_failed: int = 0


@dataclass(frozen=True)
class CleanupPolicy:
    name: str
    every: float = 3600.0
    clear: ClearAction | None = None  # exactly one of clear and delete is set
    delete: DeleteAction | None = None
    confirm_delete_files: bool = False
    max_deletions: int = 50

    @property
    def deletes_files(self) -> bool:
        return bool(self.clear and self.clear.mode.endswith("+files") or self.delete and self.delete.with_files)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class StatusConfig:
    listen: str | None = None  # "host:port"

    @property
    def host(self) -> str | None:
        return _split_listen(self.listen)[0] if self.listen else None

    @property
    def port(self) -> int | None:
        return _split_listen(self.listen)[1] if self.listen else None


@dataclass(frozen=True, kw_only=True)
class NotifyConfig:
    """What every notifier takes; each kind below adds where to send. Its secrets are kept out of repr."""

    events: tuple[str, ...] = NOTIFY_EVENTS
    max_per_hour: int = 30
    timeout: float = 10.0


@dataclass(frozen=True, kw_only=True)
class WebhookNotify(NotifyConfig):
    type: str = field(default="webhook", init=False)
    url: str = field(repr=False)  # hook URLs often carry their own secret
    headers: Mapping[str, str] = field(default_factory=_no_map, repr=False)


@dataclass(frozen=True, kw_only=True)
class TelegramNotify(NotifyConfig):
    type: str = field(default="telegram", init=False)
    bot_token: str = field(repr=False)
    chat_id: str
    api_url: str = "https://api.telegram.org"


@dataclass(frozen=True, kw_only=True)
class BarkNotify(NotifyConfig):
    type: str = field(default="bark", init=False)
    server: str = "https://api.day.app"
    device_key: str = field(repr=False)


NotifyTarget = WebhookNotify | TelegramNotify | BarkNotify
NOTIFY_TYPES: Mapping[str, type[NotifyTarget]] = MappingProxyType(
    {"webhook": WebhookNotify, "telegram": TelegramNotify, "bark": BarkNotify})


@dataclass(frozen=True)
class Config:
    api: ApiConfig = ApiConfig()
    auth: AuthConfig = field(default_factory=AuthConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    submit: SubmitConfig = SubmitConfig()
    watch: tuple[WatchFolder, ...] = ()
    feeds: tuple[Feed, ...] = ()
    reconcile: ReconcileConfig = ReconcileConfig()
    cleanup: tuple[CleanupPolicy, ...] = ()
    logging: LoggingConfig = LoggingConfig()
    status: StatusConfig = StatusConfig()
    notify: tuple[NotifyTarget, ...] = ()
    source: str = ""  # the file it came from; "" when no file was found and these are the built-in defaults


# --- durations, sizes, targets -----------------------------------------------------------------------------------

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"(?:\s*{_NUMBER}\s*(?:ms|s|m|h|d))+\s*")
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]*)\s*")
_BYTES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def secret_values(value: object) -> tuple[str, ...]:
    """Every string the config keeps out of repr (feed URLs, headers and cookies, notifier keys and hook URLs):
    the log redactor cuts them out of any line, wherever a careless message puts them."""
    found: list[str] = []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            found.extend(_strings(item) if not f.repr else secret_values(item))
    elif isinstance(value, (tuple, list)):
        for item in value:
            found.extend(secret_values(item))
    return tuple(found)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [v for v in value.values() if isinstance(v, str)]
    return []


def parse_duration(value: object) -> float:
    """Seconds from ``30s``, ``10m``, ``6h``, ``2d``, ``500ms`` or a sum like ``1h30m``; a bare number is seconds."""
    try:
        seconds = float(value) if _is_number(value) else _duration_text(value) if isinstance(value, str) else None
    except OverflowError:
        seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"bad duration {_show(value)}: expected a number with a unit ms, s, m, h or d "
                         "(like 30s, 10m, 6h, 2d or 1h30m)")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {_show(value)}")
    return seconds


def _duration_text(text: str) -> float | None:
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.removeprefix("-")
    if re.fullmatch(_NUMBER, body):
        return sign * float(body)
    if _DURATION.fullmatch(body):
        return sign * sum(float(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(body))
    return None


def parse_size(value: object) -> int:
    """Bytes from ``500MB``, ``1.5GiB``, ``1.5 GiB``, ``700mb``: KB..TB are powers of 1000, KiB..TiB of 1024."""
    text = value.strip() if isinstance(value, str) else ""
    match = _SIZE.fullmatch(text.removeprefix("-"))
    if _is_number(value) and (isinstance(value, int) or math.isfinite(value)):
        number, unit = Decimal(repr(value)), 1
    elif isinstance(value, str) and match and match[2].lower() in _BYTES:
        number, unit = Decimal(match[1]) * (-1 if text.startswith("-") else 1), _BYTES[match[2].lower()]
    else:
        raise ValueError(f"bad size {_show(value)}: expected a number with a unit B, KB, MB, GB, TB, KiB, MiB, "
                         "GiB or TiB (like 500MB or 1.5GiB)")
    if number < 0:
        raise ValueError(f"size must not be negative, got {_show(value)}")
    return int((number * unit).to_integral_value(ROUND_HALF_UP))


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration, for messages: 90 -> "1m30s", 0.5 -> "500ms"."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts, rest = [], seconds
    for unit in ("d", "h", "m"):
        count, rest = divmod(rest, _SECONDS[unit])
        if count:
            parts.append(f"{int(count)}{unit}")
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)


def parse_target(value: object) -> str:
    """A folder id ("0", digits) or a folder path ("/Downloads"); YAML ints become their digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and (re.fullmatch(r"[0-9]+", value) or value.startswith("/")):
        return value
    raise ValueError(f'target must be a folder id like "0" or a path like "/Downloads", got {_show(value)}')


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: object) -> str:
    """A value as the user wrote it, short; never used for values that may be secret."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int) and abs(value) >= 10**30:
        return "a number too large"  # repr() refuses ints past 4300 digits (and 0x... in YAML has no such limit)
    if isinstance(value, (int, float)):
        return repr(value)
    return _kind(value)


def _kind(value: object) -> str:
    """The type of a value in YAML words, for places where the value itself might be a secret."""
    if value is None:
        return "null"
    kinds = {bool: "a boolean", str: "a string", int: "a number", float: "a number", list: "a list", dict: "a mapping"}
    return kinds.get(type(value), f"a {type(value).__name__}")


# --- converters: raw YAML value -> typed value, or ValueError(message) -------------------------------------------

def _integer(low: int | None = None, high: int | None = None, why: str = "") -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if not _is_number(value) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_show(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bounds}{why}, got {_show(value)}")
        return value
    return convert


def _duration(minimum: float = 0.0, positive: bool = False) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < minimum or (positive and seconds == 0):
            raise ValueError(f"must be at least {format_duration(minimum)}, got {_show(value)}" if minimum
                             else f"must be more than 0, got {_show(value)}")
        return seconds
    return convert


def _optional(convert: Callable[[Any], T]) -> Callable[[Any], T | None]:
    return lambda value: None if value is None else convert(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_show(value)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {_show(value)}")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {_show(value)}")
        return value.lower()
    return convert


def _url(value: Any, *, strip_slash: bool = False) -> str:
    """http(s) only; the URL itself is never echoed because feed URLs often carry a passkey."""
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    return value.rstrip("/") if strip_slash else value


def _api_url(value: Any) -> str:
    return _url(value, strip_slash=True)


def _regex(value: Any) -> Regex:
    if not isinstance(value, str):
        raise ValueError(f"expected a regex string, got {_show(value)} (quote it)")
    try:
        return Regex.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"bad regex {value!r}: {exc}") from None


def _percent(value: Any) -> float:
    if not _is_number(value) or not 0 <= value <= 100:
        raise ValueError(f"expected a percentage from 0 to 100, got {_show(value)}")
    return float(value)


def _statuses(value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise ValueError(f"expected a list of task statuses ({', '.join(TASK_STATUSES)}), got {_show(value)}")
    for name in names:
        if name is not _BAD and (not isinstance(name, str) or name not in TASK_STATUSES):
            raise ValueError(f"unknown task status {_show(name)} (expected any of {', '.join(TASK_STATUSES)})")
    return tuple(dict.fromkeys(n for n in names if n is not _BAD))


def _clear(value: Any) -> ClearAction:
    if not isinstance(value, str) or value not in CLEAR_FLAGS:
        raise ValueError(f"must be one of {', '.join(CLEAR_FLAGS)}, got {_show(value)}")
    return ClearAction(value, CLEAR_FLAGS[value])


def _listen(value: Any) -> str:
    """``host:port``; a bare port means loopback, so a status page is never exposed by accident."""
    if _is_number(value):
        value = f"127.0.0.1:{value}"
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f'expected "host:port" like "127.0.0.1:8115", got {_show(value)}')
    host, port = _split_listen(value)
    if not host or port is None or not 1 <= port <= 65535:
        raise ValueError(f'expected "host:port" with a port from 1 to 65535, got {_show(value)}')
    return value


def _split_listen(listen: str) -> tuple[str, int | None]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port) if re.fullmatch(r"[0-9]{1,5}", port) else None


def _header_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError("header and cookie names must be plain words (letters, digits, -_.)")
    return value


def _header_value(value: Any) -> str:
    """Numbers are fine as values; the value itself is never shown since it is typically a secret."""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError("expected a string value")
    if re.search(r"[\r\n]", str(value)):
        raise ValueError("the value must not contain a line break")
    return str(value)


def _events(value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list):
        raise ValueError(f"expected a list of events ({', '.join(NOTIFY_EVENTS)}), got {_show(value)}")
    if not names:
        raise ValueError(f"must name at least one event ({', '.join(NOTIFY_EVENTS)}); to turn a notifier off, "
                         "remove it")
    for name in names:
        if name is not _BAD and (not isinstance(name, str) or name not in NOTIFY_EVENTS):
            raise ValueError(f"unknown event {_show(name)} (expected any of {', '.join(NOTIFY_EVENTS)})")
    return tuple(dict.fromkeys(n for n in names if n is not _BAD))


def _bot_token(value: Any) -> str:
    """Never echoed; the shape check catches a pasted "bot" prefix or a truncated token."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]+:[A-Za-z0-9_-]+", value.strip()):
        raise ValueError("expected the bot token @BotFather gave (digits, a colon, then letters, digits, - or _)")
    return value.strip()


def _chat_id(value: Any) -> str:
    text = str(value) if _is_number(value) and isinstance(value, int) else value
    if not isinstance(text, str) or not re.fullmatch(r"-?[0-9]+|@[A-Za-z0-9_]{4,}", text.strip()):
        raise ValueError(f'expected a chat id like "123456" or "-100123456", or a channel like "@name", '
                         f"got {_show(value)}")
    return text.strip()


def _device_key(value: Any) -> str:
    """Never echoed; it becomes a URL path segment, so it must be one."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", value.strip()):
        raise ValueError("expected the device key shown in the Bark app (letters, digits, - or _)")
    return value.strip()


def _subfolder(value: Any) -> str:
    name = str(value) if _is_number(value) else value
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise ValueError("subfolder names must be relative paths inside the watch folder")
    return os.path.normpath(name)


def _path_converter(env: Mapping[str, str], base_dir: Path | None) -> Callable[[Any], Path]:
    """Paths expand ``~`` (with $HOME from ``env``) and are relative to the config file's folder."""
    def convert(value: Any) -> Path:
        text = _text(value)
        home = env.get("HOME")
        if home and (text == "~" or text.startswith("~/")):
            text = home + text[1:]
        path = Path(os.path.normpath(os.path.expanduser(text)))
        return base_dir / path if base_dir is not None and not path.is_absolute() else path
    return convert


# --- reading one mapping ------------------------------------------------------------------------------------------

class _Unexpanded:
    """Stands for a string whose ${VAR} could not be expanded: already reported, so readers stay silent about it."""


_BAD: Any = _Unexpanded()
_REQUIRED: Any = object()
_AUTO: Any = object()
_NOT_KEYS = {"status_codes", "source"}  # dataclass fields that are derived, not written in YAML


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _convert(problems: list[Problem], path: str, convert: Callable[[Any], T], value: Any, fallback: T) -> T:
    if value is _BAD:  # already reported by the ${VAR} expansion
        return fallback
    try:
        return convert(value)
    except ValueError as exc:
        problems.append(Problem(path, str(exc)))
        return fallback


class _Fields:
    """One YAML mapping read into one dataclass: each reader records its problem and returns a default."""

    def __init__(self, value: Any, path: str, problems: list[Problem], cls: type, *, null_ok: bool = True) -> None:
        self.path, self.problems = path, problems
        self.fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _NOT_KEYS}
        self.valid = isinstance(value, dict) or (null_ok and value is None)
        self.data: dict[Any, Any] = value if isinstance(value, dict) else {}
        if not self.valid and value is not _BAD:
            self.problem("", f"expected a mapping of keys, got {_kind(value)}")
        for key in self.data:
            if key not in self.fields:
                self.problem(key, _unknown_key(key, list(self.fields)))

    def at(self, key: object) -> str:
        return _join(self.path, key) if key != "" else self.path

    def problem(self, key: object, message: str) -> None:
        self.problems.append(Problem(self.at(key), message))

    def get(self, key: str, convert: Callable[[Any], Any], default: Any = _AUTO) -> Any:
        if default is _AUTO:
            default = self._default(key)
        if key not in self.data:
            if default is _REQUIRED and self.valid:
                self.problem(key, "required key is missing")
            return None if default is _REQUIRED else default
        return _convert(self.problems, self.at(key), convert, self.data[key], None if default is _REQUIRED else default)

    def regexes(self, key: str) -> tuple[Regex, ...]:
        raw = self.data.get(key)
        if raw is None or raw is _BAD:
            return ()
        if isinstance(raw, str):
            return tuple(r for r in [_convert(self.problems, self.at(key), _regex, raw, None)] if r)
        if not isinstance(raw, list):
            self.problem(key, f"expected a regex or a list of regexes, got {_show(raw)}")
            return ()
        found = (_convert(self.problems, f"{self.at(key)}[{i}]", _regex, item, None) for i, item in enumerate(raw))
        return tuple(r for r in found if r)

    def mapping(self, key: str, name: Callable[[Any], str], value: Callable[[Any], str]) -> Mapping[str, str]:
        raw = self.data.get(key)
        if raw is None or raw is _BAD:
            return _no_map()
        if not isinstance(raw, dict):
            self.problem(key, "expected a mapping of name: value")  # the value may be a secret: not shown
            return _no_map()
        out = {}
        for k, v in raw.items():
            good_name = _convert(self.problems, _join(self.at(key), k), name, k, None)
            good_value = _convert(self.problems, _join(self.at(key), k), value, v, None)
            if good_name is not None and good_value is not None:
                out[good_name] = good_value
        return MappingProxyType(out)

    def items(self, key: str, cls: type) -> list[_Fields]:
        """A list of mappings, each read into ``cls``; ``null`` is an empty list."""
        raw = self.data.get(key)
        if raw is None or raw is _BAD:
            return []
        if not isinstance(raw, list):
            self.problem(key, f"expected a list, got {_kind(raw)}")
            return []
        return [_Fields(item, f"{self.at(key)}[{i}]", self.problems, cls, null_ok=False) for i, item in enumerate(raw)]

    def sub(self, key: str, cls: type) -> _Fields:
        return _Fields(self.data.get(key), self.at(key), self.problems, cls)

    def _default(self, key: str) -> Any:
        f = self.fields[key]
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else _REQUIRED


def _unknown_key(key: object, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    return f"unknown key (did you mean '{close[0]}'?)" if close else f"unknown key (known keys: {', '.join(known)})"


def _check_unique(entries: list[tuple[str, object]], what: str, problems: list[Problem]) -> None:
    first: dict[object, str] = {}
    for path, value in entries:
        if value is not None and value in first:
            problems.append(Problem(path, f"duplicate {what} '{value}' (first at {first[value]})"))
        first.setdefault(value, path)


# --- sections -----------------------------------------------------------------------------------------------------

def _api(f: _Fields) -> ApiConfig:
    return ApiConfig(
        base_url=f.get("base_url", _api_url), passport_url=f.get("passport_url", _api_url),
        qrcode_url=f.get("qrcode_url", _api_url), timeout=f.get("timeout", _duration(positive=True)),
        min_interval=f.get("min_interval", _duration()), max_retries=f.get("max_retries", _integer(0)),
        daily_call_budget=f.get("daily_call_budget", _optional(_integer(1))))


def _auth(f: _Fields, to_path: Callable[[Any], Path]) -> AuthConfig:
    return AuthConfig(token_file=f.get("token_file", to_path, to_path(DEFAULT_TOKEN_FILE)),
                      refresh_ahead=f.get("refresh_ahead", _duration()))


def _ledger(f: _Fields, to_path: Callable[[Any], Path]) -> LedgerConfig:
    return LedgerConfig(path=f.get("path", to_path, to_path(DEFAULT_LEDGER)),
                        keep_details=f.get("keep_details", _duration()))


def _submit(f: _Fields) -> SubmitConfig:
    return SubmitConfig(
        batch_size=f.get("batch_size", _integer(1, MAX_BATCH, " (115 accepts at most 115 links per call)")),
        batch_window=f.get("batch_window", _duration()), default_target=f.get("default_target", parse_target),
        max_attempts=f.get("max_attempts", _integer(1)), create_folders=f.get("create_folders", _bool),
        quota_check_every=f.get("quota_check_every", _duration(1.0)))


def _watch_folder(f: _Fields, default_target: str, to_path: Callable[[Any], Path]) -> WatchFolder:
    recursive = f.get("recursive", _bool)
    subfolders = f.mapping("subfolders", _subfolder, parse_target)
    if subfolders and not recursive:
        f.problem("subfolders", "needs recursive: true (subfolders are only watched in a recursive watch folder)")
    return WatchFolder(
        path=f.get("path", to_path), target=f.get("target", parse_target, default_target),
        poll=f.get("poll", _optional(_bool)), poll_interval=f.get("poll_interval", _duration(positive=True)),
        recursive=recursive, subfolders=subfolders, resolve_torrents=f.get("resolve_torrents", _bool),
        settle=f.get("settle", _duration()), rescan_every=f.get("rescan_every", _duration()))


def _rule(f: _Fields, default_name: str) -> Rule:
    min_size, max_size = f.get("min_size", _optional(parse_size)), f.get("max_size", _optional(parse_size))
    if min_size is not None and max_size is not None and min_size > max_size:
        f.problem("min_size", f"is larger than max_size ({f.data['min_size']} > {f.data['max_size']})")
    return Rule(
        name=f.get("name", _text, default_name), include=f.regexes("include"), exclude=f.regexes("exclude"),
        min_size=min_size, max_size=max_size, require_size=f.get("require_size", _bool),
        max_age=f.get("max_age", _optional(_duration(positive=True))),
        min_seeders=f.get("min_seeders", _optional(_integer(0))), target=f.get("target", _optional(parse_target)),
        episodes=f.get("episodes", _bool), allow_repack=f.get("allow_repack", _bool))


def _feed(f: _Fields, default_target: str) -> Feed:
    name = f.get("name", _text)
    rules = [(rf.path, _rule(rf, f"{name}[{i}]")) for i, rf in enumerate(f.items("rules", Rule))]
    _check_unique([(f"{path}.name", rule.name) for path, rule in rules], "rule name", f.problems)
    return Feed(
        name=name, url=f.get("url", _url), interval=f.get("interval", _duration(60.0)),
        target=f.get("target", parse_target, default_target), headers=f.mapping("headers", _header_name, _header_value),
        cookies=f.mapping("cookies", _header_name, _header_value), user_agent=f.get("user_agent", _text),
        timeout=f.get("timeout", _duration(positive=True)), max_size=f.get("max_size", parse_size),
        accept_all=f.get("accept_all", _bool), resolve_torrents=f.get("resolve_torrents", _bool),
        rules=tuple(rule for _, rule in rules))


def _delete(f: _Fields) -> DeleteAction:
    if "status" not in f.data and f.valid:
        f.problem("status", "required: a delete: policy needs at least status: (with no condition it would "
                            "delete every task this daemon submitted)")
    status = f.get("status", _statuses, ())
    low, high = f.get("min_progress", _optional(_percent)), f.get("max_progress", _optional(_percent))
    if low is not None and high is not None and low > high:
        f.problem("min_progress", f"is larger than max_progress ({low:g} > {high:g})")
    return DeleteAction(
        status=status, status_codes=tuple(TASK_STATUSES[s] for s in status),
        older_than=f.get("older_than", _optional(_duration())), stalled_for=f.get("stalled_for", _optional(_duration())),
        min_progress=low, max_progress=high, name=f.get("name", _optional(_regex)), only_ours=f.get("only_ours", _bool),
        with_files=f.get("with_files", _bool), retry_failed=f.get("retry_failed", _integer(0)))


def _policy(f: _Fields) -> CleanupPolicy:
    if f.valid and ("clear" in f.data) == ("delete" in f.data):
        f.problem("", "has both clear: and delete:; a policy does one of them" if "clear" in f.data
                  else "needs one of clear: or delete:")
    policy = CleanupPolicy(
        name=f.get("name", _text), every=f.get("every", _duration(positive=True)), clear=f.get("clear", _clear),
        delete=_delete(f.sub("delete", DeleteAction)) if "delete" in f.data else None,
        confirm_delete_files=f.get("confirm_delete_files", _bool), max_deletions=f.get("max_deletions", _integer(0)))
    if policy.deletes_files and not policy.confirm_delete_files:
        how = f"clear: {policy.clear.mode}" if policy.clear else "with_files: true"
        f.problem("", f"policy '{policy.name}' deletes files in the cloud ({how}); add confirm_delete_files: true "
                      "to this policy if that is meant")
    return policy


def _notify_common(f: _Fields) -> dict[str, Any]:
    return {"events": f.get("events", _events), "max_per_hour": f.get("max_per_hour", _integer(1)),
            "timeout": f.get("timeout", _duration(positive=True))}


def _notify_target(f: _Fields, kind: str) -> NotifyTarget:
    common = _notify_common(f)
    if kind == "webhook":
        return WebhookNotify(url=f.get("url", _url), headers=f.mapping("headers", _header_name, _header_value),
                             **common)
    if kind == "telegram":
        return TelegramNotify(bot_token=f.get("bot_token", _bot_token), chat_id=f.get("chat_id", _chat_id),
                              api_url=f.get("api_url", _api_url), **common)
    return BarkNotify(server=f.get("server", _api_url), device_key=f.get("device_key", _device_key), **common)


def _notify_kind(item: Any, path: str, problems: list[Problem]) -> str | None:
    """The ``type:`` of one entry, which decides what its other keys may be; None after reporting why not."""
    kind = item.get("type") if isinstance(item, dict) else None
    expected = f"one of {', '.join(NOTIFY_TYPES)}"
    if not isinstance(item, dict):
        if item is not _BAD:
            problems.append(Problem(path, f"expected a mapping of keys, got {_kind(item)}"))
    elif "type" not in item:
        problems.append(Problem(_join(path, "type"), f"required key is missing ({expected})"))
    elif kind is not _BAD and (not isinstance(kind, str) or kind not in NOTIFY_TYPES):
        problems.append(Problem(_join(path, "type"), f"unknown notifier type {_show(kind)} (expected {expected})"))
    else:
        return kind if kind is not _BAD else None
    return None


def _notify(f: _Fields) -> tuple[NotifyTarget, ...]:
    raw = f.data.get("notify")
    if raw is None or raw is _BAD:
        return ()
    if not isinstance(raw, list):
        f.problem("notify", f"expected a list of notifiers, got {_kind(raw)}")
        return ()
    targets = []
    for i, item in enumerate(raw):
        path = f"{f.at('notify')}[{i}]"
        kind = _notify_kind(item, path, f.problems)
        if kind is not None:
            targets.append(_notify_target(_Fields(item, path, f.problems, NOTIFY_TYPES[kind]), kind))
    return tuple(targets)


def _config(data: Any, problems: list[Problem], to_path: Callable[[Any], Path], source: str) -> Config:
    f = _Fields(data, "", problems, Config)
    submit = _submit(f.sub("submit", SubmitConfig))
    watch = [(w.path, _watch_folder(w, submit.default_target, to_path)) for w in f.items("watch", WatchFolder)]
    feeds = [(feed.path, _feed(feed, submit.default_target)) for feed in f.items("feeds", Feed)]
    cleanup = [(p.path, _policy(p)) for p in f.items("cleanup", CleanupPolicy)]
    _check_unique([(f"{path}.path", w.path) for path, w in watch], "watch folder", problems)
    _check_unique([(f"{path}.name", feed.name) for path, feed in feeds], "feed name", problems)
    _check_unique([(f"{path}.name", p.name) for path, p in cleanup], "policy name", problems)
    logging, reconcile = f.sub("logging", LoggingConfig), f.sub("reconcile", ReconcileConfig)
    return Config(
        api=_api(f.sub("api", ApiConfig)), auth=_auth(f.sub("auth", AuthConfig), to_path),
        ledger=_ledger(f.sub("ledger", LedgerConfig), to_path), submit=submit,
        watch=tuple(w for _, w in watch), feeds=tuple(feed for _, feed in feeds),
        reconcile=ReconcileConfig(reconcile.get("every", _duration(positive=True)),
                                  reconcile.get("active_every", _duration(positive=True))),
        cleanup=tuple(p for _, p in cleanup),
        logging=LoggingConfig(logging.get("level", _choice(LOG_LEVELS)), logging.get("format", _choice(LOG_FORMATS))),
        status=StatusConfig(f.sub("status", StatusConfig).get("listen", _optional(_listen))), notify=_notify(f),
        source=source)


# --- reading YAML safely -----------------------------------------------------------------------------------------

MAX_DEPTH = 50  # levels of nesting; a real config has about 5, and PyYAML's composer recurses once per level
MAX_VALUES = 100_000  # values after alias expansion; a real config has a few hundred


class _Loader(yaml.SafeLoader):
    """SafeLoader whose constructors fail as YAML errors with a position, not as ValueError or OverflowError
    (a 5000-digit integer is past Python's int() limit; ``2024-13-45`` is a timestamp with no such date)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            kind = node.tag.rsplit(":", 1)[-1]
            why = "too many digits" if "digits" in str(exc) else "out of range"
            raise yaml.constructor.ConstructorError(None, None, f"unreadable {kind} ({why})", node.start_mark) from None


def _check_shape(text: str) -> None:
    """Refuse documents too deep for the composer or whose aliases expand past MAX_VALUES (a "billion laughs"),
    walking PyYAML's event stream, which is iterative and does no expansion, before anything is built."""
    sizes: dict[str, int] = {}  # anchor -> values it expands to, once its node is complete
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, values so far) of each collection being read
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_nodes) >= MAX_DEPTH:
                _refuse(event, f"nested more than {MAX_DEPTH} levels deep")
            open_nodes.append((event.anchor, 1))
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, size = open_nodes.pop()
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                _refuse(event, f"alias *{event.anchor} refers to a node that contains it (or to no anchor)")
            anchor, size = None, sizes[event.anchor]
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        if open_nodes:
            open_anchor, open_size = open_nodes[-1]
            open_nodes[-1] = (open_anchor, open_size + size)
            if open_size + size > MAX_VALUES:
                _refuse(event, f"too many aliases: they expand to more than {MAX_VALUES} values")


def _refuse(event: yaml.Event, why: str) -> None:
    raise yaml.composer.ComposerError(None, None, why, event.start_mark)


# --- ${VAR} expansion and document order --------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\$(?=\{)|\$\{([^}]*)(\})?")


def _expand_env(value: Any, path: str, env: Mapping[str, str], problems: list[Problem], depth: int = 0) -> Any:
    """``${VAR}`` in every string; ``$${`` is a literal ``${``; any other ``$`` is left alone."""
    if depth > 50:  # a recursive YAML alias
        problems.append(Problem(path, "nested too deeply (a recursive alias?)"))
        return _BAD
    if isinstance(value, dict):
        return {k: _expand_env(v, _join(path, k), env, problems, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]", env, problems, depth + 1) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    failed: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, closed = match[1], match[2]
        if match[0] == "$$":
            return "$"
        if not closed:
            failed.append("unterminated ${ (write $${ for a literal ${)")
        elif not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            failed.append(f"bad variable reference ${{{name}}}")
        elif name not in env:
            failed.append(f"environment variable {name} is not set (referenced as ${{{name}}})")
        else:
            return env[name]
        return match[0]

    expanded = _ENV_REF.sub(substitute, value)
    problems.extend(Problem(path, message) for message in failed)
    return _BAD if failed else expanded


def _scan(text: str, problems: list[Problem]) -> dict[str, tuple[int, int]]:
    """Where each key path starts in the text (for document order), noting keys YAML would silently overwrite."""
    positions: dict[str, tuple[int, int]] = {}

    def walk(node: yaml.Node, path: str, depth: int) -> None:
        if depth > 50:
            return
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                child = _join(path, key.value)
                positions.setdefault(child, (key.start_mark.line, key.start_mark.column))
                if key.value in seen:
                    problems.append(Problem(child, "duplicate key (YAML would keep only the last one)"))
                seen.add(key.value)
                walk(value, child, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                positions.setdefault(f"{path}[{i}]", (item.start_mark.line, item.start_mark.column))
                walk(item, f"{path}[{i}]", depth + 1)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, "", 0)
    return positions


def _in_document_order(problems: list[Problem], positions: Mapping[str, tuple[int, int]]) -> list[Problem]:
    def where(problem: Problem) -> tuple[int, int]:
        path = problem.path
        while path and path not in positions:  # a missing key sorts where its parent starts
            parent = re.sub(r"(\[\d+\]|\.[^.\[\]]*|^[^.\[\]]*)$", "", path, count=1)
            path = parent if parent != path else ""
        return positions.get(path, (-1, -1))
    return sorted(problems, key=where)


# --- entry points -------------------------------------------------------------------------------------------------

def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """$DAEMON115_CONFIG, then $XDG_CONFIG_HOME/daemon115/config.yaml, then /etc: the first that exists, else XDG's."""
    env = os.environ if env is None else env
    xdg_home = env.get("XDG_CONFIG_HOME", "")
    xdg = Path(xdg_home) if os.path.isabs(xdg_home) else _path_converter(env, None)("~/.config")
    candidates = [Path(p) for p in [env.get("DAEMON115_CONFIG")] if p]
    candidates += [xdg / "daemon115" / "config.yaml", Path("/etc/daemon115/config.yaml")]
    return next((p for p in candidates if p.is_file()), xdg / "daemon115" / "config.yaml")


def load(path: Path | None = None, *, env: Mapping[str, str] | None = None, must_exist: bool = False) -> Config:
    """Read the config file. Without a file at a default location, the built-in defaults (so `auth import` works
    without one); a path given explicitly, by $DAEMON115_CONFIG or with ``must_exist`` has to exist."""
    env = os.environ if env is None else env
    named = env.get("DAEMON115_CONFIG")
    if path is None and named and not Path(named).is_file():
        raise ConfigError([Problem("", f"{named}: no such file (named by $DAEMON115_CONFIG)")])
    explicit = must_exist or path is not None
    path = Path(path) if path is not None else default_config_path(env)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError([Problem("", f"{path}: no such file")]) from None
        return loads("", env=env, source="")
    except OSError as exc:
        raise ConfigError([Problem("", f"{path}: cannot read it: {exc.strerror or exc}")]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem("", f"{path}: not UTF-8 text (bad byte at offset {exc.start})")]) from None
    return loads(text, env=env, source=str(path), base_dir=path.parent)


def _safe_load(text: str) -> Any:
    """yaml.safe_load with _Loader (a SafeLoader that turns unreadable scalars into marked errors)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def loads(text: str, *, env: Mapping[str, str] | None = None, source: str = "<string>",
          base_dir: Path | None = None) -> Config:
    """Parse config text; relative paths in it are taken from ``base_dir`` (the config file's folder)."""
    env = os.environ if env is None else env
    problems: list[Problem] = []
    try:
        _check_shape(text)
        data = _safe_load(text)
        positions = _scan(text, problems)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(exc, source)]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        raise ConfigError([Problem("", f"{source}: YAML syntax error at line {line}, column {column}: "
                                       f"unacceptable character #x{exc.character:04x}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"{source}: not valid YAML ({type(exc).__name__})")]) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError([Problem("", f"{source}: expected a mapping of sections (api:, feeds:, ...) at the top "
                                       f"level, got {_show(data)}")])
    data = _expand_env(data or {}, "", env, problems)
    config = _config(data, problems, _path_converter(env, base_dir), source)
    if problems:
        raise ConfigError(_in_document_order(problems, positions))
    return config


def _yaml_problem(exc: yaml.MarkedYAMLError, source: str) -> Problem:
    """Line and column (1-based) and PyYAML's own words, but not its snippet of the text, which may hold a secret."""
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = "; ".join(part for part in (exc.context, exc.problem) if part)
    return Problem("", f"{source}: YAML syntax error{where}: {what}")


def warnings(cfg: Config) -> list[str]:
    """What `check` mentions without rejecting the config: each one is legitimate but often a mistake."""
    found: list[str] = []
    if not cfg.source:
        found.append("no config file found; using the built-in defaults")
    elif not cfg.watch and not cfg.feeds:
        found.append("no watch folders and no feeds: only links given to `daemon115 add` will be submitted")
    for i, folder in enumerate(cfg.watch):
        state = _folder_state(folder.path)
        if state:
            found.append(f"watch[{i}].path: {folder.path} {state}")
    for i, feed in enumerate(cfg.feeds):
        if not feed.rules and not feed.accept_all:
            found.append(f"feeds[{i}]: feed '{feed.name}' has no rules and no accept_all: true, so it grabs nothing")
    for i, policy in enumerate(cfg.cleanup):
        if policy.clear:
            found.append(f"cleanup[{i}].clear: policy '{policy.name}' clears {policy.clear.mode} tasks of the whole "
                         "account, not only the ones this daemon submitted")
        elif policy.delete and not policy.delete.only_ours:
            found.append(f"cleanup[{i}].delete.only_ours: policy '{policy.name}' also deletes tasks this daemon did "
                         "not submit")
    if cfg.status.host and not _is_loopback(cfg.status.host):
        found.append(f"status.listen: {cfg.status.listen} can be reached from other machines")
    return found


def _folder_state(path: Path) -> str | None:
    try:
        if path.is_dir():
            return None
        return "is not a directory" if path.exists() else "does not exist (yet); `run` picks it up when it appears"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
