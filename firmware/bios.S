# syntax: att
#
# hyperv-emu BIOS: POST and the PC BIOS services, real mode, for the emulated PC of hyperv-emu.
#
# Assembled by keystone (hyperv_emu/asm.py) at base 0 as the 64 KiB segment F000; the loader
# (hyperv_emu/firmware.py) pads the image and adds what keystone cannot place: the reset vector
# at F000:FFF0 (a far jump to post_entry, which must stay the first byte of this file), the BIOS
# date at F000:FFF5, the model byte at F000:FFFE and the checksum byte at F000:FFFF.
#
# Source rules forced by keystone 0.9.2 in AT&T mode (UNICORN_NOTES.md "Keystone 0.9.2
# pitfalls", plus one found here):
#   * every number is written in hex (0x..): keystone's AT&T parser reads "10" as 0x10 and
#     "012" as octal; firmware.py rejects multi-digit decimal literals before assembling;
#   * no numeric local labels (1:, 1b) and no ';' (it separates statements in AT&T);
#   * no .org/.align: fixed addresses are laid out by firmware.py;
#   * far jumps/calls to literal addresses are emitted as .byte/.word.
#
# Interrupt handlers share one frame layout, built by "pushal; push %ds; push %es;
# movw %sp, %bp": the caller's registers are read and results written through F_* offsets
# below, and every handler leaves through int_exit (or int_exit_cf0 / int_exit_cf1, which set
# the caller's carry flag).  pushal keeps the upper halves of the 32-bit registers intact for
# callers (bootloaders rely on it).
#
# POST codes written to port 0x80:
#   01 reset entry        02 IVT and BDA         03 PICs              04 PIT
#   05 RTC                06 memory size         07 serial ports      08 video
#   09 A20                0A interrupts on       0B banner printed    0C disk detection
#   0D CD-ROM detection (firmware/cdrom.inc)                 0E keyboard (firmware/keyboard.inc)
#   19 INT 19h entered (the machine may take over here for a Multiboot kernel)
#   1A boot sector loaded, jumping to 0000:7C00    18 INT 18h: no bootable device

.code16

# ---- constants -------------------------------------------------------------------------
.equ BIOS_SEG, 0xf000
.equ BDA_SEG, 0x40
.equ EBDA_SEG, 0x9fc0           # 639 KiB: the 1 KiB EBDA sits just below 640 KiB
.equ VIDEO_SEG, 0xb800
.equ POST_PORT, 0x80

# Frame built by int_enter: offsets from %bp.
.equ F_ES, 0x00
.equ F_DS, 0x02
.equ F_DI, 0x04
.equ F_SI, 0x08
.equ F_BP, 0x0c
.equ F_BX, 0x14
.equ F_BL, 0x14
.equ F_BH, 0x15
.equ F_DX, 0x18
.equ F_DL, 0x18
.equ F_DH, 0x19
.equ F_CX, 0x1c
.equ F_CL, 0x1c
.equ F_CH, 0x1d
.equ F_AX, 0x20
.equ F_AL, 0x20
.equ F_AH, 0x21
.equ F_FLAGS, 0x28              # the FLAGS word pushed by INT
.equ FL_CF, 0x01
.equ FL_ZF, 0x40

