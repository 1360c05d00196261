"""One VM: a partition with its VP, the PC motherboard and its devices, firmware, and the run.

This is the worker of DESIGN.md: it builds the guest-physical memory map, plugs the core VDevs
into the motherboard, connects the hypervisor's intercepts to the buses and the PIC to the VP,
loads the BIOS (and a Multiboot kernel when asked), runs, and turns the way the run ended into
the documented exit status.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from hyperv_emu.clock import ClockMode, VirtualClock
from hyperv_emu.firmware import build_bios
from hyperv_emu.hypervisor.exits import RunExit
from hyperv_emu.hypervisor.hv import Hypervisor, PartitionHv
from hyperv_emu.hypervisor.partition import Partition
from hyperv_emu.vdev.atapi import CdromDrive
from hyperv_emu.vdev.ide import Attachment, IdeChannel
from hyperv_emu.vdev.ioapic import IOAPIC_BASE, IoApic
from hyperv_emu.vdev.pci import PciBus
from hyperv_emu.vdev.pic import Pic
from hyperv_emu.vdev.piix import I440fxHost, Piix3Ide, Piix3Isa
from hyperv_emu.vdev.pit import Pit
from hyperv_emu.vdev.port61 import Port61
from hyperv_emu.vdev.rtc import Rtc
from hyperv_emu.vdev.serial import Uart16550
from hyperv_emu.vdev.system import (
    I8042,
    OUT_A20,
    DebugCon,
    ExitDevice,
    FastA20,
    PostCode,
    exit_status,
)
from hyperv_emu.vdev.vga import VgaText
from hyperv_emu.vid.root import ChildHandle, RootPartition
from hyperv_emu.vsp.storage.blockdev import BlockDevice
from hyperv_emu.worker import multiboot
from hyperv_emu.worker.config import MAX_MEMORY_MIB, ConfigError
from hyperv_emu.worker.events import EventLog
from hyperv_emu.worker.motherboard import Motherboard
from hyperv_emu.worker.serial_input import StreamInput

MiB = 1 << 20
BIOS_BASE = 0xF0000
BIOS_HIGH_ALIAS = 0xFFFF0000
BIOS_SIZE = 0x10000
VGA_WINDOW = (0xA0000, 0x20000)
#: POST code the BIOS writes when it enters INT 19h; with a kernel loaded the machine takes
#: over there, so the kernel starts with the PIC, PIT, RTC and BDA set up as under a real BIOS.
BOOT_POST_CODE = 0x19

# Exit statuses for ends other than the guest's own exit-port write, which gives (v << 1) | 1
# and is therefore always odd (QEMU's isa-debug-exit convention).  Ours are even.
EXIT_USAGE = 2
EXIT_TRIPLE_FAULT = 4
EXIT_HALTED = 6
EXIT_INSTRUCTION_LIMIT = 8
EXIT_TIMEOUT = 10
EXIT_GUEST_FAULT = 12
EXIT_INTERNAL_ERROR = 14
EXIT_INTERRUPTED = 130

_REASON_STATUS = {
    "triple-fault": EXIT_TRIPLE_FAULT,
    "halted": EXIT_HALTED,
    "instruction-limit": EXIT_INSTRUCTION_LIMIT,
    "timeout": EXIT_TIMEOUT,
    "fault": EXIT_GUEST_FAULT,
}
#: CMOS byte holding the BIOS boot sequence (firmware/services.inc, INT 19h): first device in
#: bits 3:0, second in bits 7:4; 2 = hard disk 80h, 3 = CD-ROM E0h (El Torito), 0 = end.
CMOS_BOOT_ORDER = 0x3D
BOOT_ORDERS = {"c": 0x32, "d": 0x23}
#: How many guest-requested resets one run follows before treating it as a reset loop.
MAX_RESETS = 16


class A20Gate:
    """The chipset's A20 gate: A20 is on while either source enables it, the 8042's output
    port bit 1 or port 92h bit 1 (Intel PIIX4 datasheet: A20M# is asserted only when both
    A20GATE and Port 92h bit 1 are 0); ``output(enabled)`` drives the CPUs' A20M# input."""

    def __init__(self, output: Callable[[bool], None]) -> None:
        self.output = output
        # Power-on values: port 92h bit 1 = 0, 8042 output port CFh (A20 on).
        self.port92 = False
        self.kbc = True
        output(self.enabled)

    @property
    def enabled(self) -> bool:
        return self.port92 or self.kbc

    def set_port92(self, on: bool) -> None:
        self.port92 = bool(on)
        self.output(self.enabled)

    def set_kbc(self, on: bool) -> None:
        self.kbc = bool(on)
        self.output(self.enabled)

    def load(self, port92: bool, kbc: bool) -> None:
        """Take both source bits at once (reset, restore)."""
        self.port92, self.kbc = bool(port92), bool(kbc)
        self.output(self.enabled)


