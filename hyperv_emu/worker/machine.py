"""One VM's lifecycle: its partition, its board, the run loop, resets and the exit status.

This is the worker of DESIGN.md: it creates the partition through vid/ (a Hyper-V child
partition, or a plain PC partition), has the board (hyperv_emu/worker/board.py: devices, the
memory map, IRQ routing, the A20 gate) wire itself in, loads a Multiboot kernel when asked,
runs, follows guest resets, and turns the way the run ended into the documented exit status.
Build one from a stored configuration with :func:`hyperv_emu.worker.build.open_machine`, or
in-process from a :class:`MachineConfig`.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from hyperv_emu.clock import ClockMode, VirtualClock, ns_per_insn_for
from hyperv_emu.vdev.atapi import CdromDrive
from hyperv_emu.vdev.ide import Attachment
from hyperv_emu.vdev.system import exit_status
from hyperv_emu.vid.vm import RunExit, VmPartition
from hyperv_emu.vsp.storage.blockdev import BlockDevice
from hyperv_emu.worker import key_input, linuxboot, multiboot, platform_tables
from hyperv_emu.worker.board import A20Gate, Board, PcParts
from hyperv_emu.worker.config import MAX_MEMORY_MIB, MAX_VPS, ConfigError, VmConfig
from hyperv_emu.worker.events import EventLog
from hyperv_emu.worker.hostio import Attachments
from hyperv_emu.worker.serial_input import StreamInput
from hyperv_emu.worker.testdevs import TestDevices, add_test_devices
from hyperv_emu.worker.vmbus_host import VmbusHost, VmbusOptions, options_of

__all__ = ["A20Gate", "ConfigError", "Machine", "MachineConfig", "MachineExit"]

MiB = 1 << 20
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
#: The guest powered the machine off (ACPI S5: SLP_EN with \_S5's SLP_TYP in PM1a_CNT).
EXIT_POWER_OFF = 16
EXIT_INTERRUPTED = 130

_REASON_STATUS = {
    "triple-fault": EXIT_TRIPLE_FAULT,
    "halted": EXIT_HALTED,
    "instruction-limit": EXIT_INSTRUCTION_LIMIT,
    "timeout": EXIT_TIMEOUT,
    "fault": EXIT_GUEST_FAULT,
}
#: How many guest-requested resets one run follows before treating it as a reset loop.
MAX_RESETS = 16


@dataclass
class MachineConfig:
    """A machine for in-process use (tests, benchmarks): the configuration and the live
    objects it attaches in one record.  :meth:`split` gives the :class:`VmConfig` and the
    :class:`Attachments` the machine is built from; the worker builds both from a stored
    configuration instead (hyperv_emu/worker/build.py)."""

    memory_mib: int = 32
    #: Virtual processors (1 to 8): VP 0 boots, the others wait for INIT/SIPI.
    vps: int = 1
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
    #: 2**N ns per instruction (deterministic clock), as QEMU's ``-icount shift=N``; None:
    #: the default rule.
    icount_shift: int | None = None
    serial_output: Callable[[bytes], None] | None = None
    #: Host input for COM1 (bytes, or a binary file read a chunk at a time as the guest takes
    #: it), sent flow-controlled: only when the receiver has room (see Uart16550.attach_input).
    serial_input: bytes | BinaryIO = b""
    #: Start sending serial_input only once the guest has written these bytes to COM1.
    serial_input_after: bytes = b""
    debugcon_output: Callable[[bytes], None] | None = None
    #: Copy the BIOS's INT 10h teletype output to COM1 (off: only the BIOS's own messages,
    #: for guests that write COM1 themselves).
    bios_serial_mirror: bool = True
    #: Keys typed on the PS/2 keyboard (worker/key_input.py's language), once the guest has
    #: shown ``keys_after`` on COM1 or the VGA text screen (at once when empty).
    keys: str = ""
    keys_after: str = ""
    #: Offer the Hyper-V interface (CPUID 0x40000000+, synthetic MSRs, hypercalls).
    hyperv: bool = True
    #: The VMBus integration services and KVP host keys (worker/vmbus_host.py).
    vmbus: VmbusOptions = field(default_factory=VmbusOptions)
    #: Add QEMU's test devices (fw_cfg, pc/pci/hyperv-testdev): worker/testdevs.py.
    test_devices: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def split(self) -> tuple[VmConfig, Attachments]:
        """The configuration as data and the live objects; the IDE positions are checked
        here (``disk``/``disks``/``cdrom`` may clash), the rest when the machine is built."""
        rtc_base = self.rtc_base or datetime.datetime.now().astimezone().replace(microsecond=0)
        vm = VmConfig(memory_mib=self.memory_mib, boot=self.boot, clock_mode=self.clock_mode,
                      icount_shift=self.icount_shift, vps=self.vps,
                      rtc_base=rtc_base.isoformat(), hyperv=self.hyperv,
                      ics=tuple(self.vmbus.ics) if self.hyperv else (),
                      kvp=tuple(self.vmbus.kvp), name=self.vmbus.vm_name,
                      shutdown_after_heartbeats=self.vmbus.shutdown_after_heartbeats,
                      test_devices=self.test_devices,
                      bios_serial_mirror=self.bios_serial_mirror)
        return vm, Attachments(
            drives=_ide_slots(self), kernel=self.kernel, cmdline=self.append,
            modules=self.initrds, serial_output=self.serial_output,
            serial_input=self.serial_input, serial_input_after=self.serial_input_after,
            debugcon_output=self.debugcon_output, keys=self.keys, keys_after=self.keys_after,
            extra=self.extra)


@dataclass(frozen=True)
class MachineExit:
    """How a run ended: the exit status, a one-line reason and the hypervisor's record."""

    status: int
    reason: str
    message: str
    guest_code: int | None = None
    run_exit: RunExit | None = None


