"""The PC board (chipset) definition: which device sits at which ports, MMIO ranges and IRQ
lines, the one memory map, and how interrupts are routed.

The board is the port-I/O and MMIO bus (:class:`~hyperv_emu.worker.motherboard.Motherboard`)
plus the wiring of an i440FX/PIIX3 PC around it:

* **Memory map** -- :class:`MemoryMap` is the one table of the guest-physical address space:
  RAM, ROM and MMIO regions, the E820 type each reports and whether a bus master may use it.
  The mapping into the partition (:meth:`Board.map_memory`), the BIOS's INT 15h E820 answer
  (written into the ROM's platform area beside the ACPI and MP tables:
  worker/platform_tables.py), the Multiboot memory map and the DMA checks all derive from it.
* **Interrupt routing** -- an ISA IRQ line goes to the 8259 pair and to the I/O APIC (IRQ0 on
  pin 2, the usual interrupt source override; IRQ2 is the cascade); the 8259's INT output goes
  to I/O APIC pin 0 and to LINT0 (ExtINT) of the first VP's local APIC; every local APIC's
  level-triggered EOIs are broadcast to the I/O APIC (:meth:`Board.isa_irq`,
  :meth:`Board.pic_output`, :meth:`Board.connect_vp`).  The PIIX3 PCI interrupt links
  (PIRQA-D) are not routed yet: no device on bus 0 raises INTx (PIIX3 IDE is in legacy mode on
  IRQ 14/15).
* **Devices** -- each is built by a factory from the configuration, ``factory(cfg, board)``,
  registered by name in :data:`FACTORIES`.  The machine runs them all in order; a harness (the
  fuzzer) runs the ones it wants on a board of its own, so it builds a device exactly as the
  machine does.  The A20 gate (port 92h OR the 8042 output port) is the board's too.

**Adding a device**: write ``def _mydev(cfg: VmConfig, board: Board) -> None`` that builds it
from ``cfg`` (return early when the configuration leaves it out), takes its IRQ lines from
``board.irqs``, its clock from ``board.clock``, guest memory and the APIC bus from
``board.platform``, and plugs it in with ``board.add(device, "mydev")`` (ports and MMIO ranges
are claimed from ``device.ports``/``device.mmio``; an MMIO range must lie in an ``mmio`` region
of :class:`MemoryMap`: add the region there).  Then add ``"mydev": _mydev`` to
:data:`FACTORIES` -- the order there is the order devices are built and plugged in (and so the
order of the board's saved state) -- and, for ``machine.mydev``, ``mydev = Part(MyDev)`` in
:class:`~hyperv_emu.worker.machine.Machine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, overload

from hyperv_emu.firmware_tables.platform import E820_NVS, E820_RAM, E820_RESERVED
from hyperv_emu.vdev.atapi import CdromDrive
from hyperv_emu.vdev.base import Device, EventSink, null_events
from hyperv_emu.vdev.hpet import HPET_BASE
from hyperv_emu.vdev.ide import Attachment, IdeChannel
from hyperv_emu.vdev.ioapic import IOAPIC_BASE, IoApic
from hyperv_emu.vdev.pci import PciBus
from hyperv_emu.vdev.pic import Pic
from hyperv_emu.vdev.piix import I440fxHost, Piix3Ide, Piix3Isa
from hyperv_emu.vdev.pit import Pit
from hyperv_emu.vdev.port61 import Port61
from hyperv_emu.vdev.ps2kbd import Ps2Keyboard
from hyperv_emu.vdev.rtc import Rtc
from hyperv_emu.vdev.serial import Uart16550
from hyperv_emu.vdev.system import I8042, OUT_A20, DebugCon, ExitDevice, FastA20, PostCode
from hyperv_emu.vdev.vga import VgaText
from hyperv_emu.vsp.storage.blockdev import BlockDevice
from hyperv_emu.worker import key_input
from hyperv_emu.worker.config import ConfigError, VmConfig
from hyperv_emu.worker.hostio import Attachments
from hyperv_emu.worker.motherboard import BusConflictError, Motherboard
from hyperv_emu.worker.platform_tables import build_chipset, legacy_routes
from hyperv_emu.worker.serial_input import StreamInput

if TYPE_CHECKING:
    from hyperv_emu.clock import VirtualClock
    from hyperv_emu.vid.vm import VirtualProcessor

MiB = 1 << 20
BIOS_BASE = 0xF0000
BIOS_HIGH_ALIAS = 0xFFFF0000
BIOS_SIZE = 0x10000
VGA_WINDOW = (0xA0000, 0x20000)
#: The 1 KiB extended BIOS data area just below 640 KiB (firmware/bios.S EBDA_SEG).
EBDA_BASE = 0x9FC00
EBDA_SIZE = 0x400
HIGH_RAM_BASE = 0x100000
LOCAL_APIC_BASE = 0xFEE00000
#: The FACS's page (the one ACPI table in RAM, worker/platform_tables.py): shadow RAM the
#: E820 map reports as ACPI NVS.
FACS_PAGE = 0xE0000
#: The HPET's register page (IA-PC HPET 1.0a; vdev/hpet.py).
HPET_PAGE = HPET_BASE
#: CMOS byte holding the BIOS boot sequence (firmware/services.inc, INT 19h): first device in
#: bits 3:0, second in bits 7:4; 2 = hard disk 80h, 3 = CD-ROM E0h (El Torito), 0 = end.
CMOS_BOOT_ORDER = 0x3D
BOOT_ORDERS = {"c": 0x32, "d": 0x23}
#: CMOS byte of hyperv-emu BIOS options (firmware/bios.S): bit 0 stops the INT 10h teletype
#: from copying guest output to COM1 (the BIOS's own messages still go there).
CMOS_OPTIONS = 0x3F
OPT_NO_TTY_MIRROR = 0x01

RegionKind = Literal["ram", "rom", "mmio"]


# ---- the memory map ----------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """One range of the guest-physical address space."""

    name: str
    base: int
    size: int
    kind: RegionKind
    #: The E820 type the firmware and the Multiboot loader report, or None for a hole.
    e820: int | None
    #: Whether a bus master (DMA) may read and write it: RAM only, never ROM or MMIO.
    dma: bool

    @property
    def end(self) -> int:
        return self.base + self.size


def pc_regions(ram_size: int, *, test_devices: bool = False) -> list[Region]:
    """The i440FX PC's address space with ``ram_size`` bytes of RAM (at least 1 MiB), in
    address order.  The VGA window is plain RAM (the text buffer is scanned, not trapped:
    UNICORN_NOTES) and C0000-EFFFF is shadow RAM as the chipset's PAM registers would leave
    it; neither is reported in E820 (a hole, as on a PC).  The BIOS ROM sits at F0000 and is
    aliased below 4 GiB, where the reset vector is."""
    regions = [
        Region("conventional", 0, EBDA_BASE, "ram", E820_RAM, True),
        Region("ebda", EBDA_BASE, EBDA_SIZE, "ram", E820_RESERVED, True),
        Region("vga-window", VGA_WINDOW[0], VGA_WINDOW[1], "ram", None, True),
        Region("shadow", VGA_WINDOW[0] + VGA_WINDOW[1], FACS_PAGE - sum(VGA_WINDOW), "ram",
               None, True),
        Region("facs", FACS_PAGE, 0x1000, "ram", E820_NVS, True),
        Region("shadow-high", FACS_PAGE + 0x1000, BIOS_BASE - FACS_PAGE - 0x1000, "ram", None,
               True),
        Region("bios", BIOS_BASE, BIOS_SIZE, "rom", E820_RESERVED, False),
    ]
    if ram_size > HIGH_RAM_BASE:
        regions.append(Region("extended", HIGH_RAM_BASE, ram_size - HIGH_RAM_BASE, "ram",
                              E820_RAM, True))
    regions += [
        Region("ioapic", IOAPIC_BASE, 0x1000, "mmio", E820_RESERVED, False),
        Region("hpet", HPET_PAGE, 0x1000, "mmio", E820_RESERVED, False),
        Region("local-apic", LOCAL_APIC_BASE, 0x1000, "mmio", E820_RESERVED, False),
        Region("bios-alias", BIOS_HIGH_ALIAS, BIOS_SIZE, "rom", E820_RESERVED, False),
    ]
    if test_devices:
        # QEMU's test devices (worker/testdevs.py): pci-testdev's BAR0 where the board
        # assigns it, pc-testdev's I/O RAM.
        from hyperv_emu.vdev.pc_testdev import IORAM_BASE, IORAM_SIZE
        from hyperv_emu.vdev.pci_testdev import MEM_BASE, MEM_SIZE

        regions += [Region("pci-testdev", MEM_BASE, MEM_SIZE, "mmio", None, False),
                    Region("pc-testdev", IORAM_BASE, IORAM_SIZE, "mmio", None, False)]
        regions.sort(key=lambda r: r.base)
    return regions


class MemoryMap:
    """The one table of the guest-physical address space, and what derives from it."""

    def __init__(self, ram_size: int, regions: Sequence[Region] | None = None) -> None:
        """The PC map with ``ram_size`` bytes of RAM, or the ``regions`` given (a harness's
        bench with a RAM window), in address order."""
        self.ram_size = ram_size
        self.regions = list(pc_regions(ram_size) if regions is None else regions)
        self._dma = _runs(r for r in self.regions if r.dma)
        self._usable = _runs(r for r in self.regions if r.e820 == E820_RAM)

    def region(self, name: str) -> Region:
        """The region called ``name`` (KeyError if there is none)."""
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    def e820(self) -> list[tuple[int, int, int]]:
        """The E820 map the BIOS and the Multiboot loader report: (base, length, type)."""
        return [(r.base, r.size, r.e820) for r in self.regions if r.e820 is not None]

    def ram_runs(self) -> list[tuple[int, int]]:
        """RAM as (base, size) runs, adjacent RAM regions joined (what gets mapped)."""
        return [(b, e - b) for b, e in _runs(r for r in self.regions if r.kind == "ram")]

    def is_dma(self, addr: int, size: int) -> bool:
        """Whether a bus master may use [addr, addr+size): RAM, not ROM, MMIO or a hole."""
        return _inside(self._dma, addr, size)

    def is_ram(self, addr: int, size: int) -> bool:
        """Whether [addr, addr+size) is usable RAM as the E820 map reports it."""
        return _inside(self._usable, addr, size)

    def check_mmio(self, base: int, size: int, who: str) -> None:
        """Refuse an MMIO claim that is not inside an ``mmio`` region of the map."""
        for r in self.regions:
            if r.kind == "mmio" and r.base <= base and base + size <= r.end:
                return
        raise BusConflictError(f"MMIO {base:#x}+{size:#x} of {who} is not an MMIO region of "
                               "the memory map")


def _runs(regions: Any) -> list[tuple[int, int]]:
    """(base, end) runs of the regions, adjacent ones joined."""
    runs: list[tuple[int, int]] = []
    for r in sorted(regions, key=lambda r: r.base):
        if runs and runs[-1][1] == r.base:
            runs[-1] = (runs[-1][0], r.end)
        else:
            runs.append((r.base, r.end))
    return runs


def _inside(runs: list[tuple[int, int]], addr: int, size: int) -> bool:
    end = addr + size
    return any(base <= addr and end <= top for base, top in runs)


# ---- what the board is wired into ------------------------------------------------------
class Platform(Protocol):
    """What the board needs from the partition it is wired into: guest memory as the CPU
    and as a bus master see it, the MMIO bus, the APIC bus, the CPUs' A20M# input and a way
    to end the running slice.  The machine gives its vid/ partition; the fuzzer its bench."""

    def read_memory(self, gpa: int, size: int) -> bytes: ...

    def dma_read(self, gpa: int, size: int) -> bytes: ...

    def dma_write(self, gpa: int, data: bytes) -> None: ...

    def map_mmio(self, gpa: int, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None: ...

    def apic_deliver(self, dest: int, vector: int, mode: int, level: bool, trigger: int,
                     logical: bool = False) -> None: ...

    def set_a20(self, enabled: bool) -> None: ...

    def request_stop(self, reason: str) -> None: ...


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


T = TypeVar("T")


class Part(Generic[T]):
    """A typed attribute for the board part of the same name (``pic = Part(Pic)``), on the
    board or on anything with a ``parts`` mapping (the machine)."""

    def __init__(self, kind: type[T]) -> None:
        self.kind = kind
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Part[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> Part[T] | T:
        if obj is None:
            return self
        try:
            return obj.parts[self.name]  # type: ignore[attr-defined,no-any-return]
        except KeyError:
            raise AttributeError(f"this board has no {self.name}") from None


def _ignore_exit(value: int) -> None:
    """Exit-port writes on a board nobody runs (a harness)."""


class PcParts:
    """The PC's parts by name (FACTORIES), typed, for the board and for the machine that
    owns it: each reads ``self.parts``."""

    pic = Part(Pic)
    ioapic = Part(IoApic)
    pit = Part(Pit)
    rtc = Part(Rtc)
    com1 = Part(Uart16550)
    com2 = Part(Uart16550)
    pci = Part(PciBus)
    host_bridge = Part(I440fxHost)
    piix_isa = Part(Piix3Isa)
    piix_ide = Part(Piix3Ide)
    ide = Part(IdeChannel)
    ide2 = Part(IdeChannel)
    vga = Part(VgaText)
    port92 = Part(FastA20)
    i8042 = Part(I8042)
    keyboard = Part(Ps2Keyboard)


class Board(Motherboard, PcParts):
    """The PC board: the buses, the devices the factories built, the memory map, the A20
    gate and the interrupt routing between the interrupt controllers and the VPs."""

    def __init__(self, cfg: VmConfig, platform: Platform, clock: VirtualClock,
                 events: EventSink = null_events, attached: Attachments | None = None, *,
                 on_exit: Callable[[int], None] = _ignore_exit,
                 on_post: Callable[..., None] | None = None,
                 memory: MemoryMap | None = None) -> None:
        super().__init__(events)
        self.cfg = cfg
        self.platform = platform
        self.clock = clock
        self.attached = attached or Attachments()
        self.memory = memory or MemoryMap(
            cfg.memory_mib * MiB,
            pc_regions(cfg.memory_mib * MiB, test_devices=cfg.test_devices))
        #: What the guest's exit-port write and POST codes are reported to (the machine).
        self.on_exit = on_exit
        self.on_post: Callable[..., None] = on_post or events
        #: The board's parts by name: devices, and the host-side objects they use.
        self.parts: dict[str, Any] = {}
        #: The four IDE positions' attachments (a CD image in a CdromDrive).
        self.drives: list[Attachment] = list(self.attached.drives)
        self.a20: A20Gate | None = None
        #: The VP whose LINT0 the 8259's INT output drives (the bootstrap processor).
        self.bsp: VirtualProcessor | None = None
        self._pic: Pic | None = None
        self._ioapic: IoApic | None = None

    # ---- building ----------------------------------------------------------------------
    def build(self, names: Sequence[str] | None = None) -> Board:
        """Run the factories (all of :data:`FACTORIES` in order, or the ones named)."""
        for name in FACTORIES if names is None else names:
            FACTORIES[name](self.cfg, self)
        self._pic = self.parts.get("pic")
        self._ioapic = self.parts.get("ioapic")
        return self

    def add(self, device: Device, name: str | None = None) -> Device:
        """Plug ``device`` in: claim its ports, map its MMIO ranges (which must be MMIO
        regions of the memory map) and, with a name, make it the board's part ``name``."""
        for base, size in device.mmio:
            self.memory.check_mmio(base, size, device.name)
        super().add(device)
        for base, size in device.mmio:
            self.platform.map_mmio(base, size, device.mmio_read, device.mmio_write)
        if name is not None:
            self.parts[name] = device
        return device

    def connect_vp(self, vp: VirtualProcessor) -> None:
        """Wire a VP's local APIC in: the 8259 reaches it on LINT0 (ExtINT), its
        level-triggered EOIs are broadcast to the I/O APIC, and it is the VP's interrupt
        source.  The first VP connected is the bootstrap processor."""
        if self._pic is not None:
            vp.lapic.extint = self._pic
        if self._ioapic is not None:
            vp.lapic.eoi_broadcast.append(self._ioapic.eoi)
        vp.set_interrupt_source(vp.lapic)
        if self.bsp is None:
            self.bsp = vp

    def map_memory(self, map_ram: Callable[[int, int], None],
                   map_rom: Callable[[int, bytes], None]) -> None:
        """Map the memory map's RAM and ROM (the firmware image, with the E820 table in it)
        through the given functions (vid/'s)."""
        for base, size in self.memory.ram_runs():
            map_ram(base, size)
        rom = self.firmware()
        for region in self.memory.regions:
            if region.kind == "rom":
                map_rom(region.base, rom)

    def firmware(self) -> bytes:
        """The BIOS ROM image (the machine writes the platform tables and the E820 map into
        its platform area: worker/platform_tables.py install)."""
        from hyperv_emu.firmware import build_bios

        bios = build_bios()
        if len(bios) != BIOS_SIZE:
            raise ConfigError(f"BIOS image is {len(bios)} bytes, expected {BIOS_SIZE}")
        return bios

    # ---- interrupt routing -------------------------------------------------------------
    def isa_irq(self, irq: int, level: bool) -> None:
        """An ISA IRQ line goes to both the 8259s and the I/O APIC: IRQ0 on pin 2 (the
        usual interrupt source override), IRQn on pin n; IRQ2 is the 8259 cascade."""
        if self._pic is not None:
            self._pic.set_irq(irq, level)
        if irq != 2 and self._ioapic is not None:
            self._ioapic.set_irq(2 if irq == 0 else irq, level)

    def pic_output(self, level: bool) -> None:
        """The 8259's INT output: LINT0 of the local APIC and I/O APIC pin 0."""
        if self._ioapic is not None:
            self._ioapic.set_irq(0, level)
        if self.bsp is not None:
            self.bsp.lapic.set_lint(0, level)

    # ---- the system devices' host side -------------------------------------------------
    def request_reset(self) -> None:
        """A guest-requested platform reset (8042 pulse, port 92h bit 0): end the slice; the
        machine carries it out."""
        self.platform.request_stop("reset")

    def sync_a20(self) -> None:
        """Make the A20 gate follow its two sources' current register values (after a reset
        or a device restore, which do not call the devices' ``on_a20``)."""
        if self.a20 is not None:
            self.a20.load(bool(self.port92.value & OUT_A20),
                          bool(self.i8042.output_port & OUT_A20))


