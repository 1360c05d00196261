# syntax: att
# guest: 8254 PIT channel 0 in mode 2 at 1 kHz, its own IRQ0 handler, 8259 ISR/EOI, counter latch
#
# Programs PIT channel 0 for mode 2 (rate generator) with count 1193 (04A9h, 1 kHz), hooks
# vector 08h (IRQ0 as the BIOS programs the master PIC), unmasks IRQ0 and waits with STI/HLT for
# 10 interrupts.  The handler reads the master PIC's ISR (OCW3 0Bh) before its non-specific EOI;
# the main code checks that ISR bit 0 was set in the handler and is clear after the EOI, and that
# two counter-latch reads (control word 00h) taken a few hundred instructions apart decrease.
# Serial output:  timer: 10 ticks
#                 ISR in handler 01, after EOI 00
#                 latch 04xx > 04yy            (values depend on the instruction count)
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set TICKS, VARS               # word: IRQ0 count
.set ISR_IN, VARS+2            # byte: master ISR read inside the first handler call
.set LATCH1, VARS+4
.set LATCH2, VARS+6
.set PIT_COUNT, 0x04A9         # 1193182 Hz / 1000
.set WANT_TICKS, 0x0A

main:
    cli
    movw $0, (TICKS)
    movb $0, (ISR_IN)
    movw $irq0_handler, (0x08*4)
    movw $0, (0x08*4+2)
    # Control word 34h: channel 0, access lobyte/hibyte, mode 2, binary, then the count
    # (8254 datasheet; lib.inc pit0_mode2).
    movw $PIT_COUNT, %ax
    call pit0_mode2
    inb $0x21, %al             # OCW1: unmask IRQ0 only on top of what the BIOS set
    andb $0xFE, %al
    outb %al, $0x21
    sti
wait_ticks:
    hlt
    cmpw $WANT_TICKS, (TICKS)
    jb wait_ticks
    # Counter latch right after a tick: mode 2 counts down from 04A9h towards 1.
    hlt
    call read_latch
    movw %ax, (LATCH1)
    movw $0x100, %cx
spin:
    loop spin
    call read_latch
    movw %ax, (LATCH2)
    cli
    inb $0x21, %al
    orb $0x01, %al
    outb %al, $0x21

    movw $ticks_msg, %si
    call puts
    # ISR after the handler's EOI, read with OCW3 (0Bh = read ISR on the next read of 20h).
    movb $0x0B, %al
    outb %al, $0x20
    inb $0x20, %al
    movb %al, %bl
    movb $0x0A, %al            # back to reading IRR, the power-on default
    outb %al, $0x20
    movw $isr_msg, %si
    call puts
    movb (ISR_IN), %al
    call hex8
    movw $isr_msg2, %si
    call puts
    movb %bl, %al
    call hex8
    call newline
    testb $0x01, (ISR_IN)
    jz bad_isr_in
    testb $0x01, %bl
    jnz bad_eoi

    movw $latch_msg, %si
    call puts
    movw (LATCH1), %ax
    call hex16
    movw $latch_msg2, %si
    call puts
    movw (LATCH2), %ax
    call hex16
    call newline
    movw (LATCH1), %ax
    cmpw $PIT_COUNT, %ax
    ja bad_latch
    cmpw (LATCH2), %ax
    jbe bad_latch
    call pass

bad_isr_in:
    movw $bad_isr_in_msg, %si
    call fail
bad_eoi:
    movw $bad_eoi_msg, %si
    call fail
bad_latch:
    movw $bad_latch_msg, %si
    call fail

# read_latch: AX = channel 0's count, latched with control word 00h (counter latch command).
read_latch:
    movb $0x00, %al
    outb %al, $0x43
    inb $0x40, %al
    movb %al, %ah
    inb $0x40, %al
    xchgb %al, %ah
    ret

irq0_handler:
    pushw %ax
    incw %cs:(TICKS)
    cmpw $1, %cs:(TICKS)
    jne irq0_eoi
    movb $0x0B, %al            # OCW3: read ISR
    outb %al, $0x20
    inb $0x20, %al
    movb %al, %cs:(ISR_IN)
    movb $0x0A, %al
    outb %al, $0x20
irq0_eoi:
    movb $0x20, %al            # OCW2: non-specific EOI
    outb %al, $0x20
    popw %ax
    iret

ticks_msg:
    .asciz "timer: 10 ticks\r\n"
isr_msg:
    .asciz "ISR in handler "
isr_msg2:
    .asciz ", after EOI "
latch_msg:
    .asciz "latch "
latch_msg2:
    .asciz " > "
bad_isr_in_msg:
    .asciz "IRQ0 not in service (ISR bit 0) inside its handler"
bad_eoi_msg:
    .asciz "ISR bit 0 still set after the EOI"
bad_latch_msg:
    .asciz "latched count not decreasing within 1..04A9h"

.include "lib.inc"
