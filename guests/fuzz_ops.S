# syntax: att
# guest: the guest-level fuzz target's interpreter: runs an operation list against the devices
#
# Used by `hyperv-emu fuzz guest` (hyperv_emu/fuzz/guest_target.py): it boots, opens A20,
# enters flat 32-bit protected mode with interrupts off, checks its interpreter on a built-in
# input (serial output: "fuzz_ops: interpreter self-check ok", "PASS") and reports "ready"
# with an OUT to the exit port (run alone, the run ends there: exit status 1); the host snapshots the machine there.  For each input the host
# restores the snapshot, writes the input to INPUT (u32 length, then the bytes, followed by
# zero padding), sets INPUT_GO and resumes: the guest interprets the bytes as operations and
# reports "done" with a second OUT to the exit port.  The host also writes, once before the snapshot, the
# claimed ports (PORT_TABLE: u32 count, u16 ports) and the device MMIO ranges of the board's
# memory map (MMIO_TABLE: u32 count, u32 base and u32 size each).
#
# An operation is an opcode byte: the low nibble picks the kind, bits 4-5 the width (0: byte,
# 1: word, 2/3: dword) where a kind has one.  Fields follow, little-endian:
#   0/F out8, 1 out16, 2 out32  u16 port index, value (1, 2 or 4 bytes)
#   3 in8, 4 in16, 5 in32       u16 port index
#   6 MMIO write, 7 MMIO read   u8 range index, u32 offset (modulo the range, width-aligned),
#                               value (width bytes, write only)
#   8 config write, 9 read      u16 bus/device/function, u8 register: mechanism #1 (0CF8h /
#                               0CFCh+reg&3, PCI 2.1 3.7.4.1), value (write only)
#   A ATA command block         u8 flags (bit 0 secondary channel, bit 1 data phase, bit 2
#                               data out, bits 4-5 sectors-1), features, sector count, LBA
#                               low/mid/high, device, command: ATA-6 taskfile 1x1h-1x7h, up to
#                               4 status polls, then REP INSW/OUTSW of 256 words per sector
#                               while DRQ is set
#   B memory write              u16 offset in BUFFER, u8 length-1 (bits 0-4), the bytes
#   C spin                      u8 n: n*40h iterations of PAUSE (virtual time passes)
#   D REP INS/OUTS              u16 port index, u8 count-1 (bits 0-6; bit 7: OUTS) elements
#                               of the width to/from BUFFER
#   E IDE bus-master DMA        u8 flags (bit 0 secondary, bit 3 read from the device), u16
#                               PRD table offset, u16 region offset, u16 byte count: one PRD
#                               (SFF-8038i 1.2) with EOT at BUFFER+table, the PRD pointer and
#                               the start bit written through BAR4 read from 00:01.1
# An index is taken modulo its table; reads of fields past the input's end read zero padding.

.include "boot.inc"

.set PORT_TABLE, 0x10000
.set PORT_LIST, 0x10004
.set MMIO_TABLE, 0x12000
.set MMIO_LIST, 0x12004
.set INPUT_GO, 0x13000
.set INPUT, 0x13004
.set INPUT_DATA, 0x13008
.set BUFFER, 0x20000
.set FUZZ_STACK, 0x1F000
.set SAVED_SCR, VARS       # off the code's pages: a store next to hot code is slow (SMC)

main:
    inb $0x92, %al             # fast A20 on (the HPET page has address bit 20 set)
    orb $0x02, %al
    andb $0xFE, %al
    outb %al, $0x92
    cli
    jmp enter_pm32

.code32
pm32:
    movl $FUZZ_STACK, %esp
    call self_check            # run alone (`hyperv-emu run fuzz_ops`) it ends here: PASS
    xorl %eax, %eax
    outb %al, $EXIT_PORT       # ready: the host snapshots in the loop below
wait_input:                    # (the OUT ends the run only at the end of its slice)
    cmpl $0x0, INPUT_GO
    je wait_input
    movl $INPUT_DATA, %esi
    movl %esi, %ebp
    addl INPUT, %ebp           # EBP: end of the input
    call run_ops
done:
    movb $0x1, %al
    outb %al, $EXIT_PORT       # done
    hlt
    jmp done

# self_check: run a built-in input through the interpreter (OUT to the COM1 scratch register,
# a memory write) with a one-port table, check both took effect, put the scratch register,
# the table and the buffer back, print "PASS".
self_check:
    movw $COM1+7, %dx
    inb %dx, %al
    movb %al, (SAVED_SCR)
    movl $0x1, PORT_TABLE
    movw $COM1+7, PORT_LIST
    movl $selftest_ops, %esi
    movl $selftest_end, %ebp
    call run_ops
    movw $COM1+7, %dx
    inb %dx, %al
    cmpb $0xA5, %al
    jne self_check_bad
    cmpl $0x5A5A5546, BUFFER   # "FUZZ"
    jne self_check_bad
    movb (SAVED_SCR), %al
    outb %al, %dx
    movl $0x0, PORT_TABLE
    movw $0x0, PORT_LIST
    movl $0x0, BUFFER
    movl $selftest_msg, %esi
    call puts32
    movl $lib32_pass_msg, %esi
    call puts32
    ret
