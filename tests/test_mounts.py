"""Network-filesystem detection from the mount table, so such watch folders are polled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon115.sources.mounts import Mount, filesystem_of, is_network, parse_mounts, read_proc_mounts

TABLE = """\
/dev/vda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
nas:/export/media /mnt/nas nfs4 rw,vers=4.2,addr=10.0.0.2 0 0
//fileserver/Share\\040Drop /mnt/share\\040drop cifs rw,vers=3.1.1 0 0
gdrive: /home/me/gdrive fuse.rclone rw,nosuid,nodev 0 0
/dev/sdb1 /mnt/nas/local xfs rw 0 0
"""


def test_each_line_gives_device_mount_point_type_and_options() -> None:
    mounts = parse_mounts(TABLE)
    assert mounts[2] == Mount("nas:/export/media", "/mnt/nas", "nfs4", ("rw", "vers=4.2", "addr=10.0.0.2"))
    assert [m.fstype for m in mounts] == ["ext4", "proc", "nfs4", "cifs", "fuse.rclone", "xfs"]


def test_octal_escapes_in_paths_are_decoded() -> None:
    line = r"//srv/a\040b /mnt/with\040space\011tab\134back\012nl cifs rw 0 0"
    [mount] = parse_mounts(line)
    assert mount.device == "//srv/a b"
    assert mount.mount_point == "/mnt/with space\ttab\\back\nnl"


def test_blank_short_and_comment_lines_are_skipped() -> None:
    assert parse_mounts("\n# a comment line here\nonly two\n/dev/x /x ext4 rw 0 0\n") == [Mount("/dev/x", "/x", "ext4",
                                                                                                ("rw",))]


@pytest.mark.parametrize(("path", "mount_point"), [
    ("/mnt/nas/movies/drop", "/mnt/nas"),
    ("/mnt/nas", "/mnt/nas"),
    ("/mnt/nas/local/drop", "/mnt/nas/local"),  # a mount inside a mount: the deeper one holds the path
    ("/mnt/nas2/drop", "/"),  # a shared prefix is not a parent directory
    ("/mnt/share drop/in", "/mnt/share drop"),
    ("/home/me/gdrive/x", "/home/me/gdrive"),
    ("/srv", "/"),
])
def test_the_longest_mount_point_containing_the_path_holds_it(path: str, mount_point: str) -> None:
    mount = filesystem_of(path, parse_mounts(TABLE))
    assert mount is not None and mount.mount_point == mount_point


def test_a_later_mount_on_the_same_point_hides_the_earlier_one() -> None:
    mounts = parse_mounts("/dev/a /data ext4 rw 0 0\nnas:/x /data nfs rw 0 0\n")
    assert filesystem_of("/data/drop", mounts) == mounts[1]


def test_no_table_means_no_filesystem_known() -> None:
    assert filesystem_of("/anything", []) is None


@pytest.mark.parametrize("fstype", ["nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.rclone", "fuse.sshfs", "sshfs",
                                    "9p", "ceph", "glusterfs", "davfs", "virtiofs", "vboxsf", "fuse", "NFS4"])
def test_network_and_fuse_filesystems_are_network(fstype: str) -> None:
    assert is_network(fstype)


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "vfat", "fuseblk", "proc"])
def test_local_filesystems_are_not_network(fstype: str) -> None:
    assert not is_network(fstype)


def test_this_machines_table_places_a_real_folder_on_a_mount(tmp_path: Path) -> None:
    mounts = parse_mounts(read_proc_mounts())
    real = os.path.realpath(tmp_path)
    mount = filesystem_of(real, mounts)
    assert mount is not None
    assert real == mount.mount_point or real.startswith(mount.mount_point.rstrip("/") + "/")
    assert not is_network(mount.fstype)  # pytest's tmp_path is on a local disk here and in CI
