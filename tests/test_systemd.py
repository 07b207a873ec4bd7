"""The unit files: systemd-analyze verify where systemd is installed, and the directives the service relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
DAEMON = str(Path(sys.executable).with_name("daemon115"))


def directives(path: Path) -> dict[str, list[str]]:
    """A unit file as key -> values (systemd allows repeated keys); fails on lines that are not key=value."""
    found: dict[str, list[str]] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or (line.startswith("[") and line.endswith("]")):
            continue
        key, sep, value = line.partition("=")
        assert sep and key.strip().isidentifier(), f"{path.name}:{number}: not a directive: {raw!r}"
        found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", ["daemon115.service", "user/daemon115.service"])
def test_unit_is_type_notify_with_reload_and_restart(unit):
    d = directives(SYSTEMD / unit)
    assert d["Type"] == ["notify"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"] and "WatchdogSec" in d
    assert d["ExecStart"][0].endswith(" run")
    assert "2 3" in d["RestartPreventExitStatus"][0]  # config and authorization errors do not heal by restarting


def test_system_unit_is_hardened():
    d = directives(SYSTEMD / "daemon115.service")
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "read-only"),
                       ("PrivateTmp", "yes"), ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
                       ("ProtectKernelLogs", "yes"), ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6")]:
        assert d[key] == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert d["User"] == ["daemon115"] and d["StateDirectory"] == ["daemon115"]
    assert d["ConfigurationDirectory"] == ["daemon115"] and "ReadWritePaths" in d and "MemoryMax" in d


def test_drop_in_example_adds_watch_folders():
    d = directives(SYSTEMD / "daemon115.service.d" / "watch-folders.conf.example")
    assert d["ReadWritePaths"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit, executable", [("daemon115.service", "/opt/daemon115/bin/daemon115"),
                                              ("user/daemon115.service", "%h/.local/bin/daemon115")])
def test_systemd_analyze_verify_accepts_the_units(tmp_path, unit, executable):
    copy = tmp_path / "daemon115.service"
    copy.write_text((SYSTEMD / unit).read_text().replace(executable, DAEMON))  # verify checks the binary exists
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "daemon115.service" not in result.stderr, result.stderr


MDWE_LAUNCHER = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: what MemoryDenyWriteExecute= enforces
    sys.exit(f"PR_SET_MDWE refused: errno {ctypes.get_errno()}")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    os.execv(sys.argv[1], sys.argv[1:])  # the kernel keeps the restriction across exec
sys.exit("a writable and executable mapping was still allowed")
"""


def test_the_whole_demo_pipeline_runs_with_writable_executable_memory_denied(tmp_path):
    """Both units set MemoryDenyWriteExecute=yes; the kernel's PR_SET_MDWE is the same rule without systemd."""
    result = subprocess.run([sys.executable, "-c", MDWE_LAUNCHER, DAEMON, "demo"], capture_output=True, text=True,
                            timeout=90, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "in .done/" in result.stdout and "broken.magnet.error" in result.stdout
