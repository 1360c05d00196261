"""REP INS/OUTS in one step (stringio.py): every run is compared with the same guest code run
element by element (no block route), which is Unicorn's own per-iteration semantics: memory,
RCX/RDI/RSI, what the device saw, and where a #PF or an interrupt landed.  The block route
must also really have been taken (``block_io.elements``)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from hv_helpers import IDT32, FakePic, Machine, flat32, gate32, gdt_desc, machine

from hyperv_emu.hypervisor.stringio import decode_rep_string_io

PORT = 0x1F0
BLOCK = 64  # elements per burst ("DRQ block") of the fake device


@dataclass
class FifoDevice:
    """A data port that produces 16-bit words 0x1000, 0x1001, ... and swallows OUT words, in
    bursts of BLOCK elements; at the end of each burst it can raise an interrupt."""

    size: int = 2
    produced: int = 0
    taken: list[int] = field(default_factory=list)
    pic: FakePic | None = None
    machine: Machine | None = None

    def _element(self) -> int:
        if self.size == 2:
            value = 0x1000 + self.produced
        else:
            value = 0x1000_0000 + self.produced
        self.produced += 1
        self._burst_edge(self.produced)
        return value

    def _burst_edge(self, count: int) -> None:
        if self.pic is not None and count % BLOCK == 0:
            assert self.machine is not None
            self.pic.queue.append(0x40)
            self.machine.vp.notify_interrupt()

    def read(self, port: int, size: int) -> int:
        return self._element() if port == PORT else 0xFF

    def write(self, port: int, size: int, value: int) -> None:
        if port == PORT:
            self.taken.append(value)
            self._burst_edge(len(self.taken))
        elif self.machine is not None:  # the guests' reports
            self.machine.io.append(("out", port, size, value, 0))

    def read_block(self, port: int, size: int, count: int) -> bytes:
        if port != PORT or size != self.size:
            return b""
        n = min(count, BLOCK - self.produced % BLOCK)
        fmt = "<H" if size == 2 else "<I"
        return b"".join(struct.pack(fmt, self._element()) for _ in range(n))

    def write_block(self, port: int, size: int, data: bytes) -> int:
        if port != PORT or size != self.size:
            return 0
        n = min(len(data) // size, BLOCK - len(self.taken) % BLOCK)
        fmt = "<H" if size == 2 else "<I"
        for i in range(n):
            self.write(port, size, struct.unpack_from(fmt, data, i * size)[0])
        return n


def build(block: bool, size: int = 2, with_pic: bool = False) -> tuple[Machine, FifoDevice]:
    m = machine()
    dev = FifoDevice(size=size, machine=m)
    if with_pic:
        dev.pic = FakePic()
        m.vp.set_interrupt_source(dev.pic)
    m.part.set_io_handler(dev.read, dev.write)
    if block:
        m.part.set_io_block_handler(lambda port: port == PORT, dev.read_block, dev.write_block)
    return m, dev


def outcome(m: Machine, dev: FifoDevice, lo: int, hi: int) -> tuple[object, ...]:
    regs = m.vp.read_registers()
    return (m.part.read_memory(lo, hi - lo), regs["rcx"], regs["rdi"], regs["rsi"],
            regs["rip"], dev.produced, dev.taken, m.outs())


def run_both(setup, lo: int, hi: int, **kw):  # type: ignore[no-untyped-def]
    """Run ``setup(m)`` then the partition, element by element and with blocks."""
    results = []
    for block in (False, True):
        m, dev = build(block, **kw)
        setup(m)
        ex = m.part.run(max_instructions=200_000)
        assert ex.reason == "halted", ex
        results.append(outcome(m, dev, lo, hi))
        if block:
            assert m.part.block_io is not None and m.part.block_io.elements > 0
    assert results[1] == results[0]
    return results[1]


def test_decoder() -> None:
    assert decode_rep_string_io(bytes.fromhex("f3666d"), 32).size == 2  # type: ignore[union-attr]
    op = decode_rep_string_io(bytes.fromhex("f36d"), 16)
    assert op is not None and (op.is_in, op.size, op.addr_bits, op.length) == (True, 2, 16, 2)
    op = decode_rep_string_io(bytes.fromhex("67f3266f"), 32)  # ES override, 16-bit addresses
    assert op is not None and (op.is_in, op.size, op.addr_bits, op.segment) == (False, 4, 16, 0)
    op = decode_rep_string_io(bytes.fromhex("f3486d"), 64)  # REX.W: still 32-bit elements
    assert op is not None and (op.size, op.addr_bits) == (4, 64)
    assert decode_rep_string_io(bytes.fromhex("6d"), 32) is None  # no REP
    assert decode_rep_string_io(bytes.fromhex("f26d"), 32) is None  # REPNE
    assert decode_rep_string_io(bytes.fromhex("f3a5"), 32) is None  # REP MOVSD


@pytest.mark.parametrize("df", [False, True], ids=["up", "down"])
def test_rep_insw_32bit(df: bool) -> None:
    start = 0x10000 if not df else 0x10000 + 2 * 299

    def setup(m: Machine) -> None:
        m.load(0x4000, f"{'std' if df else 'cld'}\nmov edi, {start}\nmov ecx, 300\n"
                       f"mov dx, {PORT}\nrep insw # ok66\ncld\nhlt\n", 32)
        flat32(m, 0x4000)

    mem, rcx, rdi, *_ = run_both(setup, 0xF000, 0x11400)
    assert rcx == 0 and rdi == (start + 600 if not df else start - 600)
    words = struct.unpack("<300H", mem[0x1000:0x1000 + 600])
    assert words == (tuple(range(0x1000, 0x1000 + 300)) if not df
                     else tuple(reversed(range(0x1000, 0x1000 + 300))))


def test_rep_insd_and_outsd_32bit() -> None:
    def setup(m: Machine) -> None:
        m.part.write_memory(0x20000, b"".join(struct.pack("<I", 0xA0000000 + i)
                                              for i in range(200)))
        m.load(0x4000, f"mov edi, 0x10000\nmov ecx, 150\nmov dx, {PORT}\nrep insd\n"
                       "mov esi, 0x20000\nmov ecx, 200\nrep outsd\nhlt\n", 32)
        flat32(m, 0x4000)

    mem, rcx, rdi, rsi, _, produced, taken, _ = run_both(setup, 0x10000, 0x10400, size=4)
    assert produced == 150 and taken == [0xA0000000 + i for i in range(200)]
    assert (rcx, rdi, rsi) == (0, 0x10000 + 600, 0x20000 + 800)


def test_rep_outsw_down_with_segment_override() -> None:
    def setup(m: Machine) -> None:
        m.part.write_memory(0x30000, b"".join(struct.pack("<H", i) for i in range(256)))
        # ES:ESI (override) counting down from the last word.
        m.load(0x4000, f"std\nmov esi, {0x30000 + 2 * 255}\nmov ecx, 256\nmov dx, {PORT}\n"
                       ".byte 0xF3, 0x26, 0x66, 0x6F\ncld\nhlt\n", 32)  # rep es: outsw
        flat32(m, 0x4000)

    *_, taken, _ = run_both(setup, 0x30000, 0x30200)
    assert taken == list(reversed(range(256)))


def test_rep_insw_16bit_di_wraps_inside_the_segment() -> None:
    def setup(m: Machine) -> None:
        # ES = 2000h, DI = FFC0h: 0x20 words up to the segment end, then DI wraps to 0000h.
        m.load(0x7C00, f"mov ax, 0x2000\nmov es, ax\nmov di, 0xFFC0\nmov cx, 0x60\n"
                       f"mov dx, {PORT}\nrep insw\nhlt\n", 16)
        m.vp.write_registers(cs=0, rip=0x7C00, ss=0, rsp=0x7000, rflags=2,
                             rcx=0xABCD_0000_0000, rdi=0x1234_0000)

    mem, rcx, rdi, *_ = run_both(setup, 0x20000, 0x30000)
    # The upper halves of ECX/EDI survive 16-bit address-size string instructions.
    assert rcx == 0xABCD_0000_0000 and rdi == 0x1234_0000 + 0x80
    assert struct.unpack("<H", mem[0xFFC0:0xFFC2])[0] == 0x1000
    assert struct.unpack("<H", mem[0x0000:0x0002])[0] == 0x1020
    assert struct.unpack("<H", mem[0x007E:0x0080])[0] == 0x105F


def _paged(m: Machine, entry: int) -> None:
    pd, pt = 0x40000, 0x41000
    m.part.write_memory(pd, struct.pack("<I", pt | 3))
    m.part.write_memory(pt, b"".join(struct.pack("<I", (i << 12) | 3) for i in range(1024)))
    m.part.write_memory(pt + 0x101 * 4, struct.pack("<I", 0))  # 0x101000 not present
    flat32(m, entry)
    m.vp.write_registers(cr3=pd)
    m.vp.write_registers(cr0=0x80010011)


def test_page_fault_in_the_middle_leaves_rcx_rdi_on_the_element() -> None:
    def setup(m: Machine) -> None:
        # #PF handler: report ECX, EDI, CR2 and the error code, then stop.
        m.load(0x5000, "pop eax\nout 0x84, eax\nmov eax, ecx\nout 0x85, eax\n"
                       "mov eax, edi\nout 0x86, eax\nmov eax, cr2\nout 0x87, eax\nhlt\n", 32)
        m.part.write_memory(IDT32 + 14 * 8, gate32(0x5000, 0x10))
        # 400 words from 0x100F00: 128 fit below the not-present page at 0x101000.
        m.load(0x4000, f"mov edi, 0x100F00\nmov ecx, 400\nmov dx, {PORT}\n"
                       "rep insw # ok66\nhlt\n", 32)
        _paged(m, 0x4000)

    mem, *_, produced, _, outs = run_both(setup, 0x100F00, 0x101000)
    assert outs == [2, 400 - 128, 0x101000, 0x101000]  # write, not present, supervisor
    # INS probes its destination before reading the port: the faulting element was not read.
    assert produced == 128
    assert struct.unpack("<H", mem[-2:])[0] == 0x1000 + 127


def test_interrupt_in_the_middle_resumes_with_the_count_left() -> None:
    def setup(m: Machine) -> None:
        # Vector 40h: record ECX and EDI at the interrupt, EOI-free fake PIC, IRET.
        m.load(0x5000, "push eax\nmov eax, ecx\nout 0x85, eax\nmov eax, edi\nout 0x86, eax\n"
                       "pop eax\niretd\n", 32)
        m.part.write_memory(IDT32 + 0x40 * 8, gate32(0x5000, 0x10))
        m.load(0x4000, f"sti\nmov edi, 0x10000\nmov ecx, 200\nmov dx, {PORT}\n"
                       "rep insw # ok66\ncli\nhlt\n", 32)
        flat32(m, 0x4000)

    mem, rcx, rdi, _, _, produced, _, outs = run_both(setup, 0x10000, 0x10000 + 400,
                                                     with_pic=True)
    # One interrupt after each burst of 64 words, with the count left at that point.
    assert outs == [200 - 64, 0x10000 + 128, 200 - 128, 0x10000 + 256, 200 - 192,
                    0x10000 + 384]
    assert (rcx, rdi, produced) == (0, 0x10000 + 400, 200)
    assert struct.unpack("<200H", mem) == tuple(range(0x1000, 0x1000 + 200))


def test_string_over_its_own_code_page_goes_element_by_element() -> None:
    def setup(m: Machine) -> None:
        m.load(0x4000, f"mov edi, 0x4800\nmov ecx, 100\nmov dx, {PORT}\nrep insw # ok66\n"
                       "hlt\n", 32)
        flat32(m, 0x4000)

    m, dev = build(True)
    setup(m)
    assert m.part.run(max_instructions=10_000).reason == "halted"
    assert m.part.block_io is not None and m.part.block_io.elements == 0
    assert dev.produced == 100


def _long_mode(m: Machine, entry: int) -> None:
    """Long mode with 0-2 MiB identity mapped by one 2 MiB page (as test_longmode.py)."""
    pml4, pdpt, pd, gdt = 0x60000, 0x61000, 0x62000, 0x63000
    w = m.part.write_memory
    w(pml4, struct.pack("<Q", pdpt | 3))
    w(pdpt, struct.pack("<Q", pd | 3))
    w(pd, struct.pack("<Q", 0x83))
    w(gdt, b"\0" * 8 + gdt_desc(0, 0xFFFFF, 0x9A, 0xA) + gdt_desc(0, 0xFFFFF, 0x92, 0xC))
    vp = m.vp
    vp.write_registers(cr4=0x20)
    vp.write_registers(cr3=pml4)
    vp.write_registers(efer=0x100)
    vp.write_registers(cr0=0x80000011)
    vp.write_registers(gdtr_base=gdt, gdtr_limit=0x17, cs=0x08, ds=0x10, es=0x10, ss=0x10,
                       rsp=0x8000, rip=entry)


@pytest.mark.parametrize("addr32", [False, True], ids=["rdi", "edi"])
def test_rep_insw_and_outsw_64bit(addr32: bool) -> None:
    # With 0x67 the string uses EDI and ECX: their upper halves are ignored, and the results
    # are written back zero-extended.
    prefix = ".byte 0x67\n" if addr32 else ""
    high = 0xABCD_0000_0000 if addr32 else 0

    def setup(m: Machine) -> None:
        m.part.write_memory(0x30000, b"".join(struct.pack("<H", 0x7000 + i) for i in range(300)))
        m.load(0x4000, f"mov rdi, {high + 0x10000}\nmov rcx, {high + 300}\nmov dx, {PORT}\n"
                       f"{prefix}rep insw # ok66\nmov rsi, 0x30000\nmov ecx, 300\n"
                       f"rep outsw # ok66\nhlt\n", 64)
        _long_mode(m, 0x4000)

    mem, rcx, rdi, rsi, _, produced, taken, _ = run_both(setup, 0x10000, 0x10000 + 600)
    assert struct.unpack("<300H", mem) == tuple(range(0x1000, 0x1000 + 300))
    assert taken == list(range(0x7000, 0x7000 + 300)) and produced == 300
    assert (rcx, rdi, rsi) == (0, 0x10000 + 600, 0x30000 + 600)


def test_rep_insw_after_a_return_is_moved_from_its_first_element() -> None:
    # The BIOS's sector loop: a RET (which leaves the engine's EIP at its target), a
    # conditional jump (chained: EIP is not stored), then the REP INSW starting its block.
    # EIP is then stale at every element; the block gate's block start finds the REP, so each
    # 64-word burst moves in the callback of its first element.
    def setup(m: Machine) -> None:
        m.load(0x4000, f"mov edi, 0x10000\nmov ebx, 4\nsector:\ncall wait\njc sector\n"
                       f"mov ecx, {BLOCK}\nmov dx, {PORT}\ntest ebx, ebx\njz done\n"
                       "rep insw # ok66\ndec ebx\njmp sector\ndone:\nhlt\n"
                       "wait:\nclc\nret\n", 32)
        flat32(m, 0x4000)

    m, dev = build(True)
    setup(m)
    ex = m.part.run(max_instructions=200_000)
    assert ex.reason == "halted", ex
    assert dev.produced == 4 * BLOCK
    assert m.part.block_io is not None and m.part.block_io.elements == 4 * (BLOCK - 1)
    assert struct.unpack(f"<{4 * BLOCK}H", m.part.read_memory(0x10000, 8 * BLOCK)) == tuple(
        range(0x1000, 0x1000 + 4 * BLOCK))
