"""Image locking: one writer or any number of readers per disk image, across processes.

Every open of an image file (``run``'s disks, CD and differencing parents, every ``disk``
command) goes through :func:`open_locked`, which takes an advisory lock on the whole file: an
exclusive lock for a writer, a shared lock for a reader, as QEMU does for its images. A second
writer, or a writer while readers hold the file, or a reader while a writer holds it, is
refused at once with :class:`ImageInUseError` naming the holder.

The lock is an open-file-description ("OFD") record lock (``fcntl(F_OFD_SETLK)``, Linux 3.15+):
it belongs to the open file, not to the process, so two opens inside one process conflict too
(the same image given twice to ``run``) and closing an unrelated descriptor of the file does not
drop it, unlike classic POSIX record locks. Where OFD locks are unavailable, ``flock()`` is
used; on Linux it too is per open file description. A file system that supports neither is
used unlocked.

Readers may skip locking with :func:`force_share` (QEMU's ``force-share``): they neither take
nor check a lock, so they can read an image a running VM holds for writing, and may see it
change under them. Writers can never skip it.

Whole-file rewrites rename a new file over the image; the rewriter keeps its lock on the old
file until the rename is done, and :func:`open_locked` checks after locking that the path still
names the file it locked (else it opens the new file and tries again), so nobody ends up
holding a lock on, or writing to, a file that is no longer the image.

Fcntl locks carry no text, so the holder is found when a lock is refused: the descriptors in
``/proc/PID/fd`` that refer to the same file and whose ``/proc/PID/fdinfo`` shows a lock, and
that process's command line.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from hyperv_emu.vsp.storage.blockdev import BlockDeviceError

# struct flock (fcntl(2), Linux): short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid, padded to the alignment of off_t ("0q"). l_len = 0 means "to the end of the file
# however far it grows"; l_pid must be 0 for OFD locks.
_FLOCK = "hhqqi0q"
_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)
_OFD_GETLK: int | None = getattr(fcntl, "F_OFD_GETLK", None)
#: Errors meaning "this file system cannot lock": the image is then used unlocked.
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
_CONFLICT = {errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK}
_MAX_ATTEMPTS = 8  # renames racing with the open: retried this many times

_force_share: contextvars.ContextVar[bool] = contextvars.ContextVar("force_share", default=False)


class ImageInUseError(BlockDeviceError):
    """Another open (in this or another process) holds a conflicting lock on the image."""

    def __init__(self, message: str, path: str, write: bool,
                 holders: tuple[Holder, ...] = ()) -> None:
        super().__init__(message)
        self.path = path
        #: Whether the refused open wanted to write (a reader may retry with force-share).
        self.write = write
        #: The holders found in /proc (may be empty).
        self.holders = holders

    @property
    def held_here(self) -> bool:
        """Whether this very process holds the conflicting lock (the image opened twice)."""
        return any(h.pid == os.getpid() for h in self.holders)


@dataclass(frozen=True)
class Holder:
    """One open of the file, found in /proc, that holds a lock on it."""

    pid: int
    write: bool
    command: str  # the holder's command line, shortened; "" if unreadable


@contextlib.contextmanager
def force_share() -> Iterator[None]:
    """Read-only opens inside this block take no lock and ignore other processes' locks."""
    token = _force_share.set(True)
    try:
        yield
    finally:
        _force_share.reset(token)


def open_locked(path: str, *, write: bool, create: bool = False) -> int:
    """Open ``path`` (read-write for a writer, else read-only) and lock it; returns the file
    descriptor, whose closing releases the lock.

    ``create`` makes a new file (O_EXCL). OSError from the open itself propagates unchanged;
    a conflicting lock raises :class:`ImageInUseError`.
    """
    flags = (os.O_RDWR if write else os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0)
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    for _attempt in range(_MAX_ATTEMPTS):
        fd = os.open(path, flags, 0o666)
        try:
            if not write and _force_share.get():
                return fd
            _lock(fd, path, write)
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # renamed over while we were locking: lock the file the name has now
        create = False
        flags &= ~(os.O_CREAT | os.O_EXCL)
    raise BlockDeviceError(f"{path}: the file kept being replaced while being opened")



def open_locked_image(path: str, *, write: bool) -> int:
    """:func:`open_locked` for a disk image the user named: the OS's refusal becomes a
    :class:`BlockDeviceError` with the message the CLI shows (a write access refused suggests
    read-only, which the caller may fall back to)."""
    try:
        return open_locked(path, write=write)
    except PermissionError as exc:
        raise BlockDeviceError(
            f"{path}: cannot open for writing ({exc.strerror}); open it read-only instead"
        ) from exc
    except OSError as exc:
        raise BlockDeviceError(f"{path}: cannot open ({exc.strerror})") from exc

