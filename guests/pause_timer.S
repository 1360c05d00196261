# syntax: att
# guest: with -smp 2, both VPs spin with PAUSE while the BSP waits for a 1 ms local APIC timer: virtual time must reach the deadline at full speed
#
# The BSP starts AP 1 with INIT-SIPI-SIPI (as the smp guest does).  The AP spins with PAUSE on
# DONE (a loop that changes no register); the BSP arms its local APIC timer, one-shot, 1 ms
# (200,000 bus ticks at divide 1: 5 ns each), and spins with PAUSE on TICK, which the timer
# handler (vector 40h) sets.  Every VP that can run is then spinning, waiting for time: the
# scheduler must let the spinners run whole windows rather than hand the turn over at every
# PAUSE (hypervisor/smp.py), or virtual time, which advances with instructions, crawls.  Then
# the BSP sets DONE and the AP acknowledges.
# Serial output:  pause_timer: started 0001 tick 0001 ack 0001
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).  With one processor no AP checks in and the BSP
# only waits for its timer.

.include "boot.inc"
.include "ap_start.inc"

.set AP_STACK, 0x6F00
.set STARTED, VARS             # word: 1 once the AP runs
.set TICK, VARS+2              # word: 1 once the BSP's timer fired
.set DONE, VARS+4              # word: the BSP's signal to the AP
.set ACK, VARS+6               # word: the AP's answer
.set TIMER_VECTOR, 0x40

main:
    cli
    call unreal
    xorw %ax, %ax
    movw $STARTED, %di
    movw $8, %cx
    rep stosb
    movb $0xFF, %al              # mask both 8259s
    outb %al, $0x21
    outb %al, $0xA1
    movw $timer_handler, (TIMER_VECTOR*4)
    movw $0, (TIMER_VECTOR*4+2)
    movl $APIC, %ebx
    start_aps ap_entry
    movw $STARTED, %di
    call wait_nonzero            # CF=1 with one processor: nobody checks in
    # Both spin from here on: the AP on DONE, the BSP on TICK.
    movl $0x0B, %fs:0x3E0(%ebx)  # divide by 1
    movl $TIMER_VECTOR, %fs:0x320(%ebx)  # LVT timer: one-shot, unmasked
    movl $0x30D40, %fs:0x380(%ebx)  # 200,000 x 5 ns = 1 ms
    sti
tick_wait:
    cmpw $0, (TICK)
    jne ticked
    pause
    jmp tick_wait
ticked:
    cli
    movw $1, (DONE)
    cmpw $0, (STARTED)
    je report
    movw $ACK, %di
    call wait_nonzero
    jc fail_ack
report:
    movw $msg_started, %si
    call puts
    movw (STARTED), %ax
    call hex16
    movw $msg_tick, %si
    call puts
    movw (TICK), %ax
    call hex16
    movw $msg_ack, %si
    call puts
    movw (ACK), %ax
    call hex16
    call newline
    jmp pass

    wait_nonzero_code $0x10000

timer_handler:                   # vector 40h on the BSP
    movw $1, (TICK)
    call apic_eoi
    iret

# ---- AP 1 ----------------------------------------------------------------------------------
ap_entry:
    ap_real_mode
    movw $AP_STACK, %sp
    movw $1, (STARTED)
ap_wait:
    cmpw $0, (DONE)
    jne ap_done
    pause
    jmp ap_wait
ap_done:
    movw $1, (ACK)
ap_idle:
    hlt
    jmp ap_idle

fail_ack:
    movw $f_ack, %si
    jmp fail

.include "apic.inc"
.include "lib.inc"

msg_started: .asciz "pause_timer: started "
msg_tick:    .asciz " tick "
msg_ack:     .asciz " ack "
f_ack:       .asciz "AP 1 did not acknowledge DONE"
