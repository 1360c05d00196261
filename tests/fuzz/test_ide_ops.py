"""The ide target's structured operations reach what raw bytes rarely line up: an ATA command
with its PIO data phase, READ/WRITE DMA through a PRD table and the bus master, and ATAPI
PACKET commands by PIO and by DMA."""

from __future__ import annotations

from hyperv_emu.fuzz.chipset import CD, DISK, IDE_SEEDS, IdeTarget
from hyperv_emu.fuzz.harness import Bench
from hyperv_emu.fuzz.ide_ops import (
    CDB_OPCODES,
    DATA_OFFSET,
    IdeOps,
    build_cdb,
)
from hyperv_emu.vdev.atapi import BLOCK


def _bench() -> tuple[Bench, IdeOps]:
    bench = IdeTarget().new_bench()
    return bench, IdeOps(bench)


def test_read_dma_lands_in_the_prd_region() -> None:
    bench, ops = _bench()
    # READ DMA (C8h) of LBA 5, two sectors, one PRD entry.
    ops.ata_dma(5 << 2 | 1 << 7)
    assert bench.memory[DATA_OFFSET:DATA_OFFSET + 1024] == DISK[5 * 512:7 * 512]
    assert bench.board.io_read(0x1F7, 1) & 0x89 == 0  # not busy, no DRQ, no error


def test_write_dma_reaches_the_disk_through_a_split_prd_table() -> None:
    bench, ops = _bench()
    bench.memory[DATA_OFFSET:DATA_OFFSET + 0x2000] = bytes([0xA7]) * 0x2000
    # WRITE DMA (CAh) of LBA 3, two sectors, a PRD table of two entries (each one sector).
    ops.ata_dma(1 | 3 << 2 | 1 << 7 | 1 << 10)
    assert bench.board.io_read(0x1F7, 1) & 0x89 == 0
    bench.memory[DATA_OFFSET:DATA_OFFSET + 0x2000] = bytes(0x2000)
    ops.ata_dma(3 << 2 | 1 << 7)  # READ DMA of the same two sectors, one entry
    assert bench.memory[DATA_OFFSET:DATA_OFFSET + 1024] == bytes([0xA7]) * 1024
    assert bench.memory[DATA_OFFSET + 1024:DATA_OFFSET + 1025] == b"\0"


def test_atapi_read_by_pio_and_by_dma() -> None:
    bench, ops = _bench()
    read10 = CDB_OPCODES.index(0x28)
    ops.atapi_packet(CDB_OPCODES.index(0x00))  # TEST UNIT READY: takes the unit attention
    ops.atapi_packet(read10 | 1 << 4 | 2 << 5 | 1 << 10)  # READ(10) LBA 2, one block, DMA
    assert bench.memory[DATA_OFFSET:DATA_OFFSET + BLOCK] == CD[2 * BLOCK:3 * BLOCK]
    assert bench.board.io_read(0x177, 1) & 0x01 == 0


def test_cdbs_put_their_fields_where_mmc_says() -> None:
    assert build_cdb(0x28, 7, 2, 0) == bytes([0x28, 0, 0, 0, 0, 7, 0, 0, 2, 0, 0, 0])
    assert build_cdb(0xA8, 1, 7, 0)[6:10] == (17).to_bytes(4, "big")
    assert build_cdb(0x5A, 0, 6, 1)[2] == 0x2A and build_cdb(0x5A, 0, 6, 1)[7:9] == b"\x08\x00"
    assert build_cdb(0x43, 0, 3, 3)[1:3] == bytes([0x02, 0x01])


def test_every_seed_runs_clean() -> None:
    target = IdeTarget()
    for seed in IDE_SEEDS:
        target.execute(seed)
