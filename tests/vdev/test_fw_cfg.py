"""fw_cfg: the selector/data contract of QEMU's docs/specs/fw_cfg.rst and its DMA interface."""

from __future__ import annotations

import struct

from hyperv_emu.vdev import fw_cfg as F


def _ram(size: int = 0x10000) -> tuple[bytearray, F.DmaRead, F.DmaWrite]:
    mem = bytearray(size)

    def read(addr: int, n: int) -> bytes:
        if addr + n > size:
            raise ValueError("not RAM")
        return bytes(mem[addr:addr + n])

    def write(addr: int, data: bytes) -> None:
        if addr + len(data) > size:
            raise ValueError("not RAM")
        mem[addr:addr + len(data)] = data

    return mem, read, write


def _read(dev: F.FwCfg, key: int, n: int) -> bytes:
    dev.io_write(F.FW_CFG_PORT_SEL, 2, key)
    return bytes(dev.io_read(F.FW_CFG_PORT_DATA, 1) for _ in range(n))


def _device(dma: bool = True, **kw: object) -> tuple[F.FwCfg, bytearray]:
    items, files = F.pc_items(ram_size=256 << 20, nb_cpus=1,
                              cmdline=(0x9000, b"x86/tsc.flat tsc"),
                              e820=[(0, 0x9FC00, 1), (0x100000, 0xFF00000, 1)])
    mem, rd, wr = _ram()
    if dma:
        return F.FwCfg(items, files, dma_read=rd, dma_write=wr), mem
    return F.FwCfg(items, files), mem


def test_signature_id_and_integer_items() -> None:
    dev, _ = _device()
    assert _read(dev, F.FW_CFG_SIGNATURE, 4) == b"QEMU"
    assert _read(dev, F.FW_CFG_ID, 4) == struct.pack("<I", 3)  # traditional + DMA
    assert _read(dev, F.FW_CFG_RAM_SIZE, 8) == struct.pack("<Q", 256 << 20)
    assert _read(dev, F.FW_CFG_NB_CPUS, 2) == b"\x01\x00"
    assert _read(dev, F.FW_CFG_MAX_CPUS, 2) == b"\x01\x00"
    assert _read(dev, F.FW_CFG_CMDLINE_SIZE, 4) == struct.pack("<I", 17)
    assert _read(dev, F.FW_CFG_CMDLINE_DATA, 17) == b"x86/tsc.flat tsc\0"
    assert _read(dev, F.FW_CFG_CMDLINE_ADDR, 4) == struct.pack("<I", 0x9000)


def test_without_dma_the_id_says_traditional_only_and_dma_port_floats() -> None:
    dev, _ = _device(dma=False)
    assert _read(dev, F.FW_CFG_ID, 4) == struct.pack("<I", 1)
    assert dev.io_read(F.FW_CFG_PORT_DMA, 4) == 0xFFFF_FFFF


def test_reads_past_the_end_and_of_missing_items_are_zero() -> None:
    dev, _ = _device()
    assert _read(dev, F.FW_CFG_SIGNATURE, 8) == b"QEMU\0\0\0\0"
    assert _read(dev, 0x1234, 4) == bytes(4)
    assert _read(dev, F.FW_CFG_KERNEL_SIZE, 4) == bytes(4)  # no kernel configured
    dev.reset()  # nothing selected after power-on
    assert dev.io_read(F.FW_CFG_PORT_DATA, 1) == 0


def test_selecting_rewinds_and_write_bit_names_the_same_item() -> None:
    dev, _ = _device()
    assert _read(dev, F.FW_CFG_SIGNATURE, 2) == b"QE"
    assert _read(dev, F.FW_CFG_SIGNATURE | F.FW_CFG_WRITE_CHANNEL, 4) == b"QEMU"


def test_data_writes_are_ignored() -> None:
    dev, _ = _device()
    dev.io_write(F.FW_CFG_PORT_SEL, 2, F.FW_CFG_WRITE_CHANNEL | F.FW_CFG_SIGNATURE)
    dev.io_write(F.FW_CFG_PORT_DATA, 1, ord("X"))
    assert _read(dev, F.FW_CFG_SIGNATURE, 4) == b"QEMU"


