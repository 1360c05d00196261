# syntax: att
# guest: ATAPI CD-ROM on the secondary master through PIO PACKET commands, self-checking
# needs: test-cd
#
# Drives the CD-ROM at 170h-177h / 376h (device 0) with polling (the BIOS leaves nIEN set):
# DEVICE RESET (08h) and the ATAPI signature 14h/EBh, IDENTIFY PACKET DEVICE (A1h, word 0 =
# 85C0h: ATAPI, CD-ROM, removable), then a table of packet commands, each checked for the final
# Status, Error (sense key in bits 7-4) and the interrupt reason of every phase (CoD for the
# packet, IO for data, IO|CoD for status):
#   TEST UNIT READY -> UNIT ATTENTION (error 60h); REQUEST SENSE -> 06/28/00; TEST UNIT READY
#   good; INQUIRY (type 05h, removable, 36 bytes); READ CAPACITY (2048-byte blocks); READ(10)
#   of the first block of DATA.BIN and READ(12) of its second block with a byte count limit of
#   200h (four DRQ blocks); MODE SENSE(10) page 2Ah; READ TOC format 0 in LBA and MSF form;
#   GET CONFIGURATION (current profile 0008h); START STOP UNIT eject -> TEST UNIT READY not ready
#   (error 20h) -> REQUEST SENSE 02/3A/00 -> load -> UNIT ATTENTION -> good; an invalid opcode
#   (05/20/00), READ(10) past the end (05/21/00) and a byte count limit of 0 (05/24/00).
# The disc is the catalog's test CD (need test-cd, hyperv_emu/guest_needs.py), which also patches
# DATA.BIN's first block into the dword after the "CDLBA:" marker; its blocks start with
# "CDTEST00" and "CDTEST01".  With no drive on the channel Status reads 7Fh (ATA-6 requires a
# host pull-down on DD7, the other lines float high) or FFh: the guest then fails with "no
# CD-ROM drive on the secondary master" rather than misreading the floating bus.
# Serial output:  atapi: signature 14 EB identify 85C0
#                 atapi: <command> st SS err EE n NNNN blocks BB     (one line per command)
#                 atapi: capacity <last LBA>, atapi: read10 sum <word>, atapi: read12 sum
#                 <word>, atapi: toc lead-out <LBA>, atapi: toc msf MM SS FF (each after its
#                 command's line; the word sums are of the 2048 bytes read, as words)
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set CMDB, 0x170
.set CTRL, 0x376
.set ST, VARS                  # byte: final status
.set ERR, VARS+1               # byte: final error register
.set NBYTES, VARS+2            # word: bytes moved
.set NBLK, VARS+4              # byte: DRQ data blocks
.set ENTRY, VARS+6             # word: current table entry
.set BUF, 0x2000
.set IDBUF, 0x3000

main:
    movw $CMDB+6, %dx
    movb $0xA0, %al
    outb %al, %dx
    # An empty channel floats: Status 7Fh or FFh (a device never shows BSY and DRDY..ERR all
    # set together).
    movw $CMDB+7, %dx
    inb %dx, %al
    orb $0x80, %al
    movw $msg_no_drive, %si
    cmpb $0xFF, %al
    je fail
    # DEVICE RESET: signature in LBA Mid/High, and DRDY clear: a PACKET device keeps DRDY
    # clear after a reset until its next command (ATA/ATAPI-6 9.12).
    movb $0x08, %al
    outb %al, %dx
    call wait_idle
    movw $msg_reset, %si
    testb $0x40, %al
    jnz fail
    movw $msg_sig, %si
    call puts
    movw $CMDB+4, %dx
    inb %dx, %al
    call hex8
    movb %al, %bl
    movb $0x20, %al
    call putc
    incw %dx
    inb %dx, %al
    call hex8
    movb %al, %bh
    movw $msg_sig_bad, %si
    cmpw $0xEB14, %bx
    jne fail

    # IDENTIFY PACKET DEVICE.
    movw $CMDB+7, %dx
    movb $0xA1, %al
    outb %al, %dx
    call wait_idle
    movw $msg_identify, %si
    testb $0x08, %al
    jz fail
    movw $IDBUF, %di
    movw $0x100, %cx
    movw $CMDB, %dx
    rep insw
    movw $msg_ident, %si
    call puts
    movw (IDBUF), %ax
    call hex16
    call newline
    movw $msg_identify, %si
    cmpw $0x85C0, %ax
    jne fail

    # Put DATA.BIN's block numbers into the READ(10) and READ(12) packets (big-endian).
    movl (data_lba), %eax
    bswapl %eax
    movl %eax, (cdb_read10+2)
    movl (data_lba), %eax
    incl %eax
    bswapl %eax
    movl %eax, (cdb_read12+2)

    movw $table, %bx
