"""Guest-physical memory shared by every VP engine of a partition.

RAM and ROM live in host buffers mapped into each VP's Unicorn engine with ``mem_map_ptr``, so
all VPs see one memory; MMIO is ``mmio_map``'d into every engine with the same callbacks.  Host
writes invalidate translated code (UNICORN_NOTES.md, "Known Unicorn defects").
"""

from __future__ import annotations

import bisect
import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field

import unicorn

PAGE = 0x1000
MmioRead = Callable[[int, int], int]
MmioWrite = Callable[[int, int, int], None]


class UnmappedAccess(Exception):
    """A guest access (made by the hypervisor on the guest's behalf) hit unmapped memory."""

    def __init__(self, gpa: int, write: bool) -> None:
        super().__init__(f"{'write to' if write else 'read from'} unmapped GPA {gpa:#x}")
        self.gpa = gpa
        self.write = write


@dataclass
class Region:
    """One mapped range of guest-physical address space."""

    gpa: int
    size: int
    kind: str  # "ram", "rom", "mmio", "hidden"
    buf: ctypes.Array[ctypes.c_char] | None = None
    read: MmioRead | None = None
    write: MmioWrite | None = None
    engines: list[unicorn.Uc] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.gpa + self.size


def _check_aligned(gpa: int, size: int) -> None:
    if gpa % PAGE or size % PAGE or size <= 0:
        raise ValueError(f"mapping {gpa:#x}+{size:#x} is not page aligned")


class GuestMemory:
    """The partition's guest-physical address space."""

    def __init__(self) -> None:
        self.regions: list[Region] = []
        self._starts: list[int] = []
        self.engines: list[unicorn.Uc] = []
        #: Called with (gpa, length) after a host write, to drop stale translated code.
        self.invalidate: Callable[[int, int], None] = lambda gpa, n: None

    # ---- mapping --------------------------------------------------------------------------
    def _add(self, region: Region) -> Region:
        for r in self.regions:
            if region.gpa < r.end and r.gpa < region.end:
                raise ValueError(
                    f"mapping {region.gpa:#x}+{region.size:#x} overlaps {r.kind} at {r.gpa:#x}"
                )
        i = bisect.bisect(self._starts, region.gpa)
        self.regions.insert(i, region)
        self._starts.insert(i, region.gpa)
        for uc in self.engines:
            self._map_into(uc, region)
        return region

    def _map_into(self, uc: unicorn.Uc, r: Region) -> None:
        if r.kind in ("ram", "rom"):
            assert r.buf is not None
            perms = unicorn.UC_PROT_ALL if r.kind == "ram" else (
                unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC)
            uc.mem_map_ptr(r.gpa, r.size, perms, ctypes.addressof(r.buf))
        elif r.kind == "hidden":
            uc.mem_map_ptr(r.gpa, r.size, unicorn.UC_PROT_READ | unicorn.UC_PROT_WRITE,
                           ctypes.addressof(r.buf))  # type: ignore[arg-type]
        else:
            rd, wr = r.read, r.write
            assert rd is not None and wr is not None
            uc.mmio_map(r.gpa, r.size,
                        lambda _uc, off, size, _ud: rd(off, size) & ((1 << (8 * size)) - 1),
                        None,
                        lambda _uc, off, size, value, _ud: wr(off, size, value),
                        None)

    def attach(self, uc: unicorn.Uc) -> None:
        """Map every region into a new VP's engine."""
        self.engines.append(uc)
        for r in self.regions:
            self._map_into(uc, r)

    def map_ram(self, gpa: int, size: int) -> Region:
        _check_aligned(gpa, size)
        return self._add(Region(gpa, size, "ram", ctypes.create_string_buffer(size)))

    def map_rom(self, gpa: int, data: bytes) -> Region:
        size = max(PAGE, -(-len(data) // PAGE) * PAGE)
        _check_aligned(gpa, size)
        buf = ctypes.create_string_buffer(size)
        ctypes.memmove(buf, data, len(data))
        return self._add(Region(gpa, size, "rom", buf))

    def map_mmio(self, gpa: int, size: int, read: MmioRead, write: MmioWrite) -> Region:
        _check_aligned(gpa, size)
        return self._add(Region(gpa, size, "mmio", read=read, write=write))

    def map_hidden(self, gpa: int, size: int) -> Region:
        """Hypervisor-private memory (SVM control block, MSR permission map)."""
        _check_aligned(gpa, size)
        return self._add(Region(gpa, size, "hidden", ctypes.create_string_buffer(size)))

    def find(self, gpa: int) -> Region | None:
        i = bisect.bisect(self._starts, gpa) - 1
        if i >= 0 and self.regions[i].gpa <= gpa < self.regions[i].end:
            return self.regions[i]
        return None

    # ---- host-side access -------------------------------------------------------------------
    def _pieces(self, gpa: int, size: int, write: bool) -> list[tuple[Region, int, int]]:
        out = []
        while size > 0:
            r = self.find(gpa)
            if r is None:
                raise UnmappedAccess(gpa, write)
            n = min(size, r.end - gpa)
            out.append((r, gpa - r.gpa, n))
            gpa += n
            size -= n
        return out

    def read(self, gpa: int, size: int) -> bytes:
        """Host read of RAM/ROM (MMIO reads go to the device, one byte at a time)."""
        out = bytearray()
        for r, off, n in self._pieces(gpa, size, False):
            if r.buf is not None:
                out += ctypes.string_at(ctypes.addressof(r.buf) + off, n)
            else:
                assert r.read is not None
                out += bytes(r.read(off + i, 1) & 0xFF for i in range(n))
        return bytes(out)

    def write(self, gpa: int, data: bytes) -> None:
        """Host write (ROM included: the host loads it); drops stale translated code."""
        pos = 0
        for r, off, n in self._pieces(gpa, len(data), True):
            if r.buf is not None:
                ctypes.memmove(ctypes.addressof(r.buf) + off, data[pos:pos + n], n)
            else:
                assert r.write is not None
                for i in range(n):
                    r.write(off + i, 1, data[pos + i])
            pos += n
        self.invalidate(gpa, len(data))

    # ---- accesses the hypervisor makes on the guest's behalf (interrupt delivery) -----------
    def guest_read(self, gpa: int, size: int) -> bytes:
        """A guest-initiated read: MMIO goes to the device with the access size."""
        pieces = self._pieces(gpa, size, False)
        if len(pieces) == 1 and pieces[0][0].kind == "mmio" and size in (1, 2, 4, 8):
            r, off, _ = pieces[0]
            assert r.read is not None
            return (r.read(off, size) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        return self.read(gpa, size)

    def guest_write(self, gpa: int, data: bytes) -> None:
        """A guest-initiated write: ROM ignores it, MMIO gets it with the access size."""
        pos = 0
        for r, off, n in self._pieces(gpa, len(data), True):
            chunk = data[pos:pos + n]
            pos += n
            if r.kind == "rom":
                continue
            if r.buf is not None:
                ctypes.memmove(ctypes.addressof(r.buf) + off, chunk, n)
                self.invalidate(r.gpa + off, n)
            else:
                assert r.write is not None
                if n in (1, 2, 4, 8):
                    r.write(off, n, int.from_bytes(chunk, "little"))
                else:
                    for i in range(n):
                        r.write(off + i, 1, chunk[i])
