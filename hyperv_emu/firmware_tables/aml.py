"""A small AML (ACPI Machine Language) builder: each function returns the encoded bytes of one
term, so a DSDT is written as nested calls, the way QEMU's ``aml-build.c`` builds its tables.

Encodings follow the ACPI 6.4 specification, chapter 20 "ACPI Machine Language (AML)
Specification": 20.2.2 name objects (NameSeg, NameString, prefixes), 20.2.3 data objects,
20.2.4 package length, 20.2.5 term objects (named objects, type 1 and type 2 opcodes).
Only what the machine's tables use is here; every function produces complete, valid terms.
"""

from __future__ import annotations

import re

# 20.2.3 data objects and 20.2.5 opcodes.
ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP, METHOD_OP = 0x08, 0x10, 0x11, 0x12, 0x14
EXT_OP = 0x5B
EXT_OPREGION, EXT_FIELD, EXT_DEVICE = 0x80, 0x81, 0x82
LOCAL0, ARG0 = 0x60, 0x68
STORE_OP, AND_OP, OR_OP, FIND_SET_RIGHT_BIT_OP = 0x70, 0x7B, 0x7D, 0x82
SHIFT_LEFT_OP, DECREMENT_OP = 0x79, 0x76
CREATE_DWORD_FIELD_OP, CREATE_WORD_FIELD_OP = 0x8A, 0x8B
LAND_OP, LNOT_OP, LEQUAL_OP = 0x90, 0x92, 0x93
IF_OP, ELSE_OP, RETURN_OP = 0xA0, 0xA1, 0xA4
ROOT_CHAR, PARENT_PREFIX, DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x5C, 0x5E, 0x2E, 0x2F
NULL_NAME = 0x00

# Operation region spaces (ACPI 6.4, 19.6.100 "OperationRegion").
SYSTEM_MEMORY, SYSTEM_IO, PCI_CONFIG = 0x00, 0x01, 0x02
# Field flags (19.6.48 "Field"): access type bits 3:0, lock rule bit 4, update rule bits 6:5.
ANY_ACC, BYTE_ACC, WORD_ACC, DWORD_ACC = 0, 1, 2, 3
PRESERVE, WRITE_AS_ONES, WRITE_AS_ZEROS = 0, 1, 2

_SEG_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,3}$")


class AmlError(ValueError):
    """A term cannot be encoded (bad name, value out of range)."""


def name_seg(seg: str) -> bytes:
    """A NameSeg: a lead character A-Z or _, up to three more of A-Z, 0-9, _; padded with _."""
    if not _SEG_RE.match(seg):
        raise AmlError(f"bad AML name segment {seg!r}")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """A NameString: optional root (\\) or parent (^) prefixes, then the dotted segments."""
    out = bytearray()
    rest = path
    if rest.startswith("\\"):
        out.append(ROOT_CHAR)
        rest = rest[1:]
    while rest.startswith("^"):
        out.append(PARENT_PREFIX)
        rest = rest[1:]
    segs = [s for s in rest.split(".") if s] if rest else []
    if not segs:
        out.append(NULL_NAME)
    elif len(segs) == 1:
        out += name_seg(segs[0])
    elif len(segs) == 2:
        out.append(DUAL_NAME_PREFIX)
        out += name_seg(segs[0]) + name_seg(segs[1])
    else:
        if len(segs) > 255:
            raise AmlError("name path too long")
        out += bytes([MULTI_NAME_PREFIX, len(segs)])
        for s in segs:
            out += name_seg(s)
    return bytes(out)


def pkg_length(body_len: int) -> bytes:
    """The PkgLength encoding for a package whose content after the PkgLength is ``body_len``
    bytes; the encoded length counts the PkgLength bytes themselves (20.2.4)."""
    for n in (1, 2, 3, 4):
        total = body_len + n
        if n == 1 and total < 0x40:
            return bytes([total])
        if n > 1 and total < 1 << (4 + 8 * (n - 1)):
            out = bytearray([((n - 1) << 6) | (total & 0x0F)])
            for i in range(n - 1):
                out.append((total >> (4 + 8 * i)) & 0xFF)
            return bytes(out)
    raise AmlError(f"package of {body_len} bytes is too long for a PkgLength")


