# syntax: att
# guest: bus-master IDE DMA on the primary master: READ/WRITE DMA and READ/WRITE DMA EXT
#
# Finds the PIIX3 IDE function's bus-master base in BAR4 of 00:01.1 (through 0CF8h/0CFCh) and
# turns on its I/O and bus-master enables, clears nIEN, then runs five transfers with PRD
# tables at 1000h, each checked for the bus-master status (Active/Error/Interrupt), the ATA
# status (DRDY DSC, no ERR/DRQ) and IRQ14 pending in the slave 8259's IRR:
#   1. READ DMA (C8h) of LBA 0 to 2000h, ATA command before the bus-master start; the data
#      must equal the boot sector at 7C00h.  BM status 04h (PRD table used up exactly).
#   2. WRITE DMA (CAh) of a pattern from 3000h to LBA 3Ch-3Dh, bus master started first.
#   3. READ DMA EXT (25h) of LBA 3Ch-3Dh through two PRD entries (4000h and 4200h); the data
#      must equal the pattern.
#   4. WRITE DMA EXT (35h) of the pattern's second sector (3200h) to LBA 3Eh.
#   5. READ DMA (C8h) of LBA 3Eh to 5000h with a 1 KiB PRD entry: a table larger than the
#      transfer leaves Active set, so BM status is 05h; the data must equal 3200h-33FFh.
# The pattern byte at address A is rol(A & FFh, 3) xor (A >> 8); tests/guests check the disk.
# Serial output:  dma: bus master at C000
#                 dma: cmd C8 bm 04 ata 50 irr 40    (one line per transfer; irr is the
#                 ...                                 slave IRR, bit 6 = IRQ14)
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set BMBASE, VARS              # word: bus-master I/O base
.set BM_ST, VARS+2             # byte: bus-master status after the transfer
.set ATA_ST, VARS+3            # byte: ATA status after the transfer
.set IRR, VARS+4               # byte: slave 8259 IRR after the transfer
.set PRD, 0x1000
.set BUF_READ0, 0x2000
.set BUF_PATTERN, 0x3000
.set BUF_EXT, 0x4000
.set BUF_BIG, 0x5000
.set ATA, 0x1F0
.set ATA_CTRL, 0x3F6

main:
    # BAR4 of 00:01.1 (devfn 09h, register 20h) and the command register (04h).
    movl $0x80000920, %eax
    movw $0x0CF8, %dx
    outl %eax, %dx
    movw $0x0CFC, %dx
    inl %dx, %eax
    testb $1, %al              # an I/O BAR
    jz bad_bar
    andw $0xFFFC, %ax
    jz bad_bar
    movw %ax, (BMBASE)
    movl $0x80000904, %eax
    movw $0x0CF8, %dx
    outl %eax, %dx
    movw $0x0CFC, %dx
    inw %dx, %ax
    orw $0x0005, %ax           # I/O space and bus master enable
    outw %ax, %dx
    movw $bm_msg, %si
    call puts
    movw (BMBASE), %ax
    call hex16
    call newline

    movb $0x00, %al
    movw $ATA_CTRL, %dx
    outb %al, %dx              # nIEN clear: the drive drives INTRQ (the BIOS polls with it set)

    # The write pattern at 3000h-33FFh.
    movw $BUF_PATTERN, %di
    movw $0x400, %cx