def test_wrong_widths_are_not_decoded() -> None:
    dev, _ = _device()
    _read(dev, F.FW_CFG_SIGNATURE, 0)
    dev.io_write(F.FW_CFG_PORT_SEL, 1, F.FW_CFG_ID)  # a byte write is not a selector write
    assert dev.io_read(F.FW_CFG_PORT_DATA, 1) == ord("Q")
    assert dev.io_read(F.FW_CFG_PORT_DATA, 2) == 0xFFFF
    assert dev.io_read(F.FW_CFG_PORT_DATA, 1) == ord("E")


def test_file_directory_is_big_endian_and_lists_e820() -> None:
    dev, _ = _device()
    count = struct.unpack(">I", _read(dev, F.FW_CFG_FILE_DIR, 4))[0]
    assert count == 1
    raw = _read(dev, F.FW_CFG_FILE_DIR, 4 + 64)[4:]
    size, select, _ = struct.unpack(">IHH", raw[:8])
    assert raw[8:].rstrip(b"\0") == b"etc/e820"
    assert (size, select) == (40, F.FW_CFG_FILE_FIRST)
    table = _read(dev, select, size)
    assert struct.unpack("<QQI", table[20:]) == (0x100000, 0xFF00000, 1)


def _dma(dev: F.FwCfg, mem: bytearray, control: int, length: int, address: int,
         at: int = 0x100) -> int:
    mem[at:at + 16] = struct.pack(">IIQ", control, length, address)
    # The guest writes the big-endian halves with OUTL: bytes in memory order.
    dev.io_write(F.FW_CFG_PORT_DMA, 4, int.from_bytes((0).to_bytes(4, "big"), "little"))
    dev.io_write(F.FW_CFG_PORT_DMA + 4, 4, int.from_bytes(at.to_bytes(4, "big"), "little"))
    return int(struct.unpack(">I", mem[at:at + 4])[0])


def test_dma_select_read_skip_and_zero_fill() -> None:
    dev, mem = _device()
    ctl = F.FW_CFG_SIGNATURE << 16 | F.DMA_SELECT | F.DMA_READ
    assert _dma(dev, mem, ctl, 6, 0x200) == 0
    assert mem[0x200:0x206] == b"QEMU\0\0"
    ctl = F.FW_CFG_CMDLINE_DATA << 16 | F.DMA_SELECT | F.DMA_SKIP
    assert _dma(dev, mem, ctl, 4, 0) == 0
    assert _dma(dev, mem, F.DMA_READ, 8, 0x300) == 0  # continues after the skip
    assert mem[0x300:0x308] == b"tsc.flat"
    # The traditional interface shares the offset.
    assert dev.io_read(F.FW_CFG_PORT_DATA, 1) == ord(" ")


def test_dma_write_and_bad_buffer_set_the_error_bit() -> None:
    dev, mem = _device()
    ctl = F.FW_CFG_SIGNATURE << 16 | F.DMA_SELECT | F.DMA_WRITE
    assert _dma(dev, mem, ctl, 4, 0x200) == F.DMA_ERROR
    ctl = F.FW_CFG_SIGNATURE << 16 | F.DMA_SELECT | F.DMA_READ
    assert _dma(dev, mem, ctl, 4, 0xFFFF_0000) == F.DMA_ERROR


def test_dma_descriptor_outside_ram_is_dropped() -> None:
    dev, mem = _device()
    dev.io_write(F.FW_CFG_PORT_DMA + 4, 4, int.from_bytes((0xFFFF0).to_bytes(4, "big"),
                                                         "little"))
    assert mem == bytearray(len(mem))


def test_dma_register_reads_the_signature() -> None:
    dev, _ = _device()
    raw = (dev.io_read(F.FW_CFG_PORT_DMA, 4).to_bytes(4, "little")
           + dev.io_read(F.FW_CFG_PORT_DMA + 4, 4).to_bytes(4, "little"))
    assert raw == b"QEMU CFG"


def test_save_restore_keeps_the_position() -> None:
    dev, _ = _device()
    _read(dev, F.FW_CFG_SIGNATURE, 2)
    other, _ = _device()
    other.restore(dev.save())
    assert other.io_read(F.FW_CFG_PORT_DATA, 1) == ord("M")