# ---- the factories -----------------------------------------------------------------------
Factory = Callable[[VmConfig, Board], None]


def _pic(cfg: VmConfig, board: Board) -> None:
    board.add(Pic(on_intr=board.pic_output, events=board.events), "pic")
    board.connect_irqs(board.isa_irq)


def _ioapic(cfg: VmConfig, board: Board) -> None:
    board.add(IoApic(board.platform.apic_deliver, events=board.events), "ioapic")


def _pit(cfg: VmConfig, board: Board) -> None:
    # The HPET's legacy replacement route can take IRQ0 and IRQ8 from the 8254 and the RTC.
    routes = legacy_routes(board)
    pit = board.add(Pit(board.clock, routes[0].device_line, board.events), "pit")
    assert isinstance(pit, Pit)
    board.add(Port61(pit, board.clock), "port61")


def _rtc(cfg: VmConfig, board: Board) -> None:
    rtc = Rtc(board.clock, legacy_routes(board)[1].device_line, cfg.effective_rtc_base(),
              board.events)
    rtc.set_memory_size(board.memory.ram_size)
    rtc.set_equipment(0x06)  # math coprocessor present, 80x25 colour initial video
    rtc.poke(CMOS_BOOT_ORDER, boot_order(cfg.boot, board.drives))
    rtc.poke(CMOS_OPTIONS, 0 if cfg.bios_serial_mirror else OPT_NO_TTY_MIRROR)
    for drive in (0, 1):
        if board.drives[drive] is not None:
            # User-defined type: the geometry comes from IDENTIFY.
            rtc.set_hard_disk_type(drive, 47)
    board.add(rtc, "rtc")


