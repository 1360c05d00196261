# syntax: att
# guest: PIT and RTC interrupts through the I/O APIC (edge pin 2, level pin 8) to the local APIC
#
# Enters "unreal" mode (FS with a 4 GiB limit) to reach the I/O APIC at FEC00000h and the local
# APIC at FEE00000h, masks both 8259s, enables the local APIC (SVR 1FFh) and checks the I/O
# APIC version register (00170011h: version 11h, 24 entries).  Redirection entries:
#   pin 2 (ISA IRQ0, PIT channel 0 in mode 2 at 1 kHz): vector 50h, fixed, physical APIC 0, edge;
#   pin 8 (ISA IRQ8, RTC periodic interrupt at 1024 Hz): vector 58h, fixed, physical, level.
# Each handler EOIs the local APIC; the RTC handler first reads RTC register C (dropping IRQ8)
# and records Remote IRR of entry 8 and the local APIC's ISR bit for 58h, which must both be
# set inside the handler; after the EOI the main code sees Remote IRR clear again.  The 8259
# vectors 08h and 70h are hooked too and must never run.  Waits with STI/HLT for 10 PIT and 5
# RTC interrupts.
# Serial output:  ioapic: version 00170011
#                 pit 000A rtc 000A legacy 0000      (rtc: about 10 at 1024 Hz, at least 5)
#                 rtc handler: remote IRR 1 ISR 1, after EOI remote IRR 0
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set IOAPIC, 0xFEC00000
.set PIT_VECTOR, 0x50
.set RTC_VECTOR, 0x58
.set PIT_TICKS, VARS
.set RTC_TICKS, VARS+2
.set LEGACY, VARS+4
.set RIRR_IN, VARS+6           # byte: entry 8 Remote IRR seen in the first RTC handler call
.set ISR_IN, VARS+7            # byte: local APIC ISR bit of 58h seen there
.set PIT_COUNT, 0x04A9         # 1193182 Hz / 1000

main:
    cli
    call unreal
    movw $0, (PIT_TICKS)
    movw $0, (RTC_TICKS)
    movw $0, (LEGACY)
    movw $0xFFFF, (RIRR_IN)
    movw $pit_isr, (PIT_VECTOR*4)
    movw $0, (PIT_VECTOR*4+2)
    movw $rtc_isr, (RTC_VECTOR*4)
    movw $0, (RTC_VECTOR*4+2)
    movw $legacy_isr, (0x08*4)
    movw $0, (0x08*4+2)
    movw $legacy_isr, (0x70*4)
    movw $0, (0x70*4+2)

    movb $0xFF, %al            # mask every 8259 input
    outb %al, $0x21
    outb %al, $0xA1
    movl $APIC, %ebx
    movl $0x1FF, %fs:0xF0(%ebx)    # local APIC software enable, spurious vector FFh

    movl $IOAPIC, %ebx
    movw $version_msg, %si
    call puts
    movl $0x01, %fs:(%ebx)         # IOREGSEL = version
    movl %fs:0x10(%ebx), %eax      # IOWIN
    call hex32
    call newline
    movw $bad_version_msg, %si
    cmpl $0x00170011, %eax
    jne fail_si

    # Redirection entry 2 (registers 14h/15h) and 8 (20h/21h): destination first, then the
    # low dword, which unmasks.
    movl $0x15, %fs:(%ebx)
    movl $0x00000000, %fs:0x10(%ebx)   # destination APIC ID 0
    movl $0x14, %fs:(%ebx)
    movl $PIT_VECTOR, %fs:0x10(%ebx)   # fixed, physical, high active, edge, unmasked
    movl $0x21, %fs:(%ebx)
    movl $0x00000000, %fs:0x10(%ebx)
    movl $0x20, %fs:(%ebx)
    movl $0x8000+RTC_VECTOR, %fs:0x10(%ebx)   # level triggered

    # PIT channel 0: mode 2, 1 kHz.
    movw $PIT_COUNT, %ax
    call pit0_mode2
    # RTC: rate 6 (1024 Hz) in register A, PIE in register B, clear pending flags in C.
    movb $0x0A, %al
    outb %al, $0x70
    movb $0x26, %al
    outb %al, $0x71
    movb $0x0B, %al
    outb %al, $0x70
    inb $0x71, %al
    orb $0x40, %al
    movb %al, %ah
    movb $0x0B, %al
    outb %al, $0x70
    movb %ah, %al
    outb %al, $0x71
    movb $0x0C, %al
    outb %al, $0x70
    inb $0x71, %al

    sti
