"""Parser targets: VHD, VHDX (with a log that needs replay) and ISO 9660 images opened from
fuzzed files.

An input is a list of patches over a valid base image that the target builds once with the
project's own writers, so the fuzzer mutates the structures a parser reads rather than
searching for a signature: records of ``kind, where, length, bytes``.  ``where`` points into a
non-zero 4 KiB page of the base (the headers, region tables, BAT, metadata, log and directory
records live there) or anywhere in the file; two kinds cut or extend the file.  Then the image is
opened read-only (VHDX: log replay into memory), read at a few places, opened read-write (VHDX:
replay into the file) and written.  The invariant: the parser raises only its own clean error,
:class:`~hyperv_emu.vsp.storage.blockdev.BlockDeviceError`; an IndexError, struct.error or
ZeroDivisionError is a bug.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from typing import ClassVar

from hyperv_emu.fuzz import ops as O
from hyperv_emu.fuzz.harness import Finding, Target, host_finding, watchdog
from hyperv_emu.vsp.storage.blockdev import BlockDevice, BlockDeviceError
from hyperv_emu.vsp.storage.iso import IsoImage, boot_entry, iso_info, list_files
from hyperv_emu.vsp.storage.vhd import VhdImage, check_vhd, create_vhd, vhd_info
from hyperv_emu.vsp.storage.vhdx import VhdxImage
from hyperv_emu.vsp.storage.vhdx_check import check_vhdx, vhdx_info
from hyperv_emu.vsp.storage.vhdx_create import create_vhdx

MiB = 1 << 20
PAGE = 4096
#: Patches per input (the operation budget of a parser input).
MAX_PATCHES = 64


def _scratch_dir() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="hyperv-emu-fuzz-", dir=base)


class FileTarget(Target):
    """A parser opened on a patched copy of a base image."""

    suffix: ClassVar[str] = ".img"
    watchdog_seconds: ClassVar[float] = 10.0

    def __init__(self) -> None:
        self._dir: str | None = None
        self._base: bytes | None = None
        self._hot: list[int] = []

    def make_base(self, path: str) -> None:
        """Write the valid base image at ``path`` (override)."""
        raise NotImplementedError

    def exercise(self, path: str, data: bytes) -> None:
        """Open and use the patched image (override); BlockDeviceError is a clean refusal."""
        raise NotImplementedError

    def _ensure(self) -> tuple[str, bytes]:
        if self._dir is None or self._base is None:
            self._dir = _scratch_dir()
            base_path = os.path.join(self._dir, "base" + self.suffix)
            self.make_base(base_path)
            with open(base_path, "rb") as f:
                self._base = f.read()
            os.unlink(base_path)
            zero = bytes(PAGE)
            self._hot = [p for p in range(0, len(self._base), PAGE)
                         if self._base[p:p + PAGE] != zero] or [0]
        return self._dir, self._base

    def close(self) -> None:
        """Remove the scratch directory."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __del__(self) -> None:
        self.close()

    def patch(self, data: bytes, trace: list[tuple[int, str]] | None = None) -> bytearray:
        """The base image with the input's patches applied."""
        _, base = self._ensure()
        image = bytearray(base)
        r = O.Reader(data)
        for _ in range(MAX_PATCHES):
            if r.done:
                break
            start = r.pos
            kind = r.u8() % 8
            if kind == 6:
                cut = r.uint(3) % (len(image) + 1)
                del image[cut:]
                text = f"truncate to {cut:#x}"
            elif kind == 7:
                grow = r.u16()
                image.extend(bytes(grow))
                text = f"extend by {grow:#x}"
            else:
                if kind < 5:
                    where = self._hot[r.u16() % len(self._hot)] + r.u16() % PAGE
                else:
                    where = r.uint(3) << 4
                length = 1 + r.u8() % 16
                chunk = r.take(length)
                where %= max(len(image), 1)
                image[where:where + len(chunk)] = chunk
                text = f"patch {where:#x}: {chunk.hex()}"
            if trace is not None:
                trace.append((start, text))
        return image

    def execute(self, data: bytes, trace: list[tuple[int, str]] | None = None) -> None:
        directory, _ = self._ensure()
        image = self.patch(data, trace)
        path = os.path.join(directory, "input" + self.suffix)
        with open(path, "wb") as f:
            f.write(image)
        try:
            with watchdog(self.watchdog_seconds):
                try:
                    self.exercise(path, data)
                except BlockDeviceError:
                    pass
                except Finding:
                    raise
                except Exception as exc:
                    raise host_finding(exc, f"{self.name} parser") from None
        finally:
            os.unlink(path)

    def decode_only(self, data: bytes) -> int:
        return len(self.patch(data))


