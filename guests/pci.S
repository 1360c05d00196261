# syntax: att
# guest: PCI bus 0 enumeration through configuration mechanism #1 (0CF8h/0CFCh), BAR4 sizing
#
# Walks bus 0, devices 0-31, functions 0-7 (functions 1-7 only where function 0's header type
# has bit 7, multi-function, set) with 32-bit CONFIG_ADDRESS writes to 0CF8h and CONFIG_DATA
# reads from 0CFCh, and prints each function's vendor:device and class/subclass/prog-if.  It
# checks that exactly the three expected functions answer: 00:00.0 8086:1237 class 0600 (i440FX
# host bridge), 00:01.0 8086:7000 class 0601 (PIIX3 ISA bridge), 00:01.1 8086:7010 class 010180
# (PIIX3 IDE); that an absent function and bus 1 read FFFFFFFFh; that a byte write to 0CF8h does
# not change CONFIG_ADDRESS; and sizes the IDE function's BAR4 (all ones -> FFF1h: I/O, 16 bytes)
# with I/O decode off, then restores it and checks the bus-master status register answers.
# Serial output:  pci: 00:00.0 8086:1237 class 060000
#                 pci: 00:01.0 8086:7000 class 060100
#                 pci: 00:01.1 8086:7010 class 010180
#                 pci: 3 functions
#                 BAR4 0000C001 mask 0000FFF1 size 0010
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set FOUND, VARS               # word: functions found
.set MULTI, VARS+2             # byte: function 0 of the current device is multi-function
.set BAR_ORIG, VARS+4          # dword
.set BAR_MASK, VARS+8          # dword
.set IDE_DEVFN, 0x09           # device 1, function 1
.set PCI_ADDR, 0x0CF8
.set PCI_DATA, 0x0CFC

main:
    movw $0, (FOUND)
    xorw %bx, %bx              # BX = device << 3 | function
scan:
    testw $7, %bx
    jnz scan_fn
    movb $0, (MULTI)
scan_fn:
    xorw %di, %di
    call pci_read32            # vendor (15:0) and device (31:16)
    cmpw $0xFFFF, %ax
    je scan_next
    incw (FOUND)
    movl %eax, %ecx
    testw $7, %bx
    jnz scan_print
    movw $0x0C, %di            # header type is byte 0Eh
    call pci_read32
    shrl $0x10, %eax
    testb $0x80, %al
    jz scan_print
    movb $1, (MULTI)
scan_print:
    call print_function
    call check_function
scan_next:
    testw $7, %bx
    jnz scan_step
    cmpb $0, (MULTI)
    jne scan_step
    addw $8, %bx               # single-function device: skip functions 1-7
    jmp scan_more
scan_step:
    incw %bx
scan_more:
    cmpw $0x100, %bx
    jb scan

    movw $count_msg, %si
    call puts
    movw (FOUND), %ax
    call hex4
    movw $count_msg2, %si
    call puts
    cmpw $3, (FOUND)
    jne bad_count

    # Absent function 00:02.0 and bus 1 device 0: master abort, all ones.
    movw $0x10, %bx
    xorw %di, %di
    call pci_read32
    cmpl $0xFFFFFFFF, %eax
    jne bad_absent
    movl $0x80010000, %eax
    movw $PCI_ADDR, %dx
    outl %eax, %dx
    movw $PCI_DATA, %dx
    inl %dx, %eax
    cmpl $0xFFFFFFFF, %eax
    jne bad_absent

    # A byte write to 0CF8h is not a CONFIG_ADDRESS write (PCI 2.1, 3.7.4.1).
    movl $0x80000800, %eax     # 00:01.0 register 0
    movw $PCI_ADDR, %dx
    outl %eax, %dx
    movb $0, %al
    outb %al, %dx
    inl %dx, %eax
    cmpl $0x80000800, %eax
    jne bad_cf8

    # BAR4 sizing on 00:01.1 with I/O decode off, as a PCI BIOS does it.
    movw $IDE_DEVFN, %bx
    movw $0x20, %di
    call pci_read32
    movl %eax, (BAR_ORIG)
    movw $4, %di
    call pci_read32
    movl %eax, %esi            # command/status
    movl %eax, %ecx
    andl $0xFFFFFFFE, %ecx     # I/O space off (status bits written 0: nothing cleared)
    andl $0x0000FFFF, %ecx
    call pci_write32
    movw $0x20, %di
    movl $0xFFFFFFFF, %ecx
    call pci_write32
    call pci_read32
    movl %eax, (BAR_MASK)
    movl (BAR_ORIG), %ecx
    call pci_write32
    movw $4, %di
    movl %esi, %ecx
    andl $0x0000FFFF, %ecx
    call pci_write32

    movw $bar_msg, %si
    call puts
    movl (BAR_ORIG), %eax
    call hex32
    movw $mask_msg, %si
    call puts
    movl (BAR_MASK), %eax
    call hex32
    movw $size_msg, %si
    call puts
    movl (BAR_MASK), %eax
    andl $0xFFFFFFFC, %eax     # drop the I/O indicator
    notl %eax
    incl %eax
    andl $0x0000FFFF, %eax     # a 16-bit I/O decoder: bits 31:16 read as zero
    movl %eax, %ecx
    call hex16
    call newline
    cmpl $0x0000FFF1, (BAR_MASK)
    jne bad_bar
    cmpw $0x10, %cx
    jne bad_bar
    movl (BAR_ORIG), %eax
    testb $1, %al
    jz bad_bar
    # The bus-master status register: started nothing, so Active and Error are clear.
    movw $0x20, %di
    call pci_read32
    cmpl (BAR_ORIG), %eax
    jne bad_bar
    andw $0xFFFC, %ax
    movw %ax, %dx
    addw $2, %dx
    inb %dx, %al
    testb $0x03, %al
    jnz bad_bmstatus
    jmp pass

