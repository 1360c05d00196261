"""``vm console``: connect the terminal to a VM's serial console (COM1).

Through the worker's control socket, or with ``--tcp`` through the console listener
(listener.py).  On a terminal the keys go to the guest as typed (raw mode, no echo: the
guest echoes) and the escape key Ctrl-] (the byte 1Dh, as telnet's) detaches; the VM runs on.
Not on a terminal, standard input is sent as it comes and, at its end, the output is shown
until the VM ends.  Only the first console client of a VM may type; later ones watch
(read-only), and so does ``--read-only``.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import sys
from collections.abc import Iterator
from typing import IO

from hyperv_emu.vmms.control import encode, read_line
from hyperv_emu.vmms.store import VmDir, VmmsError

#: Ctrl-]: leaves the console (the VM keeps running).
ESCAPE = 0x1D
ESCAPE_NAME = "Ctrl-]"
#: The console listener's port (the seed's single-port listener).
DEFAULT_PORT = 2179


def attach_unix(vm: VmDir, read_only: bool) -> tuple[socket.socket, str, bytes]:
    """A console connection through the worker's socket: (socket, mode, bytes already read)."""
    from hyperv_emu.vmms.control import connect

    sock = connect(vm.socket, timeout=30)
    sock.sendall(encode({"cmd": "console", "read_only": read_only}))
    buf = bytearray()
    line = read_line(sock, buf)
    try:
        answer = json.loads(line) if line else {}
    except json.JSONDecodeError:
        answer = {}
    if not answer.get("ok"):
        sock.close()
        raise VmmsError(f"VM {vm.name!r}: the worker refused the console: "
                        f"{answer.get('error', 'no answer')}")
    sock.settimeout(None)
    return sock, str(answer.get("mode", "ro")), bytes(buf)


def attach_tcp(name: str, host: str, port: int, read_only: bool,
               ) -> tuple[socket.socket, str, bytes]:
    """A console connection through the listener: one line with the name, one line back."""
    try:
        sock = socket.create_connection((host, port), timeout=30)
    except OSError as exc:
        raise VmmsError(f"cannot reach the console listener at {host}:{port}: "
                        f"{exc.strerror or exc} (start it with 'hyperv-emu vm listen')") from None
    sock.sendall(f"{name}{' ro' if read_only else ''}\n".encode())
    buf = bytearray()
    line = read_line(sock, buf).decode(errors="replace").strip()
    if not line.startswith("connected"):
        sock.close()
        raise VmmsError(line.removeprefix("error: ") or "the console listener closed the "
                        "connection")
    sock.settimeout(None)
    return sock, ("rw" if "read-write" in line else "ro"), bytes(buf)


@contextlib.contextmanager
def _raw(stream: IO[str]) -> Iterator[None]:
    """The terminal in raw mode while inside (restored however we leave)."""
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(sock: socket.socket, mode: str, pending: bytes, banner: str) -> int:
    """Carry bytes between the terminal (or pipes) and the console until the VM's console
    closes, the escape key, or Ctrl-C; the exit status (0)."""
    out = sys.stdout.buffer
    interactive = sys.stdin is not None and sys.stdin.isatty()
    # Raw mode first, so no key typed after the banner waits in a line buffer.
    with _raw(sys.stdin) if interactive else contextlib.nullcontext():
        print(banner + (" (read-only)" if mode == "ro" else "")
              + (f"; {ESCAPE_NAME} detaches" if interactive else ""),
              end="\r\n" if interactive else "\n", file=sys.stderr, flush=True)
        if pending:
            out.write(pending)
            out.flush()
        return _pump(sock, mode, interactive, out)


def _pump(sock: socket.socket, mode: str, interactive: bool, out: IO[bytes]) -> int:
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    stdin_fd = None
    if sys.stdin is not None:
        stdin_fd = sys.stdin.fileno()
        sel.register(stdin_fd, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in sel.select():
                if key.fileobj is sock:
                    data = sock.recv(65536)
                    if not data:
                        if interactive:
                            out.write(b"\r\n")
                        out.flush()
                        return 0
                    out.write(data)  # the guest sends CR LF itself, as to a terminal
                    out.flush()
                else:
                    data = os.read(stdin_fd, 4096) if stdin_fd is not None else b""
                    if not data:
                        sel.unregister(key.fileobj)  # input ended: keep showing output
                        continue
                    if interactive and ESCAPE in data:
                        data = data[:data.index(ESCAPE)]
                        if data and mode == "rw":
                            sock.sendall(data)
                        print("\r\nhyperv-emu: detached from the console", file=sys.stderr)
                        return 0
                    if mode == "rw":
                        sock.sendall(data)
    finally:
        sel.close()
        sock.close()
