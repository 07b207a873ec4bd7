"""Which filesystem a watch folder lives on, from the mount table: inotify sees nothing on network mounts.

A change made on the server (or by another client) of an NFS/SMB/FUSE mount never reaches the local kernel's
inotify, so such folders must be polled. Everything here is pure except :func:`read_proc_mounts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROC_MOUNTS = "/proc/self/mounts"

# Filesystems whose content can change without the local kernel knowing (network, cluster, host-shared, FUSE).
NETWORK_FSTYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "afs", "coda", "sshfs", "9p", "ceph",
    "glusterfs", "davfs", "lustre", "gpfs", "beegfs", "orangefs", "pvfs2", "ocfs2", "gfs2", "vboxsf", "vmhgfs",
    "virtiofs", "prl_fs", "drvfs", "afpfs", "fuse",
})
# fuseblk is a FUSE driver for a local block device (ntfs-3g, exfat): every change goes through this kernel.
_LOCAL_FUSE = frozenset({"fuseblk"})
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    device: str
    mount_point: str
    fstype: str
    options: tuple[str, ...] = ()


def read_proc_mounts() -> str:
    """The kernel's mount table for this process's namespace; "" when it cannot be read (no detection then)."""
    try:
        with open(PROC_MOUNTS, encoding="utf-8", errors="surrogateescape") as table:
            return table.read()
    except OSError:
        return ""


def parse_mounts(text: str) -> list[Mount]:
    """fstab-style lines (``device mount_point fstype options dump pass``); malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or line.lstrip().startswith("#"):
            continue
        options = tuple(_unescape(fields[3]).split(",")) if len(fields) > 3 else ()
        mounts.append(Mount(_unescape(fields[0]), _unescape(fields[1]), fields[2], options))
    return mounts


def filesystem_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding absolute ``path``: the longest mount point that contains it, the later of equals.

    Later entries win because a mount over an existing mount point hides the earlier one. The caller resolves
    symlinks first: the table speaks of real paths.
    """
    found: Mount | None = None
    for mount in mounts:
        if _contains(mount.mount_point, path) and (found is None or len(mount.mount_point) >= len(found.mount_point)):
            found = mount
    return found


def is_network(fstype: str) -> bool:
    """Whether changes on this filesystem type can happen where inotify does not see them."""
    fstype = fstype.lower()
    if fstype in _LOCAL_FUSE:
        return False
    return fstype in NETWORK_FSTYPES or fstype.startswith("fuse.")


def _contains(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    mount_point = mount_point.rstrip("/")
    return path == mount_point or path.startswith(mount_point + "/")


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as \\040, \\011, \\012 and \\134."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)