run_loop:
    cmpb $0, (%bx)
    je run_done
    movw %bx, (ENTRY)
    leaw 0x08(%bx), %si
    movw 0x14(%bx), %cx
    movw $BUF, %di
    call packet
    # "atapi: NAME st SS err EE n NNNN blocks BB"
    movw $msg_prefix, %si
    call puts
    movw (ENTRY), %bx
    movw $0x08, %cx
name_loop:
    movb (%bx), %al
    call putc
    incw %bx
    loop name_loop
    movw $msg_st, %si
    call puts
    movb (ST), %al
    call hex8
    movw $msg_err, %si
    call puts
    movb (ERR), %al
    call hex8
    movw $msg_n, %si
    call puts
    movw (NBYTES), %ax
    call hex16
    movw $msg_blocks, %si
    call puts
    movb (NBLK), %al
    call hex8
    call newline
    movw (ENTRY), %bx
    movb (ST), %al
    movb (ERR), %ah
    movw (ENTRY), %si          # the failure reason is the command's name
    cmpb 0x16(%bx), %al
    jne fail_entry
    cmpb 0x17(%bx), %ah
    jne fail_entry
    movw 0x18(%bx), %ax
    testw %ax, %ax
    jz run_next
    call *%ax
    movw (ENTRY), %bx
run_next:
    addw $0x1A, %bx
    jmp run_loop
run_done:
    jmp pass

fail_entry:
    movb $0, 0x08(%si)         # cut the name after 8 characters (the CDB follows)
    jmp fail

# packet: send the 12-byte CDB at SI with byte count limit CX, read data to DI.  Sets ST, ERR,
# NBYTES, NBLK; fails the run on a wrong interrupt reason.
packet:
    pushaw
    movw $0, (NBYTES)
    movb $0, (NBLK)
    call wait_idle
    movw $CMDB+1, %dx          # Features: PIO
    xorb %al, %al
    outb %al, %dx
    movw $CMDB+4, %dx
    movb %cl, %al
    outb %al, %dx
    incw %dx
    movb %ch, %al
    outb %al, %dx
    movw $CMDB+7, %dx
    movb $0xA0, %al
    outb %al, %dx
    call wait_idle
    pushw %si
    movw $msg_no_drq, %si
    testb $0x08, %al
    jz fail
    movw $CMDB+2, %dx
    inb %dx, %al
    movw $msg_ir_packet, %si
    cmpb $0x01, %al            # CoD=1, IO=0: the command packet is wanted
    jne fail
    popw %si
    movw $CMDB, %dx
    movw $6, %cx
    rep outsw
packet_phase:
    call wait_idle
    testb $0x08, %al
    jz packet_done
    movw $CMDB+2, %dx
    inb %dx, %al
    movw $msg_ir_data, %si
    cmpb $0x02, %al            # IO=1, CoD=0: data to the host
    jne fail
    movw $CMDB+4, %dx
    inb %dx, %al
    movb %al, %cl
    incw %dx
    inb %dx, %al
    movb %al, %ch
    addw %cx, (NBYTES)
    incb (NBLK)
    incw %cx
    shrw $1, %cx
    movw $CMDB, %dx
    rep insw
    jmp packet_phase
packet_done:
    movb %al, (ST)
    movw $CMDB+1, %dx
    inb %dx, %al
    movb %al, (ERR)
    movw $CMDB+2, %dx
    inb %dx, %al
    movw $msg_ir_status, %si
    cmpb $0x03, %al            # IO=1, CoD=1: status
    jne fail
    popaw
    ret

