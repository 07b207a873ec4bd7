"""Targets: a 115 folder id as given, or a folder path turned into one (and created when missing).

Path lookups are slow on 115 (it computes folder stats) and paced like every call, so resolved ids are cached in the
ledger's meta table and dropped only when 115 says the folder is gone. "Not found" comes in two shapes and the path
index lags behind folder/add (api-notes.md §2.9); the client absorbs the first, this module the second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol

from daemon115.api.client import FolderInfo
from daemon115.api.errors import Api115Error, AuthorizationNeeded

ROOT_ID = "0"
CACHE_PREFIX = "folder:"
FOLDER_EXISTS = 20004
MAX_NAME = 255
RETRY_DELAY = 1.0  # seconds before the one repeated path lookup of a folder 115 says exists


class FolderApi(Protocol):
    def folder_info(self, path: str | None = None, file_id: str | None = None) -> FolderInfo | None: ...
    def add_folder(self, parent_id: str, name: str) -> str: ...


class MetaStore(Protocol):
    def meta_get(self, name: str) -> str | None: ...
    def meta_set(self, name: str, value: str) -> None: ...
    def meta_delete(self, name: str) -> None: ...


class TargetError(Exception):
    """A target that did not become a folder id; ``transient`` says whether trying again later may help."""

    transient: ClassVar[bool] = False

    def __init__(self, target: str, problem: str) -> None:
        self.target = target
        self.problem = problem
        super().__init__(f"target {target!r}: {problem}")


class BadTarget(TargetError):
    """Neither a folder id nor a usable path."""


class FolderMissing(TargetError):
    """The folder does not exist and may not be created."""


class NotAFolder(TargetError):
    """The path names a file."""


class FolderNotVisible(TargetError):
    """115 says the folder exists (20004) but its path index does not show it yet."""

    transient = True


@dataclass(frozen=True)
class FolderPath:
    """A normalised path: its components, written canonically with '/'; no components is the root."""

    parts: tuple[str, ...]

    @property
    def text(self) -> str:
        return "/" + "/".join(self.parts)

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def cache_key(self) -> str:
        return CACHE_PREFIX + self.text

    def prefixes(self) -> list[FolderPath]:
        """From the first component down to the path itself."""
        return [FolderPath(self.parts[:depth]) for depth in range(1, len(self.parts) + 1)]

    def matches(self, info: FolderInfo) -> bool:
        """Whether ``info`` (with its ancestors) is the folder this path names, e.g. not moved or renamed since."""
        names = [name for file_id, name in info.ancestors if file_id != ROOT_ID] + [info.name]
        return tuple(names) == self.parts


class TargetCheck(NamedTuple):
    """One row of ``check --online``: the id, or the problem; both None means "missing, created on first use"."""

    target: str
    file_id: str | None
    problem: str | None


def is_folder_id(text: str) -> bool:
    return text.isdigit() and text.isascii()


def parse_target(target: str) -> str | FolderPath:
    """A folder id (digits) as a string, or the normalised path; anything else is a BadTarget saying why."""
    if not isinstance(target, str):
        raise BadTarget(repr(target), "must be a string: a folder id (digits) or a path starting with '/'")
    text = target.strip()
    if is_folder_id(text):
        return text
    if not text or text[0] not in "/>":
        raise BadTarget(target, "must be a folder id (digits) or a path starting with '/' (or '>')")
    separator = text[0]
    other = ">" if separator == "/" else "/"
    if other in text:
        raise BadTarget(target, f"mixes '{separator}' and '{other}' as separators; 115 paths use one kind throughout")
    parts = tuple(part.strip() for part in text.split(separator) if part.strip())
    for part in parts:
        if part in (".", ".."):
            raise BadTarget(target, f"{part!r} is not a folder name (paths start at the root; nothing is relative)")
        if len(part) > MAX_NAME:
            raise BadTarget(target, f"the folder name {part[:24]!r}… is longer than {MAX_NAME} characters")
    return FolderPath(parts)


class FolderResolver:
    """Turns targets into folder ids, creating missing folders one component at a time when ``create`` is on."""

    def __init__(self, client: FolderApi, ledger: MetaStore, *, create: bool = True,
                 sleep: Callable[[float], None] = time.sleep, log: Any = None,
                 retry_delay: float = RETRY_DELAY) -> None:
        self._client = client
        self._store = ledger
        self._create = create
        self._sleep = sleep
        self._log = log
        self._retry_delay = retry_delay

    def resolve(self, target: str) -> str:
        """The folder id for ``target``; a cached path costs no call."""
        parsed = parse_target(target)
        if isinstance(parsed, str):
            return parsed
        if not parsed.parts:
            return ROOT_ID
        cached = self._store.meta_get(parsed.cache_key)
        if cached:
            return cached
        file_id = self._lookup(target, parsed)
        if file_id is not None:
            self._remember(parsed, file_id)
            return file_id
        if not self._create:
            raise FolderMissing(target, f"the folder {parsed.text} does not exist on 115, and "
                                        "submit.create_folders is off")
        return self._create_path(target, parsed)

    def forget(self, target: str) -> None:
        """Drop the cached id of a path target, after 115 said that folder is gone (430004)."""
        parsed = parse_target(target)
        if isinstance(parsed, FolderPath) and parsed.parts:
            self._store.meta_delete(parsed.cache_key)
            self._emit("folder_forgotten", path=parsed.text)

    def check_all(self, targets: Iterable[str]) -> list[TargetCheck]:
        """``check --online``: every target against 115 as it is now, cached ids included; nothing is created.

        A dead refresh token raises (AuthorizationNeeded) instead of repeating itself on every row.
        """
        rows = []
        for target in targets:
            try:
                rows.append(TargetCheck(target, self._check(target), None))
            except TargetError as exc:
                rows.append(TargetCheck(target, None, exc.problem))
            except AuthorizationNeeded:
                raise
            except Api115Error as exc:
                rows.append(TargetCheck(target, None, str(exc)))
        return rows

    # --- steps ---------------------------------------------------------------------------------------------------
    def _check(self, target: str) -> str | None:
        parsed = parse_target(target)
        if isinstance(parsed, str):
            return parsed if parsed == ROOT_ID else self._check_id(target, parsed)
        if not parsed.parts:
            return ROOT_ID
        cached = self._store.meta_get(parsed.cache_key)
        if cached:
            info = self._client.folder_info(file_id=cached)
            if info is not None and info.is_folder and parsed.matches(info):
                return cached
            self.forget(target)  # deleted, moved or renamed since it was cached
        file_id = self._lookup(target, parsed)
        if file_id is not None:
            self._remember(parsed, file_id)
            return file_id
        if self._create:
            return None
        raise FolderMissing(target, f"the folder {parsed.text} does not exist on 115, and submit.create_folders is off")

    def _check_id(self, target: str, file_id: str) -> str:
        info = self._client.folder_info(file_id=file_id)
        if info is None:
            raise FolderMissing(target, f"115 has no folder with id {file_id} (deleted, or never existed)")
        if not info.is_folder:
            raise NotAFolder(target, f"id {file_id} is a file on 115, not a folder")
        return file_id

    def _lookup(self, target: str, path: FolderPath) -> str | None:
        info = self._client.folder_info(path=path.text)
        if info is None:
            return None
        if not info.is_folder:
            raise NotAFolder(target, f"{path.text} is a file on 115, not a folder")
        return info.file_id

    def _create_path(self, target: str, path: FolderPath) -> str:
        """Walk from the root: look up each prefix, create each missing one.

        The full path was just looked up, and a folder created a moment ago is empty, so neither is looked up again.
        """
        parent_id, parent_is_new = ROOT_ID, False
        for prefix in path.prefixes():
            found = None if prefix == path or parent_is_new else self._lookup(target, prefix)
            if found is not None:
                parent_id, parent_is_new = found, False
            else:
                parent_id, parent_is_new = self._add(target, parent_id, prefix)
            self._remember(prefix, parent_id)
        return parent_id

    def _add(self, target: str, parent_id: str, path: FolderPath) -> tuple[str, bool]:
        """(id, created): 20004 means it exists after all, made since our lookup or not yet in the path index."""
        try:
            file_id = self._client.add_folder(parent_id, path.name)
        except Api115Error as exc:
            if exc.code != FOLDER_EXISTS:
                raise
            return self._existing(target, path), False
        self._emit("folder_created", path=path.text, file_id=file_id)
        return file_id, True

    def _existing(self, target: str, path: FolderPath) -> str:
        found = self._lookup(target, path)
        if found is None:
            self._sleep(self._retry_delay)  # 115's path index can trail folder/add by a moment
            found = self._lookup(target, path)
        if found is None:
            raise FolderNotVisible(target, f"115 says {path.text} exists (20004) but its path lookup does not show it "
                                           "yet; it is tried again later")
        return found

    def _remember(self, path: FolderPath, file_id: str) -> None:
        if self._store.meta_get(path.cache_key) != file_id:
            self._store.meta_set(path.cache_key, file_id)

    def _emit(self, event: str, **fields: Any) -> None:
        if self._log is not None:
            self._log.info(event, **fields)
