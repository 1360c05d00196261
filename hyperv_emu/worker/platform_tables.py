"""The board's side of the platform tables: the memory map, the chipset devices the tables
announce (ACPI PM block, reset control register, HPET, PCI interrupt routing), the
:class:`~hyperv_emu.firmware_tables.platform.Platform` description read off the devices the
machine built, and the installation of the tables into the BIOS ROM and the FACS into RAM.

The board runs :func:`build_chipset` as its ``chipset`` factory and the machine calls
:func:`install` once the VP exists.  The E820 map in the tables and in the ROM's platform area
(INT 15h E820) is the board's one memory map (worker/board.py), which has the FACS page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyperv_emu.firmware import CHECKSUM_OFFSET, PLATFORM_AREA, RESET_VECTOR
from hyperv_emu.firmware_tables import rom
from hyperv_emu.firmware_tables.platform import (
    IsaDevice,
    Platform,
)
from hyperv_emu.firmware_tables.vmbus_acpi import VMBUS_IRQ
from hyperv_emu.vdev.acpi_pm import PM1_CNT, PM1_STS, PM_TMR, AcpiPm
from hyperv_emu.vdev.base import Device, IrqLine
from hyperv_emu.vdev.hpet import Hpet, LegacyRoute
from hyperv_emu.vdev.ioapic import IOAPIC_BASE
from hyperv_emu.vdev.pirq import PIRQS, PirqRouter, pirq_of
from hyperv_emu.vdev.reset_control import RCPU, RESET_CONTROL_PORT, SRST, ResetControl
from hyperv_emu.vdev.rtc_regs import REG_CENTURY
from hyperv_emu.vid.vm import LAPIC_VERSION

if TYPE_CHECKING:
    from hyperv_emu.worker.board import Board
    from hyperv_emu.worker.config import VmConfig
    from hyperv_emu.worker.machine import Machine

MiB = 1 << 20
#: ISA IRQ of the SCI, and the IRQs the PCI links may use (no ISA device is on them).
SCI_IRQ = 9
LINK_IRQS = (5, 10, 11)
#: PIRQA-D as the firmware stand-in routes them (and the MP table announces).
FIRMWARE_PIRQ_IRQS = (10, 10, 11, 11)
#: \\_S5's SLP_TYP (PIIX4 encoding: 000b soft off).
S5_SLP_TYP = 0
#: I/O APIC inputs the HPET's timers may be routed to outside legacy replacement mode.
HPET_ROUTES = (20, 21, 22, 23)


@dataclass
class Chipset:
    """The devices behind the tables, as :func:`build_chipset` wired them."""

    pm: AcpiPm
    reset_control: ResetControl
    hpet: Hpet
    pirq: PirqRouter
    legacy_routes: tuple[LegacyRoute, LegacyRoute]


def legacy_routes(board: Board) -> tuple[LegacyRoute, LegacyRoute]:
    """The HPET legacy-replacement switches on IRQ0 and IRQ8: the 8254 and the RTC drive
    their ``device_line`` instead of the board's line."""
    routes = board.parts.get("legacy_routes")
    if routes is None:
        routes = LegacyRoute(board.irqs[0]), LegacyRoute(board.irqs[8])
        board.parts["legacy_routes"] = routes
    return routes


def build_chipset(cfg: VmConfig, board: Board) -> None:
    """The board factory of the ACPI PM block, the reset control register, the HPET and the
    PIRQ router (after the PCI bus and the PIIX3 exist); the board's part ``chipset``."""
    ev, platform = board.events, board.platform

    def on_sleep(slp_typ: int) -> None:
        # Only \_S5 is announced; other sleep types are traced by the PM block and ignored.
        if slp_typ == S5_SLP_TYP:
            platform.request_stop("poweroff")

    pm = AcpiPm(board.clock, board.irqs[SCI_IRQ], on_sleep, events=ev)
    board.add(pm, "acpi_pm")
    rc = ResetControl(lambda hard: board.request_reset(), events=ev)
    board.add(rc, "reset_control")
    board.pci.ordinary_io = rc
    ioapic = board.ioapic
    hpet_lines = {pin: IrqLine(pin, ioapic.set_irq) for pin in HPET_ROUTES}
    hpet = Hpet(board.clock, legacy_routes(board), hpet_lines, events=ev)
    board.add(hpet, "hpet")  # the board maps its MMIO page
    board.piix_isa.set_firmware_routing(FIRMWARE_PIRQ_IRQS)
    router = PirqRouter(board.piix_isa.pirq_irq, board.irqs)
    board.piix_isa.pirq_listeners.append(router.rerouted)
    board.parts["chipset"] = Chipset(pm, rc, hpet, router, legacy_routes(board))


