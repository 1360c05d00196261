# syntax: att
# CD boot image for tests/guests/test_cdrom.py: the El Torito no-emulation boot image of an
# ISO, assembled for 0000:7C00 and entered by the BIOS at 07C0:0000 with DL = E0h.
#
# Checks the BIOS's CD services on drive E0h: INT 13h AH=41h (extensions present, BX = AA55h),
# AH=48h (2048 bytes per sector; prints the sector count), AH=42h reading blocks 10h-11h (the
# primary volume descriptor, "\x01CD001", and the El Torito boot record, "\x00CD001") in one
# call, AH=43h refused (write protected, 03h), and AX=4B01h (El Torito "get status": the
# specification packet, as ISOLINUX asks for it).
# Serial output:  cdboot: drive E0 sectors 000000xx
#                 cdboot: boot image at 000000xx
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.set COM1, 0x3F8
.set EXIT_PORT, 0xF4
.set BOOT_DRIVE, 0x0500
.set BUF, 0x2000
.set PARAMS, 0x0600
.set SPEC, 0x0640

.code16
    .byte 0xEA                 # far jump to 0000:start (we were entered at 07C0:0000)
    .word start, 0
start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7C00, %sp
    sti
    cld
    movb %dl, (BOOT_DRIVE)
    movw $msg_dl, %si
    cmpb $0xE0, %dl
    jne fail

    movw $0x4100, %ax
    movw $0x55AA, %bx
    int $0x13
    movw $msg_41, %si
    jc fail
    cmpw $0xAA55, %bx
    jne fail

    movw $PARAMS, %si
    movw $0x1E, (%si)
    movb $0x48, %ah
    movb (BOOT_DRIVE), %dl
    int $0x13
    movw $msg_48, %si
    jc fail
    cmpw $0x0800, (PARAMS+0x18)
    jne fail

    movw $dap, %si
    movb $0x42, %ah
    movb (BOOT_DRIVE), %dl
    int $0x13
    movw $msg_42, %si
    jc fail
    cmpw $2, (dap+2)
    jne fail
    cmpl $0x30444301, (BUF)            # 01h "CD0"
    jne fail
    cmpl $0x30444300, (BUF+0x800)      # 00h "CD0"
    jne fail

    movw $dap, %si
    movb $0x43, %ah
    movb (BOOT_DRIVE), %dl
    int $0x13
    movw $msg_43, %si
    jnc fail
    cmpb $0x03, %ah
    jne fail

    # INT 13h AX=4B01h: the El Torito specification packet of this boot.
    movw $SPEC, %di
    movw $0x13, %cx
    movb $0xCC, %al
    rep stosb
    movw $SPEC, %si
    movw $0x4B01, %ax
    movb (BOOT_DRIVE), %dl
    int $0x13
    movw $msg_4b, %si
    jc fail
    cmpb $0x13, (SPEC)                 # packet size
    jne fail
    cmpb $0x00, (SPEC+0x01)            # no emulation
    jne fail
    cmpb $0xE0, (SPEC+0x02)            # the drive
    jne fail
    cmpb $0x01, (SPEC+0x03)            # controller 1: the secondary IDE channel
    jne fail
    cmpb $0x00, (SPEC+0x08)            # the master
    jne fail
    cmpw $0x07C0, (SPEC+0x0C)          # load segment
    jne fail
    cmpw $0x0004, (SPEC+0x0E)          # -boot-load-size 4
    jne fail

    movw $msg_ok, %si
    call puts
    movl (PARAMS+0x10), %eax
    call hex32
    call newline
    movw $msg_spec, %si
    call puts
    movl (SPEC+0x04), %eax
    call hex32
    call newline
    jmp pass

dap:
    .byte 0x10, 0
    .word 2
    .word BUF, 0
    .long 0x10, 0

msg_dl:
    .asciz "boot drive is not E0h"
msg_41:
    .asciz "INT 13h AH=41h"
msg_48:
    .asciz "INT 13h AH=48h"
msg_42:
    .asciz "INT 13h AH=42h"
msg_43:
    .asciz "INT 13h AH=43h not refused"
msg_ok:
    .asciz "cdboot: drive E0 sectors "
msg_4b:
    .asciz "INT 13h AX=4B01h"
msg_spec:
    .asciz "cdboot: boot image at "

.include "../../guests/lib.inc"
