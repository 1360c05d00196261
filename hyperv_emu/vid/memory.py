"""Guest memory as the parent partition handles it (DESIGN.md ``vid/``): the page size, the
partition's GPA space (:class:`GuestMemory`, for saved-state RAM images), and dirty-page and
access tracking for snapshots (:class:`DirtyPages`, :class:`AccessWatch`, as Hyper-V's VID
offers GPA dirty bitmaps to its parent).

These are the hypervisor's own types, re-exported so that code above ``vid/`` names them here
and never imports ``hypervisor/`` (tests/test_layering.py).
"""

from hyperv_emu.hypervisor.dirty import AccessWatch, DirtyMode, DirtyPages
from hyperv_emu.hypervisor.memory import PAGE, GuestMemory

__all__ = ["PAGE", "AccessWatch", "DirtyMode", "DirtyPages", "GuestMemory"]