fill:
    movw %di, %ax
    rolb $3, %al
    xorb %ah, %al
    stosb
    loop fill

    # 1. READ DMA, LBA 0, command first.
    movw $BUF_READ0, %ax
    movw $0x200, %cx
    call prd_one
    movb $0xC8, %al
    xorl %ecx, %ecx
    movw $0x0801, %bx          # BH = 08h (bus master writes memory), BL = 1 sector
    xorb %dl, %dl
    call dma_op
    movb $0x04, %ah
    call check_status
    movw $BUF_READ0, %di
    movw $0x7C00, %si
    movw $0x200, %cx
    call compare

    # 2. WRITE DMA, LBA 3Ch, 2 sectors, bus master started first.
    movw $BUF_PATTERN, %ax
    movw $0x400, %cx
    call prd_one
    movb $0xCA, %al
    movl $0x3C, %ecx
    movw $0x0002, %bx
    movb $1, %dl
    call dma_op
    movb $0x04, %ah
    call check_status

    # 3. READ DMA EXT, LBA 3Ch, 2 sectors, two PRD entries.
    movl $BUF_EXT, (PRD)
    movl $0x200, (PRD+4)
    movl $BUF_EXT+0x200, (PRD+8)
    movl $0x80000200, (PRD+0x0C)
    movb $0x25, %al
    movl $0x3C, %ecx
    movw $0x0802, %bx
    xorb %dl, %dl
    call dma_op
    movb $0x04, %ah
    call check_status
    movw $BUF_EXT, %di
    movw $BUF_PATTERN, %si
    movw $0x400, %cx
    call compare

    # 4. WRITE DMA EXT, LBA 3Eh, 1 sector from 3200h, bus master started first.
    movw $BUF_PATTERN+0x200, %ax
    movw $0x200, %cx
    call prd_one
    movb $0x35, %al
    movl $0x3E, %ecx
    movw $0x0001, %bx
    movb $1, %dl
    call dma_op
    movb $0x04, %ah
    call check_status

    # 5. READ DMA, LBA 3Eh, with a PRD entry larger than the transfer.
    movw $BUF_BIG, %ax
    movw $0x400, %cx
    call prd_one
    movb $0xC8, %al
    movl $0x3E, %ecx
    movw $0x0801, %bx
    xorb %dl, %dl
    call dma_op
    movb $0x05, %ah            # Active still set: the table was not used up
    call check_status
    movw $BUF_BIG, %di
    movw $BUF_PATTERN+0x200, %si
    movw $0x200, %cx
    call compare

    movb $0x02, %al
    movw $ATA_CTRL, %dx
    outb %al, %dx              # nIEN back on, as the BIOS left it
    jmp pass

bad_bar:
    movw $bar_fail, %si
    jmp fail

# prd_one: a one-entry PRD table at PRD for AX (address) and CX (bytes), EOT set.
prd_one:
    movw %ax, (PRD)
    movw $0, (PRD+2)
    movw %cx, (PRD+4)
    movw $0x8000, (PRD+6)
    ret

# dma_op: ATA command AL for LBA ECX, BL sectors; BH the bus-master direction (08h = to
# memory); DL = 0 to issue the command before starting the bus master, 1 for the other order.
# Waits for the bus-master interrupt bit, records BM_ST, IRR and ATA_ST, then stops the engine
# and clears its interrupt bit.
dma_op:
    pushal
    cli
    pushw %dx
    pushw %ax
    movw (BMBASE), %dx
    movb %bh, %al
    outb %al, %dx              # stopped, direction set
    addw $2, %dx
    movb $0x06, %al
    outb %al, %dx              # clear Error and Interrupt
    addw $2, %dx
    movl $PRD, %eax
    outl %eax, %dx             # PRD table pointer
    popw %ax
    popw %dx
    testb %dl, %dl
    jz dma_cmd_first
    call bm_start
    call ata_issue
    jmp dma_wait
dma_cmd_first:
    call ata_issue
    call bm_start
dma_wait:
    movw (BMBASE), %dx
    addw $2, %dx
    movw $0x1000, %cx
dma_poll:
    inb %dx, %al
    testb $0x06, %al           # Interrupt or Error
    jnz dma_done
    loop dma_poll
