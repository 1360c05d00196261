"""The i440FX host bridge and the PIIX3 ISA and IDE functions, with bus-master IDE.

Identities and registers follow the Intel 82441FX PMC / 82437FX datasheets and the 82371SB
(PIIX3) datasheet: the host bridge at 00:00.0 (8086:1237, class 06:00), the ISA bridge at
00:01.0 (8086:7000, class 06:01, multi-function) and the IDE function at 00:01.1 (8086:7010,
class 01:01, programming interface 80h: both channels in legacy ("compatibility") mode, not
switchable, bus master capable).  The IDE function's bus-master registers follow the
"Programming Interface for Bus Master IDE Controller" revision 1.0 (SFF-8038i) as the PIIX3
datasheet implements them at BMIBA (BAR4, 16 I/O ports).

Not modelled: the PAM/SMRAM registers of the host bridge are storage only (the memory map is
fixed by the machine), the PIIX3 ISA function's PIRQ routing is reported by
:meth:`Piix3Isa.pirq_irq` (and applied by :class:`hyperv_emu.vdev.pirq.PirqRouter`), and IDE
timing registers are storage only.  The legacy IDE ports decode whatever the command register's
I/O enable says (the PIIX3 gates them with IOSE and IDETIM bit 15); here they are always
decoded, because the BIOS does not program the function yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from hyperv_emu.vdev.base import EventSink, IrqLine, null_events
from hyperv_emu.vdev.ide import XFER_DMA_IN, XFER_NONE, IdeChannel
from hyperv_emu.vdev.pci import (
    CMD_BUS_MASTER,
    CMD_IO,
    COMMAND,
    HEADER_MULTIFUNCTION,
    STATUS,
    STATUS_DEVSEL_MEDIUM,
    STATUS_RECEIVED_MASTER_ABORT,
    PciDevice,
)

INTEL = 0x8086

# Bus Master IDE Command register (SFF-8038i, 1.1): start/stop and read/write control.
BM_START = 0x01
#: 1 = the bus master writes memory (an ATA read); 0 = it reads memory (an ATA write).
BM_WRITE_MEMORY = 0x08
# Bus Master IDE Status register: active (RO), error and interrupt (write 1 to clear), drive 0/1
# DMA capable (R/W), simplex only (RO, 0 on the PIIX3: both channels may run at once).
BM_ACTIVE, BM_ERROR, BM_INTERRUPT = 0x01, 0x02, 0x04
BM_DMA_CAPABLE = 0x60
#: PRD entry flag: end of table (bit 31 of the second dword).
PRD_EOT = 0x80000000
#: The PRD table lies within one 64 KiB region (SFF-8038i 1.2), so at most 8192 entries.
PRD_TABLE_REGION = 0x10000
#: BMIBA's default when the machine stands in for the BIOS's PCI resource assignment.
DEFAULT_BM_BASE = 0xC000


class I440fxHost(PciDevice):
    """82441FX PCI and Memory Controller, host-bridge function 00:00.0."""

    name = "i440fx"

    def __init__(self) -> None:
        super().__init__()
        self.set_identity(INTEL, 0x1237, 0x06, 0x00, revision=0x02)
        # PCICMD: memory access and bus master are always enabled on the host bridge.
        self.set_bits(COMMAND, 2, 0x0000, 0x0006)
        self.set_w16(STATUS, 0x0280, w1c=0xF900)  # fast back-to-back, DEVSEL medium
        # PMCCFG, DBC, DRT, DRAMT, PAM0-6, DRB0-7, FDHC, MTT, CLT, SMRAM, ERRCMD...: device
        # registers kept as storage (50h-7Fh).
        self.wmask[0x50:0x80] = b"\xff" * 0x30
        self.config[0x72] = 0x02  # SMRAM: C_BASE_SEG = 010b (A0000h)
        self._power_on = bytes(self.config)


class Piix3Isa(PciDevice):
    """PIIX3 PCI-to-ISA bridge, function 00:01.0 (multi-function header)."""

    name = "piix3-isa"

    def __init__(self) -> None:
        super().__init__()
        self.set_identity(INTEL, 0x7000, 0x06, 0x01, header_type=HEADER_MULTIFUNCTION)
        # PCICMD: I/O, memory and bus-master are hardwired on; special cycles writable.
        self.set_bits(COMMAND, 2, 0x0008, 0x0007)
        self.set_w16(STATUS, STATUS_DEVSEL_MEDIUM, w1c=0x3800)
        self.wmask[0x4C:0x100] = b"\xff" * 0xB4
        self.config[0x4C] = 0x4D  # IORT: ISA I/O recovery timer
        self.config[0x4E] = 0x03  # XBCS: RTC and keyboard controller decode enabled
        self.config[0x60:0x64] = b"\x80" * 4  # PIRQRC[A:D]: routing disabled
        self.config[0x69] = 0x02  # TOM: top of memory 1 MiB
        self.config[0x70] = 0x80  # MBIRQ0: motherboard IRQ routing disabled
        self.config[0x76:0x78] = b"\x0c\x0c"  # MBDMA0/1: channel 4 (none)
        self.config[0xA0] = 0x08  # SMICNTL... power management defaults
        self._power_on = bytes(self.config)
        #: Called after PIRQRC[A:D] may have changed (a configuration write, a reset).
        self.pirq_listeners: list[Callable[[], None]] = []

    def set_firmware_routing(self, irqs: tuple[int, int, int, int]) -> None:
        """Stand-in for the BIOS's PCI interrupt setup: PIRQRC[A:D] routed to ``irqs`` at
        power-on and after every reset (the platform tables announce this routing)."""
        self.config[0x60:0x64] = bytes(i & 0x0F for i in irqs)
        self._power_on = bytes(self.config)

    def config_written(self, offset: int, size: int, old_command: int) -> None:
        if offset < 0x64 and offset + size > 0x60:
            for listener in self.pirq_listeners:
                listener()

    def reset(self) -> None:
        super().reset()
        for listener in self.pirq_listeners:
            listener()

    def pirq_irq(self, pirq: int) -> int | None:
        """The ISA IRQ that PIRQ ``pirq`` (0-3 = A-D) is routed to, or None (PIRQRC, 60h-63h)."""
        value = self.config[0x60 + (pirq & 3)]
        irq = value & 0x0F
        # Bit 7 disables routing; IRQ0-2, 8 and 13 are reserved values.
        if value & 0x80 or irq in (0, 1, 2, 8, 13):
            return None
        return irq


class _BusMaster:
    """The bus-master state of one IDE channel."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.command = 0
        self.status = 0
        self.prd = 0
        # The engine's position in the PRD table: the next entry to fetch and the region in hand.
        self.next_entry = 0
        self.addr = 0
        self.left = 0
        self.eot = False

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _BM_FIELDS}


