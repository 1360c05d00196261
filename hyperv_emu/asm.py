"""Assembling the firmware and tiny guests with keystone, checked and cached.

keystone-engine 0.9.2 silently changes operand and address sizes in some 16- and 32-bit forms
(UNICORN_NOTES.md, "Keystone 0.9.2 pitfalls").  :func:`assemble` therefore lints every
instruction line: each is assembled alone in its section's mode and any operand-size (0x66)
prefix that the line's own operands do not call for is a build error naming the line.
(keystone's 0x67 forms for ``[label]`` operands in 16-bit code are only larger, not wrong, and
its 16-bit rel32 jumps stay inside the segment, so both pass.)  A line may opt out with a
trailing ``# ok66`` comment when the prefix is intended.

Sources may pull in other files with ``.include "name"`` (resolved next to the including file)
and may use AT&T syntax by starting with the line ``# syntax: att``; keystone's AT&T parser
reads every number as hexadecimal, so there a multi-digit decimal literal is a build error.

Other keystone 0.9.2 traps measured while writing the firmware and guests (not checked here):
in AT&T syntax ``.align``/``.balign`` emit nothing (``.p2align N, 0`` works), 64-bit
``movq (0x600), %rax`` comes out RIP-relative, and inside a macro without parameters ``$0``..``$9``
are read as macro arguments (so ``$0x40000083`` loses digits); ``bound`` cannot be assembled;
``.fill`` counts that refer to labels hang (refused above) and ``.space`` emits nothing.
Results are cached on disk, keyed by the expanded source, mode, base address and the installed
keystone (found without importing it, so a cache hit never loads keystone).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keystone

_MODES = (16, 32, 64)
_CACHE_VERSION = "1"

_DIRECTIVE_RE = re.compile(r"^\s*\.(code16|code32|code64)\b")
_INCLUDE_RE = re.compile(r'^\s*\.include\s+"([^"]+)"\s*$')
_LABEL_RE = re.compile(r"^\s*[A-Za-z_.$][\w.$]*:\s*")
# Operands that legitimately need a 0x66 prefix in 16-bit code (or 0x67 for 32-bit addressing).
_WIDE_INTEL = re.compile(r"\b(e[abcd]x|e[sd]i|e[bs]p|dword|cr\d|dr\d|r\d+d?)\b", re.I)
_WIDE_ATT = re.compile(r"%e[a-z]{2}\b|%cr\d|%dr\d|\b[a-z]+l\s", re.I)
# Operands that legitimately need 0x66 in 32/64-bit code.
_NARROW_INTEL = re.compile(r"\b([abcd]x|[sd]i|[bs]p|word|[re]?[cdefgs]s|r\d+w)\b", re.I)
_NARROW_ATT = re.compile(r"%[abcd]x\b|%[sd]i\b|%[bs]p\b|\b[a-z]+w\s|%[cdefgs]s|%r\d+w", re.I)
_IDENT_RE = re.compile(r"(?<![\w%$])[A-Za-z_.][\w.]*")
_NOT_SYMBOLS = {
    "byte", "word", "dword", "qword", "ptr", "offset", "short", "near", "far", "tword",
    "al", "ah", "bl", "bh", "cl", "ch", "dl", "dh", "ax", "bx", "cx", "dx", "si", "di", "bp", "sp",
    "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "cs", "ds", "es", "fs", "gs", "ss",
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "sil", "dil", "bpl", "spl",
    "cr0", "cr2", "cr3", "cr4", "cr8", "dr0", "dr1", "dr2", "dr3", "dr6", "dr7", "rip",
    *(f"r{i}{s}" for i in range(8, 16) for s in ("", "d", "w", "b")),
    *(f"xmm{i}" for i in range(16)), *(f"st{i}" for i in range(8)),
}
# Measured: keystone 0.9.2's AT&T parser reads every number as hexadecimal ("$22" is 0x22,
# ".byte 10" is 0x10), so AT&T sources must write numbers above 9 as 0x...
_DECIMAL_RE = re.compile(r"(?<![\w.])(\d{2,})(?![\w.])")
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
_FILL_RE = re.compile(r"^\s*\.(?:fill|space|skip)\s+([^,]+)", re.I)
_SEGMENT_PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF0, 0xF2, 0xF3}


class AsmError(Exception):
    """Assembly failed or the keystone lint found a silently changed operand size."""


@dataclass(frozen=True)
class Program:
    """An assembled image: ``code`` placed at guest address ``base``."""

    code: bytes
    base: int
    mode: int


def _keystone() -> Any:
    """The keystone module, imported on the first cache miss only: loading it costs more than
    a tiny guest's whole run, and firmware and guests normally come from the cache."""
    import keystone

    return keystone


