"""Property: any 64-bit input value, any GPAs and any guest memory content give a TLFS status
through the whole decoder (both conventions' I/O paths) and never a host exception."""

from __future__ import annotations

import struct

from hv_env import IN_PAGE, OUT_PAGE, enable_hypercalls, hv_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hypercall import FastIo, MemoryIo

M, HV = hv_machine()
enable_hypercalls(M)
KNOWN = sorted(HV.hypervisor.hypercalls.specs)
_SNAPSHOT = M.vp.save()

controls = st.one_of(
    st.integers(0, 2**64 - 1),
    # Mostly-valid values reach the handlers: a known code, small rep fields, fast or not.
    st.builds(lambda code, fast, count, start, var: code | fast << 16 | var << 17
              | count << 32 | start << 48,
              st.sampled_from(KNOWN), st.integers(0, 1), st.integers(0, 20),
              st.integers(0, 20), st.integers(0, 2)),
)
gpas = st.one_of(st.sampled_from([IN_PAGE, OUT_PAGE, IN_PAGE + 0xF00, 0]),
                 st.integers(0, 2**64 - 1), st.integers(0, 0x3FFFFF))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(control=controls, in_gpa=gpas, out_gpa=gpas, content=st.binary(min_size=0,
                                                                        max_size=512))
def test_any_input_gives_a_status(control: int, in_gpa: int, out_gpa: int,
                                  content: bytes) -> None:
    M.vp.restore(_SNAPSHOT)
    M.part.write_memory(IN_PAGE, content.ljust(512, b"\0"))
    # Keep the header's partition/VP fields pointing at real targets half of the time.
    if content[:1] == b"\0":
        M.part.write_memory(IN_PAGE, struct.pack("<QI", H.HV_PARTITION_ID_SELF,
                                                 H.HV_VP_INDEX_SELF))
    io = FastIo(M.vp, in_gpa, out_gpa) if control & (1 << 16) else MemoryIo(M.vp, in_gpa,
                                                                           out_gpa)
    out = HV.hypervisor.hypercalls.dispatch(HV, M.vp, control, io)
    assert out.status in H.STATUS_NAMES
    assert 0 <= out.reps_completed <= 0xFFF
    if out.continue_control is not None:
        assert out.status == H.HV_STATUS_SUCCESS
