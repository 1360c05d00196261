"""The console listener (``vm listen``): a plain TCP client routed to a VM's COM1 by a one-line
name handshake, the first client read-write, later ones read-only; ``vm console --tcp``."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.cli_process import cli
from tests.vmms.vm_env import PATIENCE, VmEnv


@pytest.fixture
def listener(vms: VmEnv) -> Iterator[int]:
    """A listener on a free port (``--port 0``), its port read from its first line."""
    proc = subprocess.Popen(cli("vm", "--store", str(vms.store), "listen", "--port", "0"),
                            stderr=subprocess.PIPE, env=vms.env, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "console listener on 127.0.0.1:" in line, line
        yield int(line.split("127.0.0.1:")[1].split()[0])
    finally:
        proc.kill()
        proc.wait()


def _client(port: int, line: bytes) -> tuple[socket.socket, bytes]:
    """What ``nc localhost PORT`` does: connect, send the name line, read the answer line."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
    sock.sendall(line)
    got = b""
    while b"\n" not in got:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return sock, got


def _read_until(sock: socket.socket, text: bytes, got: bytes = b"") -> bytes:
    while text not in got:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_clients_by_name_first_read_write_then_read_only(vms: VmEnv, listener: int) -> None:
    vms.run("create", "n", "ticker")
    vms.run("start", "n")
    vms.wait_console("n", b"ready> ")
    first, hello1 = _client(listener, b"n\n")
    second, hello2 = _client(listener, b"n\n")
    assert hello1.startswith(b"connected to VM 'n' (read-write)")
    assert hello2.startswith(b"connected to VM 'n' (read-only)")
    second.sendall(b"Z")  # a watcher's keys go nowhere
    first.sendall(b"C")
    out1 = _read_until(first, b"PASS", hello1)
    out2 = _read_until(second, b"PASS", hello2)
    for out in (out1, out2):
        assert b"got 43" in out and b"got 5A" not in out
        assert b"sum 0000ACF9" in out
    first.close()
    second.close()
    vms.wait(lambda: vms.show("n")["state"] == "Off", "the guest to end")


def test_unknown_or_stopped_vm_is_one_error_line(vms: VmEnv, listener: int) -> None:
    vms.run("create", "off", "ticker")
    for line, text in ((b"nobody\n", b"error: no VM named 'nobody'"),
                       (b"off\n", b"error: cannot console VM 'off' while it is Off"),
                       (b"\n", b"error: send the VM's name")):
        sock, got = _client(listener, line)
        assert got.startswith(text), got
        assert sock.recv(100) == b""  # and the listener closes
        sock.close()


def test_vm_console_tcp(vms: VmEnv, listener: int) -> None:
    vms.run("create", "t", "ticker")
    vms.run("start", "t")
    vms.wait_console("t", b"ready> ")
    out = vms.run("console", "t", "--tcp", "--port", str(listener), input=b"D").stdout
    assert "got 44" in out and out.rstrip().endswith("PASS")
    proc = vms.run("console", "t", "--tcp", "--port", str(listener), check=False)
    assert proc.returncode == 2 and "while it is Off" in proc.stderr


def _read_pty(fd: int) -> bytes:
    import os
    import select

    ready, _, _ = select.select([fd], [], [], PATIENCE)
    assert ready, "the console printed nothing"
    return os.read(fd, 4096)


def _on_terminal(vms: VmEnv, name: str, keys: bytes, until: bytes) -> bytes:
    """Run ``vm console NAME`` on a pseudo-terminal: wait for its banner, type ``keys``
    (no newline), read until ``until``; check the status and the terminal's modes after."""
    import os
    import pty
    import termios

    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(cli("vm", "--store", str(vms.store), "console", name),
                            stdin=slave, stdout=slave, stderr=slave, env=vms.env)
    try:
        got = b""
        while b"Ctrl-] detaches" not in got:
            got += _read_pty(master)
        os.write(master, keys)
        while until not in got:
            got += _read_pty(master)
        assert proc.wait(timeout=PATIENCE) == 0
        assert termios.tcgetattr(slave) == before
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)
    return got


def test_interactive_console_on_a_terminal_and_the_escape_key(vms: VmEnv) -> None:
    """On a terminal: Ctrl-] detaches and the VM runs on; a key goes to the guest at once,
    without Enter (raw mode); the terminal's modes come back."""
    vms.run("create", "i", "ticker")
    vms.run("start", "i")
    vms.wait_console("i", b"ready> ")
    got = _on_terminal(vms, "i", b"\x1d", b"detached from the console")
    assert vms.show("i")["state"] == "Running"
    assert b"got" not in vms.console_log("i")
    got = _on_terminal(vms, "i", b"E", b"PASS")
    assert b"got 45" in got
    vms.wait(lambda: vms.show("i")["state"] == "Off", "the guest to end")
