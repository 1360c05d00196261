# syntax: att
# guest: ATA PIO on the primary IDE channel without the BIOS: IDENTIFY, LBA28/LBA48, MULTIPLE, errors
#
# With interrupts off at the drive (Device Control nIEN), polling the Status register:
#   IDENTIFY DEVICE (ECh): word 0 bit 15 clear (ATA), word 49 bit 9 (LBA), word 83 bit 10
#     (48-bit), words 60-61 and 100-103 equal to the image's sector count (boot sector 18h),
#     word 255 signature A5h with all 512 bytes summing to 0 (ATA-6 8.15.61);
#   WRITE SECTORS (30h) + READ SECTORS (20h) of 2 scratch sectors near the end of the disk;
#   WRITE SECTORS EXT (34h) + READ SECTORS EXT (24h), the HOB bytes written first;
#   SET MULTIPLE MODE (C6h) 2, WRITE MULTIPLE (C5h) + READ MULTIPLE (C4h) of 4 sectors;
#   FLUSH CACHE (E7h);
#   READ SECTORS one past the end: ERR in Status, IDNF (10h) in Error;
# then, through the BIOS, INT 13h AH=42h must read what WRITE MULTIPLE wrote, and what INT 13h
# AH=43h writes must come back through READ SECTORS.
# Serial output:  IDENTIFY ok, 00000040 sectors, model Virtual HD   (image size, IDENTIFY model)
#                 READ/WRITE SECTORS ok
#                 READ/WRITE SECTORS EXT ok
#                 READ/WRITE MULTIPLE ok
#                 FLUSH CACHE ok
#                 out of range: status 51 error 10
#                 INT 13h AH=42h/43h ok
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set IDBUF, 0x1000             # IDENTIFY data
.set PATTERN, 0x2000           # 4 sectors of pattern A, then 4 of pattern B (the inverse)
.set PATTERN_B, 0x2800
.set READBUF, 0x3000
.set BIOSBUF, 0x4000
.set SCRATCH_LBA, VARS         # dword: the first of the 8 scratch sectors at the disk's end
.set DAP, VARS+0x10
.set ATA_DATA, 0x1F0
.set ATA_ERROR, 0x1F1
.set ATA_STATUS, 0x1F7
.set ATA_DEVCTL, 0x3F6

main:
    movb $0x02, %al            # Device Control: nIEN, the drive does not assert INTRQ
    movw $ATA_DEVCTL, %dx
    outb %al, %dx
    movl (IMAGE_SECTORS), %eax
    subl $8, %eax
    movl %eax, (SCRATCH_LBA)
    movb $0xE0, %al            # Device: LBA, device 0
    movw $0x1F6, %dx
    outb %al, %dx
    call ata_wait_idle
    jc bad_timeout

    # ---- IDENTIFY DEVICE
    movb $0xEC, %al
    movw $ATA_STATUS, %dx
    outb %al, %dx
    movw $IDBUF, %di
    movw $1, %cx
    call pio_in
    jc bad_identify
    testw $0x8000, (IDBUF)
    jnz bad_identify
    testw $0x0200, (IDBUF+0x31*2)      # word 49 bit 9: LBA
    jz bad_identify
    testw $0x0400, (IDBUF+0x53*2)      # word 83 bit 10: 48-bit address feature set
    jz bad_identify
    movl (IMAGE_SECTORS), %eax
    cmpl (IDBUF+0x3C*2), %eax          # words 60-61: user-addressable LBA28 sectors
    jne bad_size
    cmpl (IDBUF+0x64*2), %eax          # words 100-103: LBA48 maximum
    jne bad_size
    cmpl $0, (IDBUF+0x66*2)
    jne bad_size
    cmpb $0xA5, (IDBUF+0x1FE)          # word 255 low byte: signature
    jne bad_checksum
    movw $IDBUF, %si
    movw $0x200, %cx
    xorb %bl, %bl
sum_loop:
    lodsb
    addb %al, %bl
    loop sum_loop
    testb %bl, %bl
    jnz bad_checksum
    movw $identify_msg, %si
    call puts
    movl (IMAGE_SECTORS), %eax
    call hex32
    movw $model_msg, %si
    call puts
    movw $IDBUF+0x1B*2, %si            # words 27-46: model, two characters a word, high first
    movw $0x14, %cx
