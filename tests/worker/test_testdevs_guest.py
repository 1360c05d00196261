"""--test-devices with real guest code: a Multiboot kernel reads fw_cfg through the data port and
by DMA, and raises interrupts through pc-testdev's lines into the I/O APIC; hyperv-testdev's
routes and connections reach the partition's SynIC through the hypercall path."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hyperv_emu.asm import assemble
from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.vdev import fw_cfg as F
from hyperv_emu.vdev import hyperv_testdev as HT
from hyperv_emu.worker.machine import Machine, MachineConfig
from hyperv_emu.worker.testdevs import PORT_ID_BASE

from ..test_cli import run_cli
from .mbkernel import LOAD, elf32

OUT = 0x300000  # where the guest stores what it read
IRQ_OUT = 0x300100
DMA_BUF = 0x302000
#: (selector, bytes to read) in the order the guest reads them.
READS = [(F.FW_CFG_SIGNATURE, 6), (F.FW_CFG_RAM_SIZE, 8), (F.FW_CFG_NB_CPUS, 2),
         (F.FW_CFG_MAX_CPUS, 2), (F.FW_CFG_CMDLINE_SIZE, 4), (F.FW_CFG_CMDLINE_DATA, 24),
         (0x1234, 2), (F.FW_CFG_WRITE_CHANNEL | F.FW_CFG_SIGNATURE, 4)]

# keystone 0.9.2 gives `lidt [m]` a 66 prefix (a 24-bit base): it is emitted as bytes.
# The DMA descriptor and the OUTL values are big-endian numbers stored by a little-endian CPU:
# each constant below is the byte-swapped value.
KERNEL = """
start:
    jmp main
    .align 4
    .long 0x1BADB002
    .long 0x00000003
    .long 0xE4524FFB
main:
    mov esp, 0x200000
    mov edi, {out}
    mov esi, table
next:
    movzx eax, word ptr [esi]
    cmp eax, 0xffff
    je dma
    movzx ecx, word ptr [esi + 2]
    add esi, 4
    mov dx, 0x510
    out dx, ax
    mov dx, 0x511
rd:
    in al, dx
    stosb
    loop rd
    jmp next
dma:
    mov dword ptr [0x301000], 0x0a001900
    mov dword ptr [0x301004], 0x40000000
    mov dword ptr [0x301008], 0
    mov dword ptr [0x30100c], 0x00203000
    xor eax, eax
    mov dx, 0x514
    out dx, eax
    mov eax, 0x00103000
    mov dx, 0x518
    out dx, eax
    mov eax, dword ptr [0x301000]
    mov dword ptr [{irq_out} + 12], eax

    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    mov word ptr [0x30f000], 0x7ff
    mov dword ptr [0x30f002], 0x310000
    mov eax, isr40
    mov word ptr [0x310200], ax
    mov word ptr [0x310202], 0x10
    mov word ptr [0x310204], 0x8e00
    shr eax, 16
    mov word ptr [0x310206], ax
    mov eax, isr41
    mov word ptr [0x310208], ax
    mov word ptr [0x31020a], 0x10
    mov word ptr [0x31020c], 0x8e00
    shr eax, 16
    mov word ptr [0x31020e], ax
    .byte 0x0f, 0x01, 0x1d
    .long 0x30f000
    mov eax, dword ptr [0xfee000f0]
    or eax, 0x100
    mov dword ptr [0xfee000f0], eax
    mov dword ptr [0xfec00000], 0x2c
    mov dword ptr [0xfec00010], 0x40
    mov dword ptr [0xfec00000], 0x2d
    mov dword ptr [0xfec00010], 0
    mov dword ptr [0xfec00000], 0x36
    mov dword ptr [0xfec00010], 0x8041
    mov dword ptr [0xfec00000], 0x37
    mov dword ptr [0xfec00010], 0
    sti
    mov dx, 0x200e
    mov al, 1
    out dx, al
    mov ecx, 100000
wait40:
    cmp dword ptr [{irq_out}], 0
    jne got40
    loop wait40
got40:
    mov al, 0
    out dx, al
    mov dx, 0x2013
    mov al, 1
    out dx, al
    mov ecx, 100000
wait41:
    cmp dword ptr [{irq_out} + 4], 0
    jne got41
    loop wait41
got41:
    cli
    mov dword ptr [0xfec00000], 0x36
    mov eax, dword ptr [0xfec00010]
    mov dword ptr [{irq_out} + 8], eax
    mov al, 0
    out 0xf4, al
    hlt
isr40:
    inc dword ptr [{irq_out}]
    mov dword ptr [0xfee000b0], 0
    iretd