def _ks(bits: int, att: bool) -> keystone.Ks:
    ks_mod = _keystone()
    modes = {16: ks_mod.KS_MODE_16, 32: ks_mod.KS_MODE_32, 64: ks_mod.KS_MODE_64}
    ks = ks_mod.Ks(ks_mod.KS_ARCH_X86, modes[bits])
    if att:
        ks.syntax = ks_mod.KS_OPT_SYNTAX_ATT
    return ks


@lru_cache(maxsize=1)
def _assembler_fingerprint() -> str:
    """What identifies the installed keystone without importing it, for the cache key: its
    distribution's version (the dist-info folder next to the package) and the size and time of
    its native library, so an upgrade or a rebuild misses the cache."""
    spec = importlib.util.find_spec("keystone")
    if spec is None or spec.origin is None:
        return "no-keystone"
    package = Path(spec.origin).parent
    parts = sorted(p.name for p in package.parent.glob("keystone_engine-*.dist-info"))
    for lib in sorted(package.glob("*keystone*")):
        if lib.suffix in (".so", ".dylib", ".dll"):
            st = lib.stat()
            parts.append(f"{lib.name}:{st.st_size}:{st.st_mtime_ns}")
    return ",".join(parts)


def _cache_dir() -> Path:
    root = os.environ.get("HYPERV_EMU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hyperv-emu"
    )
    return Path(root) / "asm"


def expand_includes(path: Path, _seen: tuple[Path, ...] = ()) -> str:
    """The source at ``path`` with every ``.include "x"`` replaced by x's text."""
    path = path.resolve()
    if path in _seen:
        raise AsmError(f"{path}: .include loop")
    out = []
    for line in path.read_text().splitlines():
        m = _INCLUDE_RE.match(line)
        if m:
            out.append(expand_includes(path.parent / m.group(1), _seen + (path,)))
        else:
            out.append(line)
    return "\n".join(out)


def _strip_comment(line: str) -> str:
    for marker in (";", "#", "//"):
        idx = line.find(marker)
        if idx >= 0:
            line = line[:idx]
    return line.strip()


def _lint(source: str, mode: int, att: bool) -> None:
    """Raise AsmError for lines whose encoding carries a 0x66/0x67 prefix they did not ask for."""
    engines: dict[int, keystone.Ks] = {}
    ks_error = _keystone().KsError

    def engine(bits: int) -> keystone.Ks:
        if bits not in engines:
            engines[bits] = _ks(bits, att)
        return engines[bits]

    bits = mode
    for lineno, raw in enumerate(source.splitlines(), 1):
        m = _DIRECTIVE_RE.match(raw)
        if m:
            bits = int(m.group(1)[4:])
            continue
        if "ok66" in raw:
            continue
        text = _strip_comment(_LABEL_RE.sub("", raw, count=1))
        while _LABEL_RE.match(text + " "):
            text = _strip_comment(_LABEL_RE.sub("", text, count=1))
        if not text or text.startswith("."):
            continue
        # Define the line's symbols far enough away that near jumps take their long form.
        syms = [s for s in _IDENT_RE.findall(text.split(None, 1)[1] if " " in text else "")
                if s.lower() not in _NOT_SYMBOLS and not s.startswith("$")]
        probe = text + "\n.fill 0x200, 1, 0x90\n" + "".join(f"{s}:\n" for s in dict.fromkeys(syms))
        mnemonic = text.split(None, 1)[0].lower()
        try:
            enc, _ = engine(bits).asm(probe, 0x1000)
        except ks_error:
            continue  # the whole-source assembly reports real syntax errors with context
        if not enc:
            continue
        prefixes = []
        for b in enc:
            if b in (0x66, 0x67):
                prefixes.append(b)
            elif b not in _SEGMENT_PREFIXES:
                break
        if bits == 16 and mnemonic.startswith("j") and mnemonic != "jmpf":
            continue  # keystone's 66 E9/0F 8x rel32 forms stay inside the 64 KiB segment
        if bits == 16:
            wide = (_WIDE_ATT if att else _WIDE_INTEL).search(text + " ")
            if 0x66 in prefixes and not wide:
                raise AsmError(
                    f"line {lineno}: keystone gave {text!r} a 32-bit operand size in .code16 "
                    "(encode it another way or mark the line '# ok66')"
                )
        else:
            narrow = (_NARROW_ATT if att else _NARROW_INTEL).search(text + " ")
            if 0x66 in prefixes and not narrow:
                raise AsmError(
                    f"line {lineno}: keystone gave {text!r} a 16-bit operand size in "
                    f".code{bits} (emit it as bytes or mark the line '# ok66')"
                )


