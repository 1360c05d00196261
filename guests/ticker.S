# syntax: att
# guest: PIT ticks, a console gate that idles on a COM1 receive interrupt, more ticks and a checksum
# needs: gate-input
#
# A long-lived guest for the VM manager (hyperv-emu vm ...): its output is the same on every run
# and does not depend on when host input arrives, so a run that was saved and resumed (or paused,
# or watched through the console) can be compared line for line with an uninterrupted one.
#  1. PIT channel 0 in mode 2 at 1 kHz (count 04A9h) on its own IRQ0 handler; after every 20h
#     ticks it prints "tick N SSSSSSSS" where SSSSSSSS is a running checksum (sum = sum * 3 +
#     ticks, kept in RAM), five lines.
#  2. Stops the PIT (control word 30h: mode 0 waiting for a count, so no timer is armed), prints
#     "ready> ", turns on COM1's received-data interrupt (IER 01h, MCR OUT2, IRQ4 unmasked) and
#     waits with STI/HLT: with nothing armed the machine is idle until a byte arrives.
#  3. Prints "got XX" (the byte in hex), restarts the PIT and prints five more tick lines, then
#     "sum SSSSSSSS" and PASS.
# Serial output:  tick 0001 ... five lines, "ready> ", "got XX", five lines, "sum ...", PASS
# Exit status 1 (PASS).  ``run ticker`` sends "x" at the gate (its need gate-input; or give
# --serial-input FILE --serial-input-after "ready> "); as a VM (hyperv-emu vm) it waits there,
# idle, for a key on its console.

.include "boot.inc"

.set TICKS, VARS               # word: IRQ0 count
.set SUM, VARS+4               # dword: running checksum
.set LINES, VARS+8             # word: tick lines printed
.set GOT, VARS+0x0A            # byte: the received byte
.set HAVE, VARS+0x0B           # byte: 1 once a byte arrived
.set PIT_COUNT, 0x04A9         # 1193182 Hz / 1000
.set PER_LINE, 0x20            # ticks per line

main:
    cli
    movw $0, (TICKS)
    movl $0, (SUM)
    movw $0, (LINES)
    movb $0, (HAVE)
    movw $irq0_handler, (0x08*4)
    movw $0, (0x08*4+2)
    movw $irq4_handler, (0x0C*4)
    movw $0, (0x0C*4+2)
    call start_pit
    call five_lines
    # Stop the PIT: a control word leaves channel 0 waiting for its count (8254 datasheet).
    cli
    movb $0x30, %al
    outb %al, $0x43
    movw $ready_msg, %si
    call puts
    # COM1: drain the receiver, then interrupt on received data (IER bit 0) through OUT2.
    movw $COM1+5, %dx
drain:
    inb %dx, %al
    testb $0x01, %al
    jz drained
    movw $COM1, %dx
    inb %dx, %al
    movw $COM1+5, %dx
    jmp drain
drained:
    movw $COM1+4, %dx          # MCR: DTR, RTS, OUT2 (the IRQ gate on a PC)
    movb $0x0B, %al
    outb %al, %dx
    movw $COM1+1, %dx          # IER: received data available
    movb $0x01, %al
    outb %al, %dx
    inb $0x21, %al             # unmask IRQ4
    andb $0xEF, %al
    outb %al, $0x21
gate:
    sti
    hlt
    cli
    cmpb $0, (HAVE)
    je gate
    movw $COM1+1, %dx          # no more receive interrupts
    movb $0x00, %al
    outb %al, %dx
    inb $0x21, %al
    orb $0x10, %al
    outb %al, $0x21
    movw $got_msg, %si
    call puts
    movb (GOT), %al
    call hex8
    call newline
    call start_pit
    call five_lines
    cli
    movw $sum_msg, %si
    call puts
    movl (SUM), %eax
    call hex32
    call newline
    call pass

# start_pit: channel 0 at 1 kHz, IRQ0 unmasked, interrupts on.
start_pit:
    movw $PIT_COUNT, %ax
    call pit0_mode2
    inb $0x21, %al
    andb $0xFE, %al
    outb %al, $0x21
    sti
    ret

# five_lines: wait PER_LINE ticks, fold the count into SUM and print a tick line; five times.
five_lines:
    movw $5, %cx
line_loop:
    movw (TICKS), %bx
    addw $PER_LINE, %bx
wait_tick:
    hlt
    cmpw %bx, (TICKS)
    jb wait_tick
    incw (LINES)
    movl (SUM), %eax
    movl %eax, %edx
    shll $1, %eax
    addl %edx, %eax
    movzwl (LINES), %edx
    addl %edx, %eax
    movl %eax, (SUM)
    movw $tick_msg, %si
    call puts
    movw (LINES), %ax
    call hex16
    movb $0x20, %al
    call putc
    movl (SUM), %eax
    call hex32
    call newline
    loop line_loop
    ret

irq0_handler:
    pushw %ax
    incw %cs:(TICKS)
    movb $0x20, %al            # OCW2: non-specific EOI
    outb %al, $0x20
    popw %ax
    iret

irq4_handler:
    pushw %ax
    pushw %dx
    movw $COM1+5, %dx
    inb %dx, %al
    testb $0x01, %al
    jz irq4_eoi
    movw $COM1, %dx
    inb %dx, %al
    movb %al, %cs:(GOT)
    movb $1, %cs:(HAVE)
irq4_eoi:
    movb $0x20, %al
    outb %al, $0x20
    popw %dx
    popw %ax
    iret

tick_msg:
    .asciz "tick "
ready_msg:
    .asciz "ready> "
got_msg:
    .asciz "\r\ngot "
sum_msg:
    .asciz "sum "

.include "lib.inc"