def _serial(cfg: VmConfig, board: Board) -> None:
    att, clock, ev = board.attached, board.clock, board.events
    serial_output = att.serial_output
    # The PS/2 keyboard (behind the 8042, built by _system) and what types --keys on it; the
    # typist watches COM1 output for --keys-after, so it is made before COM1.
    keyboard = Ps2Keyboard()
    board.parts["keyboard"] = keyboard
    board.parts["typist"] = None
    if att.keys:
        try:
            keys = key_input.parse_keys(att.keys)
        except key_input.KeysError as exc:
            raise ConfigError(f"--keys: {exc}") from None
        typist = key_input.Typist(
            clock, keyboard, keys, after=att.keys_after,
            busy=lambda: keyboard.has_data() or bool(board.i8042.outq),
            screen=lambda: _screen_cells(board.vga))
        board.parts["typist"] = typist
        serial_output = typist.tap(serial_output)
    com1 = Uart16550(0x3F8, board.irqs[4], clock, serial_output, ev)
    com2 = Uart16550(0x2F8, board.irqs[3], clock, None, ev)
    board.parts["serial_input"] = None
    if att.serial_input:
        source = StreamInput(att.serial_input)
        board.parts["serial_input"] = source
        com1.attach_input(source, after=att.serial_input_after)
    board.add(com1, "com1")
    board.add(com2, "com2")


