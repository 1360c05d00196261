"""Guest RAM in a saved state: the ``.bin`` file of the seed's ``.vsv``/``.bin`` pair.

Only pages that hold something other than zeros are written, zlib-compressed.  Guest RAM is a
lazily populated anonymous mapping (memory.zeroed_buffer), so a 3.5 GiB guest that touched a
few megabytes must not be scanned byte by byte: on Linux the kernel's page map
(``/proc/self/pagemap``, Documentation/admin-guide/mm/pagemap.rst: bit 63 "page present",
bit 62 "page swapped") says which pages were ever populated, and only those are read and
compared with zeros.  A page never touched is zero by construction.  Elsewhere every page is
read (correct, slower).

Layout (little-endian)::

    "HVEMUBIN" | u32 format | u32 page size | u32 range count | ranges: u64 gpa, u64 size
    | u32 run count | runs: u64 gpa, u64 pages | u32 chunk count
    | chunks: u32 length, zlib stream of up to 1 MiB of the runs' pages, in order
    | SHA-256 of everything before it (32 bytes)

Chunks are compressed and decompressed independently, on as many threads as the host has
CPUs (zlib releases the GIL while it works).

Restoring zeroes each RAM range first (``madvise(MADV_DONTNEED)`` on Linux: the pages become
untouched again without being written; else the populated pages are overwritten with zeros)
and then copies the saved pages in.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from hyperv_emu.vid.memory import PAGE, GuestMemory

MAGIC = b"HVEMUBIN"
FORMAT = 1
DIGEST = 32
_HEAD = struct.Struct("<8sIII")
_PAIR = struct.Struct("<QQ")
_COUNT = struct.Struct("<I")
#: Pages read and compared at a time (and the zlib input chunk).
_CHUNK_PAGES = 256
_ZERO_CHUNK = bytes(PAGE * _CHUNK_PAGES)
_ZERO_PAGE = bytes(PAGE)
_MADV_DONTNEED = 4
#: pagemap top byte: present (bit 63) or swapped (bit 62).
_POPULATED = bytes(1 if b & 0xC0 else 0 for b in range(256))
_RUN = re.compile(b"\x01+")


class RamImageError(ValueError):
    """A ``.bin`` file that is damaged or does not fit this machine's RAM."""


@dataclass(frozen=True)
class RamRange:
    """One range of guest RAM and the host memory behind it."""

    gpa: int
    size: int
    host: int


@dataclass(frozen=True)
class RamImage:
    """A parsed, checked ``.bin``: its ranges, page runs (gpa, pages) and their contents."""

    ranges: list[tuple[int, int]]
    runs: list[tuple[int, int]]
    data: bytes
    digest: bytes


def ram_ranges(memory: GuestMemory) -> list[RamRange]:
    """The guest RAM of ``memory``: its RAM regions (not ROM, MMIO or the hypervisor's overlay
    pages, which the hypervisor's own state rebuilds), adjacent ones joined."""
    out: list[RamRange] = []
    for r in memory.regions:
        if r.kind != "ram" or r.overlay or r.buf is None:
            continue
        host = ctypes.addressof(r.buf)
        if out and out[-1].gpa + out[-1].size == r.gpa and out[-1].host + out[-1].size == host:
            out[-1] = RamRange(out[-1].gpa, out[-1].size + r.size, out[-1].host)
        else:
            out.append(RamRange(r.gpa, r.size, host))
    return out


