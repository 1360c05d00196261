# syntax: att
# guest: exception storm in real mode: 50000 INT3 (#BP) and 50000 UD2 (#UD) through the IVT
#
# Masks both 8259s, points IVT entries 3 and 6 at its handlers and runs INT3 and UD2 50000
# (C350h) times each; the #BP handler counts and returns (INT3 is a trap), the #UD handler
# counts and steps its return IP over the 2-byte UD2 (a fault returns to the instruction).
# Checks both counts exactly.  What it measures: the cost of delivering an exception in
# real-address mode (SDM Vol. 3B 20.1.4).
# Serial output:  storm: int3 0000C350
#                 storm: ud2 0000C350
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set STORM_N, 0xC350
.set NBP, VARS
.set NUD, VARS+0x4

main:
    cli
    movb $0xFF, %al            # mask every 8259 input: nothing but the storm
    outb %al, $0x21
    outb %al, $0xA1
    movl $0, (NBP)
    movl $0, (NUD)
    movw $bp_isr, (0x0C)       # IVT entry 3 = 0000:bp_isr
    movw $0, (0x0E)
    movw $ud_isr, (0x18)       # IVT entry 6 = 0000:ud_isr
    movw $0, (0x1A)
    movl $STORM_N, %ecx
storm_loop:
    int3
    ud2
    decl %ecx
    jnz storm_loop
    movw $msg_bp, %si
    call puts
    movl (NBP), %eax
    call hex32
    call newline
    movw $msg_ud, %si
    call puts
    movl (NUD), %eax
    call hex32
    call newline
    movw $msg_counts, %si
    cmpl $STORM_N, (NBP)
    jne storm_fail
    cmpl $STORM_N, (NUD)
    jne storm_fail
    call pass
storm_fail:
    call fail

bp_isr:
    incl (NBP)
    iret

ud_isr:
    incl (NUD)
    pushw %bp
    movw %sp, %bp
    addw $2, 2(%bp)            # return past the 2-byte UD2
    popw %bp
    iret

msg_bp:
    .asciz "storm: int3 "
msg_ud:
    .asciz "storm: ud2 "
msg_counts:
    .asciz "wrong storm counts"

.include "lib.inc"
