"""The stepper: vp.step(), Machine.run_until on hypercalls, MSRs, ports and interrupts,
address/port breakpoints, the views (registers, memory, disassembly) and the ``step`` command
driven through standard input."""

from __future__ import annotations

import io

import pytest

from hyperv_emu.cli import main
from hyperv_emu.debug.step import Stepper
from hyperv_emu.hypervisor.observe import (
    BreakpointEvent,
    HypercallEvent,
    InterruptEvent,
    IoEvent,
    MsrEvent,
)

from .helpers import CODE, guest_machine, real_mode_partition

VMCALL = bytes((0x0F, 0x01, 0xC1))


def test_vp_step_moves_one_instruction() -> None:
    part, vp, code = real_mode_partition("mov ax, 0x1234\nnop\nadd ax, 1\nhlt\n")
    clock = part.clock
    assert vp.step().reason == "instruction-limit"
    assert (vp.ctx.rip, clock.instructions) == (CODE + 3, 1)  # B8 34 12
    assert vp.read_registers()["rax"] & 0xFFFF == 0x1234
    vp.step()
    assert (vp.ctx.rip, clock.instructions) == (CODE + 4, 2)  # 90
    vp.step()
    assert (vp.ctx.rip, clock.instructions) == (CODE + 7, 3)  # 83 C0 01
    assert vp.read_registers()["rax"] & 0xFFFF == 0x1235
    assert vp.step().reason == "halted" and vp.halted


def test_step_delivers_a_pending_interrupt_first() -> None:
    part, vp, _ = real_mode_partition("nop\nnop\nhlt\n")
    part.write_memory(0x40 * 4, (0x1100).to_bytes(2, "little") + b"\0\0")
    part.write_memory(0x1100, b"\x90\x90\xcf")  # nop; nop; iret
    vp.inject_interrupt(0x40)
    st = Stepper(part)
    events = st.step()
    assert len(events) == 1 and isinstance(events[0], InterruptEvent)
    assert events[0].vector == 0x40 and events[0].type == "external"
    assert (events[0].rip, events[0].handler_rip) == (CODE, 0x1100)
    assert vp.ctx.rip == 0x1101 and part.clock.instructions == 1  # one handler instruction


def test_run_until_hypercall_stops_on_the_vmcall() -> None:
    m = guest_machine("hv_hypercall")
    ev = m.run_until(hypercall=0x5C, max_instructions=30_000_000)
    assert isinstance(ev, HypercallEvent)
    assert ev.code == 0x5C and ev.name == "HvCallPostMessage" and ev.status is None
    assert m.vp.ctx.rip == ev.rip == 0x20000
    assert m.vp.mmu.read(ev.rip, 3) == VMCALL
    before = m.clock.instructions
    assert ev.instructions == before
    # The next step executes it: the completed record, RIP after the VMCALL, one instruction.
    st = Stepper(m)
    done = [e for e in st.step() if isinstance(e, HypercallEvent)]
    assert len(done) == 1 and done[0].code == 0x5C and done[0].status_name is not None
    assert m.vp.ctx.rip == 0x20003 and m.clock.instructions == before + 1
    # run_until again goes on to the next PostMessage, not the same one.
    ev2 = m.run_until(hypercall=0x5C, max_instructions=30_000_000)
    assert isinstance(ev2, HypercallEvent) and ev2.instructions > before
    assert m.vp.ctx.rip == 0x20000


def test_run_until_msr_stops_before_the_write() -> None:
    m = guest_machine("hv_hypercall")
    assert m.hv is not None
    ev = m.run_until(msr=0x40000000, max_instructions=30_000_000)
    assert isinstance(ev, MsrEvent) and ev.write and ev.result is None
    assert ev.name == "HV_X64_MSR_GUEST_OS_ID" and ev.value == 0x8100000000000001
    assert m.hv.msrs.guest_os_id == 0  # not written yet
    assert m.vp.mmu.read(ev.linear, 2) == b"\x0f\x30"  # WRMSR at RIP
    st = Stepper(m)
    events = st.step()
    assert isinstance(events[0], MsrEvent) and events[0].result == "ok"
    assert m.hv.msrs.guest_os_id == 0x8100000000000001


def test_run_until_port_and_interrupt() -> None:
    m = guest_machine("timer")
    ev = m.run_until(port=0x43, max_instructions=30_000_000)
    assert isinstance(ev, IoEvent) and ev.port == 0x43 and ev.write
    # Stops after the access: RIP on the next instruction.
    assert m.vp.ctx.rip == ev.rip + len(ev.insn[:2]) - (0 if ev.insn[0] == 0xE6 else 1)
    irq = m.run_until(interrupt=0x08, max_instructions=30_000_000)
    assert isinstance(irq, InterruptEvent) and irq.vector == 8 and irq.type == "external"
    assert m.vp.ctx.rip == irq.handler_rip  # stopped on the handler's first instruction
    assert m.run_until(interrupt=0x99, max_instructions=200_000) is None