# wait_idle: poll Status (bounded) until BSY clears; AL = status.
wait_idle:
    pushw %cx
    pushw %dx
    movw $CMDB+7, %dx
    movw $0xFFFF, %cx
wait_loop:
    inb %dx, %al
    testb $0x80, %al
    jz wait_done
    loop wait_loop
wait_done:
    popw %dx
    popw %cx
    ret

# ---- per-command checks of the data at BUF (return, or fail with SI) --------------------
# expect3: the sense data at BUF has key/ASC/ASCQ = BL/BH/AL.
expect3:
    movw $msg_sense, %si
    cmpb $0x70, (BUF)
    jne fail
    cmpb %bl, (BUF+2)
    jne fail
    cmpb %bh, (BUF+0x0C)
    jne fail
    cmpb %al, (BUF+0x0D)
    jne fail
    ret
chk_sense_ua:
    movw $0x2806, %bx
    movb $0x00, %al
    jmp expect3
chk_sense_nomedia:
    movw $0x3A02, %bx
    movb $0x00, %al
    jmp expect3
chk_sense_opcode:
    movw $0x2005, %bx
    movb $0x00, %al
    jmp expect3
chk_sense_lba:
    movw $0x2105, %bx
    movb $0x00, %al
    jmp expect3
chk_sense_field:
    movw $0x2405, %bx
    movb $0x00, %al
    jmp expect3

chk_inquiry:
    movw $msg_inquiry, %si
    cmpw $0x8005, (BUF)        # peripheral type 05h, RMB
    jne fail
    cmpw $0x24, (NBYTES)
    jne fail
    ret

chk_capacity:
    movw $msg_capacity, %si
    cmpl $0x00080000, (BUF+4)  # 2048, big-endian
    jne fail
    call puts
    movl (BUF), %eax
    bswapl %eax
    call hex32
    call newline
    ret

# sum_buf: AX = 16-bit sum of the 2048 bytes at BUF, as words.
sum_buf:
    pushw %si
    pushw %cx
    pushw %bx
    movw $BUF, %si
    movw $0x400, %cx
    xorw %bx, %bx
sum_loop:
    lodsw
    addw %ax, %bx
    loop sum_loop
    movw %bx, %ax
    popw %bx
    popw %cx
    popw %si
    ret

chk_read10:
    movw $msg_read10, %si
    cmpl $0x45544443, (BUF)    # "CDTE"
    jne fail
    cmpl $0x30305453, (BUF+4)  # "ST00"
    jne fail
    call puts
    call sum_buf
    call hex16
    call newline
    ret

chk_read12:
    movw $msg_read12, %si
    cmpl $0x31305453, (BUF+4)  # "ST01"
    jne fail
    cmpb $4, (NBLK)            # 2048 bytes in 200h-byte DRQ blocks
    jne fail
    call puts
    call sum_buf
    call hex16
    call newline
    ret

chk_mode:
    movw $msg_mode, %si
    cmpw $0x142A, (BUF+8)      # page 2Ah, length 14h, after the 8-byte header
    jne fail
    ret

chk_toc:
    movw $msg_toc, %si
    cmpl $0x01011200, (BUF)    # length 0012h, first track 1, last track 1
    jne fail
    cmpb $0xAA, (BUF+0x0E)
    jne fail
    call puts
    movl (BUF+0x10), %eax
    bswapl %eax
    call hex32
    call newline
    ret

chk_toc_msf:
    movw $msg_msf, %si
    call puts
    movb (BUF+0x11), %al
    call hex8
    movb $0x20, %al
    call putc
    movb (BUF+0x12), %al
    call hex8
    movb $0x20, %al
    call putc
    movb (BUF+0x13), %al
    call hex8
    call newline
    ret

chk_config:
    movw $msg_config, %si
    cmpw $0x0800, (BUF+6)      # current profile 0008h
    jne fail
    cmpw $0x0000, (BUF+8)      # first feature: Profile List
    jne fail
    cmpw $0x0800, (BUF+0x0C)     # its first profile: 0008h
    jne fail
    ret

