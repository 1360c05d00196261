"""The worker process: one running VM (``python -m hyperv_emu.vmms.worker VMDIR``).

The process started by ``vm start`` is a small monitor: it forks the worker proper and waits
for it, so however the worker ends (its own exit, a crash, ``kill -9``) the way it ended is
written to ``worker.json`` and the VM is left in a stated, recoverable state.  The monitor
forks before importing anything heavy; killing the monitor leaves the worker running (a new
client finds it by its pid and socket).

The worker runs the machine on its main thread in short slices; a control thread serves the
Unix socket (control.py) and hands every command to the main thread through a queue, so the
machine is only ever touched by one thread, between slices.  A guest that halts with
interrupts enabled and nothing armed is idle, not finished: the worker waits for console
input or a command instead of ending the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Host seconds per run slice: how soon a command is seen while the guest runs.
SLICE = 0.05
#: A console client that falls this far behind is disconnected rather than slowing the VM.
MAX_BACKLOG = 4 << 20


def _write_worker_file(vmdir: Path, data: dict[str, Any]) -> None:
    from hyperv_emu.fileio import write_atomic

    write_atomic(vmdir / "worker.json", (json.dumps(data, indent=2) + "\n").encode())


# ---- the monitor ---------------------------------------------------------------------------
def monitor(vmdir: Path) -> int:
    """Fork the worker, wait for it, and record how it ended if it could not."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        status = 14
        try:
            status = Worker(vmdir).main()
        except BaseException:  # a bug: the traceback goes to worker.log
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
    try:
        info = json.loads((vmdir / "worker.json").read_text())
    except (OSError, ValueError):
        info = {}
    if info.get("pid") == pid and info.get("state") == "Off" and info.get("ended"):
        return 0  # the worker said itself how it ended
    was = info.get("state") if info.get("pid") == pid else None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            how = f"signal {sig} ({signal.Signals(sig).name})"
        except ValueError:
            how = f"signal {sig}"
    else:
        how = f"exit status {os.waitstatus_to_exitcode(status)}"
    message = f"worker died: {how}" + (f" while {was}" if was and was != "Off" else "")
    _write_worker_file(vmdir, {**info, "pid": pid, "state": "Off",
                               "ended": {"message": message, "crashed": True,
                                         "time": time.time()}})
    return 0


# ---- the control channel -------------------------------------------------------------------
@dataclass
class _Conn:
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    console: str | None = None
    close_after: bool = False


@dataclass
class Command:
    """A request for the main thread, answered through ``reply``."""

    cmd: str
    args: dict[str, Any]
    conn: _Conn | None


