"""Small machines for the tracer and stepper tests: shipped guests on the full machine, and a
bare partition running a few assembled instructions."""

from __future__ import annotations

from hyperv_emu.asm import assemble
from hyperv_emu.clock import VirtualClock
from hyperv_emu.guests import build_guest
from hyperv_emu.hypervisor.partition import Partition
from hyperv_emu.hypervisor.vp import VirtualProcessor
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

CODE = 0x1000


def guest_machine(name: str, serial: bytearray | None = None) -> Machine:
    """The full machine booting shipped guest ``name`` (COM1 output into ``serial``)."""
    out = serial if serial is not None else bytearray()
    return Machine(MachineConfig(disk=MemoryImage(bytearray(build_guest(name))),
                                 serial_output=out.extend))


def real_mode_partition(source: str) -> tuple[Partition, VirtualProcessor, bytes]:
    """A one-VP partition in real mode at 0000:1000 running ``source`` (16-bit), with
    port reads answering 0x5A."""
    part = Partition(VirtualClock("deterministic"))
    part.map_ram(0, 0x100000)
    vp = part.create_vp()
    part.set_io_handler(lambda port, size: 0x5A, lambda port, size, value: None)
    code = assemble(source, 16, CODE)
    part.write_memory(CODE, code)
    vp.write_registers(cs=0, rip=CODE, ss=0, rsp=0x8000, ds=0)
    return part, vp, code
