"""The start-up self-test (context.self_test) checks every context offset the hypervisor
edits, the SYSCALL MSRs' included: inline.py reads and writes STAR, LSTAR, CSTAR, FMASK and
KERNEL_GS_BASE in the live CPU state, so a build that moved them must be refused."""

from __future__ import annotations

import pytest

from hyperv_emu.hypervisor import context as C


def test_self_test_passes_on_the_pinned_build() -> None:
    C.self_test()


@pytest.mark.parametrize("index", range(len(C._MSR_PROBES)))
def test_a_misplaced_syscall_msr_offset_is_refused(index: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    probes = list(C._MSR_PROBES)
    msr, off, value = probes[index]
    probes[index] = (msr, off + 8, value)  # where a layout change would have moved it
    monkeypatch.setattr(C, "_MSR_PROBES", tuple(probes))
    with pytest.raises(C.LayoutError, match=f"{msr:#x}"):
        C.self_test()