def _pkg(opcode: bytes, body: bytes) -> bytes:
    return opcode + pkg_length(len(body)) + body


# ---- data objects -----------------------------------------------------------------------------
def integer(value: int) -> bytes:
    """The shortest integer encoding: Zero, One, Ones (all ones, 64 bits) or a prefixed value."""
    if value < 0 or value >= 1 << 64:
        raise AmlError(f"integer {value} out of range")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == (1 << 64) - 1:
        return bytes([ONES_OP])
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4),
                         (QWORD_PREFIX, 8)):
        if value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    raise AmlError("unreachable")


def string(text: str) -> bytes:
    """A String object: ASCII characters 01h-7Fh and a NUL."""
    data = text.encode("ascii")
    if b"\x00" in data:
        raise AmlError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + data + b"\x00"


def eisa_id(text: str) -> bytes:
    """The EISA ID integer for a 7-character PNP ID such as "PNP0A03": three letters packed in
    5 bits each and four hex digits, stored so the bytes read as in the ID (19.6.35 EISAID)."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise AmlError(f"bad EISA ID {text!r}")
    letters = [ord(c) - 0x40 for c in text[:3]]
    vendor = (letters[0] << 10) | (letters[1] << 5) | letters[2]
    product = int(text[3:], 16)
    raw = vendor.to_bytes(2, "big") + product.to_bytes(2, "big")
    return integer(int.from_bytes(raw, "little"))


def buffer(data: bytes) -> bytes:
    """A Buffer object holding ``data`` (its size as an integer, then the bytes)."""
    return _pkg(bytes([BUFFER_OP]), integer(len(data)) + data)


def package(*elements: bytes) -> bytes:
    """A Package of up to 255 already encoded elements (integers, strings, names, packages)."""
    if len(elements) > 255:
        raise AmlError("a Package holds at most 255 elements (use VarPackage)")
    return _pkg(bytes([PACKAGE_OP]), bytes([len(elements)]) + b"".join(elements))


def ref(path: str) -> bytes:
    """A reference to a named object, as an operand or a package element."""
    return name_string(path)


def local(n: int) -> bytes:
    """LocalN (0-7)."""
    if not 0 <= n <= 7:
        raise AmlError("Local0-Local7 only")
    return bytes([LOCAL0 + n])


def arg(n: int) -> bytes:
    """ArgN (0-6)."""
    if not 0 <= n <= 6:
        raise AmlError("Arg0-Arg6 only")
    return bytes([ARG0 + n])


# ---- named objects and namespace modifiers ----------------------------------------------------
def name(path: str, value: bytes) -> bytes:
    """Name(path, value)."""
    return bytes([NAME_OP]) + name_string(path) + value


def scope(path: str, *terms: bytes) -> bytes:
    """Scope(path) { terms }."""
    return _pkg(bytes([SCOPE_OP]), name_string(path) + b"".join(terms))


def device(path: str, *terms: bytes) -> bytes:
    """Device(path) { terms }."""
    return _pkg(bytes([EXT_OP, EXT_DEVICE]), name_string(path) + b"".join(terms))


def method(path: str, args: int, *terms: bytes, serialized: bool = False) -> bytes:
    """Method(path, args, NotSerialized|Serialized) { terms } (sync level 0)."""
    if not 0 <= args <= 7:
        raise AmlError("a method takes 0-7 arguments")
    flags = args | (0x08 if serialized else 0)
    return _pkg(bytes([METHOD_OP]), name_string(path) + bytes([flags]) + b"".join(terms))


def op_region(path: str, space: int, offset: int, length: int) -> bytes:
    """OperationRegion(path, space, offset, length)."""
    return (bytes([EXT_OP, EXT_OPREGION]) + name_string(path) + bytes([space])
            + integer(offset) + integer(length))


def field(region: str, fields: list[tuple[str | None, int]], *, access: int = BYTE_ACC,
          lock: bool = False, update: int = PRESERVE) -> bytes:
    """Field(region, access, Lock|NoLock, update) { name, bits ... }; a None name is an
    unnamed (reserved) span of that many bits."""
    flags = access | (0x10 if lock else 0) | (update << 5)
    body = bytearray(name_string(region) + bytes([flags]))
    for fname, bits in fields:
        if fname is None:
            body += b"\x00" + pkg_length_raw(bits)
        else:
            body += name_seg(fname) + pkg_length_raw(bits)
    return _pkg(bytes([EXT_OP, EXT_FIELD]), bytes(body))


def pkg_length_raw(value: int) -> bytes:
    """A PkgLength-encoded count that does not include its own size (field widths, 20.2.5.2)."""
    if value < 0x40:
        return bytes([value])
    for n in (2, 3, 4):
        if value < 1 << (4 + 8 * (n - 1)):
            out = bytearray([((n - 1) << 6) | (value & 0x0F)])
            for i in range(n - 1):
                out.append((value >> (4 + 8 * i)) & 0xFF)
            return bytes(out)
    raise AmlError("field too wide")


# ---- statements and expressions ---------------------------------------------------------------
NULL_TARGET = bytes([NULL_NAME])


def ret(value: bytes) -> bytes:
    """Return(value)."""
    return bytes([RETURN_OP]) + value


def store(source: bytes, target: bytes) -> bytes:
    """Store(source, target)."""
    return bytes([STORE_OP]) + source + target


def and_(a: bytes, b: bytes, target: bytes = NULL_TARGET) -> bytes:
    """And(a, b, target)."""
    return bytes([AND_OP]) + a + b + target


def or_(a: bytes, b: bytes, target: bytes = NULL_TARGET) -> bytes:
    """Or(a, b, target)."""
    return bytes([OR_OP]) + a + b + target


def shift_left(a: bytes, count: bytes, target: bytes = NULL_TARGET) -> bytes:
    """ShiftLeft(a, count, target)."""
    return bytes([SHIFT_LEFT_OP]) + a + count + target


def find_set_right_bit(a: bytes, target: bytes = NULL_TARGET) -> bytes:
    """FindSetRightBit(a, target): 1 + the index of the lowest set bit, 0 if none."""
    return bytes([FIND_SET_RIGHT_BIT_OP]) + a + target


def decrement(target: bytes) -> bytes:
    """Decrement(target)."""
    return bytes([DECREMENT_OP]) + target


def lequal(a: bytes, b: bytes) -> bytes:
    """LEqual(a, b)."""
    return bytes([LEQUAL_OP]) + a + b


def lnot(a: bytes) -> bytes:
    """LNot(a)."""
    return bytes([LNOT_OP]) + a


def land(a: bytes, b: bytes) -> bytes:
    """LAnd(a, b)."""
    return bytes([LAND_OP]) + a + b


def if_(predicate: bytes, *terms: bytes) -> bytes:
    """If(predicate) { terms }."""
    return _pkg(bytes([IF_OP]), predicate + b"".join(terms))


def else_(*terms: bytes) -> bytes:
    """Else { terms } (directly after an If)."""
    return _pkg(bytes([ELSE_OP]), b"".join(terms))


def create_dword_field(source: bytes, byte_index: int, path: str) -> bytes:
    """CreateDWordField(source, byte_index, path)."""
    return bytes([CREATE_DWORD_FIELD_OP]) + source + integer(byte_index) + name_string(path)


def create_word_field(source: bytes, byte_index: int, path: str) -> bytes:
    """CreateWordField(source, byte_index, path)."""
    return bytes([CREATE_WORD_FIELD_OP]) + source + integer(byte_index) + name_string(path)
