"""The VMBus targets: fuzzed messages and ring packets reach the host's channel manager and
ICs through the real guest paths, the ring-index oracle catches a host that leaves a bad
index, and the reset leaves the bus and RAM as they were snapshotted."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from hyperv_emu.fuzz.engine import mutate, run_one
from hyperv_emu.fuzz.harness import Finding
from hyperv_emu.fuzz.vmbus_targets import IC_NAMES, VmbusMessageTarget, VmbusRingTarget
from hyperv_emu.vmbus import ring_protocol as R

CRASHES = Path(__file__).parent / "crashes"


@pytest.fixture(scope="module")
def ring() -> VmbusRingTarget:
    return VmbusRingTarget()


def test_ring_seeds_hold_a_dialogue_with_each_ic(ring: VmbusRingTarget) -> None:
    for index, seed in enumerate(ring.seeds()):
        trace: list[tuple[int, str]] = []
        assert run_one(ring, seed, trace) is None
        texts = [text for _, text in trace]
        # The host's negotiation arrived and the reference guest answered it.
        assert f"{IC_NAMES[index]}: answered 1 requests" in texts, texts
        assert any("packet DATA_INBAND" in t and t.endswith("sent") for t in texts), texts


def test_message_seeds_reach_the_channel_manager() -> None:
    target = VmbusMessageTarget()
    trace: list[tuple[int, str]] = []
    assert run_one(target, target.seeds()[0], trace) is None  # REQUESTOFFERS
    assert "OFFERCHANNEL" in trace[0][1] and trace[0][1].split(" -> ")[1].startswith("0x0")


def test_ring_index_oracle(ring: VmbusRingTarget) -> None:
    bus = ring.bus()
    header = bus.channels[0].out.header
    saved = bytes(header[:8])
    struct.pack_into("<I", header, R.READ_INDEX, 0x3001)  # as a broken host would leave it
    try:
        ring._poked = set()
        with pytest.raises(Finding, match="ring-index"):
            ring.check(bus)
        ring._poked = {(0, 0)}  # the input wrote it itself: not the host's doing
        ring.check(bus)
    finally:
        header[:8] = saved


def test_reset_restores_bus_and_memory(ring: VmbusRingTarget) -> None:
    bus = ring.bus()
    rng = random.Random(4)
    corpus = ring.seeds()
    for _ in range(60):
        assert run_one(ring, mutate(rng.choice(corpus), rng, corpus)) is None
    assert bus.server.save() == bus.saved[2]
    assert bus.hv.save() == bus.saved[1]
    assert bus.dirty.differing() == []


def test_wait_stopped_by_the_limit_leaves_interrupts_off(ring: VmbusRingTarget) -> None:
    # Found by `hyperv-emu fuzz vmbus-ring`: a wait that ended at the target's virtual-time
    # limit left IF set between the stub's STI and CLI, so the next VSC stub's HLT waited
    # forever while the ICs' periodic timers kept moving virtual time (a hang).
    data = (CRASHES / "vmbus-ring-wait-leaves-if-set").read_bytes()
    assert run_one(ring, data) is None