def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _lock(fd: int, path: str, write: bool) -> None:
    """Take the lock or raise ImageInUseError; a file system without locks is left unlocked."""
    if _OFD_SETLK is not None:
        request = struct.pack(_FLOCK, fcntl.F_WRLCK if write else fcntl.F_RDLCK, os.SEEK_SET,
                              0, 0, 0)
        try:
            fcntl.fcntl(fd, _OFD_SETLK, request)
            return
        except OSError as exc:
            if exc.errno in _CONFLICT:
                raise _in_use(fd, path, write, _ofd_holder_writes(fd, write)) from None
            if exc.errno in _NO_LOCKING:
                return
            if exc.errno != errno.EINVAL:  # EINVAL: a kernel without OFD locks
                raise
    _flock(fd, path, write)


def _flock(fd: int, path: str, write: bool) -> None:
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if write else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _CONFLICT:
            raise _in_use(fd, path, write, None) from None
        if exc.errno not in _NO_LOCKING:
            raise


def _ofd_holder_writes(fd: int, write: bool) -> bool | None:
    """Whether the lock in the way is a write lock (F_OFD_GETLK reports the first one)."""
    assert _OFD_GETLK is not None
    probe = struct.pack(_FLOCK, fcntl.F_WRLCK if write else fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
    try:
        l_type = struct.unpack(_FLOCK, fcntl.fcntl(fd, _OFD_GETLK, probe))[0]
    except OSError:
        return None
    if l_type == fcntl.F_UNLCK:
        return None  # released in the meantime
    return bool(l_type == fcntl.F_WRLCK)


def _in_use(fd: int, path: str, write: bool, holder_writes: bool | None) -> ImageInUseError:
    st = os.fstat(fd)
    holders = find_holders(st.st_dev, st.st_ino, skip_fd=fd)
    if holder_writes is None and holders:
        holder_writes = any(h.write for h in holders)
    if holders:
        who = "; ".join(_describe(h) for h in holders[:3])
    else:
        who = "another process"
    mode = {True: " (locked for writing)", False: " (locked for reading)", None: ""}
    return ImageInUseError(f"{path}: image is in use by {who}{mode[holder_writes]}", path,
                           write, tuple(holders))


def _describe(h: Holder) -> str:
    if h.pid == os.getpid():
        return "this process (it is already open here)"
    what = f": {h.command}" if h.command else ""
    return f"another process (pid {h.pid}{what})"


def find_holders(dev: int, ino: int, *, skip_fd: int = -1) -> list[Holder]:
    """Opens of file (dev, ino) that hold a lock on it, from /proc (empty where /proc cannot
    be read: other users' processes, other systems)."""
    # fdinfo "lock:" lines: "1: OFDLCK ADVISORY  WRITE -1 fe:00:2146310 0 EOF" (the device
    # as hex major:minor, the inode in decimal), as in /proc/locks.
    key = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino} "
    me = os.getpid()
    found: list[Holder] = []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in sorted(pids):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in fds:
            if pid == me and name == str(skip_fd):
                continue
            try:
                st = os.stat(f"/proc/{pid}/fd/{name}")
                if (st.st_dev, st.st_ino) != (dev, ino):
                    continue
                with open(f"/proc/{pid}/fdinfo/{name}", encoding="ascii", errors="replace") as f:
                    locks = [ln for ln in f if ln.startswith("lock:") and key in ln]
            except OSError:
                continue
            if locks:
                found.append(Holder(pid, any(" WRITE " in ln for ln in locks), _command(pid)))
                break  # one line per process
    return found


def _command(pid: int) -> str:
    """A process's command line, with ``python -m hyperv_emu``/a path to the console script
    shown as ``hyperv-emu``, cut to a readable length."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return ""
    if not argv:
        return ""
    if len(argv) >= 3 and argv[1] == "-m" and argv[2] in ("hyperv_emu", "hyperv_emu.cli"):
        argv = ["hyperv-emu", *argv[3:]]
    elif len(argv) >= 2 and os.path.basename(argv[1]) == "hyperv-emu":
        argv = ["hyperv-emu", *argv[2:]]  # python /path/to/bin/hyperv-emu ...
    else:
        argv[0] = os.path.basename(argv[0])
    text = " ".join(argv)
    return text if len(text) <= 160 else text[:157] + "..."


__all__ = ["Holder", "ImageInUseError", "find_holders", "force_share", "open_locked",
           "open_locked_image"]
