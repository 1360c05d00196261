# syntax: att
# guest: 100000 local APIC timer interrupts in real mode (x2APIC MSRs), counted through the IVT
#
# Masks both 8259s and switches the local APIC to x2APIC mode from real mode (IA32_APIC_BASE
# |= EN|EXTD; RDMSR/WRMSR need only CPL 0, Intel SDM Vol. 3A 11.12), so its registers are MSRs
# 800h + offset/10h: SVR (80Fh) = 1FFh, divide (83Eh) by 1, LVT timer (832h) periodic on
# vector 41h, initial count (838h) 100h = 1.28 us of virtual time.  The guest spins with
# interrupts on; the handler (IVT entry 41h) counts, stops the timer itself at the 100000th
# (186A0h) interrupt and writes EOI (80Bh = 0).  After a further wait the count must still be
# exactly 186A0h.  What it measures: the cost of delivering an external interrupt in
# real-address mode.
# Serial output:  storm: lapic timer 000186A0
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set TICK_N, 0x186A0
.set STORM_VECTOR, 0x41
.set NTICK, VARS

main:
    cli
    movb $0xFF, %al            # mask every 8259 input: only the LAPIC timer from here on
    outb %al, $0x21
    outb %al, $0xA1
    movl $0, (NTICK)
    movw $tick_isr, (STORM_VECTOR*4)
    movw $0, (STORM_VECTOR*4+2)
    movl $0x1B, %ecx           # IA32_APIC_BASE: EN (800h) and EXTD (400h)
    rdmsr
    orl $0xC00, %eax
    wrmsr
    xorl %edx, %edx
    movl $0x80F, %ecx          # SVR: software enable, spurious vector FFh
    movl $0x1FF, %eax
    wrmsr
    movl $0x83E, %ecx          # divide configuration: by 1
    movl $0x0B, %eax
    wrmsr
    movl $0x832, %ecx          # LVT timer: periodic, unmasked
    movl $0x20000+STORM_VECTOR, %eax
    wrmsr
    movl $0x838, %ecx          # 256 * 5 ns
    movl $0x100, %eax
    wrmsr
    sti
ticks_wait:
    cmpl $TICK_N, (NTICK)
    jb ticks_wait
    movl $0x10000, %ecx        # 20000h instructions' time: the stopped timer stays quiet
ticks_spin:
    decl %ecx
    jnz ticks_spin
    cli
    movw $msg_ticks, %si
    call puts
    movl (NTICK), %eax
    call hex32
    call newline
    movw $msg_counts, %si
    cmpl $TICK_N, (NTICK)
    jne ticks_fail
    call pass
ticks_fail:
    call fail

tick_isr:
    pushl %eax
    pushl %ecx
    pushl %edx
    xorl %edx, %edx
    incl (NTICK)
    cmpl $TICK_N, (NTICK)
    jb tick_eoi
    movl $0x838, %ecx          # the last one: initial count 0 stops the timer
    xorl %eax, %eax
    wrmsr
tick_eoi:
    movl $0x80B, %ecx          # EOI (x2APIC: write 0)
    xorl %eax, %eax
    wrmsr
    popl %edx
    popl %ecx
    popl %eax
    iret

msg_ticks:
    .asciz "storm: lapic timer "
msg_counts:
    .asciz "wrong storm count"

.include "lib.inc"