# BDA fields (offsets in segment 0x40).  IBM PC/AT Technical Reference, "BIOS data area".
.equ BDA_COM1, 0x00
.equ BDA_EBDA, 0x0e
.equ BDA_EQUIP, 0x10
.equ BDA_MEMKB, 0x13
.equ BDA_KBFLAGS, 0x17
.equ BDA_KBHEAD, 0x1a
.equ BDA_KBTAIL, 0x1c
.equ BDA_KBBUF, 0x1e
.equ BDA_KBBUF_END, 0x3e
.equ BDA_VMODE, 0x49
.equ BDA_VCOLS, 0x4a
.equ BDA_VPAGESIZE, 0x4c
.equ BDA_VPAGESTART, 0x4e
.equ BDA_CURPOS, 0x50           # 8 pages x (column, row)
.equ BDA_CURSHAPE, 0x60         # end line at 0x60, start line at 0x61
.equ BDA_VPAGE, 0x62
.equ BDA_CRTC, 0x63
.equ BDA_VMODECTL, 0x65
.equ BDA_VPALETTE, 0x66
.equ BDA_TICKS, 0x6c
.equ BDA_TICKS_HI, 0x6e
.equ BDA_MIDNIGHT, 0x70
.equ BDA_DISKSTAT, 0x74
.equ BDA_NDISKS, 0x75
.equ BDA_KBSTART, 0x80
.equ BDA_KBEND, 0x82
.equ BDA_VROWS, 0x84            # rows - 1
.equ BDA_VCHARH, 0x85
.equ BDA_HDINT, 0x8e

# EBDA layout (offsets in the EBDA segment, found through BDA 0x40E so a relocated EBDA works).
.equ EBDA_KB, 0x00              # size in KiB
.equ EBDA_FDPT, 0x3d            # fixed disk parameter table for drive 80h (INT 41h)
.equ EBDA_DISK_OK, 0x50         # 1 when IDENTIFY found the primary master
.equ EBDA_DISK_SECTORS, 0x52    # dword, IDENTIFY words 60-61
.equ EBDA_DISK_CYLS, 0x56       # word, BIOS geometry: cylinders (1..1024)
.equ EBDA_EXT_KB, 0x60          # word, CMOS 30h/31h: KiB from 1 MiB (capped 0xFFFF)
.equ EBDA_HI_64K, 0x62          # word, CMOS 34h/35h: 64 KiB blocks above 16 MiB
.equ EBDA_CD_OK, 0x70           # 1 when an ATAPI CD-ROM was found (drive E0h)
.equ EBDA_CD_DEV, 0x71          # its Device register value: A0h (device 0) or B0h (device 1)
.equ EBDA_CD_BASE, 0x72         # word, its command block base: 1F0h or 170h
.equ EBDA_CD_CDB, 0x74          # 12-byte ATAPI command packet being sent
.equ EBDA_CD_BUF, 0x80          # 8-byte buffer (READ CAPACITY data)
.equ EBDA_CD_SPEC, 0x90         # 13h bytes: El Torito specification packet of the CD boot
.equ EBDA_CD_BOOTED, 0xa3       # 1 once INT 19h started the CD's boot image (INT 13h 4Bh)
.equ EBDA_OPTIONS, 0xa4         # CMOS_OPTIONS, read at POST

# CMOS byte with the boot sequence (as in the AT BIOSes of Bochs/QEMU lineage): first device
# in bits 3-0, second in bits 7-4; 2 = hard disk 80h, 3 = CD-ROM E0h, 0 = end of the list
# (1, diskette, is skipped: there is no diskette controller).  00h means hard disk only.
.equ CMOS_BOOT_ORDER, 0x3d
# CMOS byte with hyperv-emu BIOS options, set by the machine: bit 0 = INT 10h teletype output
# is not copied to COM1 (only the BIOS's own messages go there), for guests that write COM1
# themselves and would otherwise see every character twice.
.equ CMOS_OPTIONS, 0x3f
.equ OPT_NO_TTY_MIRROR, 0x01

.equ SCRATCH, 0x7c00            # POST-time buffer for IDENTIFY (before the boot sector)