model_loop:
    lodsw
    xchgb %al, %ah
    call putc
    movb %ah, %al
    call putc
    loop model_loop
    call newline

    # ---- patterns: A[i] = lo(i) ^ hi(i) ^ A5h over 4 sectors, B = ~A
    xorw %bx, %bx
fill_loop:
    movb %bl, %al
    xorb %bh, %al
    xorb $0xA5, %al
    movb %al, PATTERN(%bx)
    notb %al
    movb %al, PATTERN_B(%bx)
    incw %bx
    cmpw $0x800, %bx
    jb fill_loop

    # ---- WRITE SECTORS / READ SECTORS: pattern A sectors 0-1 to scratch+4
    movl (SCRATCH_LBA), %eax
    addl $4, %eax
    movw $2, %cx
    movb $0x30, %bl
    call ata_cmd28
    movw $PATTERN, %si
    call pio_out
    jc bad_rw28
    call clear_readbuf
    movl (SCRATCH_LBA), %eax
    addl $4, %eax
    movw $2, %cx
    movb $0x20, %bl
    call ata_cmd28
    movw $READBUF, %di
    call pio_in
    jc bad_rw28
    movw $PATTERN, %si
    movw $0x200, %cx                   # words
    call compare
    jne bad_rw28
    movw $rw28_msg, %si
    call puts

    # ---- WRITE SECTORS EXT pattern A sectors 2-3 to scratch+6, READ SECTORS EXT scratch+4..7
    movl (SCRATCH_LBA), %eax
    addl $6, %eax
    movw $2, %cx
    movb $0x34, %bl
    call ata_cmd48
    movw $PATTERN+0x400, %si
    call pio_out
    jc bad_rw48
    call clear_readbuf
    movl (SCRATCH_LBA), %eax
    addl $4, %eax
    movw $4, %cx
    movb $0x24, %bl
    call ata_cmd48
    movw $READBUF, %di
    call pio_in
    jc bad_rw48
    movw $PATTERN, %si
    movw $0x400, %cx
    call compare
    jne bad_rw48
    movw $rw48_msg, %si
    call puts

    # ---- SET MULTIPLE MODE 2, WRITE MULTIPLE pattern B to scratch+0..3, READ MULTIPLE
    xorl %eax, %eax
    movw $2, %cx
    movb $0xC6, %bl
    call ata_cmd28
    call ata_wait_idle
    jc bad_multiple
    testb $0x01, %al
    jnz bad_multiple
    movl (SCRATCH_LBA), %eax
    movw $4, %cx
    movb $0xC5, %bl
    call ata_cmd28
    movw $PATTERN_B, %si
    call pio_out
    jc bad_multiple
    call clear_readbuf
    movl (SCRATCH_LBA), %eax
    movw $4, %cx
    movb $0xC4, %bl
    call ata_cmd28
    movw $READBUF, %di
    call pio_in
    jc bad_multiple
    movw $PATTERN_B, %si
    movw $0x400, %cx
    call compare
    jne bad_multiple
    movw $multiple_msg, %si
    call puts

    # ---- FLUSH CACHE
    xorl %eax, %eax
    xorw %cx, %cx
    movb $0xE7, %bl
    call ata_cmd28
    call ata_wait_idle
    jc bad_flush
    testb $0x21, %al                   # ERR or DF
    jnz bad_flush
    movw $flush_msg, %si
    call puts

    # ---- READ SECTORS at the first LBA past the end: ERR + IDNF
    movl (IMAGE_SECTORS), %eax
    movw $1, %cx
    movb $0x20, %bl
    call ata_cmd28
    call ata_wait_idle
    jc bad_range
    movb %al, %bl
    movw $ATA_ERROR, %dx
    inb %dx, %al
    movb %al, %bh
    movw $range_msg, %si
    call puts
    movb %bl, %al
    call hex8
    movw $range_msg2, %si
    call puts
    movb %bh, %al
    call hex8
    call newline
    testb $0x01, %bl
    jz bad_range
    testb $0x08, %bl                   # no DRQ: nothing to transfer
    jnz bad_range
    cmpb $0x10, %bh
    jne bad_range

    # ---- the BIOS: INT 13h AH=42h reads what WRITE MULTIPLE wrote
    movl (SCRATCH_LBA), %eax
    movw $BIOSBUF, %bx
    movw $4, %cx
    movw $0x42, %di
    call bios_rw
    jc bad_int13
    movw $BIOSBUF, %di
    movw $PATTERN_B, %si
    movw $0x400, %cx
    call compare_di
    jne bad_int13
    # ...and what AH=43h writes (pattern A sector 0 to scratch+0) READ SECTORS returns.
    movl (SCRATCH_LBA), %eax
    movw $PATTERN, %bx
    movw $1, %cx
    movw $0x43, %di
    call bios_rw
    jc bad_int13
    call clear_readbuf
    movl (SCRATCH_LBA), %eax
    movw $1, %cx
    movb $0x20, %bl
    call ata_cmd28
    movw $READBUF, %di
    call pio_in
    jc bad_int13
    movw $PATTERN, %si
    movw $0x100, %cx
    call compare
    jne bad_int13
    movw $int13_msg, %si
    call puts
    call pass

