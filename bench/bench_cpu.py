"""CPU-layer throughput: guest instructions/s and port-I/O exits/s through Partition, each as a
ratio against raw Unicorn running the same code without the hypervisor.

Run: ``python bench/bench_cpu.py`` (about 10 s on a 2-core machine).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import unicorn  # noqa: E402
from unicorn import x86_const as X  # noqa: E402

from hyperv_emu.asm import assemble  # noqa: E402
from hyperv_emu.clock import VirtualClock  # noqa: E402
from hyperv_emu.hypervisor import Partition  # noqa: E402
from hyperv_emu.vdev.system import PostCode  # noqa: E402
from hyperv_emu.worker.motherboard import Motherboard  # noqa: E402

LOOP_ITERS = 5_000_000  # 2 instructions each
IO_ITERS = 200_000  # OUT, DEC, JNZ each
CODE = 0x4000


def _loop_src(iters: int, with_out: bool) -> str:
    body = "out dx, al\n" if with_out else ""
    return f"mov ecx, {iters}\nmov dx, 0x80\nloop1:\n{body}dec ecx\njnz loop1\nhlt\n"


def raw_unicorn(src: str, hook_out: bool) -> tuple[float, int]:
    """Seconds for raw Unicorn (32-bit mode, no count) to run ``src`` to its HLT."""
    code = assemble(src, 32, CODE)
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    uc.mem_map(0, 0x100000)
    uc.mem_write(CODE, code)
    outs = [0]
    if hook_out:
        def on_out(_uc: object, port: int, size: int, value: int, _ud: object) -> None:
            outs[0] += 1
        uc.hook_add(unicorn.UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    t = time.perf_counter()
    uc.emu_start(CODE, CODE + len(code) - 1)
    return time.perf_counter() - t, outs[0]


def partition_run(src: str, mode: str, board: bool = False) -> tuple[float, int, int]:
    """Seconds, retired instructions (deterministic mode only) and OUT exits through
    Partition.run; with ``board`` the OUTs go the full path: motherboard bus → POST-code device."""
    clock = VirtualClock(mode)  # type: ignore[arg-type]
    part = Partition(clock)
    part.map_ram(0, 0x100000)
    outs = [0]

    def on_out(port: int, size: int, value: int) -> None:
        outs[0] += 1

    if board:
        mb = Motherboard()
        mb.add(PostCode(lambda kind, **fields: on_out(0x80, 1, 0)))
        part.set_io_handler(mb.io_read, mb.io_write)
    else:
        part.set_io_handler(lambda port, size: 0, on_out)
    vp = part.create_vp()
    part.write_memory(CODE, assemble(src, 32, CODE))
    vp.enter_protected_mode_flat32(CODE)
    t = time.perf_counter()
    ex = part.run(timeout=120)
    elapsed = time.perf_counter() - t
    assert ex.reason == "halted", ex
    return elapsed, clock.instructions, outs[0]


def main() -> None:
    n_insns = 2 * LOOP_ITERS + 3
    src = _loop_src(LOOP_ITERS, False)
    raw_t, _ = raw_unicorn(src, False)
    raw_ips = n_insns / raw_t
    print(f"compute loop, {n_insns:,} instructions")
    print(f"  raw Unicorn, no hooks           {raw_ips / 1e6:10.1f} M insn/s")
    det_t, retired, _ = partition_run(src, "deterministic")
    assert retired == n_insns, retired
    print(f"  Partition, deterministic clock  {n_insns / det_t / 1e6:10.1f} M insn/s"
          f"  ({n_insns / det_t / raw_ips:.3f} x raw)")
    host_t, _, _ = partition_run(src, "host")
    print(f"  Partition, host clock           {n_insns / host_t / 1e6:10.1f} M insn/s"
          f"  ({n_insns / host_t / raw_ips:.3f} x raw)")

    src = _loop_src(IO_ITERS, True)
    raw_t, raw_outs = raw_unicorn(src, True)
    assert raw_outs == IO_ITERS
    print(f"port I/O loop, {IO_ITERS:,} OUT exits")
    print(f"  raw Unicorn OUT hook            {IO_ITERS / raw_t / 1e3:10.1f} k exits/s")
    for mode in ("deterministic", "host"):
        t, _, outs = partition_run(src, mode)
        assert outs == IO_ITERS
        print(f"  Partition -> io handler ({mode[:4]})  {IO_ITERS / t / 1e3:10.1f} k exits/s"
              f"  ({raw_t / t:.3f} x raw)")
        t, _, outs = partition_run(src, mode, board=True)
        assert outs == IO_ITERS
        print(f"  guest OUT -> bus -> device ({mode[:4]}) {IO_ITERS / t / 1e3:7.1f} k exits/s"
              f"  ({raw_t / t:.3f} x raw)")


if __name__ == "__main__":
    main()