@dataclass
class MachineConfig:
    """What the user asked for: memory, devices, what to boot, where output goes."""

    memory_mib: int = 32
    #: The primary master (kept for callers with one disk); or use ``disks``.
    disk: BlockDevice | None = None
    #: Up to four IDE disks: primary master, primary slave, secondary master, secondary slave.
    disks: Sequence[BlockDevice | None] = ()
    #: A CD image (2048-byte sectors, e.g. IsoImage) in an ATAPI CD-ROM drive on the secondary
    #: master; ``disks[2]`` must then be empty.
    cdrom: BlockDevice | None = None
    #: Boot order written to CMOS 3Dh: "c" hard disk then CD-ROM, "d" CD-ROM then hard disk.
    boot: str = "c"
    kernel: bytes | None = None
    append: str = ""
    initrds: Sequence[tuple[str, bytes]] = ()
    rtc_base: datetime.datetime | None = None
    clock_mode: ClockMode = "deterministic"
    serial_output: Callable[[bytes], None] | None = None
    #: Host input for COM1 (bytes, or a binary file read a chunk at a time as the guest takes
    #: it), sent flow-controlled: only when the receiver has room (see Uart16550.attach_input).
    serial_input: bytes | BinaryIO = b""
    #: Start sending serial_input only once the guest has written these bytes to COM1.
    serial_input_after: bytes = b""
    debugcon_output: Callable[[bytes], None] | None = None
    #: Offer the Hyper-V interface (CPUID 0x40000000+, synthetic MSRs, hypercalls).
    hyperv: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MachineExit:
    """How a run ended: the exit status, a one-line reason and the hypervisor's record."""

    status: int
    reason: str
    message: str
    guest_code: int | None = None
    run_exit: RunExit | None = None