bad_timeout:
    movw $bad_timeout_msg, %si
    call fail
bad_identify:
    movw $bad_identify_msg, %si
    call fail
bad_size:
    movw $bad_size_msg, %si
    call fail
bad_checksum:
    movw $bad_checksum_msg, %si
    call fail
bad_rw28:
    movw $bad_rw28_msg, %si
    call fail
bad_rw48:
    movw $bad_rw48_msg, %si
    call fail
bad_multiple:
    movw $bad_multiple_msg, %si
    call fail
bad_flush:
    movw $bad_flush_msg, %si
    call fail
bad_range:
    movw $bad_range_msg, %si
    call fail
bad_int13:
    movw $bad_int13_msg, %si
    call fail

# bios_rw: INT 13h function DI (42h/43h) on the boot drive: CX sectors at LBA EAX, buffer
# 0000:BX; CF and AH as the BIOS returns them.
bios_rw:
    movb $0x10, (DAP)
    movb $0, (DAP+1)
    movw %cx, (DAP+2)
    movw %bx, (DAP+4)
    movw $0, (DAP+6)
    movl %eax, (DAP+8)
    movl $0, (DAP+0xC)
    movw $DAP, %si
    movw %di, %ax
    movb %al, %ah
    movb $0, %al                       # AH=43h: AL=0, write without verify
    movb (BOOT_DRIVE), %dl
    int $0x13
    ret

# ata_wait_idle: wait for BSY clear; AL = Status, CF=1 on timeout.
ata_wait_idle:
    pushw %cx
    pushw %dx
    movw $ATA_STATUS, %dx
    movw $0xFFFF, %cx
idle_loop:
    inb %dx, %al
    testb $0x80, %al
    jz idle_done
    loop idle_loop
    stc
    jmp idle_out
idle_done:
    clc
idle_out:
    popw %dx
    popw %cx
    ret

# ata_wait_drq: wait for BSY clear and DRQ set; CF=1 on ERR, a missing DRQ or a timeout.
ata_wait_drq:
    call ata_wait_idle
    jc drq_out
    testb $0x01, %al
    jnz drq_fail
    testb $0x08, %al
    jnz drq_out                        # CF is clear after testb
drq_fail:
    stc
drq_out:
    ret

# ata_cmd28: issue command BL for CX (1-256) sectors at 28-bit LBA EAX (device 0).
ata_cmd28:
    pushl %eax
    pushw %dx
    pushl %eax
    call ata_wait_idle
    movw $0x1F2, %dx
    movb %cl, %al
    outb %al, %dx
    popl %eax
    call ata_lba_out
    shrl $8, %eax
    andb $0x0F, %al
    orb $0xE0, %al                     # LBA mode, device 0, LBA 27:24
    jmp ata_device_command

# ata_lba_out: write LBA 7:0, 15:8 and 23:16 (EAX) to ports 1F3h-1F5h; DX = 1F2h on entry,
# 1F5h on return, and EAX is shifted right by 16 (LBA 31:16 in AX).
ata_lba_out:
    incw %dx
    outb %al, %dx                      # LBA 7:0
    shrl $8, %eax
    incw %dx
    outb %al, %dx                      # LBA 15:8
    shrl $8, %eax
    incw %dx
    outb %al, %dx                      # LBA 23:16
    ret