class Machine(PcParts):
    """A PC (the board's devices) on one partition with its VPs, and its run."""

    def __init__(self, config: VmConfig | MachineConfig,
                 attached: Attachments | None = None) -> None:
        """Build the machine ``config`` describes with the live objects ``attached`` (a
        validated VmConfig: see build.open_machine), or from an in-process MachineConfig."""
        vmbus_options = config.vmbus if isinstance(config, MachineConfig) else None
        if isinstance(config, MachineConfig):
            config, attached = config.split()
        attached = attached or Attachments()
        if not 2 <= config.memory_mib <= MAX_MEMORY_MIB:
            raise ConfigError(f"memory size must be between 2 and {MAX_MEMORY_MIB} MiB, "
                              f"not {config.memory_mib}")
        self.config = config
        self.attached = attached
        self.ram_size = config.memory_mib * MiB
        self.clock = VirtualClock(
            config.clock_mode, ns_per_insn_for(config.icount_shift))
        self.log = EventLog(self.clock)
        self.vm = VmPartition(self.clock, self.log.emit, hyperv=config.hyperv,
                              ram_size=self.ram_size)
        self.root, self.child, self.hv = self.vm.root, self.vm.child, self.vm.hv
        self.partition = self.vm.partition
        self._exit_code: int | None = None
        self._kernel_plan: multiboot.BootPlan | linuxboot.LinuxBootPlan | None = None
        self.resets = 0
        self.board = Board(config, self.vm, self.clock, self.log.emit, attached,
                           on_exit=self._on_exit, on_post=self._on_post)
        self.board.map_memory(self.vm.map_ram, self.vm.map_rom)
        self.board.build()
        self.vp = self.vm.create_vp()
        self.board.connect_vp(self.vp)
        if not 1 <= config.vps <= MAX_VPS:
            raise ConfigError(f"the number of VPs must be between 1 and {MAX_VPS}, "
                              f"not {config.vps}")
        for _ in range(1, config.vps):  # the APs, waiting for SIPI (hypervisor/smp.py)
            self.board.connect_vp(self.vm.create_vp())
        self.vm.map_local_apic(self.board.memory.region("local-apic").base)
        # The MP and ACPI tables, built from the devices above, into the BIOS ROM and RAM.
        self.tables = platform_tables.install(self)
        # VMBus on the root's SynIC ports, with the chosen ICs (worker/vmbus_host.py).
        self.vmbus = (VmbusHost(self, vmbus_options or options_of(config))
                      if self.hv is not None else None)
        board = self.board
        self.vm.set_io_handlers(board.io_read, board.io_write, board.offers_block,
                                board.io_read_block, board.io_write_block, board.block_ports)
        if attached.kernel is not None:
            self._plan_kernel(attached.kernel)
        #: QEMU's test devices (worker/testdevs.py) when ``test_devices`` is set.
        self.test_devices: TestDevices | None = None
        if config.test_devices:
            self.test_devices = add_test_devices(self)

    # ---- the board's parts -------------------------------------------------------------
    @property
    def parts(self) -> dict[str, Any]:
        return self.board.parts

    @property
    def disks(self) -> list[Attachment]:
        """The four IDE positions' attachments."""
        return self.board.drives

    @property
    def cdrom(self) -> CdromDrive | None:
        """The CD-ROM drive (secondary master), if there is one: eject()/insert()."""
        drive: CdromDrive | None = self.board.parts.get("cdrom")
        return drive

    @property
    def serial_input(self) -> StreamInput | None:
        """COM1's host input, if any (its ``error`` says whether it ended early)."""
        source: StreamInput | None = self.board.parts.get("serial_input")
        return source

    @property
    def chipset(self) -> platform_tables.Chipset:
        """The devices behind the ACPI tables (PM block, reset control, HPET, PIRQ router)."""
        chipset: platform_tables.Chipset = self.board.parts["chipset"]
        return chipset

    @property
    def a20(self) -> A20Gate:
        """The chipset's A20 gate (the board's)."""
        assert self.board.a20 is not None
        return self.board.a20

    def _plan_kernel(self, image: bytes) -> None:
        if linuxboot.is_linux_kernel(image):
            # A Linux bzImage (the "HdrS" header wins, as in QEMU); several initrds are
            # concatenated (the kernel unpacks each cpio archive in turn).
            try:
                self._kernel_plan = linuxboot.plan_boot(
                    image, ram_ranges=self.memory_map(), cmdline=self.attached.cmdline,
                    initrd=b"".join(data for _, data in self.attached.modules))
            except linuxboot.LinuxBootError as exc:
                raise ConfigError(str(exc)) from None
            return
        try:
            kernel = multiboot.parse_kernel(image)
            self._kernel_plan = multiboot.plan_boot(
                kernel, ram_size=self.ram_size, ram_ranges=self.memory_map(),
                cmdline=self.attached.cmdline, modules=self.attached.modules,
                fits=self.board.memory.is_ram)
        except multiboot.MultibootError as exc:
            raise ConfigError(str(exc)) from None

    def memory_map(self) -> list[tuple[int, int, int]]:
        """The E820 map the BIOS and the Multiboot loader report: (base, length, type)."""
        return self.board.memory.e820()

    # ---- device callbacks --------------------------------------------------------------
    def _on_exit(self, value: int) -> None:
        self._exit_code = value
        self.vm.request_stop("exit")

    def _on_post(self, kind: str, **fields: Any) -> None:
        self.log.emit(kind, **fields)
        if (kind == "post" and fields.get("code") == BOOT_POST_CODE
                and self._kernel_plan is not None):
            self.vm.request_stop("kernel-entry")

    def _enter_kernel(self) -> None:
        plan = self._kernel_plan
        assert plan is not None
        for addr, data in plan.writes:
            self.vm.write_memory(addr, data)
        if isinstance(plan, linuxboot.LinuxBootPlan):
            # The real-mode setup code, entered as from a boot loader (interrupts off).
            self.vp.write_registers(**plan.registers)
            self.log.emit("linux", setup=linuxboot.SETUP_BASE, kernel=plan.kernel_addr,
                          initrd=plan.initrd_addr)
            return
        self.vp.enter_protected_mode_flat32(
            plan.entry, gdt_base=plan.gdt_base, gdt_limit=plan.gdt_limit,
            eax=multiboot.MULTIBOOT_BOOTLOADER_MAGIC, ebx=plan.info_addr)
        self.log.emit("multiboot", entry=plan.entry, info=plan.info_addr)

    def reset(self) -> None:
        """A platform reset: every device and the VP to power-on state; RAM is kept."""
        self.board.reset()
        for vp in self.partition.vps:
            vp.reset()
        self.vm.reset()
        if self.vmbus is not None:
            self.vmbus.reset()
        self.sync_a20()

    def sync_a20(self) -> None:
        """Make the A20 gate follow its sources' registers (after a reset or a restore)."""
        self.board.sync_a20()

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
            ex = self.vm.run(max_instructions=left, timeout=left_s, at_block=at_block)
            if ex.reason == "timeout":
                ex = dataclasses.replace(ex, detail=f"{timeout} s")
            if ex.reason == "stop" and ex.detail == "exit":
                code = self._exit_code if self._exit_code is not None else 0
                return MachineExit(exit_status(code), "exit",
                                   f"guest wrote {code:#x} to the exit port", code, ex)
            if ex.reason == "stop" and ex.detail == "poweroff":
                return MachineExit(EXIT_POWER_OFF, "poweroff",
                                   "guest powered the machine off (ACPI S5)", None, ex)
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

    @property
    def typist(self) -> key_input.Typist | None:
        """What types ``--keys`` on the keyboard, if anything does."""
        typist: key_input.Typist | None = self.board.parts.get("typist")
        return typist

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
