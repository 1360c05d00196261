# syntax: att
# guest: with -smp 2, code the BSP rewrites runs rewritten on the AP once the AP has executed CPUID or taken an IPI (cross-modifying code)
#
# Intel SDM Vol. 3A 9.1.3 "Handling Self- and Cross-Modifying Code": the modifying processor
# writes the code, then signals; the executing processor executes a serializing instruction
# before it runs the modified code.  Linux's text_poke_sync does the same with an IPI to every
# other CPU (the handler's IRET serializes).  Each VP has its own translation engine, so the
# AP's translation of `patched` must not outlive the BSP's stores (hypervisor/xmodify.py).
# Real mode ("unreal" for the APIC, apic.inc).  Steps:
# * the BSP starts the AP with INIT-SIPI-SIPI (as the smp guest does); the AP calls `patched`
#   (mov $1, %ax; ret), records AX and checks in;
# * the BSP changes the immediate to 2 and sets GO; the AP, spinning on GO with PAUSE, executes
#   CPUID, calls `patched` again and records AX;
# * the BSP changes the immediate to 3 and sends the AP a fixed IPI (vector 64h), whose
#   handler calls `patched` and records AX.
# Serial output:  xmodify: first 0001 after cpuid 0002 in ipi 0003
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).  With -smp 2 or more AP 1 takes part; with one
# processor (no AP checks in) the BSP runs the AP's part itself, with a self IPI.

.include "boot.inc"
.include "ap_start.inc"

.set AP_STACK, 0x6F00
.set STAGE, VARS               # word: 1 once the AP made its first call
.set GO, VARS+2                # word: the BSP's signal for the second call
.set SEEN1, VARS+4             # word: AX of the AP's first call
.set SEEN2, VARS+6             # word: ... after CPUID
.set SEEN3, VARS+8             # word: ... in the IPI handler

main:
    cli
    call unreal
    xorw %ax, %ax
    movw $STAGE, %di
    movw $0xA, %cx
    rep stosb
    movb $0xFF, %al              # mask both 8259s
    outb %al, $0x21
    outb %al, $0xA1
    movw $ap_ipi, (0x64*4)
    movw $0, (0x64*4+2)
    movl $APIC, %ebx
    start_aps ap_entry
    movl $0x000C4600+SIPI_VECTOR, %fs:ICR_LO(%ebx)   # STARTUP 01h again (ignored if running)
    movw $STAGE, %di
    movl $0x10000, %ecx          # ample for a started AP (PAUSE hands it the turn)
    call wait_nonzero_ecx
    jc solo
    # Cross-modify, then signal: the AP serializes with CPUID before it calls again.
    movw $2, (patched+1)
    movw $1, (GO)
    movw $SEEN2, %di
    call wait_nonzero
    jc fail_second
    # Cross-modify, then an IPI: the handler calls the code.
    movw $3, (patched+1)
    movl $0x01000000, %fs:ICR_HI(%ebx)   # physical, APIC ID 1
    movl $0x00004064, %fs:ICR_LO(%ebx)   # fixed, vector 64h
    movw $SEEN3, %di
    call wait_nonzero
    jc fail_ipi
report:
    movw $msg_first, %si
    call puts
    movw (SEEN1), %ax
    call hex16
    movw $msg_cpuid, %si
    call puts
    movw (SEEN2), %ax
    call hex16
    movw $msg_ipi, %si
    call puts
    movw (SEEN3), %ax
    call hex16
    call newline
    cmpw $1, (SEEN1)
    jne fail_values
    cmpw $2, (SEEN2)
    jne fail_values
    cmpw $3, (SEEN3)
    jne fail_values
    jmp pass

# One processor: the same steps on the BSP (self-modifying code), the IPI sent to itself.
solo:
    call patched
    movw %ax, (SEEN1)
    movw $2, (patched+1)
    xorl %eax, %eax
    cpuid
    call patched
    movw %ax, (SEEN2)
    movw $3, (patched+1)
    sti
    movl $APIC, %ebx             # (CPUID wrote EBX)
    movl $0x00044064, %fs:ICR_LO(%ebx)   # self, fixed, vector 64h
    movw $SEEN3, %di
    call wait_nonzero
    jc fail_ipi
    cli
    jmp report

    wait_nonzero_code $0x200000

# The code the BSP rewrites: the immediate of the MOV is at patched+1.
patched:
    movw $1, %ax
    ret

# ---- AP 1 ----------------------------------------------------------------------------------
ap_entry:
    ap_real_mode
    movw $AP_STACK, %sp
    call unreal
    movl $APIC, %ebx
    apic_sw_enable ebx
    call patched
    movw %ax, (SEEN1)
    movw $1, (STAGE)
ap_wait:
    cmpw $0, (GO)
    jne ap_go
    pause
    jmp ap_wait
ap_go:
    xorl %eax, %eax
    cpuid                        # serializing (SDM 9.1.3)
    call patched
    movw %ax, (SEEN2)
    sti
ap_idle:
    hlt
    jmp ap_idle

ap_ipi:                          # vector 64h on the AP (on the BSP with one processor)
    pushw %ax
    call patched
    movw %ax, (SEEN3)
    call apic_eoi
    popw %ax
    iret

fail_second:
    movw $f_second, %si
    jmp fail
fail_ipi:
    movw $f_ipi, %si
    jmp fail
fail_values:
    movw $f_values, %si
    jmp fail

.include "apic.inc"
.include "lib.inc"

msg_first:   .asciz "xmodify: first "
msg_cpuid:   .asciz " after cpuid "
msg_ipi:     .asciz " in ipi "
f_second:    .asciz "AP 1 did not call after GO"
f_ipi:       .asciz "AP 1 did not take the IPI"
f_values:    .asciz "AP 1 ran code older than the BSP's last change"
