"""Guest-level tests of ``-smp N`` (hypervisor/smp.py): the smp guest starts the APs with
INIT-SIPI-SIPI through the local APIC's ICR, counts them in with ``lock xadd``, checks their
APIC IDs against the MP table and exchanges fixed and NMI IPIs; the platform-tables guest
finds every VP in the MP table and the MADT; runs are deterministic; VPs that wait for SIPI
execute nothing; a saved state holds every VP."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from hyperv_emu.guest_needs import prepare_guest
from hyperv_emu.guests import build_guest
from hyperv_emu.vsp.storage import MemoryImage
from hyperv_emu.worker import savedstate
from hyperv_emu.worker.machine import Machine, MachineConfig

RTC = datetime.datetime(2026, 1, 1)


def boot(guest: str, vps: int, **extra: object) -> tuple[Machine, bytearray]:
    out = bytearray()
    prepared = prepare_guest(guest)
    m = Machine(MachineConfig(vps=vps, disk=MemoryImage(bytearray(prepared.image)),
                              serial_output=out.extend, rtc_base=RTC, **extra))  # type: ignore[arg-type]
    prepared.attach(m)
    return m, out


def lines(out: bytearray) -> list[str]:
    return out.decode("ascii", "replace").replace("\r", "").splitlines()


def pause_exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The VP index of every PAUSE exit from now on (smp.pause_exit, still performed)."""
    from hyperv_emu.hypervisor import smp

    exits: list[int] = []
    real = smp.pause_exit
    monkeypatch.setattr(smp, "pause_exit",
                        lambda vp, *rest: (exits.append(vp.index), real(vp, *rest)))
    return exits


@pytest.mark.parametrize("vps", [1, 2, 4])
def test_smp_guest_starts_every_ap_and_exchanges_ipis(vps: int) -> None:
    m, out = boot("smp", vps)
    result = m.run(max_instructions=30_000_000)
    text = lines(out)
    assert result.status == 1, text
    aps = vps - 1
    mask = (1 << vps) - 1
    assert f"smp: mp table cpus {vps:04X} apic ids {mask:04X}" in text
    assert f"smp: checked in {aps:04X} apic ids {mask & ~1:04X}" in text
    shakes = 8 if vps > 1 else 0
    assert (f"ipi: requests {3 * aps:04X} replies {3 * aps:04X} self 0001 nmi {aps:04X} "
            f"handshakes {shakes:04X}") in text
    assert text[-1] == "PASS"
    for vp in m.partition.vps[1:]:
        assert not vp.wait_for_sipi and vp.halted  # started, now idle in HLT
        assert vp.lapic.apic_id == vp.index and vp.lapic.svr == 0x1FF
        assert vp.lapic.ldr == 1 << (24 + vp.index)
        assert not vp.apic_base & 0x100  # not the BSP
    assert m.vp.apic_base & 0x100


def test_smp_runs_are_deterministic() -> None:
    runs = []
    for _ in range(2):
        m, out = boot("smp", 4)
        result = m.run(max_instructions=30_000_000)
        assert result.status == 1
        runs.append((bytes(out), m.clock.instructions, m.clock.now(),
                     [vp.ctx.rip for vp in m.partition.vps]))
    assert runs[0] == runs[1]


def test_aps_waiting_for_sipi_execute_nothing() -> None:
    # The hello guest never starts the APs: with 8 VPs the run is the 1-VP run, instruction
    # for instruction, and the APs are still at their reset state.
    results = []
    for vps in (1, 8):
        m, out = boot("hello", vps)
        result = m.run(max_instructions=30_000_000)
        results.append((result.status, bytes(out), m.clock.instructions))
        assert all(vp.wait_for_sipi and vp.ctx.rip == 0xFFF0 for vp in m.partition.vps[1:])
    assert results[0] == results[1]
    assert results[0][0] == 1


def test_platform_tables_list_every_vp() -> None:
    m, out = boot("platform_tables", 4)
    result = m.run(max_instructions=60_000_000)
    assert result.status == 1, lines(out)
    assert m.tables is not None


def test_test_devices_fw_cfg_cpu_count_follows_vps() -> None:
    from hyperv_emu.vdev.fw_cfg import FW_CFG_MAX_CPUS, FW_CFG_NB_CPUS

    m, _ = boot("hello", 3, test_devices=True)
    fw = m.test_devices.fw_cfg  # type: ignore[union-attr]
    for key in (FW_CFG_NB_CPUS, FW_CFG_MAX_CPUS):
        fw.select(key)
        assert fw.read_byte() | fw.read_byte() << 8 == 3


def test_saved_state_holds_every_vp(tmp_path: Path) -> None:
    whole, whole_out = boot("smp", 4)
    end_whole = whole.run(max_instructions=30_000_000)
    assert end_whole.status == 1
    # Save after the APs have started but before the IPI rounds are over.
    first, first_out = boot("smp", 4)
    while True:
        stop = first.run(max_instructions=first.clock.instructions + 20_000, at_block=True)
        assert stop.reason == "instruction-limit", stop
        if b"checked in" in first_out:
            break
    assert not any(vp.wait_for_sipi for vp in first.partition.vps)
    vsv, bin_ = tmp_path / "m.vsv", tmp_path / "m.bin"
    savedstate.save(first, vsv, bin_)
    second, second_out = boot("smp", 4)
    assert all(vp.wait_for_sipi for vp in second.partition.vps[1:])
    savedstate.restore(second, vsv, bin_)
    end_second = second.run(max_instructions=30_000_000)
    assert end_second.status == 1
    assert bytes(whole_out) == bytes(first_out + second_out)
    assert whole.clock.instructions == second.clock.instructions
    assert [vp.ctx.rip for vp in whole.partition.vps] == [
        vp.ctx.rip for vp in second.partition.vps]


