# syntax: att
# guest: MC146818 RTC through CMOS ports 70h/71h: UIP, BCD date/time, periodic IRQ8, INT 1Ah
#
# Waits for register A's UIP bit to clear, reads seconds/minutes/hours/day/month/year and the
# century byte (CMOS 32h), checks that register B selects BCD and 24-hour mode and that every
# byte is valid BCD, and prints the date and time (the test compares it with the machine's
# rtc_base).  Then sets register A's rate to 6 (1024 Hz), sets register B's PIE, hooks vector 70h
# (IRQ8 as the BIOS programs the slave PIC), unmasks IRQ8 and the cascade IRQ2 and counts 8
# periodic interrupts with STI/HLT; the handler reads register C (which acknowledges the RTC)
# and EOIs slave then master.  Finally INT 1Ah AH=02h must return the time the CMOS holds.
# Serial output:  RTC 2026-11-28 12:00:00       (the machine's date and time)
#                 periodic: 8 interrupts, register C C0
#                 INT 1Ah AH=02h 12:00:00 matches
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set COUNT, VARS               # word: periodic interrupts seen
.set REGC_OR, VARS+2           # byte: OR of register C values read in the handler
.set TIME, VARS+4              # 7 bytes: sec, min, hour, day, month, year, century
.set WANT, 8

main:
    call rtc_wait_uip
    jc bad_uip
    movw $TIME, %di
    movw $time_regs, %si
read_loop:
    lodsb
    cmpb $0xFF, %al
    je read_done
    call cmos_read
    movb %al, (%di)
    incw %di
    call check_bcd
    jc bad_bcd
    jmp read_loop
read_done:
    movb $0x0B, %al
    call cmos_read
    testb $0x04, %al           # DM: 0 = BCD
    jnz bad_mode
    testb $0x02, %al           # 24/12: 1 = 24-hour
    jz bad_mode

    movw $rtc_msg, %si
    call puts
    movb (TIME+6), %al         # century
    call hex8
    movb (TIME+5), %al         # year
    call hex8
    movb $0x2D, %al            # '-'
    call putc
    movb (TIME+4), %al
    call hex8
    movb $0x2D, %al
    call putc
    movb (TIME+3), %al
    call hex8
    movb $0x20, %al
    call putc
    movw $TIME, %bx
    call print_time_bx
    call newline

    # Periodic interrupt: register A = 26h keeps the 32.768 kHz divider (DV=010) with rate 6,
    # a 976.562 us period (MC146818 datasheet, table "Periodic Interrupt Rate").
    cli
    movw $0, (COUNT)
    movb $0, (REGC_OR)
    movw $rtc_handler, (0x70*4)
    movw $0, (0x70*4+2)
    movb $0x0A, %al
    movb $0x26, %ah
    call cmos_write
    movb $0x0C, %al            # clear any stale flags
    call cmos_read
    movb $0x0B, %al
    call cmos_read
    orb $0x40, %al             # PIE
    movb %al, %ah
    movb $0x0B, %al
    call cmos_write
    inb $0xA1, %al
    andb $0xFE, %al            # IRQ8
    outb %al, $0xA1
    inb $0x21, %al
    andb $0xFB, %al            # IRQ2, the cascade
    outb %al, $0x21
    sti