# ---- POST ------------------------------------------------------------------------------
post_entry:
    cli
    cld
    movb $0x01, %al
    outb %al, $POST_PORT
    xorw %ax, %ax
    movw %ax, %ss
    movw $0x7c00, %sp
    movw %ax, %ds
    movw %ax, %es

    # IVT (0000:0000-03FF) and BDA (0040:0000-00FF)
    movb $0x02, %al
    outb %al, $POST_PORT
    call setup_ivt
    call setup_bda

    # 8259A pair: ICW1 edge, cascade, ICW4 needed; ICW2 vector bases 08h / 70h;
    # ICW3 slave on IR2 / slave ID 2; ICW4 8086 mode, normal EOI (8259A datasheet).
    movb $0x03, %al
    outb %al, $POST_PORT
    movb $0x11, %al
    outb %al, $0x20
    outb %al, $0xa0
    movb $0x08, %al
    outb %al, $0x21
    movb $0x70, %al
    outb %al, $0xa1
    movb $0x04, %al
    outb %al, $0x21
    movb $0x02, %al
    outb %al, $0xa1
    movb $0x01, %al
    outb %al, $0x21
    outb %al, $0xa1
    # OCW1: master passes IRQ0 (timer), IRQ1 (keyboard) and IRQ2 (cascade); slave passes
    # IRQ8 (RTC, whose interrupt enables stay off) and IRQ14 (IDE, kept quiet with nIEN, see
    # ata_init).
    movb $0xf8, %al
    outb %al, $0x21
    movb $0xbe, %al
    outb %al, $0xa1

    # 8254 channel 0: lobyte/hibyte, mode 2 (rate generator), binary, count 0 = 65536, so
    # IRQ0 runs at 1193182 / 65536 = 18.2 Hz.  Mode 2 rather than the PC's mode 3 so that
    # INT 15h AH=86h can read elapsed time as a plain down-count.
    movb $0x04, %al
    outb %al, $POST_PORT
    movb $0x34, %al
    outb %al, $0x43
    xorb %al, %al
    outb %al, $0x40
    outb %al, $0x40

    # MC146818: register A = 26h (32.768 kHz time base, 976.5 us rate), register B = 02h
    # (24-hour, BCD, no interrupts); reading C and D clears pending flags.
    movb $0x05, %al
    outb %al, $POST_PORT
    movw $0x260a, %ax
    call cmos_write
    movw $0x020b, %ax
    call cmos_write
    movb $0x0c, %al
    call cmos_read
    movb $0x0d, %al
    call cmos_read
    movw $0x000f, %ax           # shutdown status byte: normal POST
    call cmos_write

    movb $0x06, %al
    outb %al, $POST_PORT
    call setup_memory
    movb $CMOS_OPTIONS, %al
    call cmos_read
    movb %al, %es:EBDA_OPTIONS

    movb $0x07, %al
    outb %al, $POST_PORT
    call setup_serial

    movb $0x08, %al
    outb %al, $POST_PORT
    movw $0x0003, %ax
    int $0x10

    # Fast A20 gate: port 92h bit 1 (bit 0 would reset the machine).
    movb $0x09, %al
    outb %al, $POST_PORT
    call a20_enable

    movb $0x0e, %al
    outb %al, $POST_PORT
    call kbd_init

    movb $0x0a, %al
    outb %al, $POST_PORT
    sti

    movw $msg_banner, %si
    call print_str
    movb $0x0b, %al
    outb %al, $POST_PORT

    movb $0x0c, %al
    outb %al, $POST_PORT
    call ata_init

    movb $0x0d, %al
    outb %al, $POST_PORT
    call cd_init

    int $0x19
post_hang:
    cli
    hlt
    jmp post_hang

# setup_ivt: every vector to an IRET (hardware IRQs to handlers that EOI), then the services.
setup_ivt:
    xorw %ax, %ax
    movw %ax, %es
    xorw %di, %di
    movw $0x0100, %cx
ivt_fill:
    movw $int_default, %ax
    stosw
    movw $BIOS_SEG, %ax
    stosw
    loop ivt_fill
    movw $0x08, %bx             # IRQ0-7
    movw $irq_master_eoi, %ax
    call set_8_vectors
    movw $0x70, %bx             # IRQ8-15
    movw $irq_slave_eoi, %ax
    call set_8_vectors
    movw $ivt_table, %si
