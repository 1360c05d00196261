"""blockmark's decoding cache: the same linear addresses hold other code in another address
space, after a rewrite, or in another guest of the same process, so a cached instruction
count is used only for the same bytes.  Before, a guest's retired-instruction count (and so
its virtual clock) took the count of whatever code had been at those addresses first."""

from __future__ import annotations

from hv_helpers import flat32, machine


def _retired(code: str) -> int:
    m = machine()
    flat32(m, 0x4000)
    m.load(0x4000, code, 32)
    assert m.part.run(max_instructions=1000).reason == "halted"
    return m.clock.instructions


def test_counts_follow_the_code_not_the_address() -> None:
    # Both HLTs sit 4 bytes into the block at 4000h, where the slice stops mid-block.
    assert _retired("nop\nnop\nnop\nnop\nhlt") == 5
    assert _retired("mov eax, eax\nmov eax, eax\nhlt") == 3
    assert _retired("nop\nnop\nnop\nnop\nhlt") == 5


def test_one_decode_serves_every_target_in_a_block_and_checks_its_bytes() -> None:
    from hyperv_emu.asm import assemble
    from hyperv_emu.hypervisor import blockmark

    code = assemble("nop\nmov eax, 1\nadd eax, ebx\nhlt", 32, 0x7000)  # ends at 1, 6, 8, 9
    memory = {"bytes": code}

    def read(address: int, size: int) -> bytes:
        return memory["bytes"][address - 0x7000:address - 0x7000 + size]

    assert [blockmark.count_insns(read, 0x7000, 32, 0x7000 + k) for k in (9, 1, 6, 8)] \
        == [4, 1, 2, 3]
    assert blockmark.count_insns(read, 0x7000, 32, 0x7003) is None  # inside the MOV
    # Rewritten in place (two-byte NOPs): the cached boundaries no longer hold.
    memory["bytes"] = assemble("xchg ax, ax\nxchg ax, ax\nxchg ax, ax\nhlt", 32, 0x7000)
    assert blockmark.count_insns(read, 0x7000, 32, 0x7006) == 3
    assert blockmark.count_insns(read, 0x7000, 32, 0x7001) is None