def _pci(cfg: VmConfig, board: Board) -> None:
    """PCI bus 0: i440FX host bridge, PIIX3 ISA bridge and IDE with both legacy channels."""
    ev, platform = board.events, board.platform
    pci = PciBus(board.claim_ports, board.release_ports, ev)
    board.add(pci, "pci")
    # Bus-master DMA bypasses the A20 gate, which is an input of the CPU (A20M#).
    functions = (("host_bridge", I440fxHost(), 0, 0), ("piix_isa", Piix3Isa(), 1, 0),
                 ("piix_ide", Piix3Ide(board.irqs[14], board.irqs[15], platform.dma_read,
                                       platform.dma_write, dma_ok=board.memory.is_dma,
                                       events=ev), 1, 1))
    for name, function, dev, fn in functions:
        board.add(function, name)
        pci.add(function, dev, fn)


def _ide(cfg: VmConfig, board: Board) -> None:
    """The PIIX3's two IDE channels with the four IDE positions' drives."""
    piix, drives, ev = board.piix_ide, board.drives, board.events
    channels = (IdeChannel(piix.ide_irqs[0], drives[0], drives[1], events=ev),
                IdeChannel(piix.ide_irqs[1], drives[2], drives[3], command_base=0x170,
                           control_base=0x376, events=ev))
    for channel, (name, ide) in enumerate(zip(("ide", "ide2"), channels, strict=True)):
        board.add(ide, name)
        piix.attach(channel, ide)
    #: The CD-ROM drive (secondary master), for eject()/insert().
    board.parts["cdrom"] = drives[2] if isinstance(drives[2], CdromDrive) else None