ivt_next:
    cmpw $ivt_table_end, %si
    jae ivt_zero
    movw %cs:(%si), %bx
    shlw $0x02, %bx
    movw %cs:2(%si), %ax
    movw %ax, %es:(%bx)
    movw $BIOS_SEG, %es:2(%bx)
    addw $0x04, %si
    jmp ivt_next
ivt_zero:
    # Data-pointer vectors without a table read as null: 1Dh video parameters, 1Fh and 43h
    # fonts, 46h second fixed disk (41h is set by ata_init when the disk is found).
    xorl %eax, %eax
    movl %eax, %es:(0x1d*4)
    movl %eax, %es:(0x1f*4)
    movl %eax, %es:(0x41*4)
    movl %eax, %es:(0x43*4)
    movl %eax, %es:(0x46*4)
    ret

# set_8_vectors: vectors BX..BX+7 -> F000:AX (ES = 0).
set_8_vectors:
    shlw $0x02, %bx
    movw $0x08, %cx
set8_loop:
    movw %ax, %es:(%bx)
    addw $0x04, %bx
    loop set8_loop
    ret

# setup_bda: clear the BDA and the EBDA and fill the fixed fields.
setup_bda:
    movw $BDA_SEG, %ax
    movw %ax, %es
    movw %ax, %ds
    xorw %di, %di
    xorw %ax, %ax
    movw $0x80, %cx
    rep stosw
    movw $EBDA_SEG, %ax
    movw %ax, %es
    xorw %di, %di
    xorw %ax, %ax
    movw $0x0200, %cx
    rep stosw
    movb $0x01, %es:EBDA_KB
    movw $EBDA_SEG, BDA_EBDA
    movw $0x027f, BDA_MEMKB      # 639 KiB below the EBDA
    # Equipment word: bit 1 math coprocessor, bits 5-4 = 10b initial video 80x25 colour;
    # the serial port count (bits 11-9) is added by setup_serial.
    movw $0x0022, BDA_EQUIP
    movw $BDA_KBBUF, BDA_KBHEAD
    movw $BDA_KBBUF, BDA_KBTAIL
    movw $BDA_KBBUF, BDA_KBSTART
    movw $BDA_KBBUF_END, BDA_KBEND
    ret

# setup_memory: CMOS 30h/31h (KiB above 1 MiB, at most 0xFFFF) and 34h/35h (64 KiB blocks
# above 16 MiB) into the EBDA for INT 15h.
setup_memory:
    movw $EBDA_SEG, %ax
    movw %ax, %es
    movb $0x31, %al
    call cmos_read
    movb %al, %ah
    movb $0x30, %al
    call cmos_read_keep_ah
    movw %ax, %es:EBDA_EXT_KB
    movb $0x35, %al
    call cmos_read
    movb %al, %ah
    movb $0x34, %al
    call cmos_read_keep_ah
    movw %ax, %es:EBDA_HI_64K
    ret

# setup_serial: probe COM1 (3F8h) and COM2 (2F8h) through the scratch register, set each to
# 115200 8N1 with FIFOs on and interrupts off, and list them in the BDA (16550A datasheet).
setup_serial:
    movw $BDA_SEG, %ax
    movw %ax, %ds
    movw $0x03f8, %dx
    call uart_init
    jc ser_com2
    movw %dx, BDA_COM1
    addw $0x0200, BDA_EQUIP
ser_com2:
    movw $0x02f8, %dx
    call uart_init
    jc ser_done
    movw $BDA_COM1, %bx
    cmpw $0x00, (%bx)
    je ser_store
    addw $0x02, %bx
ser_store:
    movw %dx, (%bx)
    addw $0x0200, BDA_EQUIP
ser_done:
    ret

