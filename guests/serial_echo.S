# syntax: att
# guest: COM1 receive by polling: its own 16550A setup, a prompt, then echoes input until EOT or silence
#
# Sets COM1 up as an OS driver does (IER 0; DLAB, divisor 1 = 115200 baud; LCR 03h = 8N1; FCR C7h:
# FIFO on, both FIFOs cleared, trigger 14; MCR 0Bh: DTR, RTS, OUT2), so input that reached the
# FIFO earlier is gone, as on a PC. Then writes the prompt "serial echo> " to COM1 and polls LSR:
# each received byte (DR) is read from RBR and written back to THR, until a byte 04h (EOT) or
# 200 ms of virtual time without input (10000 polls, 2000 instructions apart). Any overrun
# (LSR.OE) is a failure. Run it with --serial-input FILE and --serial-input-after "serial echo> "
# to see every byte of FILE echoed; alone, it echoes nothing and passes.
# Serial output:  serial echo> <the bytes received, echoed>
#                 echoed NNNN bytes                  (hex count)
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: overrun).

.include "boot.inc"

.set COUNT, VARS               # word: bytes echoed
.set OVERRUN, VARS+2           # byte: LSR.OE seen
.set IDLE_POLLS, 0x2710        # 10000
.set POLL_DELAY, 0x03E8        # 1000 iterations of dec/jnz: 2000 instructions, 20 us
.set EOT, 0x04

main:
    movw $0, (COUNT)
    movb $0, (OVERRUN)
    movw $COM1+1, %dx          # IER: no interrupts
    xorb %al, %al
    outb %al, %dx
    movw $COM1+3, %dx          # LCR: DLAB
    movb $0x80, %al
    outb %al, %dx
    movw $COM1, %dx            # DLL = 1, DLM = 0: 1.8432 MHz / 16 / 1 = 115200 baud
    movb $0x01, %al
    outb %al, %dx
    movw $COM1+1, %dx
    xorb %al, %al
    outb %al, %dx
    movw $COM1+3, %dx          # LCR: 8 data bits, no parity, 1 stop bit, DLAB off
    movb $0x03, %al
    outb %al, %dx
    movw $COM1+2, %dx          # FCR: FIFO enable, clear RX and TX FIFO, trigger level 14
    movb $0xC7, %al
    outb %al, %dx
    movw $COM1+4, %dx          # MCR: DTR, RTS, OUT2
    movb $0x0B, %al
    outb %al, %dx
    movw $prompt_msg, %si
    call com_puts

restart_idle:
    movw $IDLE_POLLS, %bx
poll:
    movw $COM1+5, %dx          # LSR
    inb %dx, %al
    testb $0x02, %al           # OE
    jz no_overrun
    movb $1, (OVERRUN)
no_overrun:
    testb $0x01, %al           # DR
    jnz got_byte
    movw $POLL_DELAY, %cx
delay:
    decw %cx
    jnz delay
    decw %bx
    jnz poll
    jmp finish

got_byte:
    movw $COM1, %dx
    inb %dx, %al
    cmpb $EOT, %al
    je finish
    call com_putc
    incw (COUNT)
    jmp restart_idle

finish:
    call newline
    movw $echoed_msg, %si
    call puts
    movw (COUNT), %ax
    call hex16
    movw $bytes_msg, %si
    call puts
    call newline
    cmpb $0, (OVERRUN)
    jne overrun
    call pass

overrun:
    movw $overrun_msg, %si
    call fail

prompt_msg:
    .asciz "serial echo> "
echoed_msg:
    .asciz "echoed "
bytes_msg:
    .asciz " bytes"
overrun_msg:
    .asciz "overrun (LSR.OE) while receiving"

.include "lib.inc"
