"""A guest whose translated code overflows the engine's code buffer again and again keeps
running correctly (engine.open_engine's flush; Unicorn 2.1.1's first fill used to zero the
buffer without a tb_flush and the process died of SIGSEGV inside emu_start).

The guest runs in a child process so that such a crash shows as a failed test, not a dead
test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: Distinct blocks in the guest's chain, and passes over it.  Each block (``add eax, imm32;
#: jmp $+2``) becomes a translated block of its own with the gate's call, some 100+ bytes of
#: host code, so one pass is more than the child's 1 MiB buffer.
BLOCKS, PASSES = 12_000, 4
_HERE = Path(__file__).resolve().parent

_CHILD = f"""
import struct
import hyperv_emu.hypervisor.engine as engine
engine.TCG_BUFFER_SIZE = engine.SMALL_TCG_BUFFER_SIZE  # 1 MiB: fills within a pass
from hv_helpers import flat32, machine

m = machine()
code = bytearray(b"\\xb9" + struct.pack("<I", {PASSES}) + b"\\x31\\xc0")  # mov ecx,P; xor eax,eax
top = 0x10000 + len(code)
for i in range({BLOCKS}):
    code += b"\\x05" + struct.pack("<I", i + 1) + b"\\xeb\\x00"  # add eax, i+1; jmp $+2
code += b"\\x49\\x0f\\x85" + struct.pack("<i", top - (0x10000 + len(code) + 7))  # dec ecx; jnz top
code += b"\\xe7\\x80\\xf4"                                          # out 0x80, eax; hlt
m.part.write_memory(0x10000, bytes(code))
flat32(m, 0x10000)
exit_ = m.part.run()
print(exit_.reason, m.outs(0x80))
"""


def test_guest_overflowing_a_small_code_buffer_runs_on() -> None:
    env_path = f"{_HERE.parents[1]}:{_HERE}"
    child = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                           env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
                           timeout=600, check=False)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    expected = PASSES * BLOCKS * (BLOCKS + 1) // 2 & 0xFFFF_FFFF
    assert child.stdout.split("\n")[0] == f"halted [{expected}]"
