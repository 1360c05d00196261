"""The machine's configuration as the platform tables describe it: pure data, filled in by the
worker from the devices it actually built, so the MP and ACPI tables, the DSDT and the E820 map
all say the same thing as the hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

#: E820 address range types (ACPI 6.4, 15.1 "Address Range Types").
E820_RAM, E820_RESERVED, E820_ACPI, E820_NVS = 1, 2, 3, 4

#: The local APIC's default physical address (Intel SDM vol. 3A, 10.4.1).
LAPIC_BASE = 0xFEE00000


@dataclass(frozen=True)
class IsaDevice:
    """One ISA device the DSDT lists: its ACPI name, PNP ID, I/O ranges and IRQs."""

    name: str
    hid: str
    ports: tuple[tuple[int, int], ...]
    irqs: tuple[int, ...] = ()
    uid: int | None = None


@dataclass(frozen=True)
class Platform:
    """Everything the tables announce.  Addresses are guest-physical, ports are I/O ports."""

    #: Local APIC IDs, one per VP, bootstrap processor first.
    apic_ids: tuple[int, ...] = (0,)
    #: CPUID leaf 1 EAX (signature) and EDX (features) for the MP processor entries.
    cpu_signature: int = 0
    cpu_features: int = 0
    lapic_base: int = LAPIC_BASE
    lapic_version: int = 0x14
    ioapic_id: int = 0
    ioapic_base: int = 0xFEC00000
    ioapic_version: int = 0x11
    ioapic_pins: int = 24
    #: (ISA IRQ, I/O APIC input) pairs where IRQn is not on pin n (IRQ0 on pin 2).
    isa_irq_pins: tuple[tuple[int, int], ...] = ((0, 2),)
    #: The 8259's INTR output is wired to this I/O APIC pin (ExtINT).
    pic_pin: int = 0
    #: ACPI PM register blocks (I/O ports) and the SCI.
    pm1a_evt: int = 0x600
    pm1a_cnt: int = 0x604
    pm_tmr: int = 0x608
    pm_timer_32bit: bool = False
    sci_irq: int = 9
    #: SLP_TYP values for \\_S5 (soft off) in PM1a/PM1b control.
    s5_slp_typ: int = 0
    reset_port: int = 0xCF9
    reset_value: int = 0x06
    #: CMOS index of the RTC century byte (FADT CENTURY).
    rtc_century: int = 0x32
    #: HPET block: base, the general capabilities register's low 32 bits, minimum tick.
    hpet_base: int = 0xFED00000
    hpet_block_id: int = 0
    hpet_min_tick: int = 0x80
    #: PCI: _PRT rows (device, pin 0-3 = INTA-INTD, link 0-3 = LNKA-LNKD), the ISA IRQs a link
    #: may be routed to, the PCI config register of PIRQRC[A] (on device isa_bridge), and the
    #: functions that have an interrupt pin (device, pin) for the MP table.
    pci_routing: tuple[tuple[int, int, int], ...] = ()
    link_irqs: tuple[int, ...] = (5, 10, 11)
    isa_bridge: tuple[int, int] = (1, 0)
    pirq_register: int = 0x60
    pirq_irqs: tuple[int | None, ...] = (None, None, None, None)
    pci_intx: tuple[tuple[int, int], ...] = ()
    #: Top of RAM below 4 GiB: the PCI memory window starts here.
    ram_top: int = 0
    isa_devices: tuple[IsaDevice, ...] = ()
    #: (base, length, type) ranges of the E820 map.
    memory_map: tuple[tuple[int, int, int], ...] = ()
    #: Where the FACS lives (writable RAM, 64-byte aligned).
    facs_address: int = 0xE0000
    #: The VMBus device's IRQ (vmbus_acpi.py); None: no VMBus (no Hyper-V interface).
    vmbus_irq: int | None = None
    oem_id: str = "HVEMU "
    oem_table_id: str = "HVEMUPC "

    def pin_of(self, irq: int) -> int:
        """The I/O APIC input ISA IRQ ``irq`` arrives on."""
        return dict(self.isa_irq_pins).get(irq, irq)
