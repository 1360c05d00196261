"""Opening engines, and engine controls that the pinned Unicorn build's binding gets wrong.

The 2.1.1 binding encodes every ``uc_ctl`` request through a helper that asserts at least one
argument, so the argument-less requests (``ctl_flush_tb``, a TLB flush) raise ``AssertionError``
before reaching the library.  These functions encode the request themselves (op in bits 30-31,
argument count in bits 26-29, as ``unicorn.h``'s ``UC_CTL`` macro does) and call ``uc_ctl``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import unicorn
from unicorn import x86_const as X
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_IN_CFUNC, HOOK_INSN_OUT_CFUNC
from unicorn.unicorn_py3.unicorn import HOOK_INSN_INVALID_CFUNC, HOOK_INTR_CFUNC, uclib

#: Size of each engine's translated-code buffer.  Unicorn 2.1.1 reserves 1 GiB by default and
#: its first translation-cache flush touches every page of it (1 GiB resident per VP, ~0.5 s);
#: QEMU flushes by itself when a smaller buffer fills.  Every flush zeroes the whole buffer
#: (open_engine flushes once: about 11 ms per 32 MiB on an idle host; the zeroed pages are then
#: given back).  32 MiB: the open-time flush faults in a quarter of 128 MiB's pages, the largest
#: cost of a tiny guest's start-up (up to seconds on a host that backs fresh memory lazily);
#: Debian's kernel boots to busybox and binds the VMBus integration services with it
#: (tests/worker/test_linux_real.py, test_linux_vmbus.py).  An earlier 32 MiB panic ("No
#: working init found") came from #PF vectored inside the hook (inline.py), not from a flush.
TCG_BUFFER_SIZE = 32 << 20
#: Buffer for scratch engines that run a few instructions (the CPUID probe).
SMALL_TCG_BUFFER_SIZE = 1 << 20
#: The CPU model every engine emulates.
CPU_MODEL = X.UC_CPU_X86_HASWELL


def open_engine(buffer_size: int | None = None, *, cpuid_probe: bool = False) -> Any:
    """A new x86 engine in UC_MODE_64 emulating :data:`CPU_MODEL`, with a code buffer of
    ``buffer_size`` bytes (default :data:`TCG_BUFFER_SIZE`).  A ``cpuid_probe`` engine only
    answers CPUID for the guest's table (cpuid.py): it keeps MOVBE, which guest engines
    leave to the hypervisor (movbe.py), in its feature word."""
    size = TCG_BUFFER_SIZE if buffer_size is None else buffer_size
    before = _code_mappings()
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    # Must precede anything that initialises the engine (UC_CTL_TCG_BUFFER_SIZE, one arg).
    status = uclib.uc_ctl(uc._uch, (unicorn.UC_CTL_IO_WRITE << 30) | (1 << 26)
                          | unicorn.UC_CTL_TCG_BUFFER_SIZE, ctypes.c_uint32(size))
    if status != unicorn.UC_ERR_OK:
        raise unicorn.UcError(status)
    # The guest's CPU is an Intel Haswell, whatever the build's default model (2.1.1's is
    # qemu64, with AMD's vendor string, which would change the hypercall page's instruction).
    uc.ctl_set_cpu_model(CPU_MODEL)
    uc.reg_read(X.UC_X86_REG_RAX)  # creates the CPU, so its feature words can be edited
    _limit_xsave(uc, cpuid_probe)
    # Unicorn 2.1.1 starts its one code region unallocated (tcg_region_init leaves
    # region.current at 0; upstream fixed it after 2.1.1, "Init tcg region buffer").  The first
    # time the buffer fills, tcg_tb_alloc then "allocates" region 0 again instead of failing:
    # tcg_region_assign zeroes the whole buffer and code generation restarts at its start,
    # but no tb_flush happens, so the block hash table, the jump cache and the caller's last
    # block still point into the zeroed buffer, and the next tb_add_jump dereferences a
    # block whose tc.ptr is 0 (SIGSEGV in tb_set_jmp_target under emu_start, with or without
    # hooks).  One flush now goes through tcg_region_reset_all, which allocates region 0
    # properly (region.current = 1 = region.n); from then on every fill takes QEMU's path:
    # tb_flush, then cpu_loop_exit back to the execution loop, which retranslates.
    flush_tb(uc)
    _release_zeroed_buffer(before, size)
    return uc


def _code_mappings() -> set[str]:
    """The process's executable anonymous mappings ("start-end" from /proc/self/maps)."""
    try:
        with open("/proc/self/maps", encoding="ascii") as maps:
            return {line.split()[0] for line in maps if line.split()[1] == "rwxp"
                    and len(line.split()) == 5}
    except OSError:
        return set()


