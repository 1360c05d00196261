# syntax: att
# guest: BIOS INT 10h teletype and cursor (AH=0Eh/03h) plus direct COM1 output
#
# Prints "Hello from hyperv-emu!" through INT 10h AH=0Eh (which the BIOS mirrors to COM1),
# checks with INT 10h AH=03h that the cursor moved 22 columns along the same row, then writes
# "Hello from hyperv-emu! (COM1)" straight to the 16550A's THR, polling LSR.THRE.
# Serial output:  Hello from hyperv-emu!
#                 cursor ok
#                 Hello from hyperv-emu! (COM1)
#                 PASS
# Screen: the same lines except the COM1 one.  Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

main:
    movb $0x03, %ah            # read cursor position and shape, page 0
    xorb %bh, %bh
    int $0x10
    movw %dx, (VARS)           # DH = row, DL = column before
    movw $hello_msg, %si
    call puts
    movb $0x03, %ah
    xorb %bh, %bh
    int $0x10
    movw (VARS), %ax
    addb $0x16, %al            # strlen("Hello from hyperv-emu!") = 22
    cmpw %ax, %dx
    jne bad_cursor
    call newline
    movw $cursor_ok_msg, %si
    call puts
    movw $com1_msg, %si
    call com_puts
    call pass

bad_cursor:
    movw $bad_cursor_msg, %si
    call fail

hello_msg:
    .asciz "Hello from hyperv-emu!"
cursor_ok_msg:
    .asciz "cursor ok\r\n"
com1_msg:
    .asciz "Hello from hyperv-emu! (COM1)\r\n"
bad_cursor_msg:
    .asciz "cursor did not move 22 columns"

.include "lib.inc"
