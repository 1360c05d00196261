"""The chipset targets: each core device built on a bench by the board's own factories
(hyperv_emu/worker/board.py) where it stands alone, by hand where the target needs wiring of its
own (the interrupt controllers' outputs), with the host-side actions that reach it as extras."""

from __future__ import annotations

from typing import Any

from hyperv_emu.fuzz.harness import Bench, ChipsetTarget
from hyperv_emu.fuzz.ide_ops import ATA_COMMANDS, CDB_OPCODES, IdeOps
from hyperv_emu.hypervisor.lapic import LocalApic
from hyperv_emu.hypervisor.mmu import GuestFault
from hyperv_emu.vdev.acpi_pm import AcpiPm
from hyperv_emu.vdev.atapi import BLOCK, CdromDrive
from hyperv_emu.vdev.hpet import Hpet, LegacyRoute
from hyperv_emu.vdev.ioapic import PINS, IoApic
from hyperv_emu.vdev.pic import Pic
from hyperv_emu.vdev.piix import PRD_EOT, PRD_TABLE_REGION, Piix3Ide
from hyperv_emu.vdev.reset_control import ResetControl
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.hostio import Attachments


class PicTarget(ChipsetTarget):
    name = "pic"
    summary = "8259A pair (20h/A0h, ELCR 4D0h) with ISA IRQ inputs and INTA"

    def build(self, bench: Bench) -> None:
        intr = [False]

        def on_intr(level: bool) -> None:
            intr[0] = level

        pic = Pic(on_intr=on_intr)
        bench.add(pic)
        bench.board.connect_irqs(pic.set_irq)
        irqs = bench.board.irqs
        bench.extra("irq-raise", lambda a: irqs[a % 16].raise_())
        bench.extra("irq-lower", lambda a: irqs[a % 16].lower())
        # The CPU runs INTA only while INTR is asserted.
        bench.extra("inta", lambda a: pic.acknowledge() if pic.has_interrupt() else None)
        bench.line("intr", lambda: intr[0])


class PitTarget(ChipsetTarget):
    name = "pit"
    summary = "8254 PIT (40h-43h) and port 61h (counter 2 gate, speaker), OUT0 on IRQ0"
    factories = ("pit",)


class RtcTarget(ChipsetTarget):
    name = "rtc"
    summary = "MC146818 RTC and CMOS (70h/71h) with its update, alarm and periodic timers"
    factories = ("rtc",)


class UartTarget(ChipsetTarget):
    name = "uart"
    summary = ("16550A UARTs COM1 (3F8h, IRQ4) and COM2 (2F8h, IRQ3); COM1 with host input, "
               "breaks, line errors and modem lines")
    factories = ("serial",)

    def build(self, bench: Bench) -> None:
        super().build(bench)
        uart = bench.board.com1
        bench.extra("host-rx", lambda a: uart.feed(bytes([a & 0xFF]) * (1 + (a >> 8) % 20)))
        bench.extra("host-break", lambda a: uart.feed_break())
        bench.extra("host-rx-error",
                    lambda a: uart.feed_error(a & 0xFF, parity=bool(a & 0x100),
                                              framing=bool(a & 0x200)))
        bench.extra("modem-inputs", lambda a: uart.set_modem_inputs(
            cts=bool(a & 1), dsr=bool(a & 2), ri=bool(a & 4), dcd=bool(a & 8)))


class VgaTarget(ChipsetTarget):
    name = "vga"
    summary = "VGA text mode registers (3B4h-3DAh) and the host's screen reads of B8000h"
    window_base = 0xB8000
    window_size = 0x8000
    factories = ("vga",)

    def build(self, bench: Bench) -> None:
        super().build(bench)
        vga = bench.board.vga
        bench.extra("render", lambda a: (vga.render_text(), vga.cursor()))


class PciTarget(ChipsetTarget):
    name = "pci"
    summary = "PCI configuration mechanism #1 with the i440FX and PIIX3 ISA/IDE functions"
    factories = ("pci",)


#: The fuzzed disk: 64 sectors, each filled with its own number.
DISK = b"".join(bytes([n]) * 512 for n in range(64))
#: The fuzzed CD: 16 blocks, patterned the same way.
CD = b"".join(bytes([0x80 | n]) * BLOCK for n in range(16))


