# syntax: att
# BIOS service probe for tests/firmware/test_bios_services.py: a boot sector that loads the
# rest of itself with INT 13h AH=02h, calls BIOS services and stores what they return at
# 0000:0600 onwards (layout in the test), then writes 0 to the exit port.
.code16
.set R, 0x0600
boot:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7c00, %sp
    sti
    movb %dl, (R+0x00)
    movw $0x0203, %ax            # read 3 sectors: C0 H0 S2.. to 0000:7E00
    movw $0x7e00, %bx
    movw $0x0002, %cx
    movb $0x00, %dh
    int $0x13
    pushf
    popw (R+0x02)
    movw %ax, (R+0x04)
    jmp main
    .p2align 9, 0
main:
    # INT 13h AH=41h
    movb $0x41, %ah
    movw $0x55aa, %bx
    movb $0x80, %dl
    int $0x13
    pushf
    popw (R+0x06)
    movw %ax, (R+0x08)
    movw %bx, (R+0x0a)
    movw %cx, (R+0x0c)
    # AH=08h
    movb $0x08, %ah
    movb $0x80, %dl
    int $0x13
    pushf
    popw (R+0x0e)
    movw %ax, (R+0x10)
    movw %cx, (R+0x12)
    movw %dx, (R+0x14)
    # AH=15h
    movb $0x15, %ah
    movb $0x80, %dl
    int $0x13
    pushf
    popw (R+0x16)
    movw %ax, (R+0x18)
    movw %cx, (R+0x1a)
    movw %dx, (R+0x1c)
    # AH=48h into 0000:0700 (size 1Eh)
    movw $0x001e, (0x0700)
    movb $0x48, %ah
    movb $0x80, %dl
    movw $0x0700, %si
    int $0x13
    pushf
    popw (R+0x1e)
    # AH=42h: LBA 8, 2 sectors, to 1000:0000
    movw $dap, %si
    movb $0x42, %ah
    movb $0x80, %dl
    int $0x13
    pushf
    popw (R+0x20)
    movw %ax, (R+0x22)
    # AH=43h: write 1 sector from 1000:0000 to LBA 0x20, read it back to 2000:0000 with CHS
    # (LBA 0x20 = C0 H0 S33)
    movw $dapw, %si
    movw $0x4300, %ax
    movb $0x80, %dl
    int $0x13
    pushf
    popw (R+0x24)
    movw %ax, (R+0x26)
    movw $0x2000, %ax
    movw %ax, %es
    xorw %bx, %bx
    movw $0x0201, %ax
    movw $0x0021, %cx
    movw $0x0080, %dx
    int $0x13
    pushf
    popw (R+0x28)
    movw %ax, (R+0x2a)
    xorw %ax, %ax
    movw %ax, %es
    # beyond the disk: LBA 0x800 of a 0x800-sector disk
    movw $dapbad, %si
    movb $0x42, %ah
    movb $0x80, %dl
    int $0x13
    pushf
    popw (R+0x2c)
    movw %ax, (R+0x2e)
    movb $0x01, %ah
    movb $0x80, %dl
    int $0x13
    pushf
    popw (R+0x30)
    movw %ax, (R+0x32)
    # unknown drive
    movw $0x0201, %ax
    movb $0x81, %dl
    int $0x13
    pushf
    popw (R+0x34)
    movw %ax, (R+0x36)
    # INT 15h E820 into 0000:0800, 20 bytes each
    xorl %ebx, %ebx
    movw $0x0800, %di
    movw $0x00, (R+0x38)
e820_loop:
    movl $0x0000e820, %eax
    movl $0x534d4150, %edx
    movl $0x00000014, %ecx
    int $0x15
    jc e820_done
    cmpl $0x534d4150, %eax
    jne e820_done
    incw (R+0x38)
    addw $0x14, %di
    testl %ebx, %ebx
    jnz e820_loop
e820_done:
    movw $0xe801, %ax
    int $0x15
    movw %ax, (R+0x3a)
    movw %bx, (R+0x3c)
    movw %cx, (R+0x3e)
    movw %dx, (R+0x40)
    movb $0x88, %ah
    int $0x15
    movw %ax, (R+0x42)
    int $0x12
    movw %ax, (R+0x44)
    int $0x11
    movw %ax, (R+0x46)
    movb $0x02, %ah
    int $0x1a
    movw %cx, (R+0x48)
    movw %dx, (R+0x4a)
    movb $0x04, %ah
    int $0x1a
    movw %cx, (R+0x4c)
    movw %dx, (R+0x4e)
    # INT 10h: cursor to row 5 col 0Ah, 'X' attr 1Fh x3, read back
    movb $0x02, %ah
    xorb %bh, %bh
    movw $0x050a, %dx
    int $0x10
    movw $0x0958, %ax
    movw $0x001f, %bx
    movw $0x0003, %cx
    int $0x10
    movb $0x03, %ah
    int $0x10
    movw %dx, (R+0x50)
    movw %cx, (R+0x52)
    movb $0x08, %ah
    int $0x10
    movw %ax, (R+0x54)
    movb $0x0f, %ah
    int $0x10
    movw %ax, (R+0x56)
    # AH=13h "abc" at row 0Ah col 0, attr 2Eh, cursor moved
    movw $0x1301, %ax
    movw $0x002e, %bx
    movw $0x0003, %cx
    movw $0x0a00, %dx
    movw $str, %bp
    int $0x10
    movb $0x03, %ah
    int $0x10
    movw %dx, (R+0x58)
    # A20
    movw $0x2402, %ax
    int $0x15
    movw %ax, (R+0x5a)
    movw $0x2403, %ax
    int $0x15
    movw %bx, (R+0x5c)
    # wait 2000 us
    movb $0x86, %ah
    xorw %cx, %cx
    movw $0x07d0, %dx
    int $0x15
    pushf
    popw (R+0x5e)
    # keyboard: no key
    movb $0x01, %ah
    int $0x16
    pushf
    popw (R+0x60)
    # ticks
    xorb %ah, %ah
    int $0x1a
    movw %cx, (R+0x62)
    movw %dx, (R+0x64)
    # unknown INT 15h
    movb $0x55, %ah
    int $0x15
    pushf
    popw (R+0x66)
    movw %ax, (R+0x68)
    movb $0xaa, (R+0x6a)
    xorb %al, %al
    outb %al, $0xf4
    cli
    hlt

dap:
    .byte 0x10, 0x00
    .word 0x0002
    .word 0x0000, 0x1000
    .long 0x00000008, 0x00000000
dapw:
    .byte 0x10, 0x00
    .word 0x0001
    .word 0x0000, 0x1000
    .long 0x00000020, 0x00000000
dapbad:
    .byte 0x10, 0x00
    .word 0x0001
    .word 0x0000, 0x1000
    .long 0x00000800, 0x00000000
str:
    .ascii "abc"