_BM_FIELDS = ("command", "status", "prd", "next_entry", "addr", "left", "eot")


class _DmaFault(Exception):
    """A bus-master cycle failed: a master abort on memory or a malformed PRD table."""


class Piix3Ide(PciDevice):
    """PIIX3 IDE function 00:01.1: legacy-mode channels on IRQ14/15 and the bus master.

    ``read_memory(gpa, size)`` / ``write_memory(gpa, data)`` reach guest memory; ``dma_ok(gpa,
    size)`` says whether a range is RAM the bus master may use (anything else is a master
    abort).  The IDE channels get their interrupt lines from :attr:`ide_irqs` so the function
    sees the IDE interrupt for its status register, and are connected with :meth:`attach`.
    """

    name = "piix3-ide"

    def __init__(
        self,
        irq14: IrqLine,
        irq15: IrqLine,
        read_memory: Callable[[int, int], bytes],
        write_memory: Callable[[int, bytes], None],
        *,
        dma_ok: Callable[[int, int], bool] | None = None,
        bm_base: int = DEFAULT_BM_BASE,
        events: EventSink = null_events,
    ) -> None:
        super().__init__()
        self._read_memory = read_memory
        self._write_memory = write_memory
        self._dma_ok = dma_ok
        self._events = events
        self._out = (irq14, irq15)
        #: The lines the IDE channels drive: they reach IRQ14/15 through this function.
        self.ide_irqs = (IrqLine(14, self._ide_irq), IrqLine(15, self._ide_irq))
        self.channels: list[IdeChannel | None] = [None, None]
        self.bm = (_BusMaster(), _BusMaster())
        self.set_identity(INTEL, 0x7010, 0x01, 0x01, prog_if=0x80)
        # PCICMD: IOSE (bit 0) and BME (bit 2) are the writable bits.
        self.set_bits(COMMAND, 2, CMD_IO | CMD_BUS_MASTER)
        self.set_w16(STATUS, 0x0280, w1c=0x3800)
        self.wmask[0x3C] = 0x00  # no interrupt line/pin registers: legacy IRQ14/15
        self.config[0x0D] = 0x00  # MLT: master latency timer (writable bits 7:4)
        self.wmask[0x0D] = 0xF0
        # BAR0-3 are reserved (read 0): the channels are fixed at the legacy addresses.
        # BMIBA: 16 bytes of I/O, address bits 15:4 writable, bits 31:16 hardwired 0.
        self.add_bar(4, 16, io=True, decode_bits=16)
        # IDETIM (40h-43h) and SIDETIM (44h): timing, storage only.
        self.wmask[0x40:0x45] = b"\xff\xf3\xff\xf3\xff"
        # Stand-in for the BIOS's PCI setup: BMIBA assigned, I/O and bus mastering enabled,
        # IDE decode enabled on both channels (IDETIM bit 15).
        self.config[0x20:0x24] = ((bm_base & 0xFFF0) | 1).to_bytes(4, "little")
        self.config[COMMAND] = CMD_IO | CMD_BUS_MASTER
        self.config[0x41] = self.config[0x43] = 0x80
        self._power_on = bytes(self.config)

    def attach(self, channel: int, ide: IdeChannel) -> None:
        """Connect IDE channel ``channel`` (0 primary, 1 secondary) to its bus master."""
        self.channels[channel] = ide
        ide.attach_dma(lambda: self._run(channel))

    # ---- IDE interrupts ----------------------------------------------------------------
    def _ide_irq(self, number: int, level: bool) -> None:
        ch = 0 if number == 14 else 1
        if level:
            # "Set by the rising edge of the IDE interrupt line" (PIIX3 BMISX bit 2).
            self.bm[ch].status |= BM_INTERRUPT
        self._out[ch].set_level(level)

    # ---- bus-master registers ----------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        window = self.decoded(4)
        if window is None:
            return (1 << (8 * size)) - 1
        value = 0
        for i in range(size):
            value |= self._reg_read(port + i - window[0]) << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        window = self.decoded(4)
        if window is None:
            return
        offset = port - window[0]
        # A wide write can reach command and status in one cycle: apply the command byte last,
        # so a transfer the start bit completes at once sets an interrupt bit that the same
        # write's status byte does not clear again.
        for i in sorted(range(size), key=lambda i: (offset + i) & 7 == 0):
            self._reg_write(offset + i, (value >> (8 * i)) & 0xFF)

    def _reg_read(self, offset: int) -> int:
        if not 0 <= offset < 16:
            return 0xFF
        bm = self.bm[offset >> 3]
        reg = offset & 7
        if reg == 0:
            return bm.command
        if reg == 2:
            return bm.status
        if reg >= 4:
            return (bm.prd >> (8 * (reg - 4))) & 0xFF
        return 0  # 01h/03h reserved

    def _reg_write(self, offset: int, value: int) -> None:
        if not 0 <= offset < 16:
            return
        ch = offset >> 3
        bm = self.bm[ch]
        reg = offset & 7
        if reg == 0:
            self._command_write(ch, value)
        elif reg == 2:
            # Bits 1 and 2 clear when written with 1; bits 5 and 6 are software's; the rest read
            # only (PIIX3 BMISX).
            bm.status &= ~(value & (BM_ERROR | BM_INTERRUPT))
            bm.status = (bm.status & ~BM_DMA_CAPABLE) | (value & BM_DMA_CAPABLE)
        elif reg >= 4:
            shift = 8 * (reg - 4)
            # BMIDTP bits 1:0 are reserved: the table is dword aligned (SFF-8038i 1.2).
            bm.prd = ((bm.prd & ~(0xFF << shift)) | (value << shift)) & 0xFFFFFFFC

    def _command_write(self, ch: int, value: int) -> None:
        bm = self.bm[ch]
        old = bm.command
        if bm.status & BM_ACTIVE:
            # "This bit must not be changed while the bus master function is active": the
            # direction is kept until the engine stops.
            value = (value & ~BM_WRITE_MEMORY) | (old & BM_WRITE_MEMORY)
        bm.command = value & (BM_START | BM_WRITE_MEMORY)
        if value & BM_START and not old & BM_START:
            # Start: the engine (re)loads the PRD table pointer and goes active.
            bm.status |= BM_ACTIVE
            bm.next_entry, bm.left, bm.eot = bm.prd, 0, False
            self._events("bmide", op="start", channel=ch, prd=bm.prd,
                         write_memory=bool(value & BM_WRITE_MEMORY))
            self._run(ch)
        elif old & BM_START and not value & BM_START:
            # Stop: any transfer in progress is abandoned, state is lost (SFF-8038i 1.1).
            bm.status &= ~BM_ACTIVE
            self._events("bmide", op="stop", channel=ch)

    # ---- the DMA engine ----------------------------------------------------------------
    def config_written(self, offset: int, size: int, old_command: int) -> None:
        if self.command & CMD_BUS_MASTER and not old_command & CMD_BUS_MASTER:
            for ch in (0, 1):
                self._run(ch)  # bus mastering allowed again: waiting transfers proceed

    def _run(self, ch: int) -> None:
        """Move data while the drive has a DMA command and the engine is started and active."""
        bm, ide = self.bm[ch], self.channels[ch]
        if ide is None or not bm.status & BM_ACTIVE or not bm.command & BM_START:
            return
        direction = ide.dma_direction()
        if direction == XFER_NONE or not self.command & CMD_BUS_MASTER:
            return  # PCICMD BME clear: the function may not master the bus
        to_memory = direction == XFER_DMA_IN
        try:
            if to_memory != bool(bm.command & BM_WRITE_MEMORY):
                # The specification leaves a direction mismatch undefined; here the engine
                # reports it as an error rather than move data the wrong way.
                raise _DmaFault("direction mismatch")
            while ide.dma_direction() != XFER_NONE:
                if bm.left == 0:
                    if bm.eot:
                        # PRD table smaller than the transfer: the engine stops with Active and
                        # Interrupt both clear and the drive keeps waiting (SFF-8038i 1.2).
                        bm.status &= ~BM_ACTIVE
                        self._events("bmide", op="prd-exhausted", channel=ch)
                        return
                    self._fetch_prd(bm)
                    continue
                if to_memory:
                    # Check the target before taking the data, so a master abort can still
                    # abort the drive's command.
                    self._mem_check(bm.addr, min(bm.left, ide.dma_remaining()))
                    data = ide.dma_read(bm.left)
                    self._mem_write(bm.addr, data)
                else:
                    n = min(bm.left, ide.dma_remaining())
                    data = self._mem_read(bm.addr, n)
                    ide.dma_write(data)
                bm.addr += len(data)
                bm.left -= len(data)
                if not data:
                    break  # the drive ended the command (a media error)
        except _DmaFault as fault:
            bm.status = (bm.status | BM_ERROR) & ~BM_ACTIVE
            self._events("bmide", op="error", channel=ch, reason=str(fault))
            ide.dma_abort()
            return
        # The drive finished.  Active clears only if the PRD table ended exactly here; a larger
        # table leaves Active and Interrupt both set (SFF-8038i, "Interrupt/Active" table).
        if bm.left == 0 and bm.eot:
            bm.status &= ~BM_ACTIVE
        self._events("bmide", op="done", channel=ch, status=bm.status)

    def _fetch_prd(self, bm: _BusMaster) -> None:
        entry = bm.next_entry
        if entry // PRD_TABLE_REGION != bm.prd // PRD_TABLE_REGION:
            raise _DmaFault("PRD table runs past its 64 KiB region without EOT")
        raw = self._mem_read(entry, 8)
        base = int.from_bytes(raw[0:4], "little")
        flags = int.from_bytes(raw[4:8], "little")
        # Bit 0 of the base and of the count are reserved (word-aligned regions); a count of 0
        # means 64 KiB (SFF-8038i 1.2).
        count = (flags & 0xFFFE) or 0x10000
        bm.addr = base & 0xFFFFFFFE
        bm.left = count
        bm.eot = bool(flags & PRD_EOT)
        bm.next_entry = entry + 8

    def _mem_check(self, gpa: int, size: int) -> None:
        if gpa + size > 1 << 32 or (self._dma_ok is not None and not self._dma_ok(gpa, size)):
            self._master_abort(gpa)

    def _master_abort(self, gpa: int) -> NoReturn:
        # The function records the master abort in PCISTS bit 13 (received master abort).
        self.config[STATUS + 1] |= STATUS_RECEIVED_MASTER_ABORT >> 8
        raise _DmaFault(f"master abort at {gpa:#x}")

    # Guest memory is reached only after ``dma_ok`` accepted the range, so a failure of the
    # memory callbacks is a host bug and propagates; it is never turned into a master abort.
    def _mem_read(self, gpa: int, size: int) -> bytes:
        self._mem_check(gpa, size)
        return self._read_memory(gpa, size)

    def _mem_write(self, gpa: int, data: bytes) -> None:
        if not data:
            return
        self._mem_check(gpa, len(data))
        self._write_memory(gpa, data)

    # ---- Device ------------------------------------------------------------------------
    def reset(self) -> None:
        for bm in self.bm:
            bm.reset()
        super().reset()

    def save(self) -> dict[str, Any]:
        state = super().save()
        state["bm"] = [bm.state() for bm in self.bm]
        state["irq_levels"] = [line.level for line in self.ide_irqs]
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        for bm, s in zip(self.bm, state["bm"], strict=True):
            for key in _BM_FIELDS:
                setattr(bm, key, type(getattr(bm, key))(s[key]))
        # Restore the IDE lines' levels without an edge, so no interrupt bit appears.
        for line, out, level in zip(self.ide_irqs, self._out, state["irq_levels"], strict=True):
            line.level = bool(level)
            out.set_level(bool(level))