def test_guest_image_builds() -> None:
    assert len(build_guest("smp")) % 512 == 0



def test_pause_spin_waits_hand_the_turn_over(monkeypatch: pytest.MonkeyPatch) -> None:
    # The handshake rounds spin with PAUSE on both VPs: each PAUSE ends the spinner's turn
    # (an SVM PAUSE intercept), so a round costs a few turns rather than two whole quanta;
    # while the APs are halted (the settle loop) PAUSE is not intercepted at all.
    from hyperv_emu.hypervisor import smp

    exits = pause_exits(monkeypatch)
    m, out = boot("smp", 2)
    assert m.run(max_instructions=30_000_000).status == 1, lines(out)
    assert 0 in exits and 1 in exits
    assert len(exits) < 100  # not one per iteration of the 40000h-PAUSE settle loop
    # Against the 1-VP run (no AP, no handshake): a few turns' worth more, where spinning
    # out the quanta costs over a dozen of them.
    one, _ = boot("smp", 1)
    assert one.run(max_instructions=30_000_000).status == 1
    quantum = smp.QUANTUM_NS // m.clock.ns_per_insn
    assert m.clock.instructions - one.clock.instructions < 3 * quantum


@pytest.mark.parametrize("vps", [2, 3])
def test_code_rewritten_by_one_vp_runs_rewritten_on_another(vps: int) -> None:
    # The AP's engine translated `patched` before the BSP rewrote it; after CPUID, and in an
    # IPI handler, the AP must run the new code (hypervisor/xmodify.py).
    m, out = boot("xmodify", vps)
    result = m.run(max_instructions=30_000_000)
    text = lines(out)
    assert "xmodify: first 0001 after cpuid 0002 in ipi 0003" in text, text
    assert result.status == 1 and text[-1] == "PASS", text
    pages = m.partition.vps[1].code_pages
    assert pages is not None and pages.dropped >= 2


def test_vps_all_spinning_on_pause_let_a_timer_come(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both VPs spin with PAUSE while the BSP waits for a 1 ms APIC timer (1 ms / n
    # instructions of virtual time at n ns each: 500,000 at the default 2 ns).  Handing the
    # turn over at every PAUSE (7d3f11e) made that a PAUSE exit and a turn every few
    # instructions, tens of thousands of them; spinners that all wait for time run whole
    # quiet windows instead (smp.py).
    exits = pause_exits(monkeypatch)
    m, out = boot("pause_timer", 2)
    result = m.run(max_instructions=3_000_000)
    text = lines(out)
    assert result.status == 1, text
    assert "pause_timer: started 0001 tick 0001 ack 0001" in text
    assert len(exits) < 100, len(exits)
    sched = m.partition.scheduler
    assert sched is not None and sched.turns < 100
    # The tick came at 1 ms: the whole run (BIOS and boot included) is a little more than
    # 1 ms of instructions.
    ms = 1_000_000 // m.clock.ns_per_insn
    assert ms < m.clock.instructions < ms * 3 // 2


def test_tsc_polling_waits_cost_a_few_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both VPs wait by polling the TSC as memtest86+'s usleep does (each PAUSE finds RAX/RDX
    # and, at each new wait, the start time changed), then the BSP waits 10 ms alone while
    # the AP is halted for good.  Before the rules of smp.py for both, each PAUSE counted as
    # progress (499 turns, 293 PAUSE exits) and the lone BSP's turn ended every quantum
    # (100 turns for its 10 ms).
    exits = pause_exits(monkeypatch)
    m, out = boot("tsc_wait", 2)
    assert m.run(max_instructions=30_000_000).status == 1, lines(out)
    assert "tsc_wait: AP started/ack 0101" in lines(out)
    sched = m.partition.scheduler
    assert sched is not None and sched.turns < 80, sched.turns
    assert 0 in exits and 1 in exits and len(exits) < 80, len(exits)
    assert m.clock.now() > 12_000_000  # 2 ms together and 10 ms alone, in virtual time
    assert sched.ran[1] > 1_000_000 // m.clock.ns_per_insn  # the AP polled through the 2 ms
    # The rules use instruction counts, addresses and registers only: a run cut into pieces
    # at block entries takes the same turns.
    cut, cut_out = boot("tsc_wait", 2)
    while (stop := cut.run(max_instructions=cut.clock.instructions + 37_000,
                           at_block=True)).reason == "instruction-limit":
        pass
    assert stop.status == 1 and cut_out == out
    assert cut.partition.scheduler is not None
    assert (cut.clock.instructions, cut.partition.scheduler.turns,
            cut.partition.scheduler.ran) == (m.clock.instructions, sched.turns, sched.ran)
    one, one_out = boot("tsc_wait", 1)
    assert one.run(max_instructions=30_000_000).status == 1, lines(one_out)