def _use(disk: BlockDevice, data: bytes, write: bool) -> None:
    """Read the first, last and an input-chosen sector; write one when ``write``."""
    size = disk.size
    sector = max(disk.sector_size, 1)
    if size < sector:
        return
    pick = int.from_bytes(data[-4:], "little") if data else 0
    for off in (0, size - sector, (pick % (size // sector)) * sector):
        disk.read(off, sector)
    if write and not disk.read_only:
        disk.write((pick % (size // sector)) * sector, bytes([pick & 0xFF]) * sector)
        disk.flush()


class VhdTarget(FileTarget):
    name = "vhd"
    summary = "VHD parser (dynamic disk: footer, header, BAT, sector bitmaps) on a patched file"
    suffix = ".vhd"

    def make_base(self, path: str) -> None:
        create_vhd(path, 2 * MiB, "dynamic", block_size=MiB // 2)
        with VhdImage(path) as disk:
            disk.write(0, b"boot" * 128)
            disk.write(MiB + 4096, b"data" * 256)

    def exercise(self, path: str, data: bytes) -> None:
        vhd_info(path)
        check_vhd(path)
        with VhdImage(path, read_only=True) as disk:
            _use(disk, data, write=False)
        with VhdImage(path) as disk:
            _use(disk, data, write=True)


class VhdxTarget(FileTarget):
    name = "vhdx"
    summary = "VHDX parser: headers, region tables, metadata, BAT and log replay (read-only and " \
              "read-write) on a patched file"
    suffix = ".vhdx"

    def make_base(self, path: str) -> None:
        create_vhdx(path, 4 * MiB, block_size=MiB)
        disk = VhdxImage(path)
        disk.write(0, b"boot" * 128)
        disk.log_only = True  # leave two log entries that need replay on the next open
        disk.write(MiB + 512, b"B" * 512)
        disk.write(3 * MiB, b"C" * 8192)
        disk.close()

    def exercise(self, path: str, data: bytes) -> None:
        vhdx_info(path)
        check_vhdx(path)
        with VhdxImage(path, read_only=True) as disk:
            _use(disk, data, write=False)
        with VhdxImage(path) as disk:
            _use(disk, data, write=True)


class IsoTarget(FileTarget):
    name = "iso"
    summary = "ISO 9660 reader: volume descriptors, El Torito boot catalog, directory records"
    suffix = ".iso"

    def make_base(self, path: str) -> None:
        import pycdlib

        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=1, vol_ident="FUZZ")
        boot = b"\xeb\xfe" + bytes(2046)
        iso.add_fp(io.BytesIO(boot), len(boot), "/BOOT.IMG;1")
        iso.add_directory("/DIR")
        text = b"hello from the CD\n"
        iso.add_fp(io.BytesIO(text), len(text), "/DIR/HELLO.TXT;1")
        iso.add_eltorito("/BOOT.IMG;1", "/BOOT.CAT;1", media_name="noemul", boot_load_size=4)
        iso.write(path)
        iso.close()

    def exercise(self, path: str, data: bytes) -> None:
        iso_info(path)
        boot_entry(path)
        list_files(path)
        disk = IsoImage(path)
        try:
            _use(disk, data, write=False)
        finally:
            disk.close()


PARSER_TARGETS: tuple[type[FileTarget], ...] = (VhdTarget, VhdxTarget, IsoTarget)
