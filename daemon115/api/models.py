"""Typed values for what 115 answers, and the tolerant parsing that builds them.

The real service is loose with types (api-notes.md §1, §2.4): ids may come as ints, sizes as floats, percentDone as an
int, a float, a numeric string or null, and an empty ``data`` as ``[]``. Everything here accepts those shapes and turns
them into one stable representation; ids stay strings because they exceed float precision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TASK_STATUS_NAMES = {-1: "failed", 0: "queued", 1: "downloading", 2: "completed"}


def _number(text: str) -> int | float | None:
    """A numeric string as an int when it is one, else a float; digit strings past Python's int-conversion limit fall
    through to float, which reads them as infinity instead of raising."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def as_int(value: object, default: int = 0) -> int:
    """Infinities, NaN and unreadable text give ``default``: no real 115 field holds them."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        value = _number(value.strip())
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return default


def as_optional_float(value: object) -> float | None:
    """percentDone: int, float, numeric string, empty string or null; a non-finite percent means nothing."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = _number(value.strip())
    if not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def as_id(value: object) -> str:
    """A 115 id as a string; an int id is exact, a float id would already have lost digits, so it is kept as given."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return str(value).strip()


def as_str(value: object) -> str:
    return "" if value is None else str(value)


def as_object(data: object) -> Mapping[str, Any]:
    """``data`` may be an object, ``[]`` for nothing, or a one-element array holding the object."""
    if isinstance(data, Mapping):
        return data
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], Mapping):
        return data[0]
    return {}


def as_list(data: object) -> list[Any]:
    return data if isinstance(data, list) else []


@dataclass(frozen=True)
class UserInfo:
    user_id: str
    user_name: str
    vip_level_name: str
    vip_expire: int | None
    space_total: int
    space_remain: int
    space_used: int

    @classmethod
    def from_api(cls, data: object) -> UserInfo:
        d = as_object(data)
        space = as_object(d.get("rt_space_info"))
        vip = as_object(d.get("vip_info"))

        def size(name: str) -> int:
            return as_int(as_object(space.get(name)).get("size"))

        expire = as_int(vip.get("expire"), default=-1)
        return cls(
            user_id=as_id(d.get("user_id")),
            user_name=as_str(d.get("user_name")),
            vip_level_name=as_str(vip.get("level_name")),
            vip_expire=expire if expire >= 0 else None,
            space_total=size("all_total"),
            space_remain=size("all_remain"),
            space_used=size("all_use"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "user_name": self.user_name,
            "vip": {"level_name": self.vip_level_name, "expire": self.vip_expire},
            "space": {"total": self.space_total, "remain": self.space_remain, "used": self.space_used},
        }


@dataclass(frozen=True)
class QuotaPackage:
    name: str
    count: int
    used: int
    surplus: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count, "used": self.used, "surplus": self.surplus}


@dataclass(frozen=True)
class Quota:
    count: int
    used: int
    surplus: int
    packages: tuple[QuotaPackage, ...]

    @classmethod
    def from_api(cls, data: object) -> Quota:
        d = as_object(data)
        packages = tuple(
            QuotaPackage(
                name=as_str(p.get("name")),
                count=as_int(p.get("count")),
                used=as_int(p.get("used")),
                surplus=as_int(p.get("surplus")),
            )
            for p in as_list(d.get("package"))
            if isinstance(p, Mapping)
        )
        return cls(count=as_int(d.get("count")), used=as_int(d.get("used")), surplus=as_int(d.get("surplus")),
                   packages=packages)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "used": self.used, "surplus": self.surplus,
                "packages": [p.to_json() for p in self.packages]}


@dataclass(frozen=True)
class Task:
    info_hash: str
    name: str
    status: int
    percent: float | None
    size: int
    add_time: int
    last_update: int
    url: str
    file_id: str
    delete_file_id: str
    wp_path_id: str

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> Task:
        return cls(
            info_hash=as_str(item.get("info_hash")).strip().lower(),
            name=as_str(item.get("name")),
            status=as_int(item.get("status")),
            percent=as_optional_float(item.get("percentDone")),
            size=as_int(item.get("size")),
            add_time=as_int(item.get("add_time")),
            last_update=as_int(item.get("last_update")),
            url=as_str(item.get("url")),
            file_id=as_id(item.get("file_id")),
            delete_file_id=as_id(item.get("delete_file_id")),
            wp_path_id=as_id(item.get("wp_path_id")),
        )

    @property
    def status_name(self) -> str:
        return TASK_STATUS_NAMES.get(self.status, str(self.status))

    def to_json(self) -> dict[str, Any]:
        return {
            "info_hash": self.info_hash, "name": self.name, "status": self.status, "percent": self.percent,
            "size": self.size, "add_time": self.add_time, "last_update": self.last_update, "url": self.url,
            "file_id": self.file_id, "delete_file_id": self.delete_file_id, "wp_path_id": self.wp_path_id,
        }


@dataclass(frozen=True)
class TaskPage:
    page: int
    page_count: int
    count: int
    tasks: tuple[Task, ...]

    @classmethod
    def from_api(cls, data: object) -> TaskPage:
        d = as_object(data)
        tasks = tuple(Task.from_api(t) for t in as_list(d.get("tasks")) if isinstance(t, Mapping))
        return cls(page=as_int(d.get("page"), 1), page_count=as_int(d.get("page_count")),
                   count=as_int(d.get("count")), tasks=tasks)


@dataclass(frozen=True)
class AddResult:
    """One URL's outcome in add_task_urls: the top-level ``state: true`` says nothing about the items."""

    url: str
    ok: bool
    code: int
    message: str
    info_hash: str | None

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> AddResult:
        from daemon115.api.errors import parse_code

        ok = item.get("state") in (True, 1, "1", "true")
        info_hash = as_str(item.get("info_hash")).strip().lower() or None
        return cls(url=as_str(item.get("url")), ok=ok, code=parse_code(item.get("code")) or 0,
                   message=as_str(item.get("message")), info_hash=info_hash)

    @property
    def already_exists(self) -> bool:
        return not self.ok and self.code == DUPLICATE_TASK


@dataclass(frozen=True)
class Grant:
    """What a successful refreshToken / deviceCodeToToken returns."""

    access_token: str
    refresh_token: str
    expires_in: int

    def __repr__(self) -> str:
        return f"Grant(access_token=<redacted>, refresh_token=<redacted>, expires_in={self.expires_in})"


DUPLICATE_TASK = 10008