wait_loop:
    hlt
    cmpw $WANT, (COUNT)
    jb wait_loop
    cli
    movb $0x0B, %al
    call cmos_read
    andb $0xBF, %al            # PIE off again
    movb %al, %ah
    movb $0x0B, %al
    call cmos_write
    inb $0xA1, %al
    orb $0x01, %al
    outb %al, $0xA1
    sti
    movw $periodic_msg, %si
    call puts
    movb (REGC_OR), %al
    call hex8
    call newline
    movb (REGC_OR), %al
    andb $0xC0, %al            # IRQF and PF must have been seen
    cmpb $0xC0, %al
    jne bad_regc

    # INT 1Ah AH=02h against a fresh CMOS read.
    call rtc_wait_uip
    jc bad_uip
    movb $0x00, %al
    call cmos_read
    movb %al, (TIME)
    movb $0x02, %al
    call cmos_read
    movb %al, (TIME+1)
    movb $0x04, %al
    call cmos_read
    movb %al, (TIME+2)
    movb $0x02, %ah
    int $0x1A
    jc bad_int1a
    movw $int1a_msg, %si
    call puts
    movb %dh, (TIME+0x10)      # the BIOS's answer in the same layout: sec, min, hour
    movb %cl, (TIME+0x11)
    movb %ch, (TIME+0x12)
    movw $TIME+0x10, %bx
    call print_time_bx
    cmpb (TIME), %dh
    jne bad_int1a
    cmpb (TIME+1), %cl
    jne bad_int1a
    cmpb (TIME+2), %ch
    jne bad_int1a
    movw $matches_msg, %si
    call puts
    call pass

bad_uip:
    movw $bad_uip_msg, %si
    call fail
bad_bcd:
    movw $bad_bcd_msg, %si
    call fail
bad_mode:
    movw $bad_mode_msg, %si
    call fail
bad_regc:
    movw $bad_regc_msg, %si
    call fail
bad_int1a:
    movw $bad_int1a_msg, %si
    call fail

# print_time_bx: print [BX+2]:[BX+1]:[BX] (hours:minutes:seconds, BCD).
print_time_bx:
    pushw %ax
    movb 2(%bx), %al
    call hex8
    movb $0x3A, %al            # ':'
    call putc
    movb 1(%bx), %al
    call hex8
    movb $0x3A, %al
    call putc
    movb (%bx), %al
    call hex8
    popw %ax
    ret

# rtc_wait_uip: wait until register A's UIP (bit 7) reads 0; CF=1 if it never does.  With UIP
# clear at least 244 us remain before the next update (MC146818 datasheet, "UIP").
rtc_wait_uip:
    pushw %cx
    pushw %ax
    movw $0xFFFF, %cx
uip_loop:
    movb $0x0A, %al
    call cmos_read
    testb $0x80, %al
    jz uip_clear
    loop uip_loop
    stc
    jmp uip_out
uip_clear:
    clc
uip_out:
    popw %ax
    popw %cx
    ret

# cmos_read: AL = CMOS register AL (NMI stays enabled: bit 7 of the index clear).
cmos_read:
    outb %al, $0x70
    inb $0x71, %al
    ret

# cmos_write: CMOS register AL = AH.
cmos_write:
    outb %al, $0x70
    movb %ah, %al
    outb %al, $0x71
    ret

# check_bcd: CF=1 unless AL is two BCD digits.
check_bcd:
    pushw %ax
    movb %al, %ah
    andb $0x0F, %al
    cmpb $9, %al
    ja bcd_bad
    shrb $4, %ah
    cmpb $9, %ah
    ja bcd_bad
    clc
    popw %ax
    ret
bcd_bad:
    stc
    popw %ax
    ret

rtc_handler:
    pushw %ax
    movb $0x0C, %al            # reading register C clears IRQF and the flags, releasing IRQ8
    outb %al, $0x70
    inb $0x71, %al
    orb %al, %cs:(REGC_OR)
    incw %cs:(COUNT)
    movb $0x20, %al            # non-specific EOI: slave first, then the master (cascade)
    outb %al, $0xA0
    outb %al, $0x20
    popw %ax
    iret

time_regs:
    .byte 0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32, 0xFF
rtc_msg:
    .asciz "RTC "
periodic_msg:
    .asciz "periodic: 8 interrupts, register C "
int1a_msg:
    .asciz "INT 1Ah AH=02h "
matches_msg:
    .asciz " matches\r\n"
bad_uip_msg:
    .asciz "register A UIP never cleared"
bad_bcd_msg:
    .asciz "a CMOS time/date byte is not BCD"
bad_mode_msg:
    .asciz "register B is not BCD 24-hour"
bad_regc_msg:
    .asciz "register C did not show IRQF and PF"
bad_int1a_msg:
    .asciz "INT 1Ah AH=02h disagrees with the CMOS"

.include "lib.inc"
