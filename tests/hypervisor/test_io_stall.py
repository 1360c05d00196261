"""An intercepted IN/OUT takes IO_ACCESS_NS of virtual time (partition.io_stall).

memtest86+ reads the ACPI PM timer twice in a row and takes it for broken unless the second
value is larger; on hardware the read itself takes about a microsecond.  Before the stall both
reads sat in one translated block and saw one time, and its PIT-polling fallback made 1 M
port exits for a 50 ms delay."""

from __future__ import annotations

from hv_helpers import flat32, machine

from hyperv_emu.hypervisor.partition import IO_ACCESS_NS


def test_back_to_back_port_reads_see_time_pass() -> None:
    m = machine()
    m.load(0x4000, "nop\nin eax, dx\nin eax, dx\nout 0x80, al\nhlt\n", 32)
    flat32(m, 0x4000)
    assert m.part.run(max_instructions=100).reason == "halted"
    times = [t for _, _, _, _, t in m.io]
    # n ns per instruction retired before each access, plus the accesses before it.
    n = m.clock.ns_per_insn
    assert times == [n, 2 * n + IO_ACCESS_NS, 3 * n + 2 * IO_ACCESS_NS]


def test_rdtsc_counts_the_port_access_time() -> None:
    m = machine()
    m.load(0x4000, "rdtsc\nmov ebx, eax\nin al, 0x61\nrdtsc\nhlt\n", 32)
    flat32(m, 0x4000)
    m.part.run(max_instructions=100)
    regs = m.vp.read_registers()
    # 1 GHz TSC, 3 instructions
    assert regs["rax"] - regs["rbx"] == IO_ACCESS_NS + 3 * m.clock.ns_per_insn


def test_a_deadline_overtaken_by_port_accesses_ends_the_slice() -> None:
    """A timer due within the stalls fires at the next block entry, not after the
    instructions that would have reached its deadline without them."""
    m = machine()
    m.load(0x4000, "out 0x80, al\nout 0x80, al\nout 0x80, al\njmp a\na:\n"
           + "nop\n" * 400 + "hlt\n", 32)
    flat32(m, 0x4000)
    fired: list[int] = []
    m.clock.timer(lambda: fired.append(m.clock.instructions)).arm(2 * IO_ACCESS_NS + 500)
    m.part.run(max_instructions=1000)
    assert fired == [4]  # three OUTs and the JMP: the block at ``a`` starts past the deadline


class _DeviceBug(Exception):
    pass


def test_an_exception_in_a_port_handler_reaches_the_caller() -> None:
    # The port hooks are called straight from ctypes (engine.add_port_hooks): a handler's
    # exception still ends the run and is raised out of it, for IN and for OUT.
    for src in ("in al, 0x71\nhlt\n", "out 0x70, al\nhlt\n"):
        m = machine()

        def bug(*_args: object, src: str = src) -> int:
            raise _DeviceBug(src)

        m.part.set_io_handler(bug, bug)
        m.load(0x4000, src, 32)
        flat32(m, 0x4000)
        try:
            m.part.run(max_instructions=100)
        except _DeviceBug as exc:
            assert exc.args == (src,)
        else:
            raise AssertionError("the handler's exception was lost")