dma_done:
    movb %al, (BM_ST)
    movb $0x0A, %al            # OCW3: read IRR
    outb %al, $0xA0
    inb $0xA0, %al
    movb %al, (IRR)
    movw $ATA+7, %dx
    inb %dx, %al               # Status: also clears INTRQ
    movb %al, (ATA_ST)
    movw (BMBASE), %dx
    movb %bh, %al
    outb %al, %dx              # stop the engine
    addw $2, %dx
    movb $0x04, %al
    outb %al, %dx              # clear Interrupt
    sti
    # dma: cmd CC bm SS ata AA irr II
    movw $op_msg, %si
    call puts
    popal
    pushal
    call hex8
    movw $op_bm, %si
    call puts
    movb (BM_ST), %al
    call hex8
    movw $op_ata, %si
    call puts
    movb (ATA_ST), %al
    call hex8
    movw $op_irr, %si
    call puts
    movb (IRR), %al
    call hex8
    call newline
    popal
    ret

# bm_start: set the start bit with direction BH.
bm_start:
    pushw %ax
    pushw %dx
    movw (BMBASE), %dx
    movb %bh, %al
    orb $1, %al
    outb %al, %dx
    popw %dx
    popw %ax
    ret

# ata_issue: command AL, LBA ECX, count BL, on the primary master; 25h/35h use LBA48.
ata_issue:
    pushal
    movb %al, %ah
    cmpb $0x25, %ah
    je ata_ext
    cmpb $0x35, %ah
    je ata_ext
    movw $ATA+2, %dx
    movb %bl, %al
    outb %al, %dx
    incw %dx
    movb %cl, %al
    outb %al, %dx              # LBA 7:0
    incw %dx
    movb %ch, %al
    outb %al, %dx              # LBA 15:8
    incw %dx
    shrl $0x10, %ecx
    movb %cl, %al
    outb %al, %dx              # LBA 23:16
    incw %dx
    movb %ch, %al
    andb $0x0F, %al
    orb $0xE0, %al             # LBA mode, device 0, LBA 27:24
    outb %al, %dx
    jmp ata_cmd
ata_ext:
    # 48-bit: the previous contents (count 15:8, LBA 47:24) first, then the current ones.
    movw $ATA+2, %dx
    movb $0, %al
    outb %al, %dx
    incw %dx
    pushl %ecx
    shrl $0x18, %ecx
    movb %cl, %al
    outb %al, %dx              # LBA 31:24
    popl %ecx
    incw %dx
    movb $0, %al
    outb %al, %dx              # LBA 39:32
    incw %dx
    outb %al, %dx              # LBA 47:40
    movw $ATA+2, %dx
    movb %bl, %al
    outb %al, %dx
    incw %dx
    movb %cl, %al
    outb %al, %dx
    incw %dx
    movb %ch, %al
    outb %al, %dx
    incw %dx
    shrl $0x10, %ecx
    movb %cl, %al
    outb %al, %dx
    incw %dx
    movb $0x40, %al
    outb %al, %dx
ata_cmd:
    movw $ATA+7, %dx
    movb %ah, %al
    outb %al, %dx
    popal
    ret

# check_status: BM status (bits 2:0) must be AH, ATA status 50h, IRQ14 pending in the IRR.
check_status:
    movb (BM_ST), %al
    andb $0x07, %al
    cmpb %ah, %al
    jne bad_bm
    cmpb $0x50, (ATA_ST)
    jne bad_ata
    testb $0x40, (IRR)
    jz bad_irq
    ret
bad_bm:
    movw $bm_fail, %si
    jmp fail
bad_ata:
    movw $ata_fail, %si
    jmp fail
bad_irq:
    movw $irq_fail, %si
    jmp fail

# compare: CX bytes at DI and SI must match.
compare:
    pushaw
    repe cmpsb
    jne compare_bad
    popaw
    ret
compare_bad:
    popaw
    movw $data_fail, %si
    jmp fail

bm_msg:
    .asciz "dma: bus master at "
op_msg:
    .asciz "dma: cmd "
op_bm:
    .asciz " bm "
op_ata:
    .asciz " ata "
op_irr:
    .asciz " irr "
bar_fail:
    .asciz "no bus-master BAR4 on 00:01.1"
bm_fail:
    .asciz "bus-master status"
ata_fail:
    .asciz "ATA status after DMA"
irq_fail:
    .asciz "IRQ14 not pending after DMA"
data_fail:
    .asciz "DMA data mismatch"

.include "lib.inc"