# ---- the command table: name (8), CDB (12), byte count limit, status, error, check -----
table:
    .ascii "TUR-UA  "
    .byte 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x51, 0x60
    .word 0
    .ascii "SENSE-UA"
    .byte 0x03, 0, 0, 0, 0x12, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_sense_ua
    .ascii "TUR     "
    .byte 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word 0
    .ascii "INQUIRY "
    .byte 0x12, 0, 0, 0, 0x60, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_inquiry
    .ascii "CAPACITY"
    .byte 0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_capacity
    .ascii "READ10  "
cdb_read10:
    .byte 0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_read10
    .ascii "READ12  "
cdb_read12:
    .byte 0xA8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0
    .word 0x0200
    .byte 0x50, 0x00
    .word chk_read12
    .ascii "MODESNS "
    .byte 0x5A, 0, 0x2A, 0, 0, 0, 0, 0x01, 0x00, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_mode
    .ascii "TOC     "
    .byte 0x43, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_toc
    .ascii "TOC-MSF "
    .byte 0x43, 0x02, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_toc_msf
    .ascii "GETCONF "
    .byte 0x46, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_config
    .ascii "EJECT   "
    .byte 0x1B, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word 0
    .ascii "TUR-NM  "
    .byte 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x51, 0x20
    .word 0
    .ascii "SENSE-NM"
    .byte 0x03, 0, 0, 0, 0x12, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_sense_nomedia
    .ascii "LOAD    "
    .byte 0x1B, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word 0
    .ascii "TUR-UA2 "
    .byte 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x51, 0x60
    .word 0
    .ascii "TUR2    "
    .byte 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word 0
    .ascii "BADOP   "
    .byte 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x51, 0x54
    .word 0
    .ascii "SENSE-OP"
    .byte 0x03, 0, 0, 0, 0x12, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_sense_opcode
    .ascii "READPAST"
    .byte 0x28, 0, 0x7F, 0xFF, 0xFF, 0xFF, 0, 0, 1, 0, 0, 0
    .word 0x0800
    .byte 0x51, 0x54
    .word 0
    .ascii "SENSE-LB"
    .byte 0x03, 0, 0, 0, 0x12, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_sense_lba
    .ascii "LIMIT0  "
    .byte 0x12, 0, 0, 0, 0x24, 0, 0, 0, 0, 0, 0, 0
    .word 0x0000
    .byte 0x51, 0x54
    .word 0
    .ascii "SENSE-BC"
    .byte 0x03, 0, 0, 0, 0x12, 0, 0, 0, 0, 0, 0, 0
    .word 0x0800
    .byte 0x50, 0x00
    .word chk_sense_field
    .byte 0

    .ascii "CDLBA:"
data_lba:
    .long 0

msg_reset:
    .asciz "DEVICE RESET left DRDY set"
msg_no_drive:
    .asciz "no CD-ROM drive on the secondary master (Status reads 7Fh/FFh)"
msg_sig:
    .asciz "atapi: signature "
msg_sig_bad:
    .asciz "no ATAPI signature"
msg_ident:
    .asciz " identify "
msg_identify:
    .asciz "IDENTIFY PACKET DEVICE"
msg_prefix:
    .asciz "atapi: "
msg_st:
    .asciz " st "
msg_err:
    .asciz " err "
msg_n:
    .asciz " n "
msg_blocks:
    .asciz " blocks "
msg_no_drq:
    .asciz "no DRQ for the command packet"
msg_ir_packet:
    .asciz "interrupt reason for the packet is not CoD"
msg_ir_data:
    .asciz "interrupt reason for data is not IO"
msg_ir_status:
    .asciz "interrupt reason at completion is not IO|CoD"
msg_sense:
    .asciz "sense data"
msg_inquiry:
    .asciz "INQUIRY data"
msg_capacity:
    .asciz "atapi: capacity "
msg_read10:
    .asciz "atapi: read10 sum "
msg_read12:
    .asciz "atapi: read12 sum "
msg_mode:
    .asciz "MODE SENSE page 2Ah"
msg_toc:
    .asciz "atapi: toc lead-out "
msg_msf:
    .asciz "atapi: toc msf "
msg_config:
    .asciz "GET CONFIGURATION header"

.include "lib.inc"
