"""Interrupt and exception delivery: events per second through the whole machine, per mode.

Boots each storm guest (guests/exc_storm*.S: 50000 INT3 + 50000 UD2; guests/tick_storm*.S:
100000 LAPIC timer interrupts) and divides the events its handlers counted by the process CPU
time of the run (the BIOS boot, about 1% of it, included).  CPU time rather than wall time,
because the machine is shared; both are printed.

Baseline, measured in the same run: a bare Unicorn engine that takes the same number of INT3
traps, each one a ``UC_HOOK_INTR`` callback that stops the engine, with the host advancing
nothing and restarting it at the next instruction: what any hypervisor built on Unicorn pays
per event before doing any delivery work.  The ratio is events/s against that.

``--slice-end`` switches the in-hook path (inline.py) off: every exception and intercept then
ends the slice and the run loop handles it (the figures before that path existed).

Run: ``python bench/bench_delivery.py [--slice-end] [guest ...]`` (about a minute on a 2-core
machine).
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import unicorn  # noqa: E402
from unicorn import x86_const as X  # noqa: E402

from hyperv_emu.guests import build_guest  # noqa: E402
from hyperv_emu.hypervisor.inline import InlineExits  # noqa: E402
from hyperv_emu.vsp.storage.raw import MemoryImage  # noqa: E402
from hyperv_emu.worker.machine import Machine, MachineConfig  # noqa: E402

GUESTS = {"exc_storm": 100_000, "exc_storm32": 100_000, "exc_storm64": 100_000,
          "tick_storm": 100_000, "tick_storm32": 100_000, "tick_storm64": 100_000}


def bare_unicorn(events: int) -> float:
    """CPU seconds for ``events`` INT3 traps through a bare engine, stop and restart each."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, b"\xCC" * 0x100)  # int3 ...
    uc.hook_add(unicorn.UC_HOOK_INTR, lambda u, intno, ud: u.emu_stop())
    t0 = time.process_time()
    pc = 0x1000
    for _ in range(events):
        uc.emu_start(pc, 0x2000)
        pc = uc.reg_read(X.UC_X86_REG_EIP)
        if pc >= 0x10F0:
            pc = 0x1000
    return time.process_time() - t0


def storm(name: str) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, how the run ended) for one storm guest."""
    out = bytearray()
    m = Machine(MachineConfig(disk=MemoryImage(bytearray(build_guest(name))),
                              serial_output=out.extend,
                              rtc_base=datetime.datetime(2026, 11, 28, 12)))
    c0, w0 = time.process_time(), time.perf_counter()
    ex = m.run(max_instructions=100_000_000)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    ok = ex.status == 1 and b"PASS" in out
    return cpu, wall, "PASS" if ok else f"FAILED ({ex.message})"


def main() -> None:
    args = sys.argv[1:]
    if "--slice-end" in args:
        args.remove("--slice-end")
        InlineExits.enabled = property(lambda self: False,  # type: ignore[assignment]
                                       lambda self, value: None)
        print("in-hook path off (--slice-end)")
    names = args or list(GUESTS)
    base = bare_unicorn(100_000)
    base_rate = 100_000 / base
    print(f"{'bare Unicorn INT3 trap + restart':34s} {base_rate:10,.0f} events/s  1.00x")
    for name in names:
        events = GUESTS.get(name, 100_000)
        cpu, wall, result = storm(name)
        rate = events / cpu
        print(f"{name:34s} {rate:10,.0f} events/s  {rate / base_rate:.2f}x  "
              f"({1e6 / rate:.1f} us/event; cpu {cpu:.1f} s, wall {wall:.1f} s) {result}")


if __name__ == "__main__":
    main()