class ControlServer(threading.Thread):
    """Serves control.sock: answers ``status`` itself, queues every other command for the
    main thread, and carries console bytes."""

    def __init__(self, worker: Worker, path: Path) -> None:
        super().__init__(name="control", daemon=True)
        self.worker = worker
        self.lock = threading.Lock()
        self.sel = selectors.DefaultSelector()
        self.conns: dict[socket.socket, _Conn] = {}
        self.rw: _Conn | None = None
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ)

    def _wake(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass

    def send(self, conn: _Conn, data: bytes, *, close: bool = False) -> None:
        """Queue ``data`` for ``conn`` (any thread)."""
        with self.lock:
            conn.outbuf += data
            conn.close_after = conn.close_after or close
        self._wake()

    def reply(self, conn: _Conn | None, answer: dict[str, Any], *, close: bool = False) -> None:
        """Answer a command (``conn`` None: it came from inside, nobody waits)."""
        if conn is not None:
            from hyperv_emu.vmms.control import encode

            self.send(conn, encode(answer), close=close)

    def broadcast(self, data: bytes) -> None:
        """Console output to every attached console client."""
        with self.lock:
            for conn in self.conns.values():
                if conn.console is not None:
                    if len(conn.outbuf) > MAX_BACKLOG:
                        conn.outbuf.clear()
                        conn.close_after = True
                    else:
                        conn.outbuf += data
        self._wake()

    def run(self) -> None:
        while True:
            for key, _ in self.sel.select(timeout=1.0):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj == self.wake_r:
                    try:
                        while os.read(self.wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    assert isinstance(key.fileobj, socket.socket)
                    self._readable(key.fileobj)
            self._flush_all()

    def drain(self, limit: float = 5.0) -> None:
        """Wait (at most ``limit`` seconds) until every queued answer and every console
        client's last output has been sent."""
        t_end = time.monotonic() + limit
        while time.monotonic() < t_end:
            with self.lock:
                if not any(c.outbuf for c in self.conns.values()):
                    return
            self._wake()
            time.sleep(0.005)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        with self.lock:  # the main thread reads conns (broadcast, drain)
            self.conns[sock] = _Conn(sock)
        self.sel.register(sock, selectors.EVENT_READ)

    def _drop(self, conn: _Conn) -> None:
        with self.lock:
            self.conns.pop(conn.sock, None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        if self.rw is conn:
            self.rw = None

    def _readable(self, sock: socket.socket) -> None:
        conn = self.conns.get(sock)
        if conn is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        if conn.console is not None:
            if conn.console == "rw":
                self.worker.commands.put(Command("input", {"data": data}, None))
            return
        conn.inbuf += data
        while b"\n" in conn.inbuf and conn.console is None:
            line, _, rest = bytes(conn.inbuf).partition(b"\n")
            conn.inbuf[:] = rest
            self._request(conn, line)
        if conn.console == "rw" and conn.inbuf:
            self.worker.commands.put(Command("input", {"data": bytes(conn.inbuf)}, None))
            conn.inbuf.clear()

    def _request(self, conn: _Conn, line: bytes) -> None:
        try:
            req = json.loads(line)
            cmd = req["cmd"]
            if not isinstance(cmd, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self.reply(conn, {"ok": False, "error": "not a JSON request with a 'cmd'"})
            return
        if cmd == "status":
            self.reply(conn, {"ok": True, **self.worker.status()})
        elif cmd == "console":
            with self.lock:
                mode = "rw" if self.rw is None and not req.get("read_only") else "ro"
                if mode == "rw":
                    self.rw = conn
            from hyperv_emu.vmms.control import encode

            self.send(conn, encode({"ok": True, "mode": mode}))
            conn.console = mode
        else:
            self.worker.commands.put(Command(cmd, req, conn))

    def _flush_all(self) -> None:
        for conn in list(self.conns.values()):
            with self.lock:
                data = bytes(conn.outbuf)
            sent = 0
            if data:
                try:
                    sent = conn.sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._drop(conn)
                    continue
                with self.lock:
                    del conn.outbuf[:sent]
            with self.lock:
                done = conn.close_after and not conn.outbuf
            if done:
                self._drop(conn)
        # Unsent data: wait until the sockets can take more (checked every 10 ms).
        if any(c.outbuf for c in self.conns.values()):
            time.sleep(0.01)
            self._wake()


# ---- the worker proper ---------------------------------------------------------------------
class Worker:
    """One VM's machine, its run loop and its control channel."""

    def __init__(self, vmdir: Path) -> None:
        self.vmdir = vmdir
        self.commands: queue.Queue[Command] = queue.Queue()
        self.state = "Starting"
        self.started = time.time()
        self.idle = False
        self.resumed_from: str | None = None
        self.built: Any = None
        self.server: ControlServer | None = None
        self.console_log: Any = None
        #: The run state to go back to after a checkpoint (checkpoint-resume).
        self.before_checkpoint = "Running"
        #: Requests waiting for the guest's integration services (vmms/ic_requests.py).
        self.pending: list[tuple[Command, Any]] = []

    # -- files --
    def _publish(self, **extra: Any) -> None:
        _write_worker_file(self.vmdir, {
            "pid": os.getpid(), "monitor": os.getppid(), "state": self.state,
            "started": self.started, "resumed_from": self.resumed_from, **extra})

    def set_state(self, state: str) -> None:
        self.state = state
        self._publish()

    def status(self) -> dict[str, Any]:
        """What ``status`` answers (read from the control thread)."""
        out: dict[str, Any] = {"state": self.state, "pid": os.getpid(), "idle": self.idle,
                               "started": self.started}
        built = self.built
        if built is not None:
            out["instructions"] = built.machine.clock.instructions
            out["virtual_ns"] = built.machine.clock.now()
        return out

    def _serial(self, data: bytes) -> None:
        self.console_log.write(data)
        if self.server is not None:
            self.server.broadcast(data)

    def _debugcon(self, data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()

    def _build(self) -> None:
        from hyperv_emu.vmms.machine_factory import build_machine
        from hyperv_emu.worker.config import VmConfig

        config = VmConfig.load(self.vmdir / "config.json")
        serial = None if config.serial == "none" else self._serial
        self.built = build_machine(config, serial, self._debugcon)

    # -- main --
    def main(self) -> int:
        """Build (or resume) the machine and serve until it ends; the process exit status."""
        from hyperv_emu.vmms import saving
        from hyperv_emu.vmms.store import VmDir, VmmsError

        vm = VmDir(self.vmdir.parent, self.vmdir.name)
        self.console_log = open(vm.console_log, "ab", buffering=0)  # noqa: SIM115
        self._publish()
        signal.signal(signal.SIGTERM, lambda *_: self.commands.put(Command("stop", {}, None)))
        try:
            self._build()
            saved = vm.saved()
            pair = vm.saved_pair(saved)
            if saved and saved.get("resumable") and pair is not None:
                saving.restore_from(self.built.machine, *pair)
                self.resumed_from = str(saved.get("dir"))
                saving.mark_consumed(vm)
        except Exception as exc:  # noqa: BLE001 - every start failure is reported the same way
            from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
            from hyperv_emu.worker.config import ConfigError

            known = isinstance(exc, (VmmsError, ConfigError, BlockDeviceError, OSError))
            if not known:
                import traceback

                traceback.print_exc()
            msg = str(exc) if known else f"internal error: {exc!r}"
            self.state = "Off"
            self._publish(ended={"message": f"start failed: {msg}", "start_failed": True,
                                 "time": time.time()})
            return 2
        self.server = ControlServer(self, vm.socket)
        self.server.start()
        self.set_state("Running")
        try:
            ended = self._loop(vm)
        finally:
            with contextlib.suppress(FileNotFoundError):
                vm.socket.unlink()
            if self.built is not None:
                self.built.close()
        self.state = "Off"
        self._publish(ended={**ended, "time": time.time()})
        if self.server is not None:
            self.server.drain()  # the last answers and output reach clients before the exit
        return 0

    def _loop(self, vm: Any) -> dict[str, Any]:
        while True:
            running = self.state in ("Running", "Stopping") and not self.idle
            try:
                command = self.commands.get(block=not running)
            except queue.Empty:
                command = None
            if command is not None:
                ended = self._handle(vm, command)
                if ended is not None:
                    return ended
                continue
            result = self.built.machine.run(timeout=SLICE)
            if result.reason == "timeout":
                ended = self._poll_pending(expire=False)
                if ended is not None:
                    return ended
                continue
            if result.reason == "halted" and self._can_wake():
                self.idle = True  # HLT with IF=1 and nothing armed: wait for input
                # Virtual time stands still now: requests to the guest cannot be answered.
                ended = self._poll_pending(expire=True)
                if ended is not None:
                    return ended
                continue
            for command, _ in self.pending:  # the guest ended the run (a graceful stop's end)
                stopping = command.cmd == "stop"
                self._answer(command, {"ok": True} if stopping else {
                    "ok": False, "error": f"the VM ended: {result.message}"})
            self.pending.clear()
            return {"message": result.message, "status": result.status,
                    "reason": result.reason}

    def _poll_pending(self, *, expire: bool) -> dict[str, Any] | None:
        """Answer the requests the guest has answered (all of them with ``expire``); the end
        of the run when a graceful stop turns the VM off."""
        machine = self.built.machine
        for item in list(self.pending):
            command, pending = item
            answer = pending.outcome(machine)
            if answer is None and expire:
                answer = pending.expired()
                if "turn_off" in answer:  # not a timeout: the guest can no longer act
                    answer = {"turn_off": "the guest halted with nothing to wake it, not off"}
            if answer is None:
                continue
            self.pending.remove(item)
            if "turn_off" in answer:
                self._answer(command, {"ok": True})
                return {"message": f"turned off: {answer['turn_off']}"}
            self._answer(command, answer)
        return None

    def _can_wake(self) -> bool:
        from hyperv_emu.vid.vp_state import RFLAGS_IF

        return any(vp.ctx.rflags & RFLAGS_IF for vp in self.built.machine.partition.vps)

    def _answer(self, command: Command, answer: dict[str, Any], *, close: bool = False) -> None:
        assert self.server is not None
        self.server.reply(command.conn, answer, close=close)

    def _handle(self, vm: Any, command: Command) -> dict[str, Any] | None:
        from hyperv_emu.vmms import saving
        from hyperv_emu.vmms.states import ALLOWED
        from hyperv_emu.vmms.store import VmmsError

        cmd = command.cmd
        if cmd == "input":
            self.built.machine.com1.feed(command.args["data"])
            self.idle = False
            return None
        if cmd == "stop" and self.state == "Stopping" and not command.args.get("graceful"):
            for waiting, _ in self.pending:  # a turn-off (SIGTERM) during a graceful stop
                self._answer(waiting, {"ok": True})
            self.pending.clear()
            self._answer(command, {"ok": True})
            return {"message": "turned off"}
        if cmd in ALLOWED and self.state not in ALLOWED[cmd] and cmd not in (
                "checkpoint-save", "checkpoint-resume"):
            self._answer(command, {"ok": False, "error": f"cannot {cmd} while {self.state}"})
            return None
        if cmd == "pause":
            self.set_state("Paused")
            for waiting, _ in self.pending:  # a paused guest answers nothing
                self._answer(waiting, {"ok": False, "error": "the VM was paused before the "
                                                             "guest answered"})
            self.pending.clear()
        elif cmd == "resume":
            self.set_state("Running")
        elif cmd == "reset":
            previous = self.state
            self.set_state("Resetting")
            self.built.machine.reset()
            self.idle = False
            self.set_state(previous)
        elif cmd == "stop":
            from hyperv_emu.vmms import ic_requests

            why = None
            # Through the shutdown IC if the guest runs (a paused VM is simply turned off).
            if command.args.get("graceful") and self.state == "Running":
                asked = ic_requests.graceful_stop(
                    self.built.machine, float(command.args.get("within")
                                              or ic_requests.STOP_TIMEOUT_S))
                if not isinstance(asked, str):
                    self.set_state("Stopping")
                    self.idle = False
                    self.pending.append((command, asked))
                    return None
                why = asked
            self.set_state("Stopping")
            self._answer(command, {"ok": True})
            return {"message": "turned off" + (f": {why}" if why else "")}
        elif cmd in ("vss", "ip-info"):
            self._ic_request(command)
            return None
        elif cmd == "save":
            self.set_state("Saving")
            try:
                name = saving.commit(vm, self.built.machine)
            except VmmsError as exc:
                self.set_state("Running")
                self._answer(command, {"ok": False, "error": str(exc)})
                return None
            self._answer(command, {"ok": True, "saved": name})
            return {"message": "saved", "saved": name}
        elif cmd == "checkpoint-save":
            return self._checkpoint_save(command)
        elif cmd == "checkpoint-resume":
            return self._checkpoint_resume(command)
        else:
            self._answer(command, {"ok": False, "error": f"unknown command {cmd!r}"})
            return None
        self._answer(command, {"ok": True, "state": self.state})
        return None

    def _ic_request(self, command: Command) -> None:
        """A request to the guest's integration services, answered when the guest answers."""
        from hyperv_emu.vmms import ic_requests

        if self.state != "Running":
            self._answer(command, {"ok": False, "error": f"the VM is {self.state}: only a "
                                                         "running guest can answer"})
            return
        try:
            args, machine = command.args, self.built.machine
            pending = (ic_requests.vss(machine, str(args.get("action")))
                       if command.cmd == "vss"
                       else ic_requests.ip_info(machine, str(args.get("adapter"))))
        except ic_requests.IcRequestError as exc:
            self._answer(command, {"ok": False, "error": str(exc)})
            return
        self.idle = False
        self.pending.append((command, pending))

    def _checkpoint_save(self, command: Command) -> dict[str, Any] | None:
        """Pause, write the state into the checkpoint's directory, let go of the disks."""
        from hyperv_emu.vmms import saving
        from hyperv_emu.vmms.store import VmmsError

        directory = Path(command.args["dir"])
        self.before_checkpoint = self.state
        self.set_state("Paused")
        try:
            saving.save_into(self.built.machine, directory)
        except VmmsError as exc:
            self.set_state(self.before_checkpoint)
            self._answer(command, {"ok": False, "error": str(exc)})
            return None
        self.built.close()  # the disks become differencing parents
        self._answer(command, {"ok": True})
        return None

    def _checkpoint_resume(self, command: Command) -> dict[str, Any] | None:
        """Rebuild the machine on the (new) configuration and continue from the state."""
        from hyperv_emu.vmms import saving

        directory = Path(command.args["dir"])
        try:
            self._build()
            saving.restore_from(self.built.machine, directory / saving.VSV,
                                directory / saving.BIN)
        except Exception as exc:  # noqa: BLE001 - reported, and the worker ends
            self._answer(command, {"ok": False, "error": str(exc)})
            return {"message": f"could not continue after a checkpoint: {exc}"}
        self.set_state(self.before_checkpoint)
        self._answer(command, {"ok": True, "state": self.state})
        return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m hyperv_emu.vmms.worker VMDIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hyperv_emu.vmms.worker VMDIR", file=sys.stderr)
        return 2
    return monitor(Path(args[0]).absolute())


if __name__ == "__main__":
    sys.exit(main())
