"""The harness's fast paths agree with its reference paths: the in-place decoder of
``ChipsetTarget._run_fast`` with ``ops.decode_one`` plus ``Bench.apply`` (used to reproduce,
with a trace), and the watchdog still ends a runaway input."""

from __future__ import annotations

import random
import time

import pytest

from hyperv_emu.fuzz.chipset import CHIPSET_TARGETS
from hyperv_emu.fuzz.harness import ChipsetTarget, Finding, watchdog
from hyperv_emu.fuzz.ops import OPCODES


def _inputs(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    # Every opcode at least once, then random inputs.
    data = [bytes([kind]) + bytes(rng.randrange(256) for _ in range(40))
            for kind in range(len(OPCODES))]
    data += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(60)]
    return data


def _outcome(target: ChipsetTarget, data: bytes, fast: bool) -> object:
    bench = target.new_bench()
    try:
        if fast:
            target._run_fast(bench, data)
        else:
            target._run_ops(bench, data, [])
    except Finding as finding:
        return finding.invariant, finding.message
    return bench.save(), bench.clock.armed(), bench.clock.now(), bytes(bench.memory)


@pytest.mark.parametrize("cls", CHIPSET_TARGETS, ids=lambda c: c.name)
def test_fast_path_runs_inputs_as_the_traced_path_does(cls: type[ChipsetTarget]) -> None:
    target = cls()
    for data in _inputs(13):
        assert _outcome(target, data, True) == _outcome(target, data, False), data.hex()


def test_watchdog_ends_a_runaway_input_and_forgets_it() -> None:
    with pytest.raises(Finding) as info, watchdog(0.2):
        while True:
            pass
    assert info.value.invariant == "hang" and "_Watchdog" in info.value.host_traceback
    with watchdog(0.5):  # the next input starts with its own deadline: no stale alarm
        time.sleep(0.3)
