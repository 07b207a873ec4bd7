"""structlog configuration, and the redaction every log line passes through.

Secrets are removed twice: by key (anything named like a token, cookie or Authorization header) and by value (a
Bearer header, a known secret, or a URL query parameter named like a passkey or token embedded in a free-text
message, as requests puts them in its exception text), so a careless log call cannot leak one.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

SECRET_KEY = re.compile(r"token|authorization|cookie|secret|password|passkey|api_?key", re.IGNORECASE)
BEARER = re.compile(r"(Bearer\s+)[^\s\"',;]+", re.IGNORECASE)
QUERY_PARAM = re.compile(r"([?&;])([\w.\-]{1,64})=([^&;\s#\"'<>]*)")  # bounded name: linear on any text
SECRET_PARAM = re.compile(r"pass|token|key|auth|sig|secret|session|sid|uid|cookie", re.IGNORECASE)
REDACTED = "<redacted>"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Redactor:
    """A structlog processor; ``remember`` adds secret values (token pairs) to scrub from any string."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = {s for s in secrets if len(s) >= 8}

    def remember(self, *secrets: str) -> None:
        self._secrets.update(s for s in secrets if s and len(s) >= 8)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            value = BEARER.sub(r"\1" + REDACTED, value)
            value = QUERY_PARAM.sub(_redact_secret_param, value) if "=" in value else value
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: REDACTED if _is_secret_key(k) else self.scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.scrub(v) for v in value)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self.scrub(str(value))  # an exception or any other object: rendered as its text, scrubbed

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event):
            event[key] = REDACTED if _is_secret_key(key) else self.scrub(event[key])
        return event


def _redact_secret_param(match: re.Match[str]) -> str:
    sign, name, value = match.groups()
    return f"{sign}{name}={REDACTED}" if value and SECRET_PARAM.search(name) else match.group(0)


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY.search(key)) and key not in {"token_state", "token_file"}


def configure(level: str = "info", fmt: str = "auto", *, stream: TextIO | None = None,
              redactor: Redactor | None = None) -> Redactor:
    """Console rendering on a TTY, JSON lines otherwise (journald, files); ``fmt`` forces one."""
    stream = stream or sys.stderr
    redactor = redactor or Redactor()
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if fmt == "console"
                     else structlog.processors.JSONRenderer(ensure_ascii=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return redactor


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