def _vga(cfg: VmConfig, board: Board) -> None:
    board.add(VgaText(board.clock, board.platform.read_memory, board.events), "vga")


def _system(cfg: VmConfig, board: Board) -> None:
    """Port 92h and the 8042 (A20 gate and reset), POST codes, debug console, exit port."""
    ev = board.events
    board.a20 = a20 = A20Gate(board.platform.set_a20)
    board.add(FastA20(board.request_reset, on_a20=a20.set_port92, events=ev), "port92")
    board.add(I8042(board.request_reset, on_a20=a20.set_kbc, irq1=board.irqs[1],
                    keyboard=board.parts.get("keyboard"), events=ev), "i8042")
    board.add(PostCode(board.on_post), "postcode")
    board.add(DebugCon(board.attached.debugcon_output or _discard), "debugcon")
    board.add(ExitDevice(board.on_exit, ev), "exit")


def _screen_cells(vga: VgaText) -> str:
    """The text screen's characters row by row, trailing spaces kept (for --keys-after)."""
    return "\n".join("".join(ch for ch, _ in row) for row in vga.cells())


def _discard(data: bytes) -> None:
    """Output sink for a console the user turned off."""


#: The board's devices by name, in the order they are built and plugged in.
FACTORIES: dict[str, Factory] = {
    "pic": _pic,
    "ioapic": _ioapic,
    "pit": _pit,
    "rtc": _rtc,
    "serial": _serial,
    "pci": _pci,
    "ide": _ide,
    "chipset": build_chipset,
    "vga": _vga,
    "system": _system,
}


def boot_order(boot: str, slots: Sequence[Attachment]) -> int:
    """The CMOS boot sequence byte; "c" on a machine without a CD-ROM drive is the hard disk
    alone, so the BIOS does not report a missing drive nobody asked for."""
    order = BOOT_ORDERS.get(boot.lower())
    if order is None:
        raise ConfigError(f"boot device must be 'c' (hard disk) or 'd' (CD-ROM), "
                          f"not {boot!r}")
    has_cd = any(isinstance(s, CdromDrive)
                 or (isinstance(s, BlockDevice) and s.sector_size == 2048) for s in slots)
    return order if has_cd or order != BOOT_ORDERS["c"] else 0x02