def populated_runs(host: int, pages: int) -> Iterator[tuple[int, int]]:
    """(first page, count) runs of the ``pages`` pages at ``host`` that may hold data: the
    pages the kernel populated (or swapped out); all of them where the page map is missing."""
    try:
        with open("/proc/self/pagemap", "rb") as fh:
            fh.seek(host // PAGE * 8)
            raw = fh.read(pages * 8)
    except OSError:
        raw = b""
    if len(raw) != pages * 8:
        yield 0, pages
        return
    flags = raw[7::8].translate(_POPULATED)  # each entry's top byte -> 0 or 1
    for m in _RUN.finditer(flags):
        yield m.start(), m.end() - m.start()


def nonzero_pages(rng: RamRange) -> Iterator[tuple[int, bytes]]:
    """(page gpa, chunk of consecutive non-zero pages) for ``rng``, in address order."""
    for first, count in populated_runs(rng.host, rng.size // PAGE):
        page = first
        end = first + count
        while page < end:
            n = min(_CHUNK_PAGES, end - page)
            chunk = ctypes.string_at(rng.host + page * PAGE, n * PAGE)
            if chunk != _ZERO_CHUNK[:n * PAGE]:
                start = -1
                for i in range(n):
                    zero = chunk[i * PAGE:(i + 1) * PAGE] == _ZERO_PAGE
                    if not zero and start < 0:
                        start = i
                    elif zero and start >= 0:
                        yield rng.gpa + (page + start) * PAGE, chunk[start * PAGE:i * PAGE]
                        start = -1
                if start >= 0:
                    yield rng.gpa + (page + start) * PAGE, chunk[start * PAGE:]
            page += n


def encode(memory: GuestMemory, level: int = 1) -> bytes:
    """The ``.bin`` image of ``memory``'s RAM."""
    ranges = ram_ranges(memory)
    runs: list[tuple[int, int]] = []
    chunks: list[bytes] = []
    for rng in ranges:
        for gpa, chunk in nonzero_pages(rng):
            pages = len(chunk) // PAGE
            if runs and runs[-1][0] + runs[-1][1] * PAGE == gpa:
                runs[-1] = (runs[-1][0], runs[-1][1] + pages)
            else:
                runs.append((gpa, pages))
            chunks.append(chunk)
    from concurrent.futures import ThreadPoolExecutor  # only when saving (start-up cost)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        packed = list(pool.map(lambda c: zlib.compress(c, level), chunks))
    head = [_HEAD.pack(MAGIC, FORMAT, PAGE, len(ranges))]
    head += [_PAIR.pack(r.gpa, r.size) for r in ranges]
    head.append(_COUNT.pack(len(runs)))
    head += [_PAIR.pack(g, n) for g, n in runs]
    head.append(_COUNT.pack(len(packed)))
    body = [part for c in packed for part in (_COUNT.pack(len(c)), c)]
    digest = hashlib.sha256()
    for part in head + body:
        digest.update(part)
    return b"".join(head + body) + digest.digest()


def decode(blob: bytes) -> RamImage:
    """Parse and check a ``.bin`` image (checksum, layout, sizes); raises RamImageError."""
    if len(blob) < _HEAD.size + DIGEST or blob[:8] != MAGIC:
        raise RamImageError("not a hyperv-emu memory file")
    digest = blob[-DIGEST:]
    if hashlib.sha256(memoryview(blob)[:-DIGEST]).digest() != digest:
        raise RamImageError("memory file is damaged (checksum mismatch)")
    _, fmt, page, n_ranges = _HEAD.unpack_from(blob)
    if fmt != FORMAT or page != PAGE:
        raise RamImageError(f"memory file format {fmt} (page size {page}) is not supported "
                            f"(expected format {FORMAT})")
    pos = _HEAD.size
    try:
        ranges = [_PAIR.unpack_from(blob, pos + i * _PAIR.size) for i in range(n_ranges)]
        pos += n_ranges * _PAIR.size
        (n_runs,) = _COUNT.unpack_from(blob, pos)
        pos += _COUNT.size
        runs = [_PAIR.unpack_from(blob, pos + i * _PAIR.size) for i in range(n_runs)]
        pos += n_runs * _PAIR.size
        (n_chunks,) = _COUNT.unpack_from(blob, pos)
        pos += _COUNT.size
        packed = []
        for _ in range(n_chunks):
            (length,) = _COUNT.unpack_from(blob, pos)
            packed.append(memoryview(blob)[pos + _COUNT.size:pos + _COUNT.size + length])
            pos += _COUNT.size + length
        if pos != len(blob) - DIGEST:
            raise RamImageError("memory file is damaged (chunks do not fill it)")
        from concurrent.futures import ThreadPoolExecutor  # only when restoring

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            data = b"".join(pool.map(zlib.decompress, packed))
    except (struct.error, zlib.error) as exc:
        raise RamImageError(f"memory file is damaged ({exc})") from None
    if len(data) != sum(n for _, n in runs) * PAGE:
        raise RamImageError("memory file is damaged (page data has the wrong length)")
    return RamImage([(int(g), int(s)) for g, s in ranges], [(int(g), int(n)) for g, n in runs],
                    data, digest)


def check_fits(image: RamImage, memory: GuestMemory) -> None:
    """RamImageError unless ``image`` was saved from RAM laid out as ``memory``'s is."""
    have = [(r.gpa, r.size) for r in ram_ranges(memory)]
    if image.ranges != have:
        saved_kib = sum(s for _, s in image.ranges) >> 10
        have_kib = sum(s for _, s in have) >> 10
        raise RamImageError(f"memory file holds {saved_kib} KiB of RAM in {len(image.ranges)} "
                            f"ranges; this machine has {have_kib} KiB in {len(have)}")
    for gpa, pages in image.runs:
        if not any(g <= gpa and gpa + pages * PAGE <= g + s for g, s in have):
            raise RamImageError(f"memory file holds pages outside RAM at {gpa:#x}")


def apply(image: RamImage, memory: GuestMemory) -> None:
    """Make ``memory``'s RAM what ``image`` holds (check it with :func:`check_fits` first).
    The caller drops translated code afterwards."""
    ranges = ram_ranges(memory)
    for rng in ranges:
        _zero(rng)
    pos = 0
    src = memoryview(image.data)
    for gpa, pages in image.runs:
        rng = next(r for r in ranges if r.gpa <= gpa < r.gpa + r.size)
        n = pages * PAGE
        ctypes.memmove(rng.host + gpa - rng.gpa, bytes(src[pos:pos + n]), n)
        pos += n


def _zero(rng: RamRange) -> None:
    """Zero a RAM range without touching the pages that are zero already."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        if libc.madvise(rng.host, rng.size, _MADV_DONTNEED) == 0:
            return
    for first, count in populated_runs(rng.host, rng.size // PAGE):
        ctypes.memset(rng.host + first * PAGE, 0, count * PAGE)
