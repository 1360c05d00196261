"""PCI interrupt routing through the PIIX3's PIRQ route control registers.

A PCI function's INTx# pin reaches one of the four PIRQ# inputs of the PIIX3 by the board's
rotation (:func:`pirq_of`: device d's INTA# on PIRQ (d + 0 - 1) mod 4, INTB# on the next, ...,
so that functions in adjacent slots spread over the four lines), and PIRQRC[A:D] (ISA bridge
configuration 60h-63h, PIIX3 datasheet 2.2.10) steer each PIRQ to an ISA IRQ or nowhere
(bit 7 set).  :class:`PirqRouter` ORs the INTx levels on each PIRQ (they are shared, wired-OR
lines) and drives the board's ISA IRQ lines, following every change of PIRQRC at once.

The DSDT's _PRT and link devices and the MP table are built from the same rotation and the
same registers, so what the OS reads is what the chipset does.  An ISA device and a PIRQ on one
IRQ line are not combined: the board gives PCI the IRQs no ISA device uses (the links offer
those only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hyperv_emu.vdev.base import IrqLine

PIRQS = 4


def pirq_of(device: int, pin: int) -> int:
    """The PIRQ (0-3 = A-D) that INTx pin ``pin`` (0-3 = INTA#-INTD#) of PCI ``device`` is
    wired to."""
    return (device + pin - 1) % PIRQS


class PirqRouter:
    """Drives ISA IRQ lines from the PCI INTx lines as PIRQRC routes them.

    ``route(pirq)`` returns the ISA IRQ the PIIX3 currently routes PIRQ ``pirq`` to, or None;
    call :meth:`rerouted` whenever PIRQRC changes.
    """

    def __init__(self, route: Callable[[int], int | None], irqs: Sequence[IrqLine]) -> None:
        self._route = route
        self._irqs = irqs
        self._sources: dict[tuple[int, int], bool] = {}
        #: The ISA IRQs this router drives high now.
        self.driven: set[int] = set()

    def intx_line(self, device: int, pin: int) -> IrqLine:
        """The line a PCI function at ``device`` drives for its INTx pin ``pin`` (level,
        asserted = True)."""
        self._sources[(device, pin)] = False

        def sink(_number: int, level: bool) -> None:
            self._sources[(device, pin)] = level
            self.rerouted()

        return IrqLine(pirq_of(device, pin), sink)

    def pirq_level(self, pirq: int) -> bool:
        """Whether any INTx wired to PIRQ ``pirq`` is asserted."""
        return any(level for (dev, pin), level in self._sources.items()
                   if pirq_of(dev, pin) == pirq)

    def rerouted(self) -> None:
        """Recompute which ISA IRQs the PIRQs hold high and update the lines."""
        want: set[int] = set()
        for pirq in range(PIRQS):
            irq = self._route(pirq)
            if irq is not None and self.pirq_level(pirq):
                want.add(irq)
        for irq in sorted(self.driven - want):
            self._irqs[irq].set_level(False)
        for irq in sorted(want - self.driven):
            self._irqs[irq].set_level(True)
        self.driven = want