# uart_init: DX = base.  CF=1 if no UART answers there; DX preserved.
uart_init:
    pushw %dx
    addw $0x07, %dx              # scratch register
    movb $0x5a, %al
    outb %al, %dx
    inb %dx, %al
    cmpb $0x5a, %al
    jne uart_absent
    subw $0x04, %dx              # LCR
    movb $0x80, %al              # DLAB
    outb %al, %dx
    subw $0x03, %dx              # DLL = 1: 1.8432 MHz / 16 / 1 = 115200 baud
    movb $0x01, %al
    outb %al, %dx
    incw %dx                     # DLM
    xorb %al, %al
    outb %al, %dx
    addw $0x02, %dx              # LCR: 8 data bits, no parity, 1 stop bit, DLAB off
    movb $0x03, %al
    outb %al, %dx
    decw %dx                     # FCR: FIFO on, clear both FIFOs
    movb $0x07, %al
    outb %al, %dx
    addw $0x02, %dx              # MCR: DTR, RTS (OUT2 off: no IRQ to the PIC)
    movb $0x03, %al
    outb %al, %dx
    subw $0x03, %dx              # IER: no interrupts
    xorb %al, %al
    outb %al, %dx
    popw %dx
    clc
    ret
uart_absent:
    popw %dx
    stc
    ret

# ---- small helpers ---------------------------------------------------------------------
# cmos_read: AL = register -> AL = value.  cmos_read_keep_ah is the same (AH is untouched
# by both; the name documents callers that rely on it).
cmos_read:
cmos_read_keep_ah:
    outb %al, $0x70
    inb $0x71, %al
    ret

# cmos_write: AL = register, AH = value.
cmos_write:
    outb %al, $0x70
    movb %ah, %al
    outb %al, $0x71
    ret

# a20_enable / a20_disable: the chipset ORs two A20 sources, port 92h bit 1 and the 8042's
# output port bit 1, so both are driven: port 92h (never setting bit 0, fast reset) and the
# 8042 commands DFh (A20 on) / DDh (A20 off).  Clobbers AX and CX.
a20_enable:
    inb $0x92, %al
    orb $0x02, %al
    andb $0xfe, %al
    outb %al, $0x92
    movb $0xdf, %ah
    jmp kbc_command
a20_disable:
    inb $0x92, %al
    andb $0xfc, %al
    outb %al, $0x92
    movb $0xdd, %ah
# kbc_command: send the 8042 command in AH once its input buffer is empty (status bit 1),
# waiting a bounded number of polls.
kbc_command:
    movw $0xffff, %cx
kbc_wait:
    inb $0x64, %al
    testb $0x02, %al
    loopnz kbc_wait
    movb %ah, %al
    outb %al, $0x64
    ret

# a20_test: AL = 1 if A20 is on, 0 if masked, found as real BIOSes do: whether 0000:0500 and
# FFFF:0510 (physical 100500h) are the same byte.  Both bytes are restored.
a20_test:
    pushw %ds
    pushw %es
    pushw %cx
    xorw %ax, %ax
    movw %ax, %ds
    decw %ax
    movw %ax, %es
    movb (0x0500), %cl
    movb %es:(0x0510), %ch
    movb $0x00, (0x0500)
    movb $0xff, %es:(0x0510)
    movb (0x0500), %al
    movb %ch, %es:(0x0510)
    movb %cl, (0x0500)
    notb %al
    andb $0x01, %al
    popw %cx
    popw %es
    popw %ds
    ret

# print_str: CS:SI -> NUL-terminated string, printed with INT 10h teletype.
print_str:
    pushw %ax
    pushw %bx
    pushw %si
ps_loop:
    movb %cs:(%si), %al
    testb %al, %al
    jz ps_done
    movb $0x0e, %ah
    movw $0x0007, %bx
    int $0x10
    call tty_unmirrored
    jz ps_next
    call serial_putc            # the teletype did not copy it: the BIOS's own message
ps_next:
    incw %si
    jmp ps_loop
ps_done:
    popw %si
    popw %bx
    popw %ax
    ret