self_check_bad:
    movl $selftest_bad, %esi
    call fail32

selftest_ops:
    .byte 0x00, 0x00, 0x00, 0xA5                  # out8 port #0 (3FFh) <- A5h
    .byte 0x0B, 0x00, 0x00, 0x03                  # memory BUFFER+0, 4 bytes:
    .ascii "FUZZ"
selftest_end:
selftest_msg:
    .asciz "fuzz_ops: interpreter self-check ok\r\n"
selftest_bad:
    .asciz "the self-check operations did not reach COM1 or the buffer"

# run_ops: perform the operations from ESI up to EBP.
run_ops:
next:
    cmpl %ebp, %esi
    jae ops_end
    movzbl (%esi), %ebx
    incl %esi
    movl %ebx, %ecx
    shrl $0x4, %ecx
    andl $0x3, %ecx            # ECX: width selector
    andl $0xF, %ebx
    jmp *optable(,%ebx,4)
ops_end:
    ret

# port_index: the port chosen by the u16 index at ESI, in EDX (EAX clobbered).
port_index:
    movzwl (%esi), %eax
    addl $0x2, %esi
    xorl %edx, %edx
    divl PORT_TABLE
    movzwl PORT_LIST(,%edx,2), %edx
    ret

op_out8:
    call port_index
    movb (%esi), %al
    incl %esi
    outb %al, %dx
    jmp next
op_out16:
    call port_index
    movw (%esi), %ax
    addl $0x2, %esi
    outw %ax, %dx
    jmp next
op_out32:
    call port_index
    movl (%esi), %eax
    addl $0x4, %esi
    outl %eax, %dx
    jmp next
op_in8:
    call port_index
    inb %dx, %al
    jmp next
op_in16:
    call port_index
    inw %dx, %ax
    jmp next
op_in32:
    call port_index
    inl %dx, %eax
    jmp next

# mmio_address: EBX = the address chosen by u8 range index and u32 offset at ESI, aligned to
# the width in ECX (EAX, EDX clobbered).
mmio_address:
    movzbl (%esi), %eax
    incl %esi
    xorl %edx, %edx
    divl MMIO_TABLE
    leal MMIO_LIST(,%edx,8), %ebx
    movl (%esi), %eax
    addl $0x4, %esi
    xorl %edx, %edx
    divl 4(%ebx)
    addl (%ebx), %edx
    movl %edx, %ebx
    cmpl $0x1, %ecx
    jb mmio_aligned
    je mmio_word
    andl $0xFFFFFFFC, %ebx
    ret
mmio_word:
    andl $0xFFFFFFFE, %ebx
mmio_aligned:
    ret

op_mmio_write:
    call mmio_address
    cmpl $0x1, %ecx
    jb mmio_wb
    je mmio_ww
    movl (%esi), %eax
    addl $0x4, %esi
    movl %eax, (%ebx)
    jmp next
mmio_ww:
    movw (%esi), %ax
    addl $0x2, %esi
    movw %ax, (%ebx)
    jmp next
mmio_wb:
    movb (%esi), %al
    incl %esi
    movb %al, (%ebx)
    jmp next

op_mmio_read:
    call mmio_address
    cmpl $0x1, %ecx
    jb mmio_rb
    je mmio_rw
    movl (%ebx), %eax
    jmp next
mmio_rw:
    movw (%ebx), %ax
    jmp next
mmio_rb:
    movb (%ebx), %al
    jmp next

# config_address: write CONFIG_ADDRESS for the u16 bus/device/function and u8 register at
# ESI; EDX = the CONFIG_DATA port of the register's byte lane (EAX clobbered).
config_address:
    movzwl (%esi), %eax
    shll $0x8, %eax
    movzbl 2(%esi), %edx
    andl $0xFC, %edx
    orl %edx, %eax
    orl $0x80000000, %eax
    movw $0xCF8, %dx
    outl %eax, %dx
    movzbl 2(%esi), %edx
    andl $0x3, %edx
    addl $0xCFC, %edx
    addl $0x3, %esi
    ret

op_config_write:
    call config_address
    cmpl $0x1, %ecx
    jb cfg_wb
    je cfg_ww
    movl (%esi), %eax
    addl $0x4, %esi
    outl %eax, %dx
    jmp next
cfg_ww:
    movw (%esi), %ax
    addl $0x2, %esi
    outw %ax, %dx
    jmp next
cfg_wb:
    movb (%esi), %al
    incl %esi
    outb %al, %dx
    jmp next

op_config_read:
    call config_address
    cmpl $0x1, %ecx
    jb cfg_rb
    je cfg_rw
    inl %dx, %eax
    jmp next
