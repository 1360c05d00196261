"""The VP assist page MSR (HV_X64_MSR_VP_ASSIST_PAGE, 0x40000073): one page per virtual
processor that the hypervisor overlays on guest memory (TLFS "Virtual Processor Assist Page").

The MSR holds bit 0 Enable, bits 11:1 RsvdP and bits 63:12 the guest page number; it belongs to
the AccessIntrCtrlRegs privilege (CPUID 0x40000003.EAX bit 4) with the APIC-access MSRs.  Linux
writes it on every CPU it brings up (hv_cpu_init) whenever the hypervisor grants that privilege.
The page starts zeroed: every field (the APIC assist word, the nested-virtualisation control
areas) means "nothing pending" at 0, and the guest's writes to it are kept ("behaves like RAM").
A page number beyond the physical address width raises #GP, as for the other overlay MSRs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import hvdef as H
from .memory import Region
from .mmu import GuestFault

if TYPE_CHECKING:
    from .hv import PartitionHv
    from .vp import VirtualProcessor

_ENABLE = 1
_GPN_MASK = ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF


class VpAssistPages:
    """Each VP's VP_ASSIST_PAGE MSR value and the overlay page it maps."""

    def __init__(self, hv: PartitionHv) -> None:
        self.hv = hv
        #: MSR value by VP index (absent: 0, disabled).
        self.values: dict[int, int] = {}
        self._pages: dict[int, Region] = {}

    def install(self) -> None:
        """Register the MSR (the caller checks the privilege)."""
        self.hv.register_msr(H.HV_X64_MSR_VP_ASSIST_PAGE,
                             lambda vp: self.values.get(vp.index, 0), self._write)

    def _write(self, vp: VirtualProcessor, value: int) -> None:
        if value >> self.hv.physical_address_bits():
            raise GuestFault(13, 0)
        self.values[vp.index] = value & (_GPN_MASK | _ENABLE)  # 11:1 RsvdP read as 0
        self._remap(vp.index)

    def _remap(self, index: int) -> None:
        part = self.hv.partition
        if part is None:
            return
        old = self._pages.pop(index, None)
        if old is not None:
            part.memory.unmap_overlay(old)
        value = self.values.get(index, 0)
        if value & _ENABLE:
            try:
                self._pages[index] = part.memory.map_overlay(value & _GPN_MASK, writable=True)
            except ValueError:
                pass  # over MMIO: no page appears, the MSR still reads back

    def reset(self) -> None:
        """Partition reset: every VP's page disabled."""
        indexes = list(self.values)
        self.values.clear()
        for index in indexes:
            self._remap(index)

    def save(self) -> dict[str, Any]:
        """The MSR values and each enabled page's content (the guest may have written it)."""
        part = self.hv.partition
        pages = {str(i): part.memory.read(r.gpa, r.size).hex()
                 for i, r in self._pages.items()} if part is not None else {}
        return {"values": {str(i): v for i, v in self.values.items()}, "pages": pages}

    def restore(self, state: dict[str, Any]) -> None:
        self.reset()
        self.values = {int(i): int(v) for i, v in state.get("values", {}).items()}
        for index in self.values:
            self._remap(index)
        part = self.hv.partition
        for i, data in state.get("pages", {}).items():
            region = self._pages.get(int(i))
            if region is not None and part is not None:
                part.memory.write(region.gpa, bytes.fromhex(data))
