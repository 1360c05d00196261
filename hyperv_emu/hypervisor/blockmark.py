"""Finding instructions inside the translation block that was executing.

Unicorn reports an SVM intercept (HLT, RDTSC, RDMSR/WRMSR) through UC_HOOK_INTR, but before
calling the hook it overwrites EIP with ``exception_next_eip``, which for an intercept is stale
(left over from the last INT n).  The intercepted instruction is found instead by decoding
forward from the start of the block it sits in, which the block gate records (gate.py).  The
same decoding tells how many instructions of a block ran before a slice stopped inside it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from fnmatch import fnmatchcase

from ..disasm import disassembler

#: Longest run of straight-line code a block can hold that we are willing to decode.
_MAX_SCAN = 8192
_CHUNK = 64
#: (block start, mode) -> (linear address, bytes, mnemonic) of the intercepted instruction
#: found there before.
_found: dict[tuple[int, int], tuple[int, bytes, str]] = {}


def locate(read: Callable[[int, int], bytes], block: int, bits: int,
           mnemonics: frozenset[str], limit: int = 0) -> int | None:
    """Linear address of the first instruction whose mnemonic is in ``mnemonics`` at or after
    the block start ``block`` (see :func:`locate_insn`)."""
    found = locate_insn(read, block, bits, mnemonics, limit)
    return None if found is None else found[0]


def _wanted(mnemonic: str, ops: str, wanted: frozenset[str]) -> bool:
    """``wanted`` holds mnemonics (``"rdmsr"``) or, for instructions a mnemonic alone does not
    tell apart, shell-style patterns of the text with operands (``"mov cr4,*"`` for MOV to
    CR4, ``"mov *, cr8"`` for a read of CR8)."""
    if mnemonic in wanted:
        return True
    text = f"{mnemonic} {ops}"
    return any(" " in w and fnmatchcase(text, w) for w in wanted)


def locate_insn(read: Callable[[int, int], bytes], block: int, bits: int,
                mnemonics: frozenset[str], limit: int = 0) -> tuple[int, int, str] | None:
    """(linear address, length, text) of the first instruction ``mnemonics`` selects (see
    :func:`_wanted`; capstone's spelling, e.g. ``"rdmsr"``) at or after the block start
    ``block``: the one an intercept stopped, since a block is straight-line code and an earlier
    match would have stopped it first.  The text is capstone's mnemonic and operands
    (``"mov cr4, eax"``).  ``limit`` (the block's size in bytes, when known) bounds the search:
    decoding past the block's end would find an unrelated instruction further on, and the
    guest would resume after it.  None if it is not found."""
    cached = _found.get((block, bits))
    if cached is not None and _wanted(*cached[2].partition(" ")[::2], mnemonics) and (
            not limit or cached[0] + len(cached[1]) <= block + limit):
        # Re-check the one instruction: the guest may have rewritten its code since.  Same
        # bytes at the same address are the same instruction, without decoding it again.
        try:
            if read(cached[0], len(cached[1])) == cached[1]:
                return cached[0], len(cached[1]), cached[2]
        except Exception:  # noqa: BLE001, S110 - unmapped now: fall back to a full scan
            pass
    md = disassembler(bits)
    data = b""
    addr = block
    end_scan = block + (limit if limit else _MAX_SCAN)
    while addr < end_scan and len(data) < _MAX_SCAN:
        end = block + len(data)
        try:
            data += read(end, _CHUNK - (end % _CHUNK))
        except Exception:  # noqa: BLE001 - the block's tail may run into unmapped memory
            return None
        for address, size, mnemonic, ops in md.disasm_lite(data[addr - block:], addr):
            if address + size > end_scan:
                return None
            if _wanted(mnemonic, ops, mnemonics):
                if len(_found) > 65536:
                    _found.clear()
                start = address - block
                insn = data[start:start + size]
                text = f"{mnemonic} {ops}".rstrip()
                _found[(block, bits)] = (int(address), insn, text)
                return int(address), size, text
            addr = address + size
    return None


#: Bytes that may be a prefix of the instruction they precede (legacy prefixes; REX in 64-bit
#: code).
_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3))
_REX = frozenset(range(0x40, 0x50))


def hlt_at_block_end(read: Callable[[int, int], bytes], block: int, size: int,
                     bits: int) -> tuple[int, int, str] | None:
    """The HLT that raised an intercept in the block at ``block`` (``size`` bytes), as
    :func:`locate_insn` gives it, found without decoding: HLT ends its translated block
    (QEMU's translator stops after it), so it is the block's last instruction, F4h at the
    last byte, and the block's other instructions all precede it.  None where that cannot be
    told from the bytes (the byte before might be a prefix of it, or the bytes differ):
    decode then.  Spares the start-up of a guest that only halts the capstone import."""
    if size < 1:
        return None
    try:
        tail = read(block + size - 2, 2) if size > 1 else b"\0" + read(block, 1)
    except Exception:  # noqa: BLE001 - unreadable now: the decoder reports it
        return None
    if tail[1] != 0xF4:
        return None
    if size > 1 and (tail[0] in _PREFIXES or (bits == 64 and tail[0] in _REX)):
        return None
    return block + size - 1, 1, "hlt"


#: (block start, mode) -> (the bytes decoded from the block start, the offsets at which its
#: instructions end).  One decode serves every target in the block (an intercept or a fault
#: at any of its instructions); the bytes are compared on every use: the same linear
#: addresses hold other code in another address space (every process of an OS at the same
#: user address), after the guest rewrote it, or in another guest of the same host process.
_counted: dict[tuple[int, int], tuple[bytes, tuple[int, ...]]] = {}


def count_insns(read: Callable[[int, int], bytes], block: int, bits: int,
                target: int) -> int | None:
    """How many instructions lie from the block start ``block`` up to (not including) the
    linear address ``target`` in the same straight-line block; None if decoding from the
    block start does not land on ``target``."""
    if target == block:
        return 0
    span = target - block
    try:
        data = read(block, span)
    except Exception:  # noqa: BLE001 - unreadable now: the caller counts the whole block
        return None
    key = (block, bits)
    known = _counted.get(key)
    if known is None or not known[0].startswith(data):
        ends: list[int] = []
        for address, size, _mnemonic, _ops in disassembler(bits).disasm_lite(data, block):
            ends.append(address + size - block)
            if ends[-1] >= span:
                break
        if len(_counted) > 65536:
            _counted.clear()
        known = _counted[key] = (data, tuple(ends))
    ends_at = known[1]
    n = bisect_left(ends_at, span)
    return n + 1 if n < len(ends_at) and ends_at[n] == span else None