def _release_zeroed_buffer(before: set[str], size: int) -> None:
    """Give back the pages of the code buffer the flush in :func:`open_engine` zeroed (all but
    the first, which holds the prologue): an untouched engine stays small, as a fresh one is,
    instead of keeping TCG_BUFFER_SIZE resident.  The buffer is the one new executable mapping
    of ``size`` less its guard page; dropped anonymous pages read back as zeros, what
    the flush wrote.  Nothing is released where the buffer cannot be told apart."""
    new = [m for m in _code_mappings() - before
           if int(m.split("-")[1], 16) - int(m.split("-")[0], 16) == size - 4096]
    if len(new) != 1:
        return
    start = int(new[0].split("-")[0], 16)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(start + 4096), ctypes.c_size_t(size - 8192),
                 4)  # MADV_DONTNEED


#: Offset of ``CPUX86State.features`` (QEMU 5's FeatureWordArray, 64-bit words) in the live
#: CPU state of Unicorn 2.1.1, and the words used: FEAT_1_EDX, FEAT_1_ECX, FEAT_XSAVE_COMP_LO.
OFF_FEATURES = 5600
FEAT_1_EDX, FEAT_1_ECX, FEAT_XSAVE_COMP_LO = 0, 1, 21
#: XCR0 components the engine executes: x87 and SSE.  Its TCG (QEMU 5) has no AVX, so YMM
#: state (bit 2) must not be offered in CPUID.0DH or accepted by XSETBV.
XSAVE_EXECUTED = 0x3


def _limit_xsave(uc: Any, cpuid_probe: bool = False) -> None:
    """Make the engine offer only :data:`XSAVE_EXECUTED` in XCR0 (and, unless it is a CPUID
    probe, not execute MOVBE: movbe.py).  The Haswell model lists YMM state although AVX
    itself is filtered out (it raises #UD), so a guest could enable YMM with XSETBV and then
    fault on every AVX instruction.  Both CPUID.0DH and XSETBV's check
    read FEAT_XSAVE_COMP_LO, so clearing the bit there fixes both at the root."""
    from .context import LayoutError, env_address
    from .movbe import MOVBE_FEATURE

    words = (ctypes.c_uint64 * 22).from_address(env_address(uc) + OFF_FEATURES)
    # Layout check: FPU (bit 0) and SSE (bit 25) in FEAT_1_EDX, XSAVE (bit 26) in FEAT_1_ECX,
    # x87|SSE in FEAT_XSAVE_COMP_LO, as every model with XSAVE has.
    if (words[FEAT_1_EDX] & 0x0200_0001 != 0x0200_0001 or not words[FEAT_1_ECX] >> 26 & 1
            or words[FEAT_XSAVE_COMP_LO] & 3 != 3):
        raise LayoutError(f"CPU feature words not at +{OFF_FEATURES} of the CPU state")
    words[FEAT_XSAVE_COMP_LO] &= XSAVE_EXECUTED
    # The translator decodes MOVBE's register form as a memory access (movbe.py): without
    # the bit every MOVBE raises #UD, and the run loop performs or refuses it.  (CPUID is
    # answered from the probe engine, which keeps it: the guest still sees MOVBE.)
    if not cpuid_probe:
        words[FEAT_1_ECX] &= ~MOVBE_FEATURE & 0xFFFF_FFFF_FFFF_FFFF


def _ctl_write_no_args(uc: Any, ctl: int) -> None:
    status = uclib.uc_ctl(uc._uch, (unicorn.UC_CTL_IO_WRITE << 30) | ctl)
    if status != unicorn.UC_ERR_OK:
        raise unicorn.UcError(status)


def flush_tb(uc: Any) -> None:
    """Drop every translated block of ``uc``."""
    _ctl_write_no_args(uc, unicorn.UC_CTL_TB_FLUSH)


#: uc_ctl's control word for a TLB flush (write, no arguments).
_TLB_FLUSH = (unicorn.UC_CTL_IO_WRITE << 30) | unicorn.UC_CTL_TLB_FLUSH


def flush_tlb(uc: Any) -> None:
    """Drop ``uc``'s TLB (its cached guest-virtual to host translations).  One ``uc_ctl``
    call, no helper: the gate drops the TLB at every new block, a TLB-flush hypercall for
    each VP it names."""
    if uclib.uc_ctl(uc._uch, _TLB_FLUSH) != unicorn.UC_ERR_OK:
        _ctl_write_no_args(uc, unicorn.UC_CTL_TLB_FLUSH)  # raises the engine's error