# ata_cmd48: issue 48-bit command BL for CX sectors at LBA EAX (bits 47:32 zero).  Each
# Command Block register is a two-byte FIFO: the high-order (HOB) byte goes first (ATA-6 6.20).
ata_cmd48:
    pushl %eax
    pushw %dx
    pushl %eax
    call ata_wait_idle
    movw $0x1F2, %dx
    movb %ch, %al
    outb %al, %dx                      # count 15:8
    popl %eax
    pushl %eax
    shrl $0x18, %eax
    incw %dx
    outb %al, %dx                      # LBA 31:24
    xorb %al, %al
    incw %dx
    outb %al, %dx                      # LBA 39:32
    incw %dx
    outb %al, %dx                      # LBA 47:40
    movw $0x1F2, %dx
    movb %cl, %al
    outb %al, %dx                      # count 7:0
    popl %eax
    call ata_lba_out
    movb $0x40, %al                    # LBA, device 0
ata_device_command:                    # (ata_cmd28 too) device register AL, then command BL
    incw %dx
    outb %al, %dx
    movb %bl, %al
    incw %dx
    outb %al, %dx
    popw %dx
    popl %eax
    ret

# pio_in: read CX sectors into DS:DI (ES = 0), each after DRQ; CF=1 on error.  Inside a
# MULTIPLE block DRQ simply stays set between sectors.
pio_in:
    pushaw
pio_in_loop:
    call ata_wait_drq
    jc pio_in_out
    pushw %cx
    movw $ATA_DATA, %dx
    movw $0x100, %cx
    rep insw
    popw %cx
    loop pio_in_loop
    call ata_wait_idle
    jc pio_in_out
    testb $0x09, %al                   # ERR or DRQ left over
    jz pio_in_out
    stc
pio_in_out:
    popaw
    ret

# pio_out: write CX sectors from DS:SI; CF=1 on error.
pio_out:
    pushaw
pio_out_loop:
    call ata_wait_drq
    jc pio_out_out
    pushw %cx
    movw $ATA_DATA, %dx
    movw $0x100, %cx
    rep outsw
    popw %cx
    loop pio_out_loop
    call ata_wait_idle
    jc pio_out_out
    testb $0x29, %al                   # ERR, DF or DRQ left over
    jz pio_out_out
    stc
pio_out_out:
    popaw
    ret

# compare: ZF=1 when CX words at DS:SI equal those at READBUF; compare_di: at ES:DI.
compare:
    movw $READBUF, %di
compare_di:
    pushaw
    repe cmpsw
    popaw
    ret

# clear_readbuf: zero the 4 sectors at READBUF, so a read that does nothing cannot pass.
clear_readbuf:
    pushaw
    movw $READBUF, %di
    movw $0x400, %cx
    xorw %ax, %ax
    rep stosw
    popaw
    ret

identify_msg:
    .asciz "IDENTIFY ok, "
model_msg:
    .asciz " sectors, model "
rw28_msg:
    .asciz "READ/WRITE SECTORS ok\r\n"
rw48_msg:
    .asciz "READ/WRITE SECTORS EXT ok\r\n"
multiple_msg:
    .asciz "READ/WRITE MULTIPLE ok\r\n"
flush_msg:
    .asciz "FLUSH CACHE ok\r\n"
range_msg:
    .asciz "out of range: status "
range_msg2:
    .asciz " error "
int13_msg:
    .asciz "INT 13h AH=42h/43h ok\r\n"
bad_timeout_msg:
    .asciz "drive stayed busy"
bad_identify_msg:
    .asciz "IDENTIFY DEVICE data or protocol wrong"
bad_size_msg:
    .asciz "IDENTIFY sector counts differ from the image size"
bad_checksum_msg:
    .asciz "IDENTIFY word 255 signature/checksum wrong"
bad_rw28_msg:
    .asciz "READ/WRITE SECTORS data mismatch or error"
bad_rw48_msg:
    .asciz "READ/WRITE SECTORS EXT data mismatch or error"
bad_multiple_msg:
    .asciz "SET MULTIPLE / READ/WRITE MULTIPLE failed"
bad_flush_msg:
    .asciz "FLUSH CACHE reported an error"
bad_range_msg:
    .asciz "read past the end did not give ERR with IDNF"
bad_int13_msg:
    .asciz "INT 13h AH=42h/43h data differs from ATA PIO"

.include "lib.inc"
