"""memtest86+ from Debian's package, booted as QEMU's ``-kernel`` boots it (its .bin is a
Linux-boot-protocol bzImage: "HdrS", protocol 2.0c), on 64 MiB with its serial console, Enter
typed at its start prompt through the PS/2 keyboard.  Under the ``linux`` marker (.ci/run
installs ``memtest86+``); skipped where the package is missing.

What it needs of the machine, in boot order: the 32-bit boot protocol and E820 map; the
ACPI tables (it finds the FADT's PM timer block and calibrates the TSC against the PM timer
over 50 ms, which needs two back-to-back reads to differ: partition.io_stall); the 8042 and
keyboard for its start prompt; long mode with paging for the tests themselves.

Three checks: the start-up (calibration, prompt) and the first tests over all of memory
with no error, in a bounded number of instructions; a pass of the bit fade test alone (#10,
chosen in its configuration menu): two patterns left to fade 80 s each in RDTSC+PAUSE polling
loops, which the spin skip (hypervisor/spinskip.py) jumps over exactly instead of taking
about 2e9 RDTSC intercepts; and a whole pass of the default tests (about 90 s of host CPU
time; bench/bench_memtest.py times it test by test).

With -smp 2 (memtest86+ finds both CPUs in the MADT and starts the second with
INIT-SIPI-SIPI): the first tests with both CPUs working, and the bit fade pass, where one
CPU waits alone while the other halts (hypervisor/smp.py's turn rules); about 10 s and 5 s
of host CPU.  A whole -smp 2 pass took 138 s of CPU (60 s with one VP; docs/ENGINE.md,
"PAUSE and the turns of several VPs"), too long to add to CI's -m linux run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hyperv_emu.clock import DEFAULT_NS_PER_INSN, NS_PER_SEC
from hyperv_emu.worker.machine import Machine, MachineConfig

pytestmark = pytest.mark.linux
MEMTEST = Path("/boot/memtest86+x64.bin")
ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: Start-up (benchmark, calibration, prompt) takes about 200 M instructions; tests #0, #2 and
#: #3 (#1 is off by default) then cover the 64 MiB by about 1,000 M, when #4 starts.  The
#: serial console mirrors the screen every so often, so the short #2 may not show there:
#: tests run in order, and #4 starting means #0, #2 and #3 finished.
BUDGET = 1_200_000_000
TESTS_STARTED = {0, 3, 4}


#: memtest86+ 6.10's start prompt, choosing only the bit fade test: <F1> configuration,
#: <F1> test selection, <F1> clear selection, <F3> add one test, "10", <F10> twice (leaving
#: both menus starts testing).
ONLY_BIT_FADE = ("{f1}{wait:200}{f1}{wait:200}{f1}{wait:200}{f3}{wait:200}10{enter}"
                 "{wait:200}{f10}{wait:200}{f10}")
#: Virtual time a run needs is (nearly) all fading: instructions the spin skip jumps over
#: count, so the budgets follow the clock's rule (docs/ENGINE.md, "Instruction time").
_FADE_INSNS = 170 * NS_PER_SEC // DEFAULT_NS_PER_INSN
#: The bit fade pass: about 3 s of start-up and 2 x 80 s of fading (8.2e10 instructions of
#: virtual time at the default 2 ns each; 1.64e10 at 10 ns).
FADE_BUDGET = 4_000_000_000 + _FADE_INSNS
PASS_DONE = re.compile(r"Pass:\s+1\b")
#: A whole pass of the default tests: 74.2e9 instructions at 10 ns each (742 s of virtual
#: time; about 90 s of host CPU time), 58e9 of them memtest's own work, the rest the bit fade
#: test's waits: #6 (moving inversions, 64-bit patterns) and #9 (modulo 20) are most of it.
PASS_BUDGET = 64_000_000_000 + _FADE_INSNS
#: The default test list (#1 and #2 run only with several CPUs).
DEFAULT_TESTS = {0, 3, 4, 5, 6, 7, 8, 9, 10}
#: RDTSC/MSR intercepts after which the bit fade run gives up (it takes about 10,000 with the
#: spin skip; polling every iteration, its 160 s of fading would be about 2e9).
MAX_INTERCEPTS = 200_000


def _boot(max_instructions: int, keys: str = "\n", stop_at: re.Pattern[str] | None = None,
          vps: int = 1) -> tuple[str, Machine, list[int]]:
    out = bytearray()

    def serial(data: bytes) -> None:
        out.extend(data)
        if stop_at is not None and stop_at.search(ESCAPE.sub(" ", out[-2048:].decode(
                errors="replace"))):
            m.partition.request_stop()

    m = Machine(MachineConfig(memory_mib=64, vps=vps, kernel=MEMTEST.read_bytes(),
                              append="console=ttyS0", serial_output=serial,
                              keys=keys, keys_after="to start testing",
                              bios_serial_mirror=False))

    def watch() -> None:
        # Every 100 ms of virtual time (a run-loop timer: nothing the guest sees).
        if sum(vp.inline.count for vp in m.partition.vps) > MAX_INTERCEPTS:
            m.partition.request_stop()
        else:
            watchdog.arm_in(100_000_000)

    watchdog = m.clock.timer(watch, "test.watch")
    watchdog.arm_in(100_000_000)
    pit_counters: list[int] = []  # PIT counters programmed (control words), by counter number
    m.log.listeners.append(
        lambda e: pit_counters.append(e.fields["channel"]) if e.kind == "pit_control" else None)
    m.run(max_instructions=max_instructions)
    return ESCAPE.sub(" ", out.decode(errors="replace")), m, pit_counters


@pytest.mark.skipif(not MEMTEST.exists(), reason="needs Debian's memtest86+")
def test_memtest86_runs_its_first_tests_with_no_errors() -> None:
    text, m, pit_counters = _boot(BUDGET)
    # The prompt is on the VGA screen (the serial mirror catches up later): Enter was typed
    # there and taken, so testing did not wait out the prompt's 3 s.
    assert m.typist is not None and m.typist.done and m.typist.lost == 0
    assert "Status: Testing" in text, text[-3000:]
    # The TSC (1 GHz here) measured against the PM timer, shown as the CPU clock.
    assert re.search(r"CLK[^|]*\b1000\s*MHz", text), text[:3000]
    # ... and not against PIT counter 2, its fallback when two back-to-back PM timer reads
    # give one value (as they did before port accesses took time: partition.io_stall).
    assert 2 not in pit_counters, pit_counters
    started = {int(n) for n in re.findall(r"#(\d+)\s+\[", text)}
    # memtest86+ runs its tests in order; its serial console only sends the screen as it is
    # at each refresh (three in this run, at 25, 50 and 70 % of the pass), so a test that
    # starts and ends between two (#3 at 2 ns per instruction) goes unseen.  The last one
    # shown is the furthest the run got.
    assert max(TESTS_STARTED) in started and 0 in started, sorted(started)
    errors = re.findall(r"Errors:\s+(\d+)", text)
    assert errors and set(errors) == {"0"}, errors
    assert "Memory test failure" not in text and "Unexpected interrupt" not in text


@pytest.mark.skipif(not MEMTEST.exists(), reason="needs Debian's memtest86+")
def test_memtest86_bit_fade_pass_completes() -> None:
    text, m, _ = _boot(FADE_BUDGET, ONLY_BIT_FADE, PASS_DONE)
    assert m.typist is not None and m.typist.done and m.typist.lost == 0
    assert PASS_DONE.search(text), text[-3000:]
    assert {int(n) for n in re.findall(r"#(\d+)\s+\[", text)} == {10}
    assert "fade over 80 seconds" in text
    errors = re.findall(r"Errors:\s+(\d+)", text)
    assert errors and set(errors) == {"0"}, errors
    # Both 80 s fades passed in virtual time, almost all of it jumped over.
    assert m.clock.now() > 160_000_000_000
    assert m.partition.vps[0].inline.spin.iterations > 1_000_000_000


@pytest.mark.skipif(not MEMTEST.exists(), reason="needs Debian's memtest86+")
def test_memtest86_full_pass() -> None:
    text, m, _ = _boot(PASS_BUDGET, "\n", PASS_DONE)
    assert PASS_DONE.search(text), text[-3000:]
    started = {int(n) for n in re.findall(r"#(\d+)\s+\[", text)}
    # The pass ran every default test (in order; a short one can go unseen between two screen
    # refreshes, as above: #7 at 2 ns per instruction).
    assert started <= DEFAULT_TESTS and max(DEFAULT_TESTS) in started, sorted(started)
    errors = re.findall(r"Errors:\s+(\d+)", text)
    assert errors and set(errors) == {"0"}, errors
    assert "Memory test failure" not in text and "Unexpected interrupt" not in text


#: With -smp 2 (memtest86+ runs its PAR tests on every CPU, each on a share of memory):
#: start-up and tests #0-#4 end by about 3,100 M instructions, when #5 starts.
SMP_BUDGET = 4_000_000_000
SMP_TESTS_STARTED = {0, 3, 4, 5}
SMP_FOUND = re.compile(r"SMP:\s+2T\b")


@pytest.mark.skipif(not MEMTEST.exists(), reason="needs Debian's memtest86+")
def test_memtest86_smp2_runs_its_first_tests_on_both_cpus() -> None:
    # About 10 s of host CPU (a whole -smp 2 pass took 138 s against 60 s with one VP:
    # bench/bench_memtest.py --vps 2; the turns of two working VPs are most of the extra).
    text, m, _ = _boot(SMP_BUDGET, "\n", re.compile(r"#5\s+\["), vps=2)
    assert m.typist is not None and m.typist.done and m.typist.lost == 0
    assert SMP_FOUND.search(text), text[:3000]  # both CPUs found (MADT) and started
    started = {int(n) for n in re.findall(r"#(\d+)\s+\[", text)}
    # In order, #0 first and #5 last; a short test (#3 at 2 ns per instruction) can start and
    # end between two screen refreshes and go unseen, as in the full pass above.
    assert min(SMP_TESTS_STARTED) in started and max(SMP_TESTS_STARTED) in started
    assert started <= set(range(max(SMP_TESTS_STARTED) + 1)), sorted(started)
    errors = re.findall(r"Errors:\s+(\d+)", text)
    assert errors and set(errors) == {"0"}, errors
    assert "Memory test failure" not in text and "Unexpected interrupt" not in text
    sched = m.partition.scheduler
    assert sched is not None
    # Both CPUs worked: the AP ran a good share of the tests (PAR: memory split between them).
    assert sched.ran[1] > m.clock.instructions // 4, sched.ran
    # Turns: one per quantum of a VP's work in the PAR tests (#3, #4), next to none while
    # one CPU runs alone (start-up, #0) and not one per PAUSE of a wait: 283 k to #5 at 10 ns
    # per instruction, where 343 k before (#0 alone took 44,770 turns, now 152).
    assert sched.turns < m.clock.instructions // sched.quantum, sched.turns


@pytest.mark.skipif(not MEMTEST.exists(), reason="needs Debian's memtest86+")
def test_memtest86_smp2_bit_fade_pass_completes() -> None:
    # The bit fade test runs on one CPU (ONE): the other halts at a barrier while the first
    # waits 2 x 80 s by RDTSC polling.  The waiting VP's turn runs on while the other is
    # halted (smp.py), so the spin skip jumps whole seconds; with a turn ending every quantum
    # it took about 3.3 M turns and 120 s of host CPU, now about 150 turns and 5 s.
    text, m, _ = _boot(FADE_BUDGET, ONLY_BIT_FADE, PASS_DONE, vps=2)
    assert m.typist is not None and m.typist.done and m.typist.lost == 0
    assert PASS_DONE.search(text), text[-3000:]
    assert SMP_FOUND.search(text), text[:3000]
    assert {int(n) for n in re.findall(r"#(\d+)\s+\[", text)} == {10}
    errors = re.findall(r"Errors:\s+(\d+)", text)
    assert errors and set(errors) == {"0"}, errors
    assert m.clock.now() > 160_000_000_000
    assert sum(vp.inline.spin.iterations for vp in m.partition.vps) > 1_000_000_000
    sched = m.partition.scheduler
    assert sched is not None and sched.turns < 10_000, sched.turns