def _isa_devices(m: Machine) -> tuple[IsaDevice, ...]:
    return (
        IsaDevice("PIC", "PNP0000", ((0x20, 2), (0xA0, 2), (0x4D0, 2)), (2,)),
        IsaDevice("TMR", "PNP0100", ((0x40, 4),), (0,)),
        IsaDevice("RTC", "PNP0B00", ((0x70, 2),), (8,)),
        IsaDevice("SPKR", "PNP0800", ((0x61, 1),)),
        IsaDevice("KBD", "PNP0303", ((0x60, 1), (0x64, 1)), (1,)),
        IsaDevice("COM1", "PNP0501", ((m.com1.base, 8),), (m.com1.irq_number,), uid=1),
        IsaDevice("COM2", "PNP0501", ((m.com2.base, 8),), (m.com2.irq_number,), uid=2),
    )


def describe(m: Machine) -> Platform:
    """The platform as the machine built it."""
    chipset: Chipset = m.board.parts["chipset"]
    vp = m.vp
    a, _b, c, d = m.partition.cpuid.lookup(1, 0, vp.index)
    _c, d = vp.lapic.cpuid_leaf1(c, d)
    pci_intx = tuple(sorted((dev, m.pci.functions[dev, fn].config[0x3D] - 1)
                            for dev, fn in m.pci.functions
                            if 1 <= m.pci.functions[dev, fn].config[0x3D] <= 4))
    return Platform(
        apic_ids=tuple(v.lapic.apic_id for v in m.partition.vps),  # VP 0 (the BSP) first
        cpu_signature=a, cpu_features=d,
        lapic_version=LAPIC_VERSION & 0xFF,
        ioapic_id=m.ioapic.id, ioapic_base=m.ioapic.base,
        pm1a_evt=chipset.pm.base + PM1_STS, pm1a_cnt=chipset.pm.base + PM1_CNT,
        pm_tmr=chipset.pm.base + PM_TMR,
        pm_timer_32bit=chipset.pm.timer_bits == 32,
        sci_irq=SCI_IRQ, s5_slp_typ=S5_SLP_TYP, rtc_century=REG_CENTURY,
        reset_port=RESET_CONTROL_PORT, reset_value=SRST | RCPU,
        hpet_base=chipset.hpet.base, hpet_block_id=chipset.hpet.capabilities & 0xFFFFFFFF,
        pci_routing=tuple((dev, pin, pirq_of(dev, pin)) for dev in range(1, 32)
                          for pin in range(4)),
        link_irqs=LINK_IRQS,
        pirq_irqs=tuple(m.piix_isa.pirq_irq(i) for i in range(PIRQS)),
        pci_intx=pci_intx,
        ram_top=min(m.ram_size, IOAPIC_BASE),
        isa_devices=_isa_devices(m),
        memory_map=tuple(m.memory_map()),
        facs_address=m.board.memory.region("facs").base,
        vmbus_irq=None if m.hv is None else VMBUS_IRQ,  # every Hyper-V VM has VMBus
    )


class FacsInstaller(Device):
    """Rewrites the FACS (the one table in RAM) at every platform reset, as firmware builds it
    at POST; the ROM-resident tables need nothing."""

    name = "acpi-facs"

    def __init__(self, write: Any, address: int, facs: bytes) -> None:
        self._write = write
        self.address = address
        self.facs = facs
        self.reset()

    def reset(self) -> None:
        self._write(self.address, self.facs)


def install(m: Machine) -> rom.PlacedTables:
    """Build the tables for ``m``, write them into its BIOS ROM (both mappings) and the FACS
    into RAM; returns where everything went."""
    area = rom.ROM_BASE + PLATFORM_AREA
    placed = rom.place(describe(m), area, RESET_VECTOR - PLATFORM_AREA)
    image = rom.rom_with_tables(m.board.firmware(), placed, CHECKSUM_OFFSET)
    for region in m.board.memory.regions:
        if region.kind == "rom":  # F0000 and the alias below 4 GiB
            m.partition.memory.write(region.base, image, physical=True)
    m.board.add(FacsInstaller(m.board.platform.dma_write, m.board.memory.region("facs").base,
                              placed.facs), "facs")
    return placed
