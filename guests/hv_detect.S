# syntax: att
# guest: Hyper-V detection through CPUID: hypervisor bit, "Microsoft Hv", "Hv#1", every leaf 40000000h-4000000Ah
#
# Checks CPUID.1:ECX bit 31, then leaf 40000000h (max leaf >= 40000005h and the vendor
# "Microsoft Hv", what Linux checks), 40000001h ("Hv#1"), 40000003h (privilege bits 5 HYPERCALL
# MSRs and 6 VP_INDEX) and prints every leaf 40000000h-4000000Ah as EAX EBX ECX EDX.
# Serial output:  40000000 4000000A 7263694D 666F736F 76482074
#                 ... one line per leaf ...
#                 4000000A ...
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

main:
    movl $1, %eax
    cpuid
    btl $0x1F, %ecx
    jnc no_hv_bit
    movl $0x40000000, %eax
    cpuid
    cmpl $0x40000005, %eax
    jb bad_max
    cmpl $0x4000FFFF, %eax
    ja bad_max
    cmpl $0x7263694D, %ebx     # "Micr"
    jne bad_vendor
    cmpl $0x666F736F, %ecx     # "osof"
    jne bad_vendor
    cmpl $0x76482074, %edx     # "t Hv"
    jne bad_vendor
    movl $0x40000001, %eax
    cpuid
    cmpl $0x31237648, %eax     # "Hv#1"
    jne bad_interface
    movl $0x40000003, %eax
    cpuid
    testl $0x60, %eax          # HYPERCALL MSRs (bit 5) and VP_INDEX (bit 6)
    jz bad_priv
    movl %eax, %edx
    andl $0x60, %edx
    cmpl $0x60, %edx
    jne bad_priv
    movl $0x40000000, %esi
leaf_loop:
    movl %esi, %eax
    call hex32
    movl %esi, %eax
    xorl %ecx, %ecx
    cpuid
    call space_hex32
    movl %ebx, %eax
    call space_hex32
    movl %ecx, %eax
    call space_hex32
    movl %edx, %eax
    call space_hex32
    call newline
    incl %esi
    cmpl $0x4000000A, %esi
    jbe leaf_loop
    call pass

space_hex32:
    pushw %ax
    movb $0x20, %al
    call putc
    popw %ax
    call hex32
    ret

no_hv_bit:
    movw $msg_hv_bit, %si
    call fail
bad_max:
    movw $msg_max, %si
    call fail
bad_vendor:
    movw $msg_vendor, %si
    call fail
bad_interface:
    movw $msg_interface, %si
    call fail
bad_priv:
    movw $msg_priv, %si
    call fail

msg_hv_bit:
    .asciz "CPUID.1:ECX hypervisor bit clear"
msg_max:
    .asciz "max hypervisor leaf out of range"
msg_vendor:
    .asciz "vendor is not Microsoft Hv"
msg_interface:
    .asciz "interface is not Hv#1"
msg_priv:
    .asciz "privilege bits 5/6 missing"

.include "lib.inc"