def test_address_breakpoint_in_real_mode_boot_sector() -> None:
    m = guest_machine("hello")
    st = Stepper(m)
    n = st.add_breakpoint("address", 0x7C00)
    ev = st.cont(max_instructions=10_000_000)
    assert isinstance(ev, BreakpointEvent) and ev.linear == 0x7C00
    regs = m.vp.read_registers()
    assert regs["cs_base"] + regs["rip"] == 0x7C00 and ev.bits == 16
    count = m.clock.instructions
    assert ev.instructions == count
    # The boot sector's first instruction has not run; a step runs exactly it.
    st.step()
    assert m.clock.instructions == count + 1
    assert regs["cs_base"] + m.vp.ctx.rip != 0x7C00
    assert st.delete_breakpoint(n) and not st.delete_breakpoint(n)


def test_address_breakpoint_counts_and_continue() -> None:
    part, vp, code = real_mode_partition("""
        mov cx, 3
    again:
        inc ax
        loop again
        hlt
    """)
    st = Stepper(part)
    st.add_breakpoint("address", CODE + 3)  # inc ax
    hits = []
    for _ in range(3):
        ev = st.cont(max_instructions=1000)
        assert isinstance(ev, BreakpointEvent)
        hits.append((vp.ctx.rip, part.clock.instructions))
    assert hits == [(CODE + 3, 1), (CODE + 3, 3), (CODE + 3, 5)]
    assert st.cont(max_instructions=1000) is None and st.reason == "halted"
    assert vp.read_registers()["rax"] & 0xFFFF == 3


def test_port_breakpoint_and_views() -> None:
    part, vp, _ = real_mode_partition("mov al, 7\nout 0x80, al\nin al, 0x61\nnop\nhlt\n")
    part.write_memory(0x9000, b"hello, world")
    st = Stepper(part)
    st.add_breakpoint("port", 0x61)
    ev = st.cont()
    assert isinstance(ev, IoEvent) and ev.port == 0x61 and not ev.write and ev.value == 0x5A
    assert vp.ctx.rip == CODE + 6  # after IN (B0 07, E6 80, E4 61)
    assert "eax=0000005a" in st.registers() and "mode=real" in st.registers()
    dump = st.memory(0x9000, 16)
    assert dump.startswith("00009000  68 65 6c 6c 6f") and "|hello, world" in dump
    assert st.memory(0x9000, 4, physical=True).startswith("00009000  68 65 6c 6c")
    text = st.disassemble()
    assert "=> 0000:1006  90" in text and "nop" in text
    assert "in al, 0x61" in text.splitlines()[text.splitlines().index(
        next(ln for ln in text.splitlines() if ln.startswith("=>"))) - 1]
    assert "mov al, 7" in st.disassemble(CODE, 1)


def test_run_until_needs_a_condition_and_breakpoint_kinds_are_checked() -> None:
    part, _, _ = real_mode_partition("hlt\n")
    st = Stepper(part)
    with pytest.raises(ValueError):
        st.run_until()
    with pytest.raises(ValueError):
        st.add_breakpoint("watch", 1)
    with pytest.raises(ValueError):
        st.add_breakpoint("address")


def run_step_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                 args: list[str], script: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    status = main(["step", *args])
    return status, capsys.readouterr().out


def test_step_command_scripted(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run_step_cli(monkeypatch, capsys, ["hv_hypercall"], """
        until hypercall 0x5c
        s
        r
        b msr 0x40000001
        i
        frobnicate
        x 0x20000 4
        u
        d 1
        q
    """)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "=> [vp0] f000:fff0 ljmp 0xf000:0"  # stopped at the reset vector
    stop = next(ln for ln in lines if ln.startswith("stopped before:"))
    assert "vmcall" in stop and "hypercall HvCallPostMessage code=0x5c" in stop
    assert stop.endswith("-> (about to run)")
    after = lines[lines.index(stop) + 2]
    assert "HvCallPostMessage" in after and "reps_completed=0" in after
    assert "-> (about to run)" not in after
    assert "=> [vp0] 0000000000020003 ret" in lines
    assert any(ln.startswith("rip=0000000000020003") and "mode=long 64-bit" in ln
               for ln in lines)
    assert "breakpoint 1: msr 0x40000001" in lines
    assert "error: unknown command 'frobnicate' (try 'help')" in lines
    assert "00020000  0f 01 c1 c3" in out
    assert any(ln.startswith("   0000000000020000  0f01c1") and ln.endswith("vmcall")
               for ln in lines)  # the instruction before RIP, found by decoding backwards
    assert "deleted breakpoint 1" in lines


def test_step_command_breakpoint_and_continue(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run_step_cli(monkeypatch, capsys, ["hello"], "b 0x7c00\nc\ns\nd 1\nc\n")
    assert status == 0  # end of input quits
    assert "stopped before: [vp0] rip=7c00 (lin 07c00)" in out
    assert out.count("stopped before:") == 1
    assert "guest ended: guest wrote 0x0 to the exit port" in out


def test_step_command_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["step", "--memory", "1"]) == 2
    assert main(["step", "hello", "--kernel", "x.elf"]) == 2
    assert capsys.readouterr().err.count("hyperv-emu:") == 2