# tty_unmirrored: ZF=0 when INT 10h teletype output is not copied to COM1 (CMOS_OPTIONS bit 0,
# kept in the EBDA).  Preserves all registers.
tty_unmirrored:
    pushw %ds
    pushw %ax
    movw $BDA_SEG, %ax
    movw %ax, %ds
    movw BDA_EBDA, %ax
    movw %ax, %ds
    testb $OPT_NO_TTY_MIRROR, EBDA_OPTIONS
    popw %ax
    popw %ds
    ret

# serial_putc: AL -> COM1, after waiting (bounded) for THRE (LSR bit 5).  Preserves all.
serial_putc:
    pushw %ax
    pushw %cx
    pushw %dx
    movb %al, %ah
    movw $0x03fd, %dx
    movw $0x8000, %cx
sp_wait:
    inb %dx, %al
    testb $0x20, %al
    jnz sp_ready
    loop sp_wait
sp_ready:
    movw $0x03f8, %dx
    movb %ah, %al
    outb %al, %dx
    popw %dx
    popw %cx
    popw %ax
    ret

# ---- shared interrupt entry and exit ---------------------------------------------------
int_exit_cf1:
    movw %bp, %sp
    orb $FL_CF, F_FLAGS(%bp)
    jmp int_exit
int_exit_cf0:
    movw %bp, %sp
    andb $0xfe, F_FLAGS(%bp)
int_exit:
    movw %bp, %sp
    popw %es
    popw %ds
    popal
    iret

# ---- default and hardware interrupt handlers -------------------------------------------
int_default:
    iret

# IRQ1-7 without a driver: non-specific EOI to the master.
irq_master_eoi:
    pushw %ax
    movb $0x20, %al
    outb %al, $0x20
    popw %ax
    iret

# IRQ8-15 without a driver: EOI to the slave, then to the master for the cascade (IR2).
irq_slave_eoi:
    pushw %ax
    movb $0x20, %al
    outb %al, $0xa0
    outb %al, $0x20
    popw %ax
    iret

# IRQ7 may be spurious (8259A datasheet: IR7 is reported when the request goes away during
# INTA); only an in-service IRQ7 gets an EOI.  OCW3 0Bh reads ISR, 0Ah restores IRR reads.
irq7_handler:
    pushw %ax
    movb $0x0b, %al
    outb %al, $0x20
    inb $0x20, %al
    movb %al, %ah
    movb $0x0a, %al
    outb %al, $0x20
    testb $0x80, %ah
    jz irq7_done
    movb $0x20, %al
    outb %al, $0x20
irq7_done:
    popw %ax
    iret

# IRQ15 likewise on the slave; the master's IR2 was in service either way.
irq15_handler:
    pushw %ax
    movb $0x0b, %al
    outb %al, $0xa0
    inb $0xa0, %al
    movb %al, %ah
    movb $0x0a, %al
    outb %al, $0xa0
    testb $0x80, %ah
    jz irq15_master
    movb $0x20, %al
    outb %al, $0xa0
irq15_master:
    movb $0x20, %al
    outb %al, $0x20
    popw %ax
    iret

# INT 08h, IRQ0: count ticks at 40:6C, wrap at 1800B0h ticks (24 h at 18.2 Hz) setting the
# midnight flag at 40:70, call the user hook INT 1Ch, then EOI the master.
int08_timer:
    pushw %ds
    pushw %ax
    movw $BDA_SEG, %ax
    movw %ax, %ds
    addw $0x01, BDA_TICKS
    adcw $0x00, BDA_TICKS_HI
    cmpw $0x18, BDA_TICKS_HI
    jb t08_hook
    ja t08_wrap
    cmpw $0xb0, BDA_TICKS
    jb t08_hook
t08_wrap:
    movw $0x00, BDA_TICKS
    movw $0x00, BDA_TICKS_HI
    movb $0x01, BDA_MIDNIGHT
t08_hook:
    int $0x1c
    movb $0x20, %al
    outb %al, $0x20
    popw %ax
    popw %ds
    iret

