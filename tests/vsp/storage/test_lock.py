"""Image locking (lock.py): one writer or many readers per image, across real processes and
inside one process, with the holder named and the file left untouched when an open is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperv_emu.vsp.storage import convert, lock, vhdx
from hyperv_emu.vsp.storage.detect import open_image
from hyperv_emu.vsp.storage.lock import ImageInUseError, find_holders, force_share, open_locked

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[3]
# A boot sector that spins (jmp $) so the VM keeps running, and keeps its disks open, until
# the test ends it.
SPIN = b"\xeb\xfe" + bytes(508) + b"\x55\xaa"


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vhdx, "SYNC", False)


def cli(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """``hyperv-emu ARGV`` as its own process (this worktree's package)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "hyperv_emu", *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=120)


def spinning_disk(path: Path, fmt_kind: str = "dynamic") -> Path:
    convert.create_image(str(path), 8 * MiB, kind=fmt_kind)
    with open_image(str(path)) as img:
        img.write(0, SPIN)
    return path


@pytest.fixture
def vm_on(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A real ``hyperv-emu run --disk IMG`` that keeps running with IMG open read-write."""
    img = spinning_disk(tmp_path / "vm.vhd")
    with running(["--disk", str(img)], img) as proc:
        yield img, proc


class running:
    """Start ``hyperv-emu run ARGS`` and wait until it holds a lock on ``img``."""

    def __init__(self, args: list[str], img: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hyperv_emu", "run", *args, "--timeout", "300",
             "--serial", "none"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        st = os.stat(img)
        give_up = time.monotonic() + 120  # only so that a broken build fails instead of hanging
        while not any(h.pid == self.proc.pid for h in find_holders(st.st_dev, st.st_ino)):
            if time.monotonic() > give_up:
                self.proc.kill()
                raise AssertionError(f"the VM never locked {img}")
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"the VM ended before locking {img}: {err}")
            time.sleep(0.05)

    def __enter__(self) -> subprocess.Popen[bytes]:
        return self.proc

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_disk_commands_refused_while_a_vm_writes(
    vm_on: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    img, vm = vm_on
    before = img.read_bytes()
    who = f"pid {vm.pid}: hyperv-emu run --disk {img}"
    assert_refused(cli("disk", "compact", img), "image is in use by another process", who,
                   "locked for writing")
    assert_refused(cli("disk", "expand", img, "--size", "16M"), who)
    # Readers too: a writer's data is changing under them; they may ask to read anyway.
    assert_refused(cli("disk", "info", img), who, "--force-share")
    assert_refused(cli("disk", "check", img), who, "--force-share")
    assert_refused(cli("disk", "convert", img, tmp_path / "copy.vhdx"), who, "--force-share")
    assert not (tmp_path / "copy.vhdx").exists()
    child = tmp_path / "child.vhd"
    assert_refused(cli("disk", "create", child, "--parent", img), who)
    assert not child.exists()
    assert_refused(cli("run", "--disk", f"{img},readonly"), who, "',readonly,force-share'")
    assert img.read_bytes() == before
    assert vm.poll() is None  # the VM is still running

    # The read-only override works for readers, and only for them.
    done = cli("disk", "info", "--force-share", img)
    assert done.returncode == 0 and "dynamic" in done.stdout
    assert cli("disk", "check", "-U", img).returncode == 0
    assert cli("disk", "convert", "-U", img, tmp_path / "copy.vhdx").returncode == 0
    ran = cli("run", "--disk", f"{img},readonly,force-share", "--max-instructions", "1000")
    assert ran.returncode == 8, ran.stderr  # it booted and hit the instruction limit
    assert_refused(cli("run", "--disk", f"{img},force-share"), "read-only disks only")
    assert_refused(cli("run", "--disk", f"{img},readonly,shared"), "unknown option 'shared'")
    assert img.read_bytes() == before


def test_qemu_img_sees_our_lock(vm_on: tuple[Path, subprocess.Popen[bytes]]) -> None:
    """QEMU's own lock probe (byte-range OFD locks) meets ours: qemu-img refuses too."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        pytest.skip("qemu-img not installed")
    img, _vm = vm_on
    done = subprocess.run([qemu_img, "info", str(img)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode != 0 and "lock" in done.stderr


def test_same_image_twice_in_one_run(tmp_path: Path) -> None:
    img = spinning_disk(tmp_path / "twice.img", "fixed")
    before = img.read_bytes()
    assert_refused(cli("run", "--disk", img, "--disk", img, "--max-instructions", "1000"),
                   f"{img}: given twice")
    # Also through another name for the same file, or as a differencing parent.
    link = tmp_path / "link.img"
    os.link(img, link)
    assert_refused(cli("run", "--disk", img, "--disk", f"{link},readonly"),
                   f"{link}: given twice")
    base = spinning_disk(tmp_path / "base.vhd")
    child = tmp_path / "child.vhd"
    convert.create_image(str(child), None, kind="differencing", parent=str(base))
    assert_refused(cli("run", "--disk", child, "--disk", base), f"{base}: given twice")
    with pytest.raises(ImageInUseError, match="in use by this process"):
        with open_image(str(img)), open_image(str(link), read_only=True):
            pass
    assert img.read_bytes() == before


def test_readers_share(tmp_path: Path) -> None:
    img = spinning_disk(tmp_path / "shared.vhdx")
    with running(["--disk", f"{img},readonly"], img):
        with running(["--disk", f"{img},readonly"], img):
            assert cli("disk", "info", img).returncode == 0
            assert cli("disk", "check", img).returncode == 0
            assert_refused(cli("disk", "compact", img), "locked for reading")
            assert_refused(cli("run", "--disk", img), "locked for reading")


def test_differencing_parents_are_shared(tmp_path: Path) -> None:
    base = spinning_disk(tmp_path / "base.vhdx")
    a, b, c = tmp_path / "a.avhdx", tmp_path / "b.avhdx", tmp_path / "c.avhdx"
    for child in (a, b, c):
        convert.create_image(str(child), None, kind="differencing", parent=str(base))
    with open_image(str(a)) as _one, open_image(str(b)) as _two:  # two writers, one parent
        with pytest.raises(ImageInUseError, match="locked for reading"):
            open_image(str(base))
        with pytest.raises(ImageInUseError, match="locked for reading"):
            convert.merge_image(str(c))  # would write into the parent the others read
    with running(["--disk", str(a)], a):
        assert_refused(cli("disk", "merge", b), "pid")  # b's parent is in use by the VM
        assert cli("run", "--disk", b, "--max-instructions", "1000").returncode == 8
    assert convert.merge_image(str(b)) == str(base)


def test_flock_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OFD locks, flock() gives the same answers (per open file, so within one
    process too)."""
    monkeypatch.setattr(lock, "_OFD_SETLK", None)
    img = tmp_path / "f.img"
    img.write_bytes(bytes(4096))
    one = open_locked(str(img), write=False)
    two = open_locked(str(img), write=False)
    with pytest.raises(ImageInUseError, match="this process"):
        open_locked(str(img), write=True)
    os.close(one)
    os.close(two)
    w = open_locked(str(img), write=True)
    with pytest.raises(ImageInUseError, match="locked for writing"):
        open_locked(str(img), write=False)
    with force_share():
        os.close(open_locked(str(img), write=False))
        with pytest.raises(ImageInUseError):
            open_locked(str(img), write=True)
    os.close(w)


def test_rewrite_holds_the_lock_until_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = tmp_path / "c.vhdx"
    convert.create_image(str(img), 8 * MiB)
    with open_image(str(img)) as d:
        d.write(MiB, b"\1" * 4096)
    seen: list[str] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        if dst == str(img):
            try:
                os.close(open_locked(dst, write=False))
                seen.append("unlocked")
            except ImageInUseError:
                seen.append("locked")
        real_replace(src, dst)

    monkeypatch.setattr(convert.os, "replace", replace)
    convert.compact_image(str(img))
    convert.expand_image(str(img), 64 * MiB * 1024)  # too big for the BAT: rebuilt
    assert seen == ["locked", "locked"]


def test_open_follows_a_rename_over_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file renamed over the image between our open and our lock: the lock is taken again
    on the file the name now means, not kept on the replaced one."""
    img, new = tmp_path / "i.img", tmp_path / "new.img"
    img.write_bytes(b"old" + bytes(509))
    new.write_bytes(b"new" + bytes(509))
    real_lock = lock._lock
    calls: list[int] = []

    def racing_lock(fd: int, path: str, write: bool) -> None:
        real_lock(fd, path, write)
        if not calls:
            os.replace(new, img)  # what a rewrite by another process does
        calls.append(fd)

    monkeypatch.setattr(lock, "_lock", racing_lock)
    fd = open_locked(str(img), write=True)
    try:
        assert len(calls) == 2
        assert os.pread(fd, 3, 0) == b"new"
    finally:
        os.close(fd)


def test_a_vm_cannot_start_on_an_image_a_disk_operation_holds(tmp_path: Path) -> None:
    """The other direction: while this (test) process holds an image for writing, as
    ``disk compact`` does during its rewrite, ``run`` is refused and names this process."""
    img = spinning_disk(tmp_path / "busy.vhdx")
    with open_image(str(img)):
        before = img.read_bytes()
        result = cli("run", "--disk", img, "--max-instructions", "1000")
        assert_refused(result, f"pid {os.getpid()}: ", "locked for writing")
        assert_refused(cli("run", "--disk", f"{img},readonly"), "',readonly,force-share'")
        assert img.read_bytes() == before


@pytest.mark.parametrize("kind", ["raw", "vhd", "vhdx"])
def test_images_name_the_file_the_os_refused(tmp_path: Path, kind: str) -> None:
    from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
    from hyperv_emu.vsp.storage.raw import RawImage
    from hyperv_emu.vsp.storage.vhd import VhdImage

    cls = {"raw": RawImage, "vhd": VhdImage, "vhdx": vhdx.VhdxImage}[kind]
    missing = tmp_path / f"nope.{kind}"
    with pytest.raises(BlockDeviceError, match=f"nope.{kind}: cannot open \\(No such file"):
        cls(missing)
    (tmp_path / "dir").mkdir()
    with pytest.raises(BlockDeviceError, match="dir: cannot open \\(Is a directory"):
        cls(tmp_path / "dir")
