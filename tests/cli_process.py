"""Running the real ``hyperv-emu`` command in a child process, for tests that need real pipes,
signals, file descriptors, terminals or permissions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hyperv_emu.asm import assemble

ROOT = Path(__file__).resolve().parents[1]

#: A boot sector that writes "y\n" to COM1 for ever, like yes(1): output without end, so only
#: a closed pipe, a signal or a limit can stop it.
YES_SOURCE = """
    mov dx, 0x3f8
again:
    mov al, 0x79
    out dx, al
    mov al, 10
    out dx, al
    jmp again
"""

#: A boot sector that says "p" on COM1, then reads the UART's line status register for ever:
#: the VP spends its time in Unicorn's IN hook, which must return a value to the CPU.
POLL_SOURCE = """
    mov dx, 0x3f8
    mov al, 0x70
    out dx, al
    mov al, 10
    out dx, al
    mov dx, 0x3fd
again:
    in al, dx
    jmp again
"""


def cli(*args: str) -> list[str]:
    """The argv of ``hyperv-emu ARGS`` run from this tree."""
    return [sys.executable, "-m", "hyperv_emu", *args]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for :func:`cli`: this tree's package first on the path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def boot_image(path: Path, source: str) -> Path:
    """A 16-sector raw disk whose boot sector is ``source`` (16-bit, at 0000:7C00)."""
    code = assemble(source, 16, 0x7C00)
    sector = bytearray(512)
    sector[: len(code)] = code
    sector[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(sector) + bytes(512 * 15))
    return path


def without_file_permission_override() -> list[str]:
    """A command prefix under which file modes apply to the child as to an ordinary user.

    Root ignores read and write permission bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH); the
    suite may run as root, so the child then runs with those capabilities dropped from its
    bounding and inheritable sets (util-linux setpriv), which leaves it root but bound by
    the modes, as the kernel's access checks see them."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop the permission override")
    caps = "-dac_override,-dac_read_search"
    prefix = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here (no CAP_SETPCAP)")
    return prefix