def hook_failed(uc: Any, exc: BaseException) -> None:
    """What the binding's hook wrapper does with an exception a hook raised, for hooks
    installed by :func:`add_port_hooks`: keep the first for ``emu_start`` to raise, and stop
    the engine."""
    if uc._hook_exception is None:
        uc._hook_exception = exc
    uc.emu_stop()


def add_port_hooks(uc: Any, on_in: Callable[..., int], on_out: Callable[..., None]) -> Any:
    """Install Unicorn's IN and OUT hooks on ``uc`` with ``on_in(handle, port, size, ud)
    -> value`` and ``on_out(handle, port, size, value, ud)`` called straight from ctypes.
    The binding's ``hook_add`` puts two Python frames (an exception guard and an argument
    adapter) in front of every port access, as much again as a short device access costs;
    these callbacks must guard themselves (:func:`hook_failed`).  Returns what must be kept
    alive as long as ``uc``."""
    keep = []
    for insn, cfunc, callback in ((X.UC_X86_INS_IN, HOOK_INSN_IN_CFUNC, on_in),
                                  (X.UC_X86_INS_OUT, HOOK_INSN_OUT_CFUNC, on_out)):
        fptr = cfunc(callback)
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), unicorn.UC_HOOK_INSN, fptr,
                                   None, ctypes.c_uint64(1), ctypes.c_uint64(0),
                                   ctypes.c_int(insn))
        if status != unicorn.UC_ERR_OK:
            raise unicorn.UcError(status)
        keep.append((fptr, handle))
    return keep


def add_trap_hooks(uc: Any, on_intr: Callable[[Any, int, object], None],
                   on_invalid: Callable[[Any, object], bool],
                   invalid_first: Callable[[], bool]) -> Any:
    """Install ``UC_HOOK_INTR`` and ``UC_HOOK_INSN_INVALID`` on ``uc`` calling
    ``on_intr(uc, intno, None)`` and ``on_invalid(uc, None)`` as the binding's ``hook_add``
    would, through one guard frame of ours instead of the binding's two (every hypercall,
    trapped MSR and exception comes here).  ``invalid_first()`` is asked first and
    ``on_invalid`` is not called when it says True (the in-hook path's deferral of a
    VMCALL's first hook, inline.py).  Returns what must be kept alive as long as ``uc``."""

    def intr(_uch: object, intno: int, _ud: object) -> None:
        try:
            on_intr(uc, intno, None)
        except Exception as exc:  # noqa: BLE001 - raised again by emu_start
            hook_failed(uc, exc)

    def invalid(_uch: object, _ud: object) -> bool:
        try:
            return invalid_first() or on_invalid(uc, None)
        except Exception as exc:  # noqa: BLE001 - raised again by emu_start
            hook_failed(uc, exc)
            return False

    keep = []
    for htype, cfunc, callback in ((unicorn.UC_HOOK_INTR, HOOK_INTR_CFUNC, intr),
                                   (unicorn.UC_HOOK_INSN_INVALID, HOOK_INSN_INVALID_CFUNC,
                                    invalid)):
        fptr = cfunc(callback)
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), htype, fptr, None,
                                   ctypes.c_uint64(1), ctypes.c_uint64(0))
        if status != unicorn.UC_ERR_OK:
            raise unicorn.UcError(status)
        keep.append((fptr, handle))
    return keep


class Register64:
    """One register of ``uc`` read and written through ``uc_reg_read``/``uc_reg_write``
    straight, with a buffer made once.  The binding's ``reg_read`` picks a value class for
    the register on every call (about three times the C call's cost); the in-hook paths read
    and write RFLAGS for every exception and interrupt they deliver (inline.py).  Only for
    registers of at most 64 bits."""

    __slots__ = ("_handle", "_reg", "_buf", "_ref")

    def __init__(self, uc: Any, reg: int) -> None:
        self._handle = uc._uch
        self._reg = reg
        self._buf = ctypes.c_uint64()
        self._ref = ctypes.byref(self._buf)

    def read(self) -> int:
        status = uclib.uc_reg_read(self._handle, self._reg, self._ref)
        if status != unicorn.UC_ERR_OK:
            raise unicorn.UcError(status)
        return int(self._buf.value)

    def write(self, value: int) -> None:
        self._buf.value = value
        status = uclib.uc_reg_write(self._handle, self._reg, self._ref)
        if status != unicorn.UC_ERR_OK:
            raise unicorn.UcError(status)