wait_ticks:
    hlt
    cmpw $0x0A, (PIT_TICKS)
    jb wait_ticks
    cmpw $5, (RTC_TICKS)
    jb wait_ticks
    cli
    # Entry 8's Remote IRR after the handlers' EOIs (read with interrupts off: the handlers
    # and this code share IOREGSEL).
    movl $0x20, %fs:(%ebx)
    movl %fs:0x10(%ebx), %eax
    shrl $0x0E, %eax
    andb $1, %al
    movb %al, %dl
    # Mask both entries, stop the RTC's periodic interrupt.
    movl $0x14, %fs:(%ebx)
    movl $0x10000+PIT_VECTOR, %fs:0x10(%ebx)
    movl $0x20, %fs:(%ebx)
    movl $0x18000+RTC_VECTOR, %fs:0x10(%ebx)

    movw $pit_msg, %si
    call puts
    movw (PIT_TICKS), %ax
    call hex16
    movw $rtc_msg, %si
    call puts
    movw (RTC_TICKS), %ax
    call hex16
    movw $legacy_msg, %si
    call puts
    movw (LEGACY), %ax
    call hex16
    call newline
    movw $rirr_msg, %si
    call puts
    movb (RIRR_IN), %al
    call hex4
    movw $isr_msg, %si
    call puts
    movb (ISR_IN), %al
    call hex4
    movw $after_msg, %si
    call puts
    movb %dl, %al
    call hex4
    call newline

    movw $legacy_fail_msg, %si
    cmpw $0, (LEGACY)
    jne fail_si
    movw $rirr_fail_msg, %si
    cmpw $0x0101, (RIRR_IN)
    jne fail_si
    testb %dl, %dl
    jnz fail_si
    call pass

fail_si:
    call fail

pit_isr:
    incw (PIT_TICKS)
    call apic_eoi                  # edge: no broadcast to the I/O APIC
    iret

rtc_isr:
    pushl %eax
    pushl %ebx
    movb $0x0C, %al                # read C: the RTC drops IRQ8
    outb %al, $0x70
    inb $0x71, %al
    cmpw $0xFFFF, (RIRR_IN)
    jne rtc_counted
    movl $IOAPIC, %ebx
    movl $0x20, %fs:(%ebx)
    movl %fs:0x10(%ebx), %eax
    shrl $0x0E, %eax
    andb $1, %al
    movb %al, (RIRR_IN)
    movl $APIC, %ebx
    movl %fs:0x120(%ebx), %eax     # ISR bits 40h-5Fh: 58h is bit 18h
    shrl $0x18, %eax
    andb $1, %al
    movb %al, (ISR_IN)
rtc_counted:
    incw (RTC_TICKS)
    call apic_eoi                  # level-triggered, so Remote IRR of entry 8 clears
    popl %ebx
    popl %eax
    iret

legacy_isr:
    pushw %ax
    incw (LEGACY)
    movb $0x20, %al                # keep the 8259 usable should it ever get here
    outb %al, $0xA0
    outb %al, $0x20
    popw %ax
    iret

version_msg:
    .asciz "ioapic: version "
bad_version_msg:
    .asciz "I/O APIC version register"
pit_msg:
    .asciz "pit "
rtc_msg:
    .asciz " rtc "
legacy_msg:
    .asciz " legacy "
rirr_msg:
    .asciz "rtc handler: remote IRR "
isr_msg:
    .asciz " ISR "
after_msg:
    .asciz ", after EOI remote IRR "
legacy_fail_msg:
    .asciz "an 8259 vector ran"
rirr_fail_msg:
    .asciz "Remote IRR / ISR not as expected"

.include "apic.inc"
.include "lib.inc"
