"""Guest-side execution for the Python VSC: the few instructions a VMBus driver needs the CPU
for (CALL the hypercall page, WRMSR, wait for an interrupt), run as real guest code on one VP
of a 64-bit partition, so every hypercall, MSR write and SynIC interrupt goes through the
hypervisor exactly as a guest's would.

The caller gives a long-mode VP whose low memory is identity mapped, with an IDT, a stack and
the hypercall page enabled, and its local APIC software-enabled and wired as the VP's
interrupt source; :class:`GuestCpu` writes its stubs at ``code_gpa`` and points the SINT
vector's IDT gate at an IRETQ (the SINT uses AutoEOI, as Linux does by default).  The stubs run
with interrupts off except while waiting: a message that arrives meanwhile stays pending in the
APIC and is taken by the next wait.
"""

from __future__ import annotations

import struct

from hyperv_emu.hypervisor.vp import VirtualProcessor

_CALL_RBX_HLT = bytes((0xFF, 0xD3, 0xF4))  # call rbx; hlt
_WRMSR_HLT = bytes((0x0F, 0x30, 0xF4))  # wrmsr; hlt
_WAIT = bytes((0xFB, 0xF4, 0xFA, 0xF4))  # sti; hlt; cli; hlt
_IRETQ = bytes((0x48, 0xCF))
_STUBS = {"call": 0, "wrmsr": 4, "wait": 8, "isr": 12}


class GuestError(RuntimeError):
    """The guest stub did not end where it should (the partition faulted or ran away)."""


class GuestCpu:
    """One VP used as the VSC's CPU (see the module docstring)."""

    def __init__(self, vp: VirtualProcessor, *, code_gpa: int, hypercall_gpa: int,
                 vector: int, max_instructions: int = 100_000) -> None:
        self.vp = vp
        self.part = vp.partition
        self.code = code_gpa
        self.hypercall_gpa = hypercall_gpa
        self.vector = vector
        self.max_instructions = max_instructions
        #: Interrupts taken while waiting (each wait returns after at most one).
        self.interrupts = 0
        blob = bytearray(16)
        for name, data in (("call", _CALL_RBX_HLT), ("wrmsr", _WRMSR_HLT), ("wait", _WAIT),
                           ("isr", _IRETQ)):
            blob[_STUBS[name]:_STUBS[name] + len(data)] = data
        self.part.write_memory(code_gpa, bytes(blob))
        regs = vp.read_registers()
        isr = code_gpa + _STUBS["isr"]
        gate = struct.pack("<HHBBHIi", isr & 0xFFFF, regs["cs"], 0, 0x8E, (isr >> 16) & 0xFFFF,
                           isr >> 32, 0)
        self.part.write_memory(regs["idtr_base"] + 16 * vector, gate)

    def _run(self, stub: str, ends: tuple[int, ...], **regs: int) -> int:
        """Run a stub to one of its HLTs (offsets ``ends`` past the stub's start); returns
        the offset it stopped at."""
        vp = self.vp
        start = self.code + _STUBS[stub]
        vp.write_registers(rip=start, **regs)
        vp.halted = False
        # The timeout only guards against a host bug leaving the guest halted while periodic
        # timers keep firing (no instructions retire then); runs never get near it.
        ex = self.part.run(max_instructions=self.max_instructions, timeout=30.0)
        at = vp.ctx.rip - start
        if ex.reason != "halted" or at not in ends:
            raise GuestError(f"guest stub {stub} ended with {ex.reason} ({ex.detail}) at "
                             f"RIP {vp.ctx.rip:#x}")
        return at

    def hypercall(self, control: int, rdx: int = 0, r8: int = 0) -> int:
        """CALL the hypercall page with RCX/RDX/R8; returns RAX (the result value)."""
        self._run("call", (3,), rcx=control, rdx=rdx, r8=r8, rbx=self.hypercall_gpa)
        return int(self.vp.ctx.gpr(0))

    def wrmsr(self, index: int, value: int) -> None:
        self._run("wrmsr", (3,), rcx=index, rax=value & 0xFFFF_FFFF, rdx=value >> 32)

    def wait(self) -> bool:
        """STI; HLT until an interrupt arrives (virtual time jumps to the next timer while
        halted); True if one was taken, False if nothing could wake the guest."""
        took = self._run("wait", (2, 4)) == 4
        self.interrupts += took
        return took