bad_count:
    movw $count_fail, %si
    jmp fail
bad_absent:
    movw $absent_fail, %si
    jmp fail
bad_cf8:
    movw $cf8_fail, %si
    jmp fail
bad_bar:
    movw $bar_fail, %si
    jmp fail
bad_bmstatus:
    movw $bm_fail, %si
    jmp fail
bad_id:
    movw $id_fail, %si
    jmp fail

# pci_read32: EAX = configuration dword at register DI of bus 0 devfn BX.
pci_read32:
    pushw %dx
    call pci_address
    movw $PCI_DATA, %dx
    inl %dx, %eax
    popw %dx
    ret

# pci_write32: write ECX to configuration register DI of bus 0 devfn BX.
pci_write32:
    pushw %dx
    pushl %eax
    call pci_address
    movw $PCI_DATA, %dx
    movl %ecx, %eax
    outl %eax, %dx
    popl %eax
    popw %dx
    ret

# pci_address: CONFIG_ADDRESS = enable | devfn BX << 8 | register DI (clobbers EAX, DX).
pci_address:
    movzwl %bx, %eax
    shll $8, %eax
    orw %di, %ax
    orl $0x80000000, %eax
    movw $PCI_ADDR, %dx
    outl %eax, %dx
    ret

# print_function: "pci: 00:DD.F VVVV:DDDD class CCSSPP" for devfn BX, ID dword ECX.
print_function:
    pushal
    movw $fn_msg, %si
    call puts
    movw %bx, %ax
    shrw $3, %ax
    call hex8
    movb $0x2E, %al            # '.'
    call putc
    movb %bl, %al
    andb $7, %al
    call hex4
    movb $0x20, %al
    call putc
    movw %cx, %ax
    call hex16
    movb $0x3A, %al            # ':'
    call putc
    movl %ecx, %eax
    shrl $0x10, %eax
    call hex16
    movw $class_msg, %si
    call puts
    movw $8, %di
    call pci_read32
    shrl $8, %eax
    pushl %eax
    shrl $0x10, %eax
    call hex8
    popl %eax
    call hex16
    call newline
    popal
    ret

# check_function: the ID in ECX must be the one expected at devfn BX.
check_function:
    pushal
    movw $expect, %si
check_loop:
    movw (%si), %ax
    cmpw $0xFFFF, %ax
    je check_bad
    cmpw %ax, %bx
    je check_found
    addw $0x0A, %si
    jmp check_loop
check_found:
    cmpl 2(%si), %ecx
    jne check_bad
    movw $8, %di
    call pci_read32
    shrl $8, %eax
    cmpl 6(%si), %eax
    jne check_bad
    popal
    ret
check_bad:
    popal
    jmp bad_id

# devfn, vendor:device dword, class dword (class << 16 | subclass << 8 | prog-if).
expect:
    .word 0x00
    .long 0x12378086, 0x060000
    .word 0x08
    .long 0x70008086, 0x060100
    .word 0x09
    .long 0x70108086, 0x010180
    .word 0xFFFF

fn_msg:
    .asciz "pci: 00:"
class_msg:
    .asciz " class "
count_msg:
    .asciz "pci: "
count_msg2:
    .asciz " functions\r\n"
bar_msg:
    .asciz "BAR4 "
mask_msg:
    .asciz " mask "
size_msg:
    .asciz " size "
count_fail:
    .asciz "expected 3 PCI functions"
absent_fail:
    .asciz "absent function or bus 1 did not read all ones"
cf8_fail:
    .asciz "byte write changed CONFIG_ADDRESS"
bar_fail:
    .asciz "BAR4 sizing"
bm_fail:
    .asciz "bus-master status not idle"
id_fail:
    .asciz "unexpected PCI function or class"

.include "lib.inc"
