"""Moving a drop aside (to .done/ or .failed/) without replacing a file and without following a symlink.

Every step works on directory descriptors opened one component at a time with O_NOFOLLOW, from the watch folder
down: a ``.done`` (or a subfolder) swapped for a symlink between a check and the move cannot take the drop, or its
.error file, out of the watch folder, because there is no check-then-use gap left to race.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS})
_RENAME_NOREPLACE = 1
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def move_aside(source: Path, root: Path, subfolder: tuple[str, ...], bucket: str, names: Iterable[str],
               error: str | None = None) -> Path:
    """Move ``source`` (in ``root/subfolder...``) into ``root/bucket/subfolder...`` (made where missing) under the
    first free name of ``names``.

    With ``error``, NAME.error is written first: a crash between the two leaves the drop in place (read again
    later), never a file in .failed/ without its reason. A move cut short after its hard link (both names on one
    inode) is finished rather than filed a second time.
    """
    directory = root.joinpath(bucket, *subfolder)
    with ExitStack() as stack:
        here = stack.enter_context(opened_directory(root, subfolder))
        there = stack.enter_context(opened_directory(root, (bucket, *subfolder), make=True))
        for name in names:
            if _same_file(here, source.name, there, name):
                os.unlink(source.name, dir_fd=here)
                return directory / name
            explanation = name + ".error"
            if _exists(there, name) or (error is not None and _exists(there, explanation)):
                continue
            if error is not None:
                try:
                    _write_new(there, explanation, error)
                except FileExistsError:
                    continue
            try:
                move_no_replace(source.name, name, src_dir_fd=here, dst_dir_fd=there)
            except FileExistsError:
                _remove_quietly(there, explanation if error is not None else None)
                continue
            except BaseException:
                _remove_quietly(there, explanation if error is not None else None)
                raise
            return directory / name
    raise OSError(errno.EEXIST, f"no free name for {source.name} in {directory}")


@contextmanager
def opened_directory(root: Path, parts: tuple[str, ...], *, make: bool = False) -> Iterator[int]:
    """A descriptor of ``root/parts...``; OSError (ENOTDIR) when any part is a symlink or not a folder."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts):
            if make:
                try:
                    os.mkdir(part, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                where = os.path.join(*parts[:depth + 1])
                raise OSError(errno.ENOTDIR, f"{where} is a symlink or not a folder") from exc
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def move_no_replace(source: str | Path, destination: str | Path, *, src_dir_fd: int | None = None,
                    dst_dir_fd: int | None = None) -> None:
    """rename(2) that fails with FileExistsError instead of replacing ``destination``.

    A hard link (which never replaces) and the removal of the old name, first: the watch folder then sees a
    delete. A rename out of it is an IN_MOVED_FROM with no IN_MOVED_TO, which watchdog holds for 0.5 s hoping
    to pair it, and every event behind it waits too: each drop arriving just after another would be held up.
    Where no hard link can be made (filesystems without them; EPERM from fs.protected_hardlinks for another
    user's file the daemon cannot write): renameat2(RENAME_NOREPLACE), else a checked rename.
    """
    try:
        os.link(source, destination, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if _rename_noreplace(source, destination, src_dir_fd, dst_dir_fd):
            return
        if _exists(dst_dir_fd, destination):
            raise FileExistsError(errno.EEXIST, "file exists", str(destination)) from exc
        os.rename(source, destination, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    if not _same_file(src_dir_fd, source, dst_dir_fd, destination):  # replaced in between: keep the newcomer
        os.unlink(destination, dir_fd=dst_dir_fd)
        raise OSError(errno.EAGAIN, "the file was replaced while it was being moved", str(source))
    os.unlink(source, dir_fd=src_dir_fd)


def _lstat(dir_fd: int | None, name: str | Path) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None


def _exists(dir_fd: int | None, name: str | Path) -> bool:
    return _lstat(dir_fd, name) is not None


def _same_file(a_dir: int | None, a: str | Path, b_dir: int | None, b: str | Path) -> bool:
    first, second = _lstat(a_dir, a), _lstat(b_dir, b)
    return first is not None and second is not None and (first.st_dev, first.st_ino) == (second.st_dev,
                                                                                          second.st_ino)


def _rename_noreplace(source: str | Path, destination: str | Path, src_dir_fd: int | None,
                      dst_dir_fd: int | None) -> bool:
    """True when renamed; False when renameat2 or the flag is unsupported here; FileExistsError when taken."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_cwd = -100
    if renameat2(at_cwd if src_dir_fd is None else src_dir_fd, os.fsencode(source),
                 at_cwd if dst_dir_fd is None else dst_dir_fd, os.fsencode(destination), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    if code == errno.EEXIST:
        raise FileExistsError(code, os.strerror(code), str(destination))
    raise OSError(code, os.strerror(code), str(source))


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _write_new(dir_fd: int, name: str, text: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode("utf-8", "replace"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(dir_fd: int, name: str | None) -> None:
    if name is not None:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