# INT 70h, IRQ8: acknowledge the RTC by reading register C, EOI slave and master.
int70_rtc:
    pushw %ax
    movb $0x0c, %al
    outb %al, $0x70
    inb $0x71, %al
    movb $0x20, %al
    outb %al, $0xa0
    outb %al, $0x20
    popw %ax
    iret

# INT 76h, IRQ14: the BIOS polls the drive (nIEN set), so this only records the interrupt
# (40:8E, as the AT BIOS does) and EOIs slave and master.
int76_ide:
    pushw %ax
    pushw %ds
    movw $BDA_SEG, %ax
    movw %ax, %ds
    movb $0xff, BDA_HDINT
    movb $0x20, %al
    outb %al, $0xa0
    outb %al, $0x20
    popw %ds
    popw %ax
    iret

# INT 11h: equipment word.  INT 12h: base memory size in KiB.
int11_handler:
    pushw %ds
    movw $BDA_SEG, %ax
    movw %ax, %ds
    movw BDA_EQUIP, %ax
    popw %ds
    iret
int12_handler:
    pushw %ds
    movw $BDA_SEG, %ax
    movw %ax, %ds
    movw BDA_MEMKB, %ax
    popw %ds
    iret

.include "video.inc"
.include "disk.inc"
.include "cdrom.inc"
.include "services.inc"
.include "keyboard.inc"

# ---- tables ----------------------------------------------------------------------------
ivt_table:
    .word 0x08, int08_timer
    .word 0x09, int09_kbd
    .word 0x0f, irq7_handler
    .word 0x10, int10_handler
    .word 0x11, int11_handler
    .word 0x12, int12_handler
    .word 0x13, int13_handler
    .word 0x15, int15_handler
    .word 0x16, int16_handler
    .word 0x18, int18_handler
    .word 0x19, int19_handler
    .word 0x1a, int1a_handler
    .word 0x1e, diskette_params
    .word 0x70, int70_rtc
    .word 0x76, int76_ide
    .word 0x77, irq15_handler
ivt_table_end:

# INT 1Eh diskette parameter table (1.44 MB values; there is no floppy controller, but DOS
# copies this table at boot): specify 1/2, motor-off delay, 512-byte sectors, 18 sectors per
# track, gap, data length, format gap, fill byte, head settle, motor start.
diskette_params:
    .byte 0xaf, 0x02, 0x25, 0x02, 0x12, 0x1b, 0xff, 0x6c, 0xf6, 0x0f, 0x08

# INT 15h AH=C0h system configuration table: length 8, model FCh (AT), submodel 01h,
# revision 0, feature byte 1 = 60h (bit 6 second 8259, bit 5 RTC; bit 4 clear: INT 09h does
# not call INT 15h AH=4Fh), feature bytes 2-5 zero.
config_table:
    .word 0x0008
    .byte 0xfc, 0x01, 0x00, 0x60, 0x00, 0x00, 0x00, 0x00

msg_banner:
    .asciz "hyperv-emu BIOS\r\n"
msg_no_disk:
    .asciz "Boot failed: no hard disk\r\n"
msg_read_fail:
    .asciz "Boot failed: could not read the boot sector\r\n"
msg_no_sig:
    .asciz "Boot failed: no boot signature (55AA) on the hard disk\r\n"
msg_no_boot:
    .asciz "No bootable device\r\n"
msg_no_cd:
    .asciz "Boot failed: no CD-ROM drive\r\n"
msg_cd_not_ready:
    .asciz "Boot failed: no disc in the CD-ROM drive\r\n"
msg_cd_not_bootable:
    .asciz "Boot failed: the CD is not bootable (no El Torito boot record)\r\n"
msg_cd_bad_catalog:
    .asciz "Boot failed: the CD's El Torito boot catalog is damaged\r\n"
msg_cd_emulation:
    .asciz "Boot failed: the CD boot image uses disk emulation (not supported)\r\n"
msg_cd_read_fail:
    .asciz "Boot failed: could not read the CD boot image\r\n"

bios_end:
