"""The console listener: one TCP port on localhost (2179 by default, the seed's single-port
listener) that routes each client to a VM's serial console by name.

The handshake is one line, so a plain ``nc localhost 2179`` works: the client sends the VM's
name (optionally followed by `` ro`` to watch only) and a newline; the listener answers one
line, ``connected to VM 'NAME' (read-write)`` or ``(read-only)``, or ``error: WHY`` and
closes.  After that the connection carries the console's raw bytes.  The first client of a VM
(through any path) may type; later ones are read-only (the worker decides: worker.py).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from hyperv_emu.vmms import console
from hyperv_emu.vmms.store import Store, VmmsError

#: Longest name line accepted before the connection is refused.
MAX_HANDSHAKE = 256


def _read_name(conn: socket.socket) -> str | None:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(MAX_HANDSHAKE)
        if not chunk:
            return None
        data += chunk
        if len(data) > MAX_HANDSHAKE:
            return None
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Copy a's bytes to b until a ends; then end both."""
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _drain(conn: socket.socket, upstream: socket.socket) -> None:
    """A watcher's keys go nowhere; its leaving ends its console connection."""
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass
    with contextlib.suppress(OSError):
        upstream.shutdown(socket.SHUT_RDWR)


def serve_client(store: Store, conn: socket.socket) -> None:
    """Handle one TCP client: the name handshake, then the console both ways."""
    try:
        conn.settimeout(30)
        line = _read_name(conn)
        if not line:
            conn.sendall(b"error: send the VM's name and a newline\r\n")
            return
        name, _, rest = line.partition(" ")
        read_only = rest.strip() == "ro"
        try:
            from hyperv_emu.vmms import service, states

            vm = store.vm(name)
            st = service.status(vm)
            states.check("console", name, st.state)
            upstream, mode, pending = console.attach_unix(vm, read_only)
        except (VmmsError, states.IllegalTransition) as exc:
            conn.sendall(f"error: {exc}\r\n".encode())
            return
        conn.settimeout(None)
        what = "read-write" if mode == "rw" else "read-only"
        conn.sendall(f"connected to VM '{name}' ({what})\r\n".encode() + pending)
        back = threading.Thread(target=_splice, args=(upstream, conn), daemon=True)
        back.start()
        if mode == "rw":
            _splice(conn, upstream)
        else:
            _drain(conn, upstream)
        back.join()
        upstream.close()
    except OSError:
        pass
    finally:
        conn.close()


def serve(store: Store, host: str = "127.0.0.1", port: int = console.DEFAULT_PORT,
          ready: Callable[[int], None] | None = None) -> None:
    """Accept console clients for ever (until Ctrl-C); ``ready`` gets the bound port."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind((host, port))
    except OSError as exc:
        srv.close()
        raise VmmsError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    srv.listen(16)
    if ready is not None:
        ready(srv.getsockname()[1])
    with srv:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve_client, args=(store, conn), daemon=True).start()
