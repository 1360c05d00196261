# syntax: att
# guest: local APIC timer in one-shot, periodic and TSC-deadline mode, with the 8259 masked
#
# Enters "unreal" mode (FS with a 4 GiB limit) to reach the xAPIC page at FEE00000h from real
# mode, checks CPUID.1 (EDX bit 9 APIC, ECX bit 24 TSC-deadline) and IA32_APIC_BASE (FEE00900h:
# enabled, BSP), reads the version register (00060014h), masks both 8259s and enables the APIC
# through the spurious-vector register (vector FFh, bit 8).  Vector 40h counts timer interrupts
# (its handler EOIs the APIC).  The APIC timer runs at 200 MHz before the divider:
#   one-shot:     divide by 1, initial count 4E20h (100 us): exactly one interrupt, the current
#                 count reads 0 afterwards and stays 0 through a long wait;
#   periodic:     divide by 16, initial count 0100h (20.48 us): 10 interrupts, then count 0 stops it;
#   TSC-deadline: IA32_TSC_DEADLINE = TSC + 50000: one interrupt, the MSR reads 0 after it.
# Serial output:  apic: version 00060014
#                 one-shot 0001 periodic 000A tsc-deadline 0001
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set TIMER_VECTOR, 0x40
.set TICKS, VARS               # word: timer interrupts
.set SPURIOUS, VARS+2          # word: spurious-vector interrupts
.set ONESHOT, VARS+4
.set PERIODIC, VARS+6
.set TSCDL, VARS+8

main:
    cli
    call unreal
    movw $0, (TICKS)
    movw $0, (SPURIOUS)
    movw $timer_isr, (TIMER_VECTOR*4)
    movw $0, (TIMER_VECTOR*4+2)
    movw $spurious_isr, (0xFF*4)
    movw $0, (0xFF*4+2)

    movl $1, %eax
    cpuid
    movw $no_apic_msg, %si
    testl $0x200, %edx
    jz fail_si
    movw $no_tscdl_msg, %si
    testl $0x1000000, %ecx
    jz fail_si
    movl $0x1B, %ecx           # IA32_APIC_BASE
    rdmsr
    movw $apic_base_msg, %si
    cmpl $0xFEE00900, %eax
    jne fail_si

    movb $0xFF, %al            # mask every 8259 input: only the APIC interrupts from here
    outb %al, $0x21
    outb %al, $0xA1

    movl $APIC, %ebx
    movw $version_msg, %si
    call puts
    movl %fs:0x30(%ebx), %eax
    call hex32
    call newline
    cmpl $0x00060014, %eax
    movw $bad_version_msg, %si
    jne fail_si
    movl $0x1FF, %fs:0xF0(%ebx)    # SVR: APIC software enable, spurious vector FFh

    # ---- one-shot ----
    movl $0x0B, %fs:0x3E0(%ebx)    # divide by 1
    movl $TIMER_VECTOR, %fs:0x320(%ebx)   # LVT timer: one-shot, unmasked
    movl $0x4E20, %fs:0x380(%ebx)  # initial count 20000 -> 100 us
    sti
oneshot_wait:
    hlt
    cmpw $1, (TICKS)
    jb oneshot_wait
    movl $0x40000, %ecx        # about 2.6 ms of virtual time: no second interrupt may come
oneshot_spin:
    decl %ecx
    jnz oneshot_spin
    cli
    movw (TICKS), %ax
    movw %ax, (ONESHOT)
    movw $oneshot_count_msg, %si
    cmpl $0, %fs:0x390(%ebx)       # current count stays 0 after expiry
    jne fail_si

    # ---- periodic ----
    movw $0, (TICKS)
    movl $0x03, %fs:0x3E0(%ebx)    # divide by 16
    movl $0x20000+TIMER_VECTOR, %fs:0x320(%ebx)   # periodic
    movl $0x100, %fs:0x380(%ebx)   # 256 * 16 * 5 ns = 20.48 us
    movw $periodic_count_msg, %si
    movl %fs:0x390(%ebx), %eax
    testl %eax, %eax
    jz fail_si
    cmpl $0x100, %eax
    ja fail_si
    sti
periodic_wait:
    hlt
    cmpw $0x0A, (TICKS)
    jb periodic_wait
    cli
    movl $0, %fs:0x380(%ebx)       # initial count 0 stops the timer
    movw (TICKS), %ax
    movw %ax, (PERIODIC)

    # ---- TSC deadline ----
    movw $0, (TICKS)
    movl $0x40000+TIMER_VECTOR, %fs:0x320(%ebx)   # TSC-deadline mode
    rdtsc
    addl $0xC350, %eax             # 50000 TSC ticks (50 us at 1 GHz)
    adcl $0, %edx
    movl $0x6E0, %ecx
    wrmsr
    sti
tscdl_wait:
    hlt
    cmpw $1, (TICKS)
    jb tscdl_wait
    cli
    movw (TICKS), %ax
    movw %ax, (TSCDL)
    movl $0x6E0, %ecx
    rdmsr
    movw $tscdl_msr_msg, %si
    orl %edx, %eax
    jnz fail_si
    movl $0x10000+TIMER_VECTOR, %fs:0x320(%ebx)   # mask the timer again

    movw $oneshot_msg, %si
    call puts
    movw (ONESHOT), %ax
    call hex16
    movw $periodic_msg, %si
    call puts
    movw (PERIODIC), %ax
    call hex16
    movw $tscdl_msg, %si
    call puts
    movw (TSCDL), %ax
    call hex16
    call newline
    movw $counts_msg, %si
    cmpw $1, (ONESHOT)
    jne fail_si
    cmpw $0x0A, (PERIODIC)
    jne fail_si
    cmpw $1, (TSCDL)
    jne fail_si
    cmpw $0, (SPURIOUS)
    jne fail_si
    call pass

fail_si:
    call fail

timer_isr:
    incw (TICKS)
    call apic_eoi
    iret

spurious_isr:
    incw (SPURIOUS)                # no EOI for the spurious vector (SDM)
    iret

version_msg:
    .asciz "apic: version "
oneshot_msg:
    .asciz "one-shot "
periodic_msg:
    .asciz " periodic "
tscdl_msg:
    .asciz " tsc-deadline "
no_apic_msg:
    .asciz "CPUID.1:EDX bit 9 (APIC) clear"
no_tscdl_msg:
    .asciz "CPUID.1:ECX bit 24 (TSC-deadline) clear"
apic_base_msg:
    .asciz "IA32_APIC_BASE is not FEE00900h"
bad_version_msg:
    .asciz "APIC version register"
oneshot_count_msg:
    .asciz "one-shot current count not 0 after expiry"
periodic_count_msg:
    .asciz "periodic current count out of range"
tscdl_msr_msg:
    .asciz "IA32_TSC_DEADLINE not 0 after expiry"
counts_msg:
    .asciz "wrong interrupt counts"

.include "apic.inc"
.include "lib.inc"
