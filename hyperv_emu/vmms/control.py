"""The worker's control channel: a Unix socket in the VM's directory speaking JSON lines.

A request is one JSON object per line, ``{"cmd": NAME, ...}``; the answer is one line,
``{"ok": true, ...}`` or ``{"ok": false, "error": MESSAGE}``.  Commands: ``status``,
``pause``, ``resume``, ``save``, ``stop`` (with ``"graceful": true`` through the guest's
shutdown IC first, answered once the guest is off, ``"within"`` virtual seconds at most),
``vss`` (``"action"``: freeze, thaw, hot-backup, check; answered with the guest's answer),
``ip-info`` (``"adapter"``: a MAC address; answered with the guest's KVP IP information),
``reset``, ``checkpoint-save`` (pause, write the
state to ``dir`` and let go of the disks), ``checkpoint-resume`` (rebuild on the current
configuration, load the state from ``dir`` and run on), and ``console``: after its answer
(``"mode": "rw"`` or ``"ro"``) the connection carries the serial console's raw bytes, both
ways for the first console client, output only for the others.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from hyperv_emu.vmms.store import VmmsError


class WorkerGone(VmmsError):
    """The worker closed its end without answering: it is ending (or has died)."""

#: Longest request or answer line accepted.
MAX_LINE = 64 * 1024


def encode(obj: dict[str, Any]) -> bytes:
    """One JSON line."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def connect(path: Path, timeout: float | None = 60.0) -> socket.socket:
    """A connection to the worker listening on ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise VmmsError(f"cannot reach the worker at {path}: {exc.strerror or exc}") from None
    return sock


def read_line(sock: socket.socket, buf: bytearray) -> bytes:
    """The next line from ``sock`` (``buf`` keeps what came after it); b"" at the end."""
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            return b""
        buf += chunk
        if len(buf) > MAX_LINE:
            raise VmmsError("the worker's answer is too long")
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


def request(path: Path, cmd: str, timeout: float | None = 120.0, **args: Any) -> dict[str, Any]:
    """Send one command and return the worker's answer; a refusal is a VmmsError."""
    with connect(path, timeout) as sock:
        sock.sendall(encode({"cmd": cmd, **args}))
        buf = bytearray()
        try:
            line = read_line(sock, buf)
        except TimeoutError:
            raise VmmsError(f"the worker did not answer {cmd!r} in {timeout} s") from None
        except OSError as exc:
            raise WorkerGone(f"lost the worker while asking {cmd!r}: "
                             f"{exc.strerror or exc}") from None
    if not line:
        raise WorkerGone(f"the worker ended without answering {cmd!r}")
    try:
        answer = json.loads(line)
    except json.JSONDecodeError:
        raise VmmsError(f"the worker's answer to {cmd!r} is not JSON") from None
    if not isinstance(answer, dict):
        raise VmmsError(f"the worker's answer to {cmd!r} is not a JSON object")
    if not answer.get("ok"):
        raise VmmsError(str(answer.get("error", f"the worker refused {cmd!r}")))
    return answer