isr41:
    inc dword ptr [{irq_out} + 4]
    mov dword ptr [0xfec00000], 0x36
    mov eax, dword ptr [0xfec00010]
    mov dword ptr [{irq_out} + 16], eax
    mov dx, 0x2013
    mov al, 0
    out dx, al
    mov dword ptr [0xfee000b0], 0
    iretd
table:
{table}
    .word 0xffff
"""


def _kernel() -> bytes:
    table = "\n".join(f"    .word {sel:#x}\n    .word {n}" for sel, n in READS)
    code = assemble(KERNEL.format(out=OUT, irq_out=IRQ_OUT, table=table), 32, LOAD)
    return elf32(code, LOAD)


def _machine(**kw: object) -> Machine:
    return Machine(MachineConfig(memory_mib=64, kernel=_kernel(), append="k.elf console=x",
                                 test_devices=True, **kw))  # type: ignore[arg-type]


def test_guest_reads_fw_cfg_by_port_and_dma() -> None:
    m = _machine()
    ex = m.run(max_instructions=20_000_000)
    assert ex.reason == "exit" and ex.guest_code == 0, ex.message
    got = m.partition.read_memory(OUT, sum(n for _, n in READS))
    parts, pos = [], 0
    for _, n in READS:
        parts.append(got[pos:pos + n])
        pos += n
    sig, ram, cpus, max_cpus, cmd_size, cmd, bad, wsig = parts
    assert sig == b"QEMU\0\0"  # reads past the end give 0
    assert struct.unpack("<Q", ram)[0] == 64 << 20
    assert cpus == max_cpus == b"\x01\x00"
    assert struct.unpack("<I", cmd_size)[0] == len("k.elf console=x") + 1
    assert cmd == b"k.elf console=x\0".ljust(24, b"\0")
    assert bad == b"\0\0" and wsig == b"QEMU"
    # DMA of the file directory: one file, etc/e820; the descriptor's control word cleared.
    dirent = m.partition.read_memory(DMA_BUF, 64)
    assert struct.unpack(">I", dirent[:4])[0] == 1
    assert dirent[12:20] == b"etc/e820"
    assert m.partition.read_memory(IRQ_OUT + 12, 4) == bytes(4)


def test_guest_interrupts_through_pc_testdev_lines() -> None:
    m = _machine()
    ex = m.run(max_instructions=20_000_000)
    assert ex.reason == "exit" and ex.guest_code == 0, ex.message
    edge, level, redir_after, _, redir_inside = struct.unpack(
        "<IIIII", m.partition.read_memory(IRQ_OUT, 20))
    assert (edge, level) == (1, 1)
    assert redir_inside & (1 << 14)  # Remote IRR set while the level interrupt is in service
    assert not redir_after & (1 << 14)  # cleared by the EOI
    assert m.test_devices is not None and not any(m.test_devices.pc_testdev.lines)


def test_without_the_option_the_ports_float() -> None:
    m = Machine(MachineConfig(memory_mib=16))
    assert m.test_devices is None
    m.board.io_write(F.FW_CFG_PORT_SEL, 2, 0)
    assert m.board.io_read(F.FW_CFG_PORT_DATA, 1) == 0xFF


def _synic_ready(m: Machine, sint: int, vector: int) -> None:
    assert m.hv is not None
    s = m.hv.synic.vp(0)
    assert s is not None
    s.write_simp(0x50000 | 1)
    s.write_siefp(0x51000 | 1)
    s.write_scontrol(1)
    s.write_sint(sint, vector)
    m.vp.lapic.write_register(0xF0, 0x1FF)  # SVR: APIC software-enabled


def test_hyperv_testdev_message_connection_reaches_the_sim() -> None:
    m = _machine()
    assert m.hv is not None
    _synic_ready(m, 2, 0xB0)
    m.board.io_write(HT.PORT, 4, 0x10 << 24 | HT.MSG_CONN_CREATE << 16 | 0 << 8 | 2)
    # The guest's HvCallPostMessage arrives here after the dispatcher validated it.
    status = m.hv.synic.post_message(m.hv, 0, 0x10, 0x77, b"hello")
    assert status == H.HV_STATUS_SUCCESS
    slot = m.partition.read_memory(0x50000 + 2 * 256, 32)
    assert struct.unpack_from("<IB", slot) == (0x77, 5) and slot[16:21] == b"hello"
    assert m.vp.lapic.irr & (1 << 0xB0)  # the SINT's vector is pending
    m.board.io_write(HT.PORT, 4, 0x10 << 24 | HT.MSG_CONN_DESTROY << 16)
    assert m.hv.synic.post_message(m.hv, 0, 0x10, 0x77, b"x") == (
        H.HV_STATUS_INVALID_CONNECTION_ID)
    assert (m.hv.id, PORT_ID_BASE + 0x10) not in m.hv.hypervisor.ports.ports


def test_hyperv_testdev_event_connection_sets_the_flag_named_by_the_id() -> None:
    m = _machine()
    assert m.hv is not None
    _synic_ready(m, 5, 0xB1)
    m.board.io_write(HT.PORT, 4, 0x21 << 24 | HT.EVT_CONN_CREATE << 16 | 0 << 8 | 5)
    assert m.hv.synic.signal_event(m.hv, 0, 0x21, 0) == H.HV_STATUS_SUCCESS
    flags = m.partition.read_memory(0x51000 + 5 * 256, 256)
    assert flags[0x21 // 8] == 1 << (0x21 % 8) and sum(flags) == flags[0x21 // 8]
    assert m.hv.synic.signal_event(m.hv, 0, 0x21, 1) == H.HV_STATUS_INVALID_PARAMETER


def test_hyperv_testdev_route_raises_the_sint_vector() -> None:
    m = _machine()
    _synic_ready(m, 3, 0xB3)
    m.board.io_write(HT.PORT, 4, HT.SINT_ROUTE_SET_SINT << 16 | 3)  # no route yet
    assert not m.vp.lapic.irr & (1 << 0xB3)
    m.board.io_write(HT.PORT, 4, HT.SINT_ROUTE_CREATE << 16 | 3)
    m.board.io_write(HT.PORT, 4, HT.SINT_ROUTE_SET_SINT << 16 | 3)
    assert m.vp.lapic.irr & (1 << 0xB3)


def test_hyperv_testdev_connection_id_taken_is_traced_not_raised() -> None:
    m = _machine()
    events: list[str] = []
    m.log.listeners.append(lambda e: events.append(e.describe()))
    assert m.root is not None and m.child is not None
    m.root.create_port(0x99, H.HV_PORT_TYPE_MESSAGE, port_partition=m.child.id,
                       connection_partition=m.child.id)
    m.root.connect_port(m.child.id, 0x30, 0x99, port_partition=m.child.id)
    m.board.io_write(HT.PORT, 4, 0x30 << 24 | HT.MSG_CONN_CREATE << 16 | 1)
    assert any("hyperv-testdev-failed" in e for e in events)


def test_fw_cfg_kernel_initrd_and_cmdline_items_match_the_multiboot_load() -> None:
    kernel = _kernel()
    m = Machine(MachineConfig(memory_mib=64, kernel=kernel, append="k.elf x",
                              initrds=[("rd", b"RAMDISK!")], test_devices=True))
    assert m.test_devices is not None
    fw = m.test_devices.fw_cfg

    def item(key: int, n: int) -> bytes:
        fw.select(key)
        return bytes(fw.read_byte() for _ in range(n))

    def u32(key: int) -> int:
        return int(struct.unpack("<I", item(key, 4))[0])

    assert (u32(F.FW_CFG_KERNEL_ADDR), u32(F.FW_CFG_KERNEL_ENTRY)) == (LOAD, LOAD)
    assert u32(F.FW_CFG_KERNEL_SIZE) == len(kernel)
    assert item(F.FW_CFG_KERNEL_DATA, len(kernel)) == kernel
    assert u32(F.FW_CFG_INITRD_SIZE) == 8 and item(F.FW_CFG_INITRD_DATA, 8) == b"RAMDISK!"
    m.run(max_instructions=20_000_000)  # the loader has written the Multiboot information
    plan = m._kernel_plan
    assert plan is not None
    assert u32(F.FW_CFG_CMDLINE_ADDR) == plan.cmdline_addr
    assert m.partition.read_memory(plan.cmdline_addr, 8) == b"k.elf x\0"
    assert u32(F.FW_CFG_INITRD_ADDR) == plan.module_addrs[0]
    assert m.partition.read_memory(plan.module_addrs[0], 8) == b"RAMDISK!"


# Exits with 0 when fw_cfg's signature reads "QEMU", else 1.
SIGNATURE_KERNEL = """
start:
    jmp main
    .align 4
    .long 0x1BADB002
    .long 0x00000003
    .long 0xE4524FFB
main:
    mov dx, 0x510
    xor eax, eax
    out dx, ax
    mov dx, 0x511
    in al, dx
    shl eax, 8
    in al, dx
    shl eax, 8
    in al, dx
    shl eax, 8
    in al, dx
    cmp eax, 0x51454d55
    setne al
    out 0xf4, al
    hlt
"""


@pytest.mark.parametrize(("flag", "status"), [(["--test-devices"], 1), ([], 3)])
def test_cli_option_adds_the_devices(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     flag: list[str], status: int) -> None:
    kernel = tmp_path / "sig.elf"
    kernel.write_bytes(elf32(assemble(SIGNATURE_KERNEL, 32, LOAD), LOAD))
    got, _out, err = run_cli(capsys, "run", "--kernel", str(kernel), "--serial", "none", *flag)
    assert got == status, err
