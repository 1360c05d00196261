"""One lazily made capstone x86 disassembler per mode (16, 32, 64 bits).

Both the hypervisor (finding an intercepted instruction inside its translation block:
hypervisor/blockmark.py, spinskip.py) and the debugger (debug/trace.py, step.py) decode guest
code.  It lives outside ``hypervisor/`` and ``debug/``, like clock.py, because both use it and
the debugger reaches the hypervisor only through its event stream (tests/test_layering.py);
it imports nothing from the package.  Capstone is imported on the first call, not with the
module: it takes longer to load than a tiny guest takes to run, and a guest that only halts
never needs it (tests/hypervisor/test_blockmark_hlt.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import capstone

_disassemblers: dict[int, capstone.Cs] = {}


def disassembler(bits: int) -> capstone.Cs:
    """The capstone x86 disassembler for ``bits``-bit (16, 32 or 64) code, made on first use."""
    md = _disassemblers.get(bits)
    if md is None:
        import capstone

        modes = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}
        md = _disassemblers[bits] = capstone.Cs(capstone.CS_ARCH_X86, modes[bits])
    return md
