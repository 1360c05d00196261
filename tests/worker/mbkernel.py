"""Builds tiny Multiboot v1 kernels for the tests: keystone-assembled 32-bit code in an ELF32."""

from __future__ import annotations

import struct

from hyperv_emu.asm import assemble

LOAD = 0x100000


def multiboot_header(flags: int = 0x3) -> bytes:
    magic = 0x1BADB002
    return struct.pack("<III", magic, flags, (-(magic + flags)) & 0xFFFFFFFF)


def elf32(code: bytes, entry: int, load: int = LOAD, bss: int = 0) -> bytes:
    """An ELF32 i386 ET_EXEC with one PT_LOAD segment holding ``code`` at ``load``."""
    ehsize, phentsize = 52, 32
    offset = 0x1000
    ehdr = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, entry, ehsize, 0, 0, ehsize, phentsize, 1,
                        40, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, offset, load, load, len(code), len(code) + bss, 7, 0x1000)
    image = ehdr + phdr
    return image + bytes(offset - len(image)) + code


# Prints to COM1 by polling LSR.THRE; reports the Multiboot state it was given, then exits
# through port 0xF4 with 0 if every check passed.
KERNEL_SOURCE = """
start:
    jmp main
    .align 4
hdr:
    .long 0x1BADB002
    .long 0x00000003
    .long 0xE4524FFB
main:
    mov esp, 0x200000
    cmp eax, 0x2BADB002
    jne fail
    mov ebp, ebx
    mov esi, msg_ok
    call puts
    mov eax, [ebp]
    test eax, 4
    jz fail
    mov esi, [ebp + 16]
    call puts
    mov al, 10
    call putc
    mov eax, [ebp + 8]
    call puthex
    mov al, 10
    call putc
    mov eax, [ebp + 20]
    call puthex
    mov al, 10
    call putc
    cmp dword ptr [ebp + 20], 0
    je done
    mov ebx, [ebp + 24]
    mov esi, [ebx + 8]
    call puts
    mov al, 10
    call putc
    mov esi, [ebx]
    call puts
    mov al, 10
    call putc
done:
    mov al, 0
    out 0xf4, al
    hlt
fail:
    mov al, 1
    out 0xf4, al
    hlt
putc:
    push edx
    push eax
    mov dx, 0x3fd
wait_thre:
    in al, dx
    test al, 0x20
    jz wait_thre
    pop eax
    mov dx, 0x3f8
    out dx, al
    pop edx
    ret
puts:
    lodsb
    test al, al
    jz puts_end
    call putc
    jmp puts
puts_end:
    ret
puthex:
    mov ecx, 8
    mov edx, eax
puthex_loop:
    rol edx, 4
    mov eax, edx
    and eax, 0xf
    mov al, byte ptr [hexdigits + eax]
    call putc
    loop puthex_loop
    ret
hexdigits:
    .ascii "0123456789abcdef"
msg_ok:
    .asciz "multiboot ok\\n"
"""


def build_kernel() -> bytes:
    code = assemble(KERNEL_SOURCE, 32, LOAD)
    return elf32(code, LOAD)
