"""A virtual processor's complete saved state, for whole-machine saved states.

:meth:`VirtualProcessor.save` (state version 2) holds the registers with their hidden segment
parts, control registers, EFER, the engine-kept MSRs, SSE/x87 registers, the halted flag, the
pending events, the TSC offset and the local APIC (with its timers' absolute deadlines).  This
module adds, as version 3, what a save taken at any instruction boundary also needs:

* the pending events' INT n lengths (a fault while delivering a software interrupt is
  reported at the INT instruction itself, so the length is part of the event);
* the debug registers DR0-DR3, DR6 and DR7 (Intel SDM Vol. 3B 17.2);
* the x87 last-instruction and last-operand pointers (FIP, FCS, FDP, FDS, FOP: FXSAVE keeps
  them, Intel SDM Vol. 1 8.1.8).

The STI/MOV SS interrupt shadow lives in ``hflags`` (HF_INHIBIT_IRQ) and NMI blocking in
``hflags2``, both in version 2 already.  :func:`upgrade_v2` turns a version-2 state into a
version-3 one (debug registers at their reset values, INT n lengths from the kind), so a state
taken before version 3 still loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X

from .delivery import KIND_SOFTWARE, Event

if TYPE_CHECKING:
    from .vp import VirtualProcessor

VP_STATE_VERSION = 3
#: Power-on values (Intel SDM Vol. 3A Table 9-1): DR6 FFFF0FF0h, DR7 400h, the rest 0.
_DR_RESET = {"dr0": 0, "dr1": 0, "dr2": 0, "dr3": 0, "dr6": 0xFFFF0FF0, "dr7": 0x400}
_FPU_PTRS = {"fip": X.UC_X86_REG_FIP, "fcs": X.UC_X86_REG_FCS, "fdp": X.UC_X86_REG_FDP,
             "fds": X.UC_X86_REG_FDS, "fop": X.UC_X86_REG_FOP}
#: Keys every version-3 state has (checked before anything is applied).
REQUIRED = ("gprs", "rip", "rflags", "hflags", "hflags2", "segs", "cr", "efer", "msrs", "xmm",
            "mxcsr", "fpcw", "fpsw", "fptag", "st", "halted", "pending", "tsc_offset", "lapic",
            "dr", "fpu_ptrs")


class VpStateError(ValueError):
    """A VP state that does not fit (wrong kind, version or shape)."""


def save_vp(vp: VirtualProcessor) -> dict[str, Any]:
    """The VP's version-3 state as plain (JSON-compatible) data."""
    state = vp.save()
    uc = vp.uc
    state["version"] = VP_STATE_VERSION
    state["pending"] = [[e.vector, e.kind, e.error_code, e.insn_len] for e in vp.pending]
    state["dr"] = vp.debug.save()  # kept by the hypervisor, not the engine (debugregs.py)
    state["fpu_ptrs"] = {name: int(uc.reg_read(reg)) for name, reg in _FPU_PTRS.items()}
    return state


def check_vp_state(state: dict[str, Any], index: int) -> None:
    """Raise VpStateError unless ``state`` is a version-3 state for VP ``index``."""
    if not isinstance(state, dict) or state.get("device") != "vp":
        raise VpStateError("not a VP state")
    if state.get("version") != VP_STATE_VERSION:
        raise VpStateError(f"VP state version {state.get('version')!r}, expected "
                           f"{VP_STATE_VERSION}")
    if state.get("index") != index:
        raise VpStateError(f"state of VP {state.get('index')!r} given to VP {index}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise VpStateError(f"VP state lacks {', '.join(missing)}")
    if len(state["gprs"]) != 16 or len(state["cr"]) != 5 or len(state["xmm"]) != 16:
        raise VpStateError("VP state has the wrong number of registers")


def restore_vp(vp: VirtualProcessor, state: dict[str, Any]) -> None:
    """Load a version-3 state (:func:`check_vp_state` it first)."""
    check_vp_state(state, vp.index)
    vp.restore({**state, "version": 2, "pending": []})
    uc = vp.uc
    vp.debug.restore(state["dr"])
    for name, reg in _FPU_PTRS.items():
        uc.reg_write(reg, int(state["fpu_ptrs"][name]))
    vp.ctx.save()  # the context buffer follows the engine again
    vp.pending = [Event(int(v), str(k), None if e is None else int(e), int(n))
                  for v, k, e, n in state["pending"]]


def upgrade_v2(state: dict[str, Any]) -> dict[str, Any]:
    """Version 2 -> 3: debug registers and x87 pointers at their reset values; an INT n
    event gets the usual two-byte length (CD ib), other events none."""
    out = dict(state)
    out["version"] = 3
    out["pending"] = [[v, k, e, 2 if k == KIND_SOFTWARE else 0]
                      for v, k, e, *_ in state.get("pending", [])]
    out["dr"] = dict(_DR_RESET)
    out["fpu_ptrs"] = dict.fromkeys(_FPU_PTRS, 0)
    return out
