"""PCI INTx routing through the PIIX3's PIRQRC[A:D] (82371SB datasheet, "PIRQRC[A:D] - PIRQx
Route Control Registers", configuration 60h-63h: bit 7 disables, bits 3:0 the ISA IRQ)."""

from __future__ import annotations

from hyperv_emu.vdev.base import IrqLine
from hyperv_emu.vdev.piix import Piix3Isa
from hyperv_emu.vdev.pirq import PirqRouter, pirq_of


def board() -> tuple[Piix3Isa, PirqRouter, list[IrqLine], list[tuple[int, bool]]]:
    seen: list[tuple[int, bool]] = []
    irqs = [IrqLine(n, lambda n, level: seen.append((n, level))) for n in range(16)]
    isa = Piix3Isa()
    router = PirqRouter(isa.pirq_irq, irqs)
    isa.pirq_listeners.append(router.rerouted)
    return isa, router, irqs, seen


def test_rotation() -> None:
    assert [pirq_of(1, pin) for pin in range(4)] == [0, 1, 2, 3]
    assert [pirq_of(2, pin) for pin in range(4)] == [1, 2, 3, 0]
    assert pirq_of(5, 0) == 0


def test_power_on_routing_is_disabled() -> None:
    isa, router, irqs, seen = board()
    assert [isa.pirq_irq(i) for i in range(4)] == [None] * 4
    router.intx_line(3, 0).set_level(True)
    assert seen == []


def test_intx_follows_pirqrc_changes_at_once() -> None:
    isa, router, irqs, seen = board()
    line = router.intx_line(3, 0)            # device 3 INTA# -> PIRQC
    isa.config_write(0x62, 1, 11)            # PIRQC -> IRQ 11
    line.set_level(True)
    assert irqs[11].level
    isa.config_write(0x60, 4, 0x0A0A0A0A)    # a dword write: PIRQC -> IRQ 10
    assert not irqs[11].level and irqs[10].level
    isa.config_write(0x62, 1, 0x80 | 10)     # disabled
    assert not irqs[10].level
    isa.config_write(0x62, 1, 0x02)          # IRQ2 is a reserved value: not routed
    assert not any(i.level for i in irqs)
    isa.config_write(0x62, 1, 10)
    line.set_level(False)
    assert not irqs[10].level


def test_shared_pirq_is_wired_or() -> None:
    isa, router, irqs, _ = board()
    isa.config_write(0x60, 1, 5)             # PIRQA -> IRQ 5
    a = router.intx_line(1, 0)               # PIRQA
    b = router.intx_line(2, 3)               # PIRQA too
    a.set_level(True)
    b.set_level(True)
    a.set_level(False)
    assert irqs[5].level                     # b still holds it
    b.set_level(False)
    assert not irqs[5].level


def test_firmware_routing_survives_reset() -> None:
    isa, router, irqs, _ = board()
    isa.set_firmware_routing((10, 10, 11, 11))
    isa.reset()
    assert [isa.pirq_irq(i) for i in range(4)] == [10, 10, 11, 11]
    line = router.intx_line(4, 0)            # PIRQD -> IRQ 11
    line.set_level(True)
    isa.config_write(0x63, 1, 0x80)
    assert not irqs[11].level
    isa.reset()                              # back to the firmware's routing
    assert irqs[11].level