class IdeTarget(ChipsetTarget):
    name = "ide"
    summary = "PIIX3 IDE with bus-master DMA: a 32 KiB disk on the primary, a CD on the secondary"
    factories = ("pci", "ide")

    def attachments(self) -> Attachments:
        return Attachments(drives=(MemoryImage(DISK), None,
                                   CdromDrive(MemoryImage(CD, read_only=True)), None))

    def build(self, bench: Bench) -> None:
        super().build(bench)
        piix = bench.board.piix_ide
        cd = bench.board.parts["cdrom"]
        media = cd.media
        bench.extra("cd-eject", lambda a: cd.eject())
        bench.extra("cd-insert", lambda a: cd.insert(media) if media is not None else None)
        # Whole command blocks, DMA set-ups and PACKET commands (fuzz/ide_ops.py).
        ops = IdeOps(bench)
        bench.extra("ata-command", ops.ata_command)
        bench.extra("ata-dma", ops.ata_dma)
        bench.extra("atapi-packet", ops.atapi_packet)
        bench.dma_allowed = lambda gpa, size: _in_prd_tables(bench, piix, gpa, size)

    def seeds(self) -> list[bytes]:
        return super().seeds() + IDE_SEEDS


def _extra(index: int, arg: int) -> bytes:
    """The bytes of one extra operation (opcode 0Eh, index, 16-bit argument; fuzz/ops.py)."""
    return bytes([0x0E, index]) + arg.to_bytes(2, "little")


ATA_INDEX = {command: i for i, command in enumerate(ATA_COMMANDS)}
_ATA, _DMA, _PACKET = 2, 3, 4  # the IDE target's extras, in the order build() adds them
#: Seeds of the structured operations: IDENTIFY, READ/WRITE SECTORS, SET FEATURES, READ/WRITE
#: DMA (one entry, split, short and long PRD tables), IDENTIFY PACKET DEVICE, and a PACKET
#: command by PIO and by DMA for every CDB operation code the drive implements.
IDE_SEEDS = [
    _extra(_ATA, ATA_INDEX[0xEC] << 1),
    _extra(_ATA, ATA_INDEX[0x20] << 1 | 2 << 11 | 3 << 8),
    _extra(_ATA, ATA_INDEX[0x30] << 1 | 1 << 11 | 4 << 8),
    _extra(_ATA, ATA_INDEX[0xEF] << 1 | 4 << 11) + _extra(_ATA, ATA_INDEX[0xEF] << 1 | 5 << 11),
    _extra(_ATA, 1 | ATA_INDEX[0xA1] << 1),
    *(_extra(_DMA, write | layout << 10 | 2 << 7 | 5 << 2)
      for write in (0, 1) for layout in range(4)),
    _extra(_DMA, 2 | 4 << 7) + _extra(_DMA, 3 | 1 << 7 | 0x2000),
    *(_extra(_PACKET, op | dma << 4 | 2 << 5 | 2 << 10)
      for op in range(len(CDB_OPCODES)) for dma in (0, 1)),
]


def _in_prd_tables(bench: Bench, piix: Piix3Ide, gpa: int, size: int) -> bool:
    """Whether a bus-master write lies inside one region of a started channel's PRD table,
    walked from the table pointer the guest programmed (SFF-8038i 1.2)."""
    for bm in piix.bm:
        entry = bm.prd
        while entry // PRD_TABLE_REGION == bm.prd // PRD_TABLE_REGION:
            if not bench.dma_ok(entry, 8):
                break
            raw = bench.read_memory(entry, 8)
            base = int.from_bytes(raw[:4], "little") & 0xFFFFFFFE
            flags = int.from_bytes(raw[4:], "little")
            count = (flags & 0xFFFE) or 0x10000
            if base <= gpa and gpa + size <= base + count:
                return True
            if flags & PRD_EOT:
                break
            entry += 8
    return False


class IoApicTarget(ChipsetTarget):
    name = "ioapic"
    summary = "82093AA I/O APIC (FEC00000h) with 24 input pins, EOI broadcasts and deliveries"

    def build(self, bench: Bench) -> None:
        delivered: list[tuple[int, ...]] = []

        def deliver(dest: int, vector: int, mode: int, logical: bool, trigger: int,
                    level: bool) -> None:
            delivered.append((dest, vector, mode, logical, trigger, level))
            del delivered[:-8]

        ioapic = IoApic(deliver)
        bench.add(ioapic)
        bench.extra("pin", lambda a: ioapic.set_irq(a % PINS, bool(a & 0x8000)))
        bench.extra("eoi", lambda a: ioapic.eoi(a & 0xFF))


class _ApicHost:
    """The slice of a virtual processor the local APIC talks to (the VP contract of
    hypervisor/lapic.py): its index, its partition's clock and VP list, interrupt notification,
    NMI injection and the TSC.  A real VP needs a Unicorn instance per input (~12 ms)."""

    def __init__(self, bench: Bench) -> None:
        self.index = 0
        self.clock = bench.clock
        self.vps = [self]
        self.partition = self
        self.injected: list[int] = []
        self.nmis = 0
        # Not inside the engine's run slice (hypervisor/smp.py cross_vp_message reads it when
        # an IPI goes out): there is no CPU on the bench.
        self._running = False
        self.halted = False
        # The INIT/STARTUP latches the APIC sets (smp.receive_init/receive_startup), as
        # smp.power_on leaves them on the BSP; saved with the bench (see save).
        self.wait_for_sipi = False
        self.init_pending = False
        self.sipi_vector: int | None = None
        self.lapic = LocalApic(self)  # type: ignore[arg-type]

    def save(self) -> dict[str, Any]:
        """The VP's INIT/STARTUP latches (the run loop would take them at its next turn)."""
        return {"wait_for_sipi": self.wait_for_sipi, "init_pending": self.init_pending,
                "sipi_vector": self.sipi_vector}

    def restore(self, state: dict[str, Any]) -> None:
        self.wait_for_sipi = bool(state["wait_for_sipi"])
        self.init_pending = bool(state["init_pending"])
        vector = state["sipi_vector"]
        self.sipi_vector = None if vector is None else int(vector)

    def notify_interrupt(self) -> None:
        """The run loop would look at the APIC's output: nothing to do without a CPU."""

    def inject_interrupt(self, vector: int) -> None:
        self.injected.append(vector)
        del self.injected[:-8]

    def inject_nmi(self) -> None:
        """An NMI (LINT1 or an NMI-mode LVT/IPI) goes to the CPU, as VirtualProcessor's does."""
        self.nmis += 1

    def tsc(self) -> int:
        # The VP's TSC runs at the partition's TSC rate from the virtual clock; 1 GHz here.
        return self.clock.now()


class LapicTarget(ChipsetTarget):
    name = "lapic"
    summary = "local APIC: xAPIC page, x2APIC MSRs, APIC base, LINT pins, timer, INTA and EOI"
    guest_errors = (GuestFault,)

    def build(self, bench: Bench) -> None:
        host = _ApicHost(bench)
        apic = host.lapic
        bench.add_mmio("lapic", 0x1000, apic.mmio_read, apic.mmio_write)
        bench.add_saved("lapic", apic)
        bench.add_saved("vp-signals", host)
        bench.extra("lint0", lambda a: apic.set_lint(0, bool(a & 1)))
        bench.extra("lint1", lambda a: apic.set_lint(1, bool(a & 1)))
        bench.extra("inta", lambda a: apic.acknowledge() if apic.has_interrupt() else None)
        bench.extra("eoi", lambda a: apic.eoi())
        bench.extra("fixed-irq", lambda a: apic.request_interrupt(a & 0xFF, level=bool(a >> 15)))
        # WRMSR IA32_APIC_BASE: enable bits from the argument, the base kept at its default.
        bench.extra("apic-base", lambda a: apic.write_apic_base(0xFEE00000 | (a & 0xD00)))
        bench.extra("x2apic-rdmsr", lambda a: apic.x2apic_read(0x800 + (a & 0xFF)))
        bench.extra("x2apic-wrmsr",
                    lambda a: apic.x2apic_write(0x800 + (a & 0xFF), (a >> 8) * 0x01010101))
        bench.extra("tsc-deadline", lambda a: apic.write_tsc_deadline(bench.clock.now() + a))


class AcpiTarget(ChipsetTarget):
    name = "acpi"
    summary = "ACPI PM1a event/control and PM timer (600h-60Bh, SCI on IRQ9), reset control 0CF9h"

    def build(self, bench: Bench) -> None:
        pm = AcpiPm(bench.clock, bench.board.irqs[9], lambda slp_typ: None)
        bench.add(pm)
        pci = bench.add_pci_bus()
        rc = ResetControl(lambda hard: None)
        bench.add(rc)
        pci.ordinary_io = rc
        bench.extra("power-button", lambda a: pm.press_power_button())


class HpetTarget(ChipsetTarget):
    name = "hpet"
    summary = "HPET at FED00000h: main counter, three comparators, legacy route on IRQ0/IRQ8"

    def build(self, bench: Bench) -> None:
        irqs = bench.board.irqs
        routes = (LegacyRoute(irqs[0]), LegacyRoute(irqs[8]))
        hpet = Hpet(bench.clock, routes, {pin: irqs[pin] for pin in (10, 11)})
        bench.add(hpet)
        # The 8254 and RTC outputs the legacy route cuts off.
        bench.extra("irq0-device", lambda a: routes[0].device_line.set_level(bool(a & 1)))
        bench.extra("irq8-device", lambda a: routes[1].device_line.set_level(bool(a & 1)))


CHIPSET_TARGETS: tuple[type[ChipsetTarget], ...] = (
    PicTarget, PitTarget, RtcTarget, UartTarget, IdeTarget, VgaTarget, PciTarget, LapicTarget,
    IoApicTarget, AcpiTarget, HpetTarget,
)
