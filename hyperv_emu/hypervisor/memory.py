"""Guest-physical memory shared by every VP engine of a partition.

RAM and ROM live in host buffers mapped into each VP's Unicorn engine with ``mem_map_ptr``, so
all VPs see one memory; MMIO is ``mmio_map``'d into every engine with the same callbacks.  Host
writes invalidate translated code (UNICORN_NOTES.md, "Known Unicorn defects").

The A20 gate (:meth:`GuestMemory.set_a20`): while it is masked, the accesses made through this
object on the CPU's behalf (and the host's plain reads and writes) have physical address bit 20
forced to 0, as the CPU's A20M# input does; ``physical=True`` reads/writes bypass the gate, as a
bus master's DMA does.  The engines' own accesses are masked by the partition, not here (see
``Partition.set_a20``).
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import unicorn

PAGE = 0x1000
#: Physical address bit 20, which the A20 gate forces to 0 while it is masked.
A20_BIT = 1 << 20
#: Linux's MAP_NORESERVE (the mmap module does not export it): RAM larger than the host's free
#: memory plus swap is fine as long as the guest does not touch all of it, as with QEMU.
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)
MmioRead = Callable[[int, int], int]
MmioWrite = Callable[[int, int, int], None]


def _map_buffer(uc: unicorn.Uc, gpa: int, size: int, kind: str, host: int) -> None:
    """Map ``size`` bytes of host memory at ``host`` as guest RAM or ROM at ``gpa``.

    ROM is mapped without write permission and then given the same permissions again through
    ``mem_protect``: Unicorn 2.1.1 creates ``mem_map_ptr`` regions without QEMU's read-only
    flag, and ``mem_protect`` sets it.  With it, a guest store into ROM that the hypervisor's
    write-protection hook lets through is dropped by QEMU itself (``TLB_DISCARD_WRITE``), as a
    ROM chip ignores the write cycle: the instruction completes, nothing is written, and no
    self-modifying-code check runs, even when the store hits the block being executed."""
    if kind == "ram":
        uc.mem_map_ptr(gpa, size, unicorn.UC_PROT_ALL, host)
        return
    perms = unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC
    uc.mem_map_ptr(gpa, size, perms, host)
    uc.mem_protect(gpa, size, perms)


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
    #: The host memory behind RAM/ROM: only its address is used (``ctypes.addressof``).  A
    #: view into a larger buffer is a ``c_char`` at its first byte (see :meth:`map_ram`).
    buf: ctypes.Array[ctypes.c_char] | ctypes.c_char | None = None
    read: MmioRead | None = None
    write: MmioWrite | None = None
    engines: list[unicorn.Uc] = field(default_factory=list)
    #: Keeps a foreign backing buffer alive when ``buf`` is a view into it (MapGpaPages).
    owner: object = None
    #: True for a hypervisor overlay page (see :meth:`GuestMemory.map_overlay`).
    overlay: bool = False
    #: A byte view of RAM/ROM, made on first use by :meth:`GuestMemory.ram_page`.
    view: memoryview | None = field(default=None, repr=False, compare=False)

    @property
    def end(self) -> int:
        return self.gpa + self.size


def zeroed_buffer(size: int) -> ctypes.Array[ctypes.c_char]:
    """``size`` bytes of zeroed host memory for guest RAM, from a private anonymous mapping:
    the kernel supplies zero pages on first touch, so nothing is written (or made resident)
    until the guest or the host uses a page.  ``create_string_buffer`` would zero-fill, i.e.
    touch, every page up front (seconds and gigabytes for a large guest).  The ctypes array
    keeps the mapping alive."""
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    return (ctypes.c_char * size).from_buffer(mapping)


@lru_cache(maxsize=8)
def _run_terms(count: int) -> tuple[int, int]:
    """(sum of 2**(64k), sum of k * 2**(64k)) for k < count: see :func:`page_run_bytes`."""
    ones = sum(1 << (64 * k) for k in range(count))
    return ones, sum(k << (64 * k) for k in range(count))


def page_run_bytes(first: int, count: int) -> bytes:
    """The little-endian u64 list first, first+1, ... (``count`` of them), as MapGpaPages rep
    elements carry page numbers.  Built as one integer (first * sum 2**64k + sum k * 2**64k:
    no element carries into the next while every value is below 2**64), which is many times
    faster than packing each element; comparing against it tells whether a list is such a
    run without a Python loop."""
    ones, ramp = _run_terms(count)
    return (first * ones + ramp).to_bytes(8 * count, "little")


def _check_aligned(gpa: int, size: int) -> None:
    if gpa % PAGE or size % PAGE or size <= 0:
        raise ValueError(f"mapping {gpa:#x}+{size:#x} is not page aligned")


class GuestMemory:
    """The partition's guest-physical address space."""

    def __init__(self) -> None:
        self.regions: list[Region] = []
        self._starts: list[int] = []
        self.engines: list[unicorn.Uc] = []
        #: Overlay pages by page GPA, a stack each: the last one is what the guest sees.
        self.overlays: dict[int, list[Region]] = {}
        #: Called with (gpa, length) after a host write, to drop stale translated code.
        self.invalidate: Callable[[int, int], None] = lambda gpa, n: None
        #: False while the A20 gate masks address bit 20 (see :meth:`set_a20`).
        self.a20 = True
        #: Called with (gpa, length, linear address, engine) after the hypervisor stored to
        #: guest memory on a VP's behalf (see :meth:`code_written`); None: use ``invalidate``.
        self.invalidate_at: Callable[[int, int, int, object], None] | None = None
        #: Page GPA -> (view of its region, offset of the page in it, writable): the fast path
        #: of :meth:`ram_page`, emptied whenever the map changes.
        self._page_views: dict[int, tuple[memoryview, int, bool]] = {}
        #: Bumped whenever the map changes (with :attr:`_page_views` emptied), so views taken
        #: from :meth:`ram_page` and kept (the MMU's remembered walks) can be checked.
        self.generation = 0

    def set_a20(self, enabled: bool) -> None:
        """Open (True) or mask (False) the A20 gate for the accesses made through this object:
        masked, every address has bit 20 forced to 0 (0x100000-0x1FFFFF reads 0x0-0xFFFFF,
        0x300000 reads 0x200000, ...) whatever is mapped there, RAM, ROM, MMIO or overlay."""
        self.a20 = bool(enabled)

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
        self._forget_views()
        for uc in self.engines:
            self._map_into(uc, region)
        return region

    def _map_into(self, uc: unicorn.Uc, r: Region) -> None:
        if r.kind in ("ram", "rom"):
            assert r.buf is not None
            _map_buffer(uc, r.gpa, r.size, r.kind, ctypes.addressof(r.buf))
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
        for gpa, stack in self.overlays.items():
            if self._under(gpa) is not None:
                uc.mem_unmap(gpa, PAGE)
            self._map_into(uc, stack[-1])

    def map_ram(self, gpa: int, size: int,
                backing: ctypes.Array[ctypes.c_char] | None = None, offset: int = 0) -> Region:
        """Map zeroed RAM, or ``size`` bytes of a host buffer from ``offset`` (shared memory,
        as the root partition's MapGpaPages does)."""
        _check_aligned(gpa, size)
        if backing is None:
            return self._add(Region(gpa, size, "ram", zeroed_buffer(size)))
        if offset < 0 or offset + size > ctypes.sizeof(backing):
            raise ValueError("backing buffer too small")
        start = ctypes.addressof(backing) + offset
        # A mapping that continues the previous one in both address spaces joins it, so a
        # large RAM mapped page run by page run (MapGpaPages moves at most one input page of
        # elements per call) stays one engine region instead of thousands.
        prev = self._under(gpa - PAGE) if gpa else None
        if (prev is not None and prev.kind == "ram" and prev.end == gpa and not prev.overlay
                and prev.owner is backing and prev.buf is not None
                and ctypes.addressof(prev.buf) + prev.size == start
                and not any(prev.gpa <= page < prev.end for page in self.overlays)):
            i = self.regions.index(prev)
            del self.regions[i]
            del self._starts[i]
            for uc in self.engines:
                uc.mem_unmap(prev.gpa, prev.size)
            gpa, size, start = prev.gpa, prev.size + size, ctypes.addressof(prev.buf)
        # A sized array type per mapping would be a new ctypes type per size (15 µs each,
        # thousands of times for a large guest mapped batch by batch): the first byte will do.
        view = ctypes.c_char.from_address(start)
        return self._add(Region(gpa, size, "ram", view, owner=backing))

    def unmap(self, gpa: int, size: int) -> None:
        """Remove RAM pages [gpa, gpa+size) (splitting regions); other kinds raise ValueError."""
        _check_aligned(gpa, size)
        self._forget_views()
        end = gpa + size
        hit = [r for r in self.regions if r.gpa < end and gpa < r.end]
        if any(r.kind != "ram" for r in hit):
            raise ValueError(f"unmap {gpa:#x}+{size:#x} covers non-RAM memory")
        for r in hit:
            i = self.regions.index(r)
            del self.regions[i]
            del self._starts[i]
            lo, hi = max(gpa, r.gpa), min(end, r.end)
            for uc in self.engines:
                # Overlay pages are their own engine regions and stay; unmap the rest.
                run = lo
                while run < hi:
                    if run in self.overlays:
                        run += PAGE
                        continue
                    stop = run
                    while stop < hi and stop not in self.overlays:
                        stop += PAGE
                    uc.mem_unmap(run, stop - run)
                    run = stop
            assert r.buf is not None
            base = ctypes.addressof(r.buf)
            for a, b in ((r.gpa, lo), (hi, r.end)):
                if b > a:
                    view = ctypes.c_char.from_address(base + a - r.gpa)
                    piece = Region(a, b - a, "ram", view, owner=r.owner or r.buf)
                    j = bisect.bisect(self._starts, a)
                    self.regions.insert(j, piece)
                    self._starts.insert(j, a)
        self.invalidate(gpa, size)

    # ---- overlay pages -----------------------------------------------------------------------
    def _under(self, gpa: int) -> Region | None:
        i = bisect.bisect(self._starts, gpa) - 1
        if i >= 0 and self.regions[i].gpa <= gpa < self.regions[i].end:
            return self.regions[i]
        return None

    def next_start(self, gpa: int) -> int | None:
        """The start of the first region above ``gpa`` (None if there is none)."""
        i = bisect.bisect(self._starts, gpa)
        return self._starts[i] if i < len(self._starts) else None

    def map_overlay(self, gpa: int, data: bytes = b"", *, writable: bool = False) -> Region:
        """Cover one page with a hypervisor-owned page (TLFS "overlay pages": hypercall page,
        reference TSC page, SynIC pages) holding ``data``.  The guest reads and executes it;
        its writes are dropped (ROM behaviour) unless ``writable`` (the SIM and SIEF pages
        "behave like RAM", TLFS inter-partition-communication.md); the host writes it through
        :meth:`write`.  Whatever was underneath (RAM, or nothing) reappears on
        :meth:`unmap_overlay`."""
        _check_aligned(gpa, PAGE)
        under = self._under(gpa)
        if under is not None and under.kind not in ("ram", "rom"):
            raise ValueError(f"cannot overlay {under.kind} at {gpa:#x}")
        buf = ctypes.create_string_buffer(PAGE)
        ctypes.memmove(buf, data[:PAGE], min(len(data), PAGE))
        region = Region(gpa, PAGE, "ram" if writable else "rom", buf, overlay=True)
        stack = self.overlays.setdefault(gpa, [])
        self._forget_views()
        for uc in self.engines:
            if stack or under is not None:
                uc.mem_unmap(gpa, PAGE)
            self._map_into(uc, region)
        stack.append(region)
        self.invalidate(gpa, PAGE)
        return region

    def unmap_overlay(self, region: Region) -> None:
        """Remove an overlay page made by :meth:`map_overlay` (no-op if already removed)."""
        stack = self.overlays.get(region.gpa)
        if not stack or region not in stack:
            return
        top = stack[-1] is region
        stack.remove(region)
        self._forget_views()
        if not stack:
            del self.overlays[region.gpa]
        if top:
            under = stack[-1] if stack else self._under(region.gpa)
            for uc in self.engines:
                uc.mem_unmap(region.gpa, PAGE)
                if under is None:
                    continue
                if under.overlay:
                    self._map_into(uc, under)
                else:
                    assert under.buf is not None
                    _map_buffer(uc, region.gpa, PAGE, under.kind,
                                ctypes.addressof(under.buf) + region.gpa - under.gpa)
        self.invalidate(region.gpa, PAGE)

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

    def find(self, gpa: int, *, physical: bool = False) -> Region | None:
        """The region the CPU reaches at ``gpa`` (through the A20 gate unless ``physical``)."""
        if not (self.a20 or physical):
            gpa &= ~A20_BIT
        if self.overlays:
            stack = self.overlays.get(gpa & ~(PAGE - 1))
            if stack:
                return stack[-1]
        return self._under(gpa)

    # ---- host-side access -------------------------------------------------------------------
    def _pieces(self, gpa: int, size: int, write: bool,
                physical: bool = False) -> list[tuple[Region, int, int]]:
        if not (self.a20 or physical):
            return self._masked_pieces(gpa, size, write)
        out = []
        while size > 0:
            r = self.find(gpa, physical=True)
            if r is None:
                raise UnmappedAccess(gpa, write)
            n = min(size, r.end - gpa)
            if self.overlays:
                n = min(n, PAGE - (gpa & (PAGE - 1)))  # an overlay may cover the next page
            out.append((r, gpa - r.gpa, n))
            gpa += n
            size -= n
        return out

    def _masked_pieces(self, gpa: int, size: int,
                       write: bool) -> list[tuple[Region, int, int]]:
        """:meth:`_pieces` with the A20 gate masked: each megabyte-aligned run of the access
        goes to its address with bit 20 clear (an access crossing 0x100000 wraps to 0)."""
        out = []
        while size > 0:
            n = min(size, A20_BIT - (gpa & (A20_BIT - 1)))
            try:
                out += self._pieces(gpa & ~A20_BIT, n, write, physical=True)
            except UnmappedAccess as exc:
                raise UnmappedAccess(gpa + exc.gpa - (gpa & ~A20_BIT), write) from None
            gpa += n
            size -= n
        return out

    def read(self, gpa: int, size: int, *, physical: bool = False) -> bytes:
        """Host read of RAM/ROM (MMIO reads go to the device, one byte at a time); through
        the A20 gate unless ``physical`` (a bus master's view)."""
        out = bytearray()
        for r, off, n in self._pieces(gpa, size, False, physical):
            if r.buf is not None:
                out += ctypes.string_at(ctypes.addressof(r.buf) + off, n)
            else:
                assert r.read is not None
                out += bytes(r.read(off + i, 1) & 0xFF for i in range(n))
        return bytes(out)

    def write(self, gpa: int, data: bytes, *, physical: bool = False) -> None:
        """Host write (ROM included: the host loads it), through the A20 gate unless
        ``physical``; drops stale translated code."""
        pos = 0
        for r, off, n in self._pieces(gpa, len(data), True, physical):
            if r.buf is not None:
                ctypes.memmove(ctypes.addressof(r.buf) + off, data[pos:pos + n], n)
                if not self.a20:
                    self.invalidate(r.gpa + off, n)
            else:
                assert r.write is not None
                for i in range(n):
                    r.write(off + i, 1, data[pos + i])
            pos += n
        if self.a20:
            self.invalidate(gpa, len(data))

    # ---- accesses the hypervisor makes on the guest's behalf (interrupt delivery) -----------
    def _forget_views(self) -> None:
        self._page_views.clear()
        self.generation += 1

    def ram_page(self, gpa: int) -> tuple[memoryview, int, bool] | None:
        """Direct access to the RAM or ROM page the CPU reaches at ``gpa`` (through the A20
        gate): (a byte view of its region, the offset of ``gpa`` in that view, writable), or
        None for MMIO and unmapped pages.  The hypervisor's hot paths (interrupt delivery's
        gate, descriptor and stack accesses) use it instead of :meth:`guest_read` and
        :meth:`guest_write`: a dictionary hit and a slice instead of a region search."""
        if not self.a20:
            gpa &= ~A20_BIT
        page = gpa & ~(PAGE - 1)
        hit = self._page_views.get(page)
        if hit is None:
            r = self.find(page, physical=True)
            if r is None or r.buf is None or r.kind not in ("ram", "rom"):
                return None
            if r.view is None:
                r.view = memoryview((ctypes.c_char * r.size).from_address(
                    ctypes.addressof(r.buf))).cast("B")
            hit = self._page_views[page] = (r.view, page - r.gpa, r.kind == "ram")
        return hit[0], hit[1] + (gpa & (PAGE - 1)), hit[2]

    def code_written(self, gpa: int, length: int, linear: int, engine: object) -> None:
        """The hypervisor stored ``length`` bytes at ``gpa`` (one page) for the VP running on
        ``engine``, which reaches it at ``linear``: drop translated code for it."""
        if self.invalidate_at is not None:
            self.invalidate_at(gpa, length, linear, engine)
        else:
            self.invalidate(gpa, length)

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
