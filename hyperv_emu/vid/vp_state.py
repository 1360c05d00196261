"""A VP's state as the parent gets and sets it (DESIGN.md ``vid/``: get/set VP state): the
versioned saved-state form (:func:`save_vp`, :func:`check_vp_state`, :func:`restore_vp`,
:func:`upgrade_v2`), the in-memory snapshot the guest-level fuzzer rewinds to
(:class:`VpSnapshot`), and the RFLAGS bit the parent reads to tell whether a halted VP can
still be woken.

Re-exported from ``hypervisor/`` so that code above ``vid/`` never imports it
(tests/test_layering.py).
"""

from hyperv_emu.hypervisor.context import RFLAGS_IF
from hyperv_emu.hypervisor.vp_snapshot import VpSnapshot
from hyperv_emu.hypervisor.vp_state import (
    VP_STATE_VERSION,
    VpStateError,
    check_vp_state,
    restore_vp,
    save_vp,
    upgrade_v2,
)

__all__ = ["RFLAGS_IF", "VP_STATE_VERSION", "VpSnapshot", "VpStateError", "check_vp_state",
           "restore_vp", "save_vp", "upgrade_v2"]