class Machine:
    """A PC built from the core VDevs on one partition with one VP."""

    def __init__(self, config: MachineConfig) -> None:
        if not 2 <= config.memory_mib <= MAX_MEMORY_MIB:
            raise ConfigError(f"memory size must be between 2 and {MAX_MEMORY_MIB} MiB, "
                              f"not {config.memory_mib}")
        self.config = config
        self.disks = _ide_slots(config)
        #: The CD-ROM drive (secondary master) when ``cdrom`` was given: eject()/insert().
        self.cdrom = self.disks[2] if isinstance(self.disks[2], CdromDrive) else None
        self.ram_size = config.memory_mib * MiB
        self.clock = VirtualClock(config.clock_mode)
        self.log = EventLog(self.clock)
        # Built the way Hyper-V builds a VM: the root partition (this process) creates the child
        # partition and maps its RAM through the hypercall interface (vid/).  --no-hyperv gives
        # a plain PC partition with no hypervisor interface at all.
        self.root: RootPartition | None = None
        self.child: ChildHandle | None = None
        self.hv: PartitionHv | None = None
        if config.hyperv:
            self.root = RootPartition(Hypervisor(self.clock, self.log.emit))
            self.root.add_memory(0, self.ram_size)  # guest RAM at identical root addresses
            self.child = self.root.create_partition()
            self.partition = self.child.partition
            self.hv = self.child.hv
        else:
            self.partition = Partition(self.clock)
        self.board = Motherboard(self.log.emit)
        self._exit_code: int | None = None
        self._kernel_plan: multiboot.BootPlan | None = None
        self.resets = 0
        self._build_memory()
        self._build_devices()
        self.vp = self.child.create_vp() if self.child else self.partition.create_vp()
        # The local APIC is the VP's interrupt source; the 8259 reaches it on LINT0 (ExtINT),
        # and level-triggered EOIs are broadcast to the I/O APIC.
        self.vp.lapic.extint = self.pic
        self.vp.lapic.eoi_broadcast.append(self.ioapic.eoi)
        self.vp.set_interrupt_source(self.vp.lapic)
        self.partition.map_local_apic()
        self.partition.set_io_handler(self.board.io_read, self.board.io_write)
        self.partition.set_io_block_handler(self.board.offers_block, self.board.io_read_block,
                                            self.board.io_write_block)
        if config.kernel is not None:
            self._plan_kernel(config.kernel)

    # ---- construction ------------------------------------------------------------------
    def _map_ram(self, gpa: int, size: int) -> None:
        if self.child is not None:
            self.child.map_gpa_pages(gpa, gpa, size)  # HvCallMapGpaPages from the root's RAM
        else:
            self.partition.map_ram(gpa, size)

    def _build_memory(self) -> None:
        low = min(self.ram_size, VGA_WINDOW[0])
        self._map_ram(0, low)
        # The VGA window is plain RAM (the text buffer is scanned, not trapped: UNICORN_NOTES),
        # and C0000-EFFFF is shadow RAM as a chipset's PAM registers would leave it.
        self._map_ram(VGA_WINDOW[0], BIOS_BASE - VGA_WINDOW[0])
        bios = build_bios()
        if len(bios) != BIOS_SIZE:
            raise ConfigError(f"BIOS image is {len(bios)} bytes, expected {BIOS_SIZE}")
        # The BIOS is the hypervisor's firmware image, mapped as ROM (guest writes ignored).
        self.partition.map_rom(BIOS_BASE, bios)
        self.partition.map_rom(BIOS_HIGH_ALIAS, bios)
        if self.ram_size > 0x100000:
            self._map_ram(0x100000, self.ram_size - 0x100000)

    def _build_devices(self) -> None:
        cfg, board, clock, ev = self.config, self.board, self.clock, self.log.emit
        self.pic = Pic(on_intr=self._on_intr, events=ev)
        board.add(self.pic)
        board.connect_irqs(self._isa_irq)
        self.ioapic = IoApic(self.partition.apic_deliver, events=ev)
        board.add(self.ioapic)
        self.partition.map_mmio(IOAPIC_BASE, 0x1000, self.ioapic.mmio_read,
                                self.ioapic.mmio_write)
        self.pit = Pit(clock, board.irqs[0], ev)
        board.add(self.pit)
        board.add(Port61(self.pit, clock))
        base_time = cfg.rtc_base or datetime.datetime.now().replace(microsecond=0)
        self.rtc = Rtc(clock, board.irqs[8], base_time, ev)
        self.rtc.set_memory_size(self.ram_size)
        self.rtc.set_equipment(0x06)  # math coprocessor present, 80x25 colour initial video
        self.rtc.poke(CMOS_BOOT_ORDER, _boot_order(cfg, self.disks))
        for drive in (0, 1):
            if self.disks[drive] is not None:
                # User-defined type: the geometry comes from IDENTIFY.
                self.rtc.set_hard_disk_type(drive, 47)
        board.add(self.rtc)
        self.com1 = Uart16550(0x3F8, board.irqs[4], clock, cfg.serial_output, ev)
        self.com2 = Uart16550(0x2F8, board.irqs[3], clock, None, ev)
        self.serial_input: StreamInput | None = None
        if cfg.serial_input:
            self.serial_input = StreamInput(cfg.serial_input)
            self.com1.attach_input(self.serial_input, after=cfg.serial_input_after)
        board.add(self.com1)
        board.add(self.com2)
        self._build_pci()
        self.vga = VgaText(clock, self.partition.read_memory, ev)
        board.add(self.vga)
        self.a20 = A20Gate(self.partition.set_a20)
        self.port92 = FastA20(self._on_reset_request, on_a20=self.a20.set_port92, events=ev)
        board.add(self.port92)
        self.i8042 = I8042(self._on_reset_request, on_a20=self.a20.set_kbc, irq1=board.irqs[1],
                           events=ev)
        board.add(self.i8042)
        board.add(PostCode(self._on_post))
        board.add(DebugCon(cfg.debugcon_output or _discard))
        board.add(ExitDevice(self._on_exit, ev))

    def _build_pci(self) -> None:
        """PCI bus 0: i440FX host bridge, PIIX3 ISA bridge and IDE with both legacy channels."""
        board, ev, disks = self.board, self.log.emit, self.disks
        self.pci = PciBus(board.claim_ports, board.release_ports, ev)
        board.add(self.pci)
        self.host_bridge = I440fxHost()
        self.piix_isa = Piix3Isa()
        # Bus-master DMA bypasses the A20 gate, which is an input of the CPU (A20M#).
        self.piix_ide = Piix3Ide(board.irqs[14], board.irqs[15], self._dma_read,
                                 self._dma_write, dma_ok=self._is_dma_ram, events=ev)
        for function, (dev, fn) in ((self.host_bridge, (0, 0)), (self.piix_isa, (1, 0)),
                                    (self.piix_ide, (1, 1))):
            board.add(function)
            self.pci.add(function, dev, fn)
        self.ide = IdeChannel(self.piix_ide.ide_irqs[0], disks[0], disks[1], events=ev)
        self.ide2 = IdeChannel(self.piix_ide.ide_irqs[1], disks[2], disks[3],
                               command_base=0x170, control_base=0x376, events=ev)
        for channel, ide in enumerate((self.ide, self.ide2)):
            board.add(ide)
            self.piix_ide.attach(channel, ide)

    def _plan_kernel(self, image: bytes) -> None:
        try:
            kernel = multiboot.parse_kernel(image)
            self._kernel_plan = multiboot.plan_boot(
                kernel, ram_size=self.ram_size, ram_ranges=self.memory_map(),
                cmdline=self.config.append, modules=self.config.initrds, fits=self._is_ram)
        except multiboot.MultibootError as exc:
            raise ConfigError(str(exc)) from None

    # ---- memory map --------------------------------------------------------------------
    def memory_map(self) -> list[tuple[int, int, int]]:
        """The E820-style map the BIOS and the Multiboot loader report: (base, length, type)."""
        ranges = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2)]
        if self.ram_size > 0x100000:
            ranges.append((0x100000, self.ram_size - 0x100000, 1))
        ranges.append((BIOS_HIGH_ALIAS, BIOS_SIZE, 2))
        return ranges

    def _dma_read(self, addr: int, size: int) -> bytes:
        return self.partition.memory.read(addr, size, physical=True)

    def _dma_write(self, addr: int, data: bytes) -> None:
        self.partition.memory.write(addr, data, physical=True)

    def _in_ram(self, addr: int, size: int, low_end: int) -> bool:
        """Whether [addr, addr+size) lies below ``low_end`` or in RAM above 1 MiB."""
        end = addr + size
        return end <= low_end or (addr >= 0x100000 and end <= self.ram_size)

    def _is_dma_ram(self, addr: int, size: int) -> bool:
        """Whether a bus master may use this range: RAM (640 KiB + the VGA/shadow window, and
        above 1 MiB), not the BIOS ROM or unmapped space."""
        return self._in_ram(addr, size, BIOS_BASE)

    def _is_ram(self, addr: int, size: int) -> bool:
        """Usable RAM as the memory map reports it (below the EBDA, or above 1 MiB)."""
        return self._in_ram(addr, size, 0x9FC00)

    # ---- device callbacks --------------------------------------------------------------
    def _isa_irq(self, irq: int, level: bool) -> None:
        """An ISA IRQ line goes to both the 8259s and the I/O APIC: IRQ0 on pin 2 (the
        usual interrupt source override), IRQn on pin n; IRQ2 is the 8259 cascade."""
        self.pic.set_irq(irq, level)
        if irq != 2:
            self.ioapic.set_irq(2 if irq == 0 else irq, level)

    def _on_intr(self, level: bool) -> None:
        # The 8259's INT output: LINT0 of the local APIC and I/O APIC pin 0.
        self.ioapic.set_irq(0, level)
        vp = getattr(self, "vp", None)
        if vp is not None:
            vp.lapic.set_lint(0, level)

    def _on_exit(self, value: int) -> None:
        self._exit_code = value
        self.partition.request_stop("exit")

    def _on_reset_request(self) -> None:
        self.partition.request_stop("reset")

    def _on_post(self, kind: str, **fields: Any) -> None:
        self.log.emit(kind, **fields)
        if (kind == "post" and fields.get("code") == BOOT_POST_CODE
                and self._kernel_plan is not None):
            self.partition.request_stop("kernel-entry")

    def _enter_kernel(self) -> None:
        plan = self._kernel_plan
        assert plan is not None
        for addr, data in plan.writes:
            self.partition.write_memory(addr, data)
        self.vp.enter_protected_mode_flat32(
            plan.entry, gdt_base=plan.gdt_base, gdt_limit=plan.gdt_limit,
            eax=multiboot.MULTIBOOT_BOOTLOADER_MAGIC, ebx=plan.info_addr)
        self.log.emit("multiboot", entry=plan.entry, info=plan.info_addr)

    def reset(self) -> None:
        """A platform reset: every device and the VP to power-on state; RAM is kept."""
        self.board.reset()
        self.vp.reset()
        if self.hv is not None:
            self.hv.reset()
        self.sync_a20()

    def sync_a20(self) -> None:
        """Make the A20 gate follow its two sources' current register values (after a reset
        or a device restore, which do not call the devices' ``on_a20``)."""
        self.a20.load(bool(self.port92.value & OUT_A20),
                      bool(self.i8042.output_port & OUT_A20))

    # ---- running -----------------------------------------------------------------------
    def run(self, *, max_instructions: int | None = None,
            timeout: float | None = None, at_block: bool = False) -> MachineExit:
        """Run until the guest exits or another end; returns the documented exit status.
        ``at_block``: end an instruction limit where a saved state can be taken without
        changing the run (see Partition.run)."""
        # One deadline for the whole run, across guest resets and the kernel hand-off.
        t_end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None
            if max_instructions is not None:
                left = max(0, max_instructions - self.clock.instructions)
            left_s = None if t_end is None else max(0.0, t_end - time.monotonic())
            ex = self.partition.run(max_instructions=left, timeout=left_s, at_block=at_block)
            if ex.reason == "timeout":
                ex = dataclasses.replace(ex, detail=f"{timeout} s")
            if ex.reason == "stop" and ex.detail == "exit":
                code = self._exit_code if self._exit_code is not None else 0
                return MachineExit(exit_status(code), "exit",
                                   f"guest wrote {code:#x} to the exit port", code, ex)
            if ex.reason == "stop" and ex.detail == "kernel-entry":
                self._enter_kernel()
                continue
            if ex.reason == "reset":
                self.resets += 1
                if self.resets > MAX_RESETS:
                    return MachineExit(EXIT_HALTED, "halted",
                                       f"guest reset the machine {self.resets} times", None, ex)
                self.log.emit("reset", count=self.resets)
                self.reset()
                continue
            status = _REASON_STATUS.get(ex.reason, EXIT_INTERNAL_ERROR)
            where = f" at RIP {ex.rip:#x}" if ex.rip is not None else ""
            detail = f": {ex.detail}" if ex.detail else ""
            return MachineExit(status, ex.reason, f"{ex.reason}{where}{detail}", None, ex)

    def run_until(self, *, hypercall: int | bool | None = None, msr: int | bool | None = None,
                  port: int | bool | None = None, interrupt: int | bool | None = None,
                  address: int | None = None,
                  max_instructions: int | None = None) -> Any:
        """Run to the next hypercall/MSR access/port access/interrupt/address that matches
        (a number, or True for any) and return its observed event, or None if the run ended
        otherwise (see hyperv_emu/debug/step.py for where each kind stops)."""
        from hyperv_emu.debug.step import run_until

        return run_until(self, hypercall=hypercall, msr=msr, port=port, interrupt=interrupt,
                         address=address, max_instructions=max_instructions)

    def screen_text(self) -> str:
        """The 80x25 VGA text screen as text, one line per row."""
        return self.vga.render_text()


