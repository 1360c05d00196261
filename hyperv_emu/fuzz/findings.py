"""What the fuzzer reports and how it bounds an input: :class:`Finding` (an invariant that
broke, with the host traceback behind it) and the hang :class:`watchdog` (see
:mod:`hyperv_emu.fuzz.harness` for the invariants)."""

from __future__ import annotations

import _signal
import signal
import threading
import time
import traceback
from types import FrameType, TracebackType

#: Host seconds one input may take before the watchdog calls it a hang.
WATCHDOG_SECONDS = 5.0

class Finding(Exception):
    """An invariant broke: ``invariant`` names it, ``message`` says how, ``host_traceback`` is
    the traceback of the host exception behind it (empty when there was none)."""

    def __init__(self, invariant: str, message: str, host_traceback: str = "") -> None:
        super().__init__(f"{invariant}: {message}")
        self.invariant = invariant
        self.message = message
        self.host_traceback = host_traceback

    @property
    def summary(self) -> str:
        """The one-line summary printed beside a crash file."""
        return f"{self.invariant}: {self.message}"

    def signature(self, frames: int = 3) -> str:
        """What makes two findings the same bug: the invariant and the innermost ``frames``
        project frames of the host traceback (paths from ``hyperv_emu/`` on, so machines with
        the package in different places agree), else the message."""
        where: list[str] = []
        for line in self.host_traceback.splitlines():
            line = line.strip()
            at = line.find("hyperv_emu/")
            if line.startswith("File ") and at >= 0 and not line.startswith(_HARNESS, at):
                where.append(line[at:])
        return f"{self.invariant} {' <- '.join(reversed(where[-frames:])) or self.message}"


#: The fuzzer's own modules, whose frames say nothing about where a bug is.
_HARNESS = tuple(f"hyperv_emu/fuzz/{m}.py" for m in (
    "harness", "findings", "bench", "state_oracle", "engine", "ray_campaign", "libfuzzer",
    "chipset", "hypercalls", "parsers"))


class _Watchdog(BaseException):
    """Raised by SIGALRM; a BaseException so no device's ``except Exception`` can swallow it."""


class _Watcher:
    """The hang watchdog: a daemon thread that looks at the running input's deadline a few
    times a second and, past it, sends SIGALRM to the main thread, whose handler raises
    :class:`_Watchdog` there.  Starting an input only stores its deadline: an interval timer
    per input costs two system calls, more than a small input takes."""

    POLL = 0.1

    def __init__(self) -> None:
        #: Monotonic deadline of the running input; None between inputs.
        self.deadline: float | None = None
        #: Number of the running input, and of the last one the thread found past its
        #: deadline (an alarm counts only for the input it was sent for).
        self.seq = 0
        self.expired = -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # _signal.getsignal: signal.getsignal's enum conversion costs more than a small input.
        if _signal.getsignal(signal.SIGALRM) is not _on_alarm:
            signal.signal(signal.SIGALRM, _on_alarm)
        if self._thread is None or not self._thread.is_alive():
            main = threading.main_thread().ident
            assert main is not None
            self._thread = threading.Thread(target=self._loop, args=(main,), daemon=True,
                                            name="hyperv-emu fuzz watchdog")
            self._thread.start()

    def _loop(self, main: int) -> None:
        while True:
            time.sleep(self.POLL)
            seq, deadline = self.seq, self.deadline
            if deadline is not None and time.monotonic() > deadline:
                self.expired = seq
                signal.pthread_kill(main, signal.SIGALRM)


_WATCHER = _Watcher()


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    # An alarm that arrives after its input finished is ignored.
    if _armed and _WATCHER.expired == _WATCHER.seq:
        raise _Watchdog


_armed = False


class watchdog:  # noqa: N801 -- used as a function: ``with watchdog(seconds):``
    """Raise :class:`Finding` ("hang") if the body runs longer than ``seconds`` (main thread).
    A class rather than a ``@contextmanager`` generator: it is entered once per input."""

    __slots__ = ("seconds", "active")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = False

    def __enter__(self) -> None:
        if self.seconds <= 0 or threading.current_thread() is not threading.main_thread():
            return
        global _armed
        _WATCHER.start()
        _WATCHER.seq += 1
        _WATCHER.deadline = time.monotonic() + self.seconds
        _armed = self.active = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.active:
            return
        global _armed
        _armed = self.active = False
        _WATCHER.deadline = None
        if kind is _Watchdog:
            raise Finding("hang", f"one input ran longer than {self.seconds:g} s",
                          "".join(traceback.format_exception(exc))) from None


def host_finding(exc: BaseException, where: str) -> Finding:
    """A :class:`Finding` for a host exception that escaped ``where``."""
    return Finding("host-exception", f"{type(exc).__name__}: {exc} ({where})",
                   "".join(traceback.format_exception(exc)))
