# syntax: att
# guest: A20 gate: wrap at 1 MiB through port 92h, the 8042 output port (OR of both), INT 15h 24h
#
# With FS = FFFFh, FS:0610 is physical 100600h, which reads 000600h while A20 is masked.  The
# guest stores 5Ah at 0600h and A5h at 100600h, then drives the two gate sources, which the
# chipset ORs (A20 is masked only while port 92h bit 1 and the 8042 output port bit 1 are both
# 0), and after each step prints what FS:0610 showed: "masked" (5Ah, the wrap) or "on" (A5h).
# The 8042 is driven with command D1h (write output port: CDh masks, CFh enables; bit 0 stays 1,
# since 0 resets the CPU) and with DDh/DFh.  A store through FS:0611 while masked must land at
# 0601h.  INT 15h AX=2400h/2401h/2402h/2403h are the BIOS's A20 services: they drive both
# sources (so AX=2400h masks A20 even after the 8042 enabled it) and AX=2402h reports the gate
# found by a wrap test.
# Serial output:  A20 after the BIOS: on
#                 8042 D1h CDh, port 92h on: on (output port CD)
#                 port 92h off: masked
#                 port 92h on: on
#                 port 92h off, 8042 DFh: on
#                 8042 DDh: masked
#                 store at FFFF:0611 landed at 0601
#                 port 92h on: on
#                 INT 15h AX=2400h: masked, AX=2402h AL=00
#                 INT 15h AX=2401h: on, AX=2402h AL=01
#                 INT 15h AX=2403h BX=0002
#                 8042 DFh, INT 15h AX=2400h: masked, AX=2402h AL=00
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set LOW, VARS                 # 000600h; FFFF:0610 is 100600h
.set LOW_MARK, 0x5A
.set HIGH_MARK, 0xA5
.set A20_MASKED, 1
.set A20_ON, 0

main:
    movw $0xFFFF, %ax
    movw %ax, %fs
    movb $LOW_MARK, (LOW)
    movb $0, (LOW+1)
    movb $HIGH_MARK, %fs:(LOW+0x10)
    movb $0, %fs:(LOW+0x11)
    call kbc_flush

    movw $after_bios_msg, %si
    movb $A20_ON, %ah
    call check

    # 8042 output port A20 off while port 92h (set by the BIOS) keeps A20 on.
    movb $0xD1, %al
    call kbc_command
    movb $0xCD, %al
    call kbc_data
    movw $d1_msg, %si
    call puts
    movb $A20_ON, %ah
    call check_state
    movw $outport_msg, %si
    call puts
    # Read the output port with interrupts off: the 8042 raises IRQ1 for the byte, and the
    # BIOS's INT 09h would take it first.
    cli
    movb $0xD0, %al            # read output port
    call kbc_command
    call kbc_read
    sti
    movb %al, %cl
    call hex8
    movb $0x29, %al            # ')'
    call putc
    call newline
    cmpb $0xCD, %cl
    jne bad_outport

    call port92_off
    movw $p92_off_msg, %si
    movb $A20_MASKED, %ah
    call check

    call port92_on
    movw $p92_on_msg, %si
    movb $A20_ON, %ah
    call check

    call port92_off
    movb $0xDF, %al
    call kbc_command
    movw $p92_off_dfh_msg, %si
    movb $A20_ON, %ah
    call check

    movb $0xDD, %al
    call kbc_command
    movw $ddh_msg, %si
    movb $A20_MASKED, %ah
    call check

    # A store through the wrap reaches the low megabyte, not 100601h.
    movb $0x77, %fs:(LOW+0x11)
    call port92_on
    cmpb $0x77, (LOW+1)
    jne bad_store
    cmpb $0, %fs:(LOW+0x11)
    jne bad_store
    movw $store_msg, %si
    call puts
    call newline
    movw $p92_on_msg, %si
    movb $A20_ON, %ah
    call check

    # The BIOS services, with the 8042 still masking (DDh above).
    movw $0x2400, %ax
    movw $int15_off_msg, %si
    movw $0x0100, %dx          # expect masked, AL=00
    call int15_step
    movw $0x2401, %ax
    movw $int15_on_msg, %si
    movw $0x0001, %dx          # expect on, AL=01
    call int15_step
    movw $0x2403, %ax
    xorw %bx, %bx
    int $0x15
    jc bad_int15
    movw $int15_query_msg, %si
    call puts
    movw %bx, %ax
    call hex16
    call newline
    cmpw $0x0002, %bx
    jne bad_int15

    # The 8042 enables A20; AX=2400h turns off both sources, so A20 is masked again.
    movb $0xDF, %al
    call kbc_command
    movw $0x2400, %ax
    movw $int15_kbc_msg, %si
    movw $0x0100, %dx          # expect masked, AL=00
    call int15_step
    call pass