def _ide_slots(config: MachineConfig) -> list[Attachment]:
    """The four IDE positions from ``disks``, with ``disk`` as the primary master."""
    if len(config.disks) > 4:
        raise ConfigError(f"at most 4 IDE disks, not {len(config.disks)}")
    slots: list[Attachment] = [*config.disks, *[None] * (4 - len(config.disks))]
    if config.disk is not None:
        if slots[0] is not None and slots[0] is not config.disk:
            raise ConfigError("two disks given as the primary master (disk and disks[0])")
        slots[0] = config.disk
    if config.cdrom is not None:
        if slots[2] is not None:
            raise ConfigError("the CD-ROM drive is the secondary master, but disks[2] is "
                              "given too")
        slots[2] = CdromDrive(config.cdrom)
    return slots


def _boot_order(config: MachineConfig, slots: Sequence[Attachment]) -> int:
    """The CMOS boot sequence byte; "c" on a machine without a CD-ROM drive is the hard disk
    alone, so the BIOS does not report a missing drive nobody asked for."""
    order = BOOT_ORDERS.get(config.boot.lower())
    if order is None:
        raise ConfigError(f"boot device must be 'c' (hard disk) or 'd' (CD-ROM), "
                          f"not {config.boot!r}")
    has_cd = any(isinstance(s, CdromDrive)
                 or (isinstance(s, BlockDevice) and s.sector_size == 2048) for s in slots)
    return order if has_cd or order != BOOT_ORDERS["c"] else 0x02


def _discard(data: bytes) -> None:
    """Output sink for a console the user turned off."""


def stderr_writer(data: bytes) -> None:
    """Write guest bytes to standard error as they come."""
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()
