"""Moving a drop aside: never replacing a file, never following a symlink, finishing a move a crash cut short."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from daemon115.sources.moves import move_aside, move_no_replace, opened_directory


def names(base: str) -> list[str]:
    return [base] + [f"{base}.{n}" for n in range(1, 5)]


def test_moving_never_replaces_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        move_no_replace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").read_text() == "a" and (tmp_path / "b").read_text() == "b"
    move_no_replace(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c").read_text() == "a" and not (tmp_path / "a").exists()


def test_a_drop_goes_to_the_first_free_name_with_its_explanation_beside_it(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("new")
    (tmp_path / ".failed").mkdir()
    (tmp_path / ".failed" / "x").write_text("earlier")
    (tmp_path / ".failed" / "x.1.error").write_text("an orphaned explanation")
    moved = move_aside(tmp_path / "x", tmp_path, (), ".failed", names("x"), "line 1: not a link")
    assert moved == tmp_path / ".failed" / "x.2"
    assert moved.read_text() == "new" and (tmp_path / ".failed" / "x.2.error").read_text() == "line 1: not a link"
    assert (tmp_path / ".failed" / "x").read_text() == "earlier" and not (tmp_path / ".failed" / "x.1").exists()


def test_the_bucket_keeps_the_subfolder_layout_and_is_made_where_missing(tmp_path: Path) -> None:
    (tmp_path / "tv" / "anime").mkdir(parents=True)
    (tmp_path / "tv" / "anime" / "x").write_text("x")
    moved = move_aside(tmp_path / "tv" / "anime" / "x", tmp_path, ("tv", "anime"), ".done", names("x"))
    assert moved == tmp_path / ".done" / "tv" / "anime" / "x" and moved.read_text() == "x"


def test_when_every_name_is_taken_the_drop_stays_where_it_is(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    (tmp_path / ".done").mkdir()
    for name in names("x"):
        (tmp_path / ".done" / name).write_text("taken")
    with pytest.raises(OSError, match="no free name for x"):
        move_aside(tmp_path / "x", tmp_path, (), ".done", names("x"))
    assert (tmp_path / "x").read_text() == "x"


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_a_bucket_part_that_is_a_symlink_or_a_file_is_refused_by_name(tmp_path: Path, planted: str) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".done").mkdir()
    if planted == "symlink":
        (tmp_path / ".done" / "tv").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    else:
        (tmp_path / ".done" / "tv").write_text("")
    with pytest.raises(OSError, match=r"\.done/tv is a symlink or not a folder") as raised:
        with opened_directory(tmp_path, (".done", "tv"), make=True):
            pass
    assert raised.value.errno == errno.ENOTDIR and os.listdir(tmp_path / "elsewhere") == []


def test_a_drop_under_a_symlinked_subfolder_is_not_moved_through_it(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x").write_text("x")
    (tmp_path / "sub").symlink_to(tmp_path / "real", target_is_directory=True)
    with pytest.raises(OSError, match="sub is a symlink or not a folder"):
        move_aside(tmp_path / "sub" / "x", tmp_path, ("sub",), ".done", names("x"))
    assert (tmp_path / "real" / "x").exists()
