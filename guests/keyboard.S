# syntax: att
# guest: keyboard input: keystrokes through INT 16h, then raw scan codes from port 60h by its own IRQ1 handler
#
# Phase 1 (the BIOS's keyboard services): prints "keys> ", then for each keystroke waits with
# INT 16h AH=01h (peek; ZF=1 while the buffer is empty), checks that AH=00h returns the same
# word, and prints it as four hex digits (scan code, ASCII) until Enter (1C0Dh).
# Phase 2 (the hardware): installs its own INT 09h handler, which reads port 60h and keeps the
# byte, prints "raw> " and prints each byte (scan code set 1, as the 8042 translates: make
# codes, break codes with bit 7 set) from the first make code (a release left over from phase
# 1, its Enter's, is skipped) until the Enter key's release (9Ch); then restores the BIOS's
# handler.  Each phase gives up after 2 s of virtual time without a key (BIOS ticks at
# 40:6Ch), so the guest alone passes.  Type with e.g.
#   hyperv-emu run keyboard --keys 'aB{up}{ctrl-c}\n{wait:300}x\n' --keys-after 'keys> '
# Serial output:  keys> 1E61 3042 4800 2E03 1C0D
#                 raw> 2D AD 1C 9C
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: INT 16h AH=00h and AH=01h disagree).

.include "boot.inc"

.set RAW_BYTE, VARS            # byte: last scan code the IRQ1 handler read
.set RAW_NEW, VARS+1           # byte: 1 when RAW_BYTE is new
.set RAW_MAKE, VARS+2          # byte: 1 once a make code was seen
.set OLD_INT9, VARS+4          # dword: the BIOS's INT 09h vector
.set DEADLINE, VARS+8          # word: BIOS tick count at which a phase gives up
.set TICKS, 0x046C
.set TIMEOUT_TICKS, 0x0024     # 36 ticks of 18.2 Hz: about 2 s

main:
    sti
    movw $prompt_keys, %si
    call puts
key_next:
    call arm_deadline
key_wait:
    movb $0x01, %ah
    int $0x16
    jnz key_ready
    call expired
    jc phase2
    hlt
    jmp key_wait
key_ready:
    movw %ax, %bx
    movb $0x00, %ah
    int $0x16
    movw $msg_disagree, %si
    cmpw %ax, %bx
    jne fail
    call hex16
    movb $0x20, %al
    call putc
    cmpw $0x1C0D, %bx
    jne key_next

phase2:
    call newline
    cli
    movl (0x09*4), %eax
    movl %eax, (OLD_INT9)
    movw $irq1_handler, (0x09*4)
    movw $0, (0x09*4+2)
    movb $0, (RAW_NEW)
    movb $0, (RAW_MAKE)
    sti
    movw $prompt_raw, %si
    call puts
raw_next:
    call arm_deadline
raw_wait:
    cli
    cmpb $0, (RAW_NEW)
    jne raw_ready
    sti
    hlt
    call expired
    jnc raw_wait
    jmp finish
raw_ready:
    movb $0, (RAW_NEW)
    movb (RAW_BYTE), %al
    sti
    cmpb $0, (RAW_MAKE)
    jne raw_print
    testb $0x80, %al            # a release left from phase 1 (its Enter): skipped
    jnz raw_next
    movb $1, (RAW_MAKE)
raw_print:
    call hex8
    movb %al, %bl
    movb $0x20, %al
    call putc
    cmpb $0x9C, %bl
    jne raw_next
finish:
    cli
    movl (OLD_INT9), %eax
    movl %eax, (0x09*4)
    sti
    call newline
    jmp pass

# irq1_handler: the guest's own INT 09h: read the scan code, keep it, EOI the master 8259.
irq1_handler:
    pushw %ax
    inb $0x60, %al
    movb %al, %cs:(RAW_BYTE)
    movb $1, %cs:(RAW_NEW)
    movb $0x20, %al
    outb %al, $0x20
    popw %ax
    iret

# arm_deadline: give up TIMEOUT_TICKS BIOS ticks from now.
arm_deadline:
    pushw %ax
    movw (TICKS), %ax
    addw $TIMEOUT_TICKS, %ax
    movw %ax, (DEADLINE)
    popw %ax
    ret

# expired: CF=1 once the BIOS tick count has passed the deadline.
expired:
    pushw %ax
    movw (TICKS), %ax
    subw (DEADLINE), %ax
    cmpw $0x8000, %ax           # CF: (now - deadline), signed 16-bit, is >= 0
    popw %ax
    ret

prompt_keys:
    .asciz "keys> "
prompt_raw:
    .asciz "raw> "
msg_disagree:
    .asciz "INT 16h AH=00h returned another keystroke than AH=01h"

.include "lib.inc"
