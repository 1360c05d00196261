"""Timer deadlines set from a running guest arrive on time (issue 7, "exact deadlines"): boot
sectors booted by the BIOS program the real PIT and RTC and report through the E9h debug port;
the test reads the virtual clock when each report arrives."""

from __future__ import annotations

from hyperv_emu.asm import assemble
from hyperv_emu.hypervisor.partition import IO_ACCESS_NS
from hyperv_emu.vsp.storage import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

PIT_HZ = 1_193_182
NS = 1_000_000_000


def boot_sector(source: str) -> bytes:
    code = assemble(source, 16, 0x7C00)
    assert len(code) <= 510
    return code + bytes(510 - len(code)) + b"\x55\xaa"


def run(source: str, arm: object = None, icount_shift: int | None = None,
        guest_ns: int = NS // 10) -> tuple[Machine, list[tuple[int, int]]]:
    """Boot ``source`` for at most ``guest_ns`` of guest time (the BIOS's boot included);
    returns the machine and (byte, virtual ns) for each E9h write."""
    marks: list[tuple[int, int]] = []
    box: list[Machine] = []

    def debugcon(data: bytes) -> None:
        for b in data:
            marks.append((b, box[0].clock.now()))
            if callable(arm):
                arm(box[0], b)

    disk = MemoryImage(bytearray(boot_sector(source) + bytes(0x10000)))
    m = Machine(MachineConfig(disk=disk, debugcon_output=debugcon, icount_shift=icount_shift))
    box.append(m)
    m.run(max_instructions=guest_ns // m.clock.ns_per_insn)
    return m, marks


# Reinitialise the master 8259 (ICW1 clears IRR: no tick latched by the BIOS's timer survives),
# vectors 08h-0Fh, then unmask only IRQ 0.
_PIC_IRQ0_ONLY = """
    mov al, 0x11
    out 0x20, al
    mov al, 0x08
    out 0x21, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x01
    out 0x21, al
    mov al, 0xFE
    out 0x21, al
"""


def test_pit_mode0_armed_from_a_running_loop_interrupts_after_its_count() -> None:
    """PIT channel 0, mode 0, count 100, written from inside a busy loop with IF=0; then STI
    and a spin loop: IRQ 0 arrives 100 PIT periods (83.8 us) after the count was written."""
    m, marks = run(f"""
        cli
        xor ax, ax
        mov ds, ax
        mov word ptr [0x20], handler
        mov word ptr [0x22], 0
    start:
        {_PIC_IRQ0_ONLY}
        mov cx, 1000
    busy:
        dec cx
        jnz busy
        mov al, 0x30
        out 0x43, al
        mov al, 100
        out 0x40, al
        mov al, 0
        out 0x40, al
        mov al, 0x41
        out 0xE9, al
        sti
    spin:
        jmp spin
    handler:
        mov al, 0x49
        out 0xE9, al
        mov al, 0
        out 0xF4, al
        cli
        hlt
    """)
    assert [b for b, _ in marks] == [0x41, 0x49]
    delay = marks[1][1] - marks[0][1]
    # Mode 0: OUT rises when the count reaches 0, N (+1 for the load cycle) periods after the
    # write (8254 datasheet); the spin loop is a one-instruction block, so no later than that.
    # The first mark is written IO_ACCESS_NS after the count (the count's OUT takes that long).
    n = m.clock.ns_per_insn
    assert 100 * NS // PIT_HZ <= delay + IO_ACCESS_NS <= 101 * NS // PIT_HZ + n


def test_pit_mode0_armed_by_the_host_mid_slice_arrives_at_its_deadline() -> None:
    """The same timer armed from the host's side of a port write (the E9h report), while the
    guest spins with interrupts on: the slice that was running ends for the new deadline."""
    def arm(m: Machine, byte: int) -> None:
        if byte == 0x41:
            m.pit.io_write(0x43, 1, 0x30)
            m.pit.io_write(0x40, 1, 100)
            m.pit.io_write(0x40, 1, 0)

    m, marks = run(f"""
        cli
        xor ax, ax
        mov ds, ax
        mov word ptr [0x20], handler
        mov word ptr [0x22], 0
    start:
        mov al, 0x30
        out 0x43, al
        {_PIC_IRQ0_ONLY}
        sti
        mov al, 0x41
        out 0xE9, al
    spin:
        jmp spin
    handler:
        mov al, 0x49
        out 0xE9, al
        mov al, 0
        out 0xF4, al
        cli
        hlt
    """, arm)
    assert [b for b, _ in marks] == [0x41, 0x49]
    delay = marks[1][1] - marks[0][1]
    assert 100 * NS // PIT_HZ <= delay <= 101 * NS // PIT_HZ + m.clock.ns_per_insn


def test_rtc_periodic_8khz_counts_8192_in_one_virtual_second() -> None:
    """RTC register A rate 3 (8192 Hz) with PIE: the handler counts IRQ 8 for one virtual
    second, measured from the guest's 'S' report; the host stops the run then."""
    def arm(m: Machine, byte: int) -> None:
        if byte == 0x53:
            start = m.clock.now()
            m.clock.timer(lambda: m.partition.request_stop("second")).arm(start + NS)

    m, marks = run("""
        cli
        xor ax, ax
        mov ds, ax
        mov word ptr [0x600], 0
        mov word ptr [0x1C0], handler
        mov word ptr [0x1C2], 0
    start:
        mov al, 0xFB
        out 0x21, al
        mov al, 0xFE
        out 0xA1, al
        mov al, 0x0A
        out 0x70, al
        mov al, 0x23
        out 0x71, al
        mov al, 0x0B
        out 0x70, al
        in al, 0x71
        or al, 0x40
        mov ah, al
        mov al, 0x0B
        out 0x70, al
        mov al, ah
        out 0x71, al
        mov al, 0x0C
        out 0x70, al
        in al, 0x71
        mov al, 0x53
        out 0xE9, al
        sti
    spin:
        jmp spin
    handler:
        push ax
        inc word ptr [0x600]
        mov al, 0x0C
        out 0x70, al
        in al, 0x71
        mov al, 0x20
        out 0xA0, al
        out 0x20, al
        pop ax
        iret
    """, arm, icount_shift=3, guest_ns=2 * NS)  # 8 ns: the second spun is 125 M instructions
    count = int.from_bytes(m.partition.read_memory(0x600, 2), "little")
    assert marks and marks[0][0] == 0x53
    assert 8191 <= count <= 8193
