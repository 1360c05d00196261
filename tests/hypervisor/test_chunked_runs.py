"""Runs split into chunks end exactly where one run does (same registers, same count).

A run with an instruction budget ends with a counted slice (Unicorn's ``count=``); the next
run's first slice is gated and stops at a block entry.  Unicorn 2.1.1 puts EIP back at that
block (``synchronize_from_tb``) only while no UC_HOOK_CODE is listed, and its counting hook
stays listed, deleted, until that slice's ``emu_start`` returns: EIP was left where Unicorn
last stored it (a chained jump stores none), so code already counted ran again.  Chunked boots
of Linux lost instructions in its LZ4 decompressor's loop and triple-faulted; the loop below
has its shape (a store then a JMP back, a conditional branch to a second path)."""

from __future__ import annotations

from typing import Any

from hv_helpers import flat32, machine

LOOP = """
    xor ecx, ecx
    xor esi, esi
    xor edi, edi
    mov edx, 0x100000
top:
    inc ecx
    mov eax, ecx
    and eax, 3
    cmp eax, 2
    jae other
    mov ebx, [edx]
    add edx, 2
    mov [edx+0x10], ax
    jmp top
other:
    add esi, eax
    lea edi, [edi+esi*2]
    mov [edx+0x20], di
    cmp ecx, 1000000
    jb top
    hlt
"""


def _guest() -> Any:
    m = machine()
    m.load(0x4000, LOOP, 32)
    flat32(m, 0x4000)
    return m


def _state(m: Any) -> tuple[int, dict[str, int]]:
    return m.clock.instructions, m.vp.read_registers()


def _single(total: int) -> tuple[int, dict[str, int]]:
    m = _guest()
    m.part.run(max_instructions=total)
    return _state(m)


def test_a_split_anywhere_in_a_window_ends_as_one_run() -> None:
    # The second run is long enough for a gated part (budget > 512) before its counted tail.
    total = 3_000
    want = _single(total)
    for k in range(700, 730):
        m = _guest()
        m.part.run(max_instructions=k)
        assert m.clock.instructions == k
        m.part.run(max_instructions=total - k)
        assert _state(m) == want, k


def test_runs_in_chunks_of_every_size_end_as_one_run() -> None:
    m = _guest()
    sizes = [513 + j for j in range(40)]
    for n in sizes:
        m.part.run(max_instructions=n)
    assert _state(m) == _single(sum(sizes))


def test_steps_then_a_run_end_as_one_run() -> None:
    # Single steps are counted slices (so is tracing): the run after them is the slice after.
    for steps in range(1, 12):
        m = _guest()
        for _ in range(steps):
            m.vp.step()
        assert m.clock.instructions == steps
        m.part.run(max_instructions=2_000 - steps)
        assert _state(m) == _single(2_000), steps


def test_a_code_breakpoint_elsewhere_leaves_block_stops_exact() -> None:
    # A code breakpoint is a UC_HOOK_CODE for as long as it is set, so every gated slice
    # (here ended at a block entry by at_block) had the stale EIP.
    want = _single(3_000)
    for k in range(700, 720):
        m = _guest()
        m.part.observers.add_code_breakpoint(0x9000, lambda vp: False)
        m.part.run(max_instructions=k, at_block=True)
        m.part.run(max_instructions=3_000 - m.clock.instructions)
        assert _state(m) == want, k