def assemble(source: str, mode: int = 16, base: int = 0, *, lint: bool = True) -> bytes:
    """Assemble ``source`` (keystone, Intel syntax unless it starts ``# syntax: att``) for a
    ``mode``-bit first section placed at ``base``; cached on disk."""
    if mode not in _MODES:
        raise AsmError(f"mode must be 16, 32 or 64, not {mode}")
    att = source.lstrip().startswith("# syntax: att")
    key = hashlib.sha256(
        f"{_CACHE_VERSION}|{_assembler_fingerprint()}|"
        f"{mode}|{base}|{lint}|{att}\n{source}".encode()
    ).hexdigest()
    cache = _cache_dir() / f"{key}.bin"
    try:
        return cache.read_bytes()
    except OSError:
        pass
    for lineno, line in enumerate(source.splitlines(), 1):
        if att:
            number = _DECIMAL_RE.search(_STRING_RE.sub('""', line).split("#", 1)[0])
            if number:
                raise AsmError(f"line {lineno}: write {number.group(1)!r} in hex: keystone's AT&T "
                               f"parser reads it as 0x{number.group(1)}: {line.strip()!r}")
        m = _FILL_RE.match(_strip_comment(line))
        if m and _IDENT_RE.search(re.sub(r"0x[0-9a-f]+", "", m.group(1), flags=re.I)):
            # Measured: keystone 0.9.2 never returns from .fill/.space counts that refer to
            # labels or '.', and .space silently yields nothing.  Pad with .align or in Python.
            raise AsmError(f"line {lineno}: keystone hangs on a label-dependent {line.strip()!r}")
        if m and m.group(0).lstrip().startswith(".space"):
            raise AsmError(f"line {lineno}: keystone ignores .space; use .fill")
    if lint:
        _lint(source, mode, att)
    ks = _ks(mode, att)
    try:
        enc, _ = ks.asm(source, base)
    except _keystone().KsError as exc:
        raise AsmError(f"keystone: {exc}") from None
    code = bytes(enc or b"")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(code)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only cache only costs speed
    return code


def read_source(path: Path, label: object) -> str:
    """:func:`expand_includes`, with a file that cannot be read reported as an AsmError that
    starts with ``label`` (the path, or the name the user knows the source by)."""
    try:
        return expand_includes(path)
    except OSError as exc:
        raise AsmError(f"{label}: {exc.strerror or exc}") from None


def assemble_file(path: str | os.PathLike[str], mode: int = 16, base: int = 0) -> bytes:
    """Assemble the source file at ``path`` (with its ``.include`` files)."""
    p = Path(path)
    source = read_source(p, p)
    try:
        return assemble(source, mode, base)
    except AsmError as exc:
        raise AsmError(f"{p.name}: {exc}") from None


def data_dir(name: str) -> Path:
    """The ``firmware`` or ``guests`` folder: the source tree's, else the installed copy."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / name, here / "_data" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hyperv-emu data folder {name!r} is missing from the installation")