cfg_rw:
    inw %dx, %ax
    jmp next
cfg_rb:
    inb %dx, %al
    jmp next

op_ata:
    movzbl (%esi), %ebx        # flags
    movl $0x1F0, %edx
    testb $0x1, %bl
    jz ata_channel
    movl $0x170, %edx
ata_channel:
    movl $0x1, %ecx
ata_taskfile:                  # features, count, LBA low/mid/high, device: 1x1h-1x6h
    incl %edx
    movb (%esi,%ecx,1), %al
    outb %al, %dx
    incl %ecx
    cmpl $0x7, %ecx
    jb ata_taskfile
    incl %edx                  # 1x7h: command
    movb 7(%esi), %al
    outb %al, %dx
    addl $0x8, %esi
    movl $0x4, %ecx
ata_poll:                      # the command may still be busy (BSY, bit 7)
    inb %dx, %al
    testb $0x80, %al
    jz ata_ready
    decl %ecx
    jnz ata_poll
    jmp next
ata_ready:
    testb $0x2, %bl
    jz next
    movl %ebx, %ecx
    shrl $0x4, %ecx
    andl $0x3, %ecx
    incl %ecx                  # sectors
    subl $0x7, %edx            # data register 1x0h
    pushl %esi
ata_sector:
    addl $0x7, %edx
    inb %dx, %al
    subl $0x7, %edx
    testb $0x8, %al            # DRQ
    jz ata_end
    pushl %ecx
    movl $0x100, %ecx
    testb $0x4, %bl
    jnz ata_out
    movl $BUFFER, %edi
    rep insw
    jmp ata_next
ata_out:
    movl $BUFFER, %esi
    rep outsw
ata_next:
    popl %ecx
    decl %ecx
    jnz ata_sector
ata_end:
    popl %esi
    jmp next

op_memory:
    movzwl (%esi), %edi
    addl $BUFFER, %edi
    movzbl 2(%esi), %ecx
    andl $0x1F, %ecx
    incl %ecx
    addl $0x3, %esi
    rep movsb                  # advances ESI past the bytes
    jmp next

op_spin:
    movzbl (%esi), %ecx
    incl %esi
    shll $0x6, %ecx
    jz next
spin:
    pause
    decl %ecx
    jnz spin
    jmp next

op_rep_io:
    pushl %ecx
    call port_index
    popl %ecx
    movzbl (%esi), %ebx
    incl %esi
    movl %ebx, %eax
    andl $0x7F, %eax
    incl %eax                  # elements
    xchgl %eax, %ecx           # ECX: count, EAX: width selector
    testb $0x80, %bl
    jnz rep_outs
    movl $BUFFER, %edi
    cmpl $0x1, %eax
    jb rep_insb
    je rep_insw
    rep insl
    jmp next
rep_insw:
    rep insw
    jmp next
rep_insb:
    rep insb
    jmp next
rep_outs:
    pushl %esi
    movl $BUFFER, %esi
    cmpl $0x1, %eax
    jb rep_outsb
    je rep_outsw
    rep outsl
    jmp rep_done
rep_outsw:
    rep outsw
    jmp rep_done
rep_outsb:
    rep outsb
rep_done:
    popl %esi
    jmp next

op_dma:
    movzbl (%esi), %ebx        # flags
    movzwl 1(%esi), %edi       # PRD table offset, 8-byte aligned
    andl $0xFFF8, %edi
    addl $BUFFER, %edi
    movzwl 3(%esi), %eax       # region offset, word aligned
    andl $0xFFFE, %eax
    addl $BUFFER, %eax
    movl %eax, (%edi)
    movzwl 5(%esi), %eax       # byte count (0 means 64 KiB), end of table
    andl $0xFFFE, %eax
    orl $0x80000000, %eax
    movl %eax, 4(%edi)
    addl $0x7, %esi
    movl $0x80000920, %eax     # 00:01.1 BAR4 (the bus-master block)
    movw $0xCF8, %dx
    outl %eax, %dx
    movw $0xCFC, %dx
    inl %dx, %eax
    andl $0xFFFC, %eax
    movl %eax, %edx
    testb $0x1, %bl
    jz dma_channel
    addl $0x8, %edx
dma_channel:
    addl $0x4, %edx            # descriptor table pointer
    movl %edi, %eax
    outl %eax, %dx
    subl $0x4, %edx            # command: start, direction from flags bit 3
    movb %bl, %al
    andb $0x8, %al
    orb $0x1, %al
    outb %al, %dx
    jmp next

    .p2align 2, 0
optable:
    .long op_out8, op_out16, op_out32, op_in8, op_in16, op_in32, op_mmio_write
    .long op_mmio_read, op_config_write, op_config_read, op_ata, op_memory, op_spin
    .long op_rep_io, op_dma, op_out8

# modes.inc's enter_lm64 jumps here; this guest never leaves 32-bit protected mode.
.code64
lm64:
    hlt

.include "lib32.inc"
.include "modes.inc"
