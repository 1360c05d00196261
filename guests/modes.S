# syntax: att
# guest: real -> 32-bit protected -> 64-bit long mode -> back to real mode, output from each
#
# Real mode: CPUID 80000001h EDX bit 29 (long mode) must be set; A20 on through port 92h.
# Protected mode (CR0.PE, far jump to selector 08h): writes to COM1 and to VGA row 20
# directly.  Long mode (CR4.PAE, CR3, EFER.LME, CR0.PG, far jump to the L=1 selector 18h):
# EFER.LMA must read 1; 64-bit add/mul/shift and R8-R15 give the expected values; writes to COM1
# and VGA row 21.  Then back: a far return to 32-bit compatibility mode, paging and EFER.LME off,
# a 16-bit code segment, CR0.PE off, and the BIOS prints the last line and PASS.
# Serial output:  real mode: CPUID long mode bit set
#                 protected mode: 32-bit
#                 long mode: 64-bit arithmetic ok
#                 real mode again
#                 PASS
# Screen: row 20 "PM32: protected mode", row 21 "LM64: long mode".  Exit status 1 or 3.

.include "boot.inc"

.set RM_SP, VARS               # word: the real-mode SP to come back to

main:
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb no_long_mode
    movl $0x80000001, %eax
    cpuid
    btl $0x1D, %edx            # bit 29: Intel 64 / long mode
    jnc no_long_mode
    movw $real_msg, %si
    call puts
    inb $0x92, %al             # fast A20: bit 1 on, bit 0 (reset) left 0
    orb $0x02, %al
    andb $0xFE, %al
    outb %al, $0x92

    cli
    movw %sp, (RM_SP)
    jmp enter_pm32

no_long_mode:
    movw $no_lm_msg, %si
    call fail

.code32
pm32:                          # flat segments, ESP = STACK_TOP (modes.inc)
    movl $pm32_msg, %esi
    call puts32
    movl $pm32_vga, %esi
    movw $0x0A14, %ax          # row 20, light green
    call vga_puts32
    movl %cr0, %eax
    testl $1, %eax
    jz bad_pm32

    jmp enter_lm64

bad_pm32:
    movl $bad_pm32_msg, %esi
    call fail32

.code64
lm64:
    movl $0xC0000080, %ecx
    rdmsr
    btl $0xA, %eax             # EFER.LMA
    jnc bad_lma
    movabsq $0x123456789ABCDEF0, %rax
    movabsq $0x0FEDCBA987654321, %rbx
    addq %rbx, %rax
    movabsq $0x2222222222222211, %rcx
    cmpq %rcx, %rax
    jne bad_arith
    movq $1, %r8
    shlq $0x3F, %r8            # bit 63
    sarq $0x3F, %r8            # arithmetic shift: all ones
    cmpq $-1, %r8
    jne bad_arith
    movabsq $0x100000000, %rax
    movq %rax, %r15
    mulq %r15                  # 2^32 * 2^32 = 2^64: RDX = 1, RAX = 0
    cmpq $1, %rdx
    jne bad_arith
    testq %rax, %rax
    jnz bad_arith
    movabsq $lm64_msg, %rsi
    call puts64
    movabsq $lm64_vga, %rsi
    movw $0x0B15, %ax          # row 21, light cyan
    call vga_puts64

    # Back to compatibility mode: far return to the 32-bit code selector.
    pushq $SEL_CODE32
    movabsq $compat32, %rax
    pushq %rax
    lretq

bad_lma:
    movabsq $bad_lma_msg, %rsi
    call fail64
bad_arith:
    movabsq $bad_arith_msg, %rsi
    call fail64

.code32
compat32:
    movl %cr0, %eax            # paging off leaves long mode (Intel SDM Vol. 3A 10.8.5.4)
    andl $0x7FFFFFFF, %eax
    movl %eax, %cr0
    movl $0xC0000080, %ecx
    rdmsr
    andl $0xFFFFFEFF, %eax     # LME off
    wrmsr
    movl %cr4, %eax
    andl $0xFFFFFFDF, %eax
    movl %eax, %cr4
    .byte 0xEA                 # jmp far SEL_CODE16:pm16
    .long pm16
    .word SEL_CODE16

.code16
pm16:
    movw $SEL_DATA16, %ax      # 64 KiB real-mode-like limits before leaving protected mode
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl %cr0, %eax
    andl $0xFFFFFFFE, %eax
    movl %eax, %cr0
    .byte 0xEA                 # jmp far 0000:rm_again
    .word rm_again, 0
rm_again:
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movw (RM_SP), %sp
    sti
    movw $real_again_msg, %si
    call puts
    call pass

real_msg:
    .asciz "real mode: CPUID long mode bit set\r\n"
no_lm_msg:
    .asciz "CPUID 80000001h EDX bit 29 (long mode) clear"
pm32_msg:
    .asciz "protected mode: 32-bit\r\n"
pm32_vga:
    .asciz "PM32: protected mode"
bad_pm32_msg:
    .asciz "CR0.PE reads 0 in protected mode"
lm64_msg:
    .asciz "long mode: 64-bit arithmetic ok\r\n"
lm64_vga:
    .asciz "LM64: long mode"
bad_lma_msg:
    .asciz "EFER.LMA clear after enabling paging"
bad_arith_msg:
    .asciz "64-bit arithmetic gave a wrong result"
real_again_msg:
    .asciz "real mode again\r\n"

.include "lib.inc"
.include "lib32.inc"
.include "lib64.inc"
.include "modes.inc"