bad_state:
    movw $bad_state_msg, %si
    call fail
bad_outport:
    movw $bad_outport_msg, %si
    call fail
bad_store:
    movw $bad_store_msg, %si
    call fail
bad_int15:
    movw $bad_int15_msg, %si
    call fail

# check: print the step name at SI, ": ", the state FS:0610 shows and a newline; FAIL unless it
# is AH (A20_MASKED or A20_ON).
check:
    call puts
    call check_state
    call newline
    ret

# check_state: print ": masked" or ": on" for what FS:0610 shows; FAIL unless it is AH.
check_state:
    pushw %si
    movb %fs:(LOW+0x10), %al
    movb $A20_MASKED, %bl
    movw $masked_msg, %si
    cmpb $LOW_MARK, %al
    je check_got
    movb $A20_ON, %bl
    movw $on_msg, %si
    cmpb $HIGH_MARK, %al
    jne check_wrong
check_got:
    call puts
    cmpb %ah, %bl
    jne check_wrong
    popw %si
    ret
check_wrong:
    call newline               # end the step's line before the FAIL line
    jmp bad_state

# int15_step: INT 15h with AX, then print SI, the state (expected DH), ", AX=2402h AL=" and the
# status INT 15h AX=2402h returns (expected DL).
int15_step:
    int $0x15
    jc bad_int15
    call puts
    movb %dh, %ah
    call check_state
    movw $status_msg, %si
    call puts
    movw $0x2402, %ax
    int $0x15
    jc bad_int15
    call hex8
    call newline
    cmpb %dl, %al
    jne bad_int15
    ret

# port92_on / port92_off: set or clear bit 1 of port 92h, never setting bit 0 (fast reset).
port92_on:
    inb $0x92, %al
    orb $0x02, %al
    andb $0xFE, %al
    outb %al, $0x92
    ret
port92_off:
    inb $0x92, %al
    andb $0xFC, %al
    outb %al, $0x92
    ret

# kbc_command / kbc_data: write AL to port 64h / 60h once the input buffer is empty (status bit 1).
kbc_command:
    call kbc_wait_input
    outb %al, $0x64
    ret
kbc_data:
    call kbc_wait_input
    outb %al, $0x60
    ret
kbc_wait_input:
    pushw %ax
kbc_wait_input_loop:
    inb $0x64, %al
    testb $0x02, %al
    jnz kbc_wait_input_loop
    popw %ax
    ret

# kbc_flush: drop whatever the 8042's output buffer holds (status bit 0, OBF).
kbc_flush:
    pushw %ax
kbc_flush_loop:
    inb $0x64, %al
    testb $0x01, %al
    jz kbc_flush_done
    inb $0x60, %al
    jmp kbc_flush_loop
kbc_flush_done:
    popw %ax
    ret

# kbc_read: AL = the next output buffer byte (waits for status bit 0, OBF).
kbc_read:
    inb $0x64, %al
    testb $0x01, %al
    jz kbc_read
    inb $0x60, %al
    ret

after_bios_msg:
    .asciz "A20 after the BIOS"
d1_msg:
    .asciz "8042 D1h CDh, port 92h on"
outport_msg:
    .asciz " (output port "
p92_off_msg:
    .asciz "port 92h off"
p92_on_msg:
    .asciz "port 92h on"
p92_off_dfh_msg:
    .asciz "port 92h off, 8042 DFh"
ddh_msg:
    .asciz "8042 DDh"
store_msg:
    .asciz "store at FFFF:0611 landed at 0601"
int15_off_msg:
    .asciz "INT 15h AX=2400h"
int15_on_msg:
    .asciz "INT 15h AX=2401h"
int15_query_msg:
    .asciz "INT 15h AX=2403h BX="
int15_kbc_msg:
    .asciz "8042 DFh, INT 15h AX=2400h"
status_msg:
    .asciz ", AX=2402h AL="
masked_msg:
    .asciz ": masked"
on_msg:
    .asciz ": on"
bad_state_msg:
    .asciz "FS:0610 shows the wrong A20 state"
bad_outport_msg:
    .asciz "8042 command D0h did not return the output port written with D1h"
bad_store_msg:
    .asciz "a store at FFFF:0611 with A20 masked did not land at 0601"
bad_int15_msg:
    .asciz "INT 15h AX=24xxh failed or returned a wrong value"

.include "lib.inc"
