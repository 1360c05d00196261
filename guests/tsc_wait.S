# syntax: att
# guest: with -smp 2, both VPs wait in TSC polling loops (memtest86+'s usleep: PAUSE, RDTSC, compare), then the BSP waits 10 ms alone while the AP is halted: the waits must cost a few turns, not one per PAUSE or per quantum
#
# The BSP starts AP 1 with INIT-SIPI-SIPI (as the smp guest does).  Then, as memtest86+ 6.10's
# smp_start and its APs' start-up wait do:
# * the AP polls GO between waits of 100 us, each `tsc_wait` (memtest86+'s usleep: take the
#   start time from RDTSC, then PAUSE, RDTSC, subtract, compare, loop);
# * the BSP waits 20 x 100 us the same way with a counter counting down, then sets GO; the AP
#   answers ACK and halts with interrupts off, for good.
# Each PAUSE finds RAX/RDX changed (RDTSC wrote them) and, at each new wait, the start time
# in ESI (and the BSP's counter): a spin all the same, so the scheduler must not hand the turn
# over at every PAUSE (hypervisor/smp.py: registers holding a TSC read are the clock).
# * The BSP then waits 10 ms alone: with the AP idle its turn runs on past the quantum.
# Serial output:  tsc_wait: AP started/ack 0101
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).  With one processor no AP checks in and the BSP
# only waits.

.include "boot.inc"
.include "ap_start.inc"

.set AP_STACK, 0x6F00
.set STARTED, VARS             # word: 1 once the AP runs
.set GO, VARS+2                # word: the BSP's signal to the AP
.set ACK, VARS+4               # word: the AP's answer
.set TICKS_100US, 0x186A0     # 100,000: the TSC counts 1 GHz (hypervisor clock)
.set TICKS_10MS, 0x989680      # 10,000,000

main:
    cli
    call unreal
    xorw %ax, %ax
    movw $STARTED, %di
    movw $6, %cx
    rep stosb
    movb $0xFF, %al              # mask both 8259s
    outb %al, $0x21
    outb %al, $0xA1
    movl $APIC, %ebx
    start_aps ap_entry
    movw $STARTED, %di
    call wait_nonzero            # CF=1 with one processor: nobody checks in
    movl $0x14, %ebp             # both wait by the TSC: the BSP 20 x 100 us
bsp_wait:
    movl $TICKS_100US, %ecx
    call tsc_wait
    decl %ebp
    jnz bsp_wait
    movw $1, (GO)
    cmpw $0, (STARTED)
    je alone
    movw $ACK, %di
    call wait_nonzero
    movw $f_ack, %si
    jc fail
alone:
    movl $TICKS_10MS, %ecx       # the AP halted for good: the BSP waits alone
    call tsc_wait
    movw $msg_ap, %si            # "started" and "ack" in one word
    call puts
    movb (STARTED), %ah
    movb (ACK), %al
    call hex16
    call newline
    jmp pass

    wait_nonzero_code $0x10000

# tsc_wait: wait until the TSC has counted ECX ticks (memtest86+ 6.10's usleep, on the low
# half).  Changes EAX, EDX, ESI.
tsc_wait:
    rdtsc
    movl %eax, %esi
tw_loop:
    pause
    rdtsc
    subl %esi, %eax
    cmpl %ecx, %eax
    jb tw_loop
    ret

# ---- AP 1 ----------------------------------------------------------------------------------
ap_entry:
    ap_real_mode
    movw $AP_STACK, %sp
    movw $1, (STARTED)
ap_wait:
    cmpw $0, (GO)
    jne ap_done
    movl $TICKS_100US, %ecx
    call tsc_wait
    jmp ap_wait
ap_done:
    movw $1, (ACK)
ap_idle:
    hlt                          # interrupts off: for good
    jmp ap_idle

.include "apic.inc"
.include "lib.inc"

msg_ap:      .asciz "tsc_wait: AP started/ack "
f_ack:       .asciz "AP 1 did not acknowledge GO"
